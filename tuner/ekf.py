"""Extended Kalman filter over one (model, accelerator) pair's queue-model parameters.

State x = the family's service-time parameters (ms), plus the prefill power sensitivity when power
caps vary. Observation z = log [TTFT, ITL] (ms); h(x) is the queue model at the observed load, batch limit
and cap (REFERENCE.md section 2). Observed GPU power trains the pair's draw curve apart (`tuner/draw.py`):
it says nothing true about service times, which would otherwise absorb the draw model's error. Windows
run at different locked SM clocks train the pair's clock sensitivities (`tuner/clock.py`).
Robustness: a robust least-squares warm-up on the first observations that keeps the prior's shape where
they leave it open, the same fit over the recent windows every few updates, a chi-square NIS gate,
clamping to [prior/10, 10 prior], rejection of non-positive
parameters, and a refit on the rejected observations themselves after repeated gate rejections in a row (a
real shift, not an outlier: they are the best evidence of the new law, and a linearised update from far
away overshoots), anchored on the estimate before the shift - unless one law explains them together with
the recent windows (the estimate was young, not the server changed): then that joint fit ("refit").
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np
from filterpy.kalman import ExtendedKalmanFilter
from numpy.typing import NDArray
from scipy.optimize import least_squares
from scipy.stats import chi2

from queuemodels import DEFAULT_MODEL, ModelInputError, PowerProfile, ServiceParams, get_model
from queuemodels.types import NAMES
from tuner.clock import ClockFit
from tuner.draw import DrawFit
from tuner.filter_settings import FilterSettings, Verdict
from tuner.observation import Observation

__all__ = ["FilterSettings", "PairFilter", "Verdict"]


@dataclass
class PairFilter:
    """The filter of one pair, with its counters; plain data so it can be saved and restored."""

    prior: ServiceParams
    profile: PowerProfile | None
    settings: FilterSettings = field(default_factory=FilterSettings)
    fit_power: bool = False
    queue_model: str = DEFAULT_MODEL
    x: NDArray[np.float64] = field(default_factory=lambda: np.zeros(0))
    p: NDArray[np.float64] = field(default_factory=lambda: np.zeros((0, 0)))
    warmup: list[Observation] = field(default_factory=list)
    updates: int = 0
    accepted: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    suspects: list[Observation] = field(default_factory=list)
    """The observations of the current run of gate rejections."""
    rewarm: int = 0
    """Observations still to be fitted by least squares with the suspects after a shift."""
    last_nis: float = float("nan")
    anchor: NDArray[np.float64] = field(default_factory=lambda: np.zeros(0))
    """The shape a warm-up fit keeps: the prior, or the estimate just before a shift."""
    draw: DrawFit = field(default_factory=DrawFit)
    """The power-draw curve, fitted to observed GPU power."""
    clock: ClockFit = field(default_factory=ClockFit)
    """The clock sensitivities, fitted to windows run at different locked clocks."""
    history: list[Observation] = field(default_factory=list)
    """The recent usable windows of the current law (since the last shift), for the periodic refit."""
    since_refit: int = 0

    def __post_init__(self) -> None:
        if self.x.size == 0:
            self.x = self.prior_vector()
            self.p = np.diag((self.settings.initial_spread * self.x) ** 2)
        if self.anchor.size == 0:
            self.anchor = self.prior_vector()

    def prior_vector(self) -> NDArray[np.float64]:
        base = list(self.prior.with_step_defaults().as_vector())
        if self.fit_power and self.profile is not None:
            base.append(self.profile.prefill_sensitivity)
        return np.array(base, dtype=float)

    @property
    def bounds(self) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        x0 = self.prior_vector()
        return np.maximum(x0 / 10.0, 1e-9 * (x0 > 0)), 10.0 * x0

    def _latency_profile(self, v: NDArray[np.float64]) -> PowerProfile | None:
        """The catalogue profile with the fitted prefill sensitivity (the draw curve's anchor)."""
        if self.fit_power and self.profile is not None:
            return dataclasses.replace(self.profile, prefill_sensitivity=float(v[len(self.prior.as_vector())]))
        return self.profile

    def params(self, x: NDArray[np.float64] | None = None) -> tuple[ServiceParams, PowerProfile | None]:
        v = self.x if x is None else x
        n = len(self.prior.as_vector())
        family = self.prior.family  # the KV cache's size is read, not fitted: the prior's here, a window's in predict
        params = ServiceParams(family, **{k: float(a) for k, a in zip(NAMES[family], v[:n], strict=True)},
                               kv_tokens=self.prior.kv_tokens)
        profile = self._latency_profile(v)
        return params, None if profile is None else self.draw.applied(self.clock.applied(profile))

    def predict(self, obs: Observation, x: NDArray[np.float64] | None = None) -> NDArray[np.float64]:
        """h(x): the model's [TTFT, ITL] at the observation's operating point; TTFT's rest after the queueing
        time where `observed` reads that (the prompt's own steps at the batch it joins)."""
        params, profile = self.params(x)
        perf = get_model(self.queue_model).analyze(_cache(params, obs), obs.load, obs.shape, profile, tails=False)
        return np.array([perf.extra["prefill_ms"] if self._splits(obs) else perf.ttft_ms, perf.itl_ms])

    def predict_many(self, pairs: list[tuple[Observation, NDArray[np.float64] | None]]) -> list[
            NDArray[np.float64] | None]:
        """`predict` at many (observation, state) pairs in one call of the queue model (which solves them together:
        a fit's windows, a Jacobian's perturbed states); None where the model cannot take the load."""
        points = []
        for obs, x in pairs:
            params, profile = self.params(x)
            points.append((_cache(params, obs), obs.load, obs.shape, profile))
        figures = get_model(self.queue_model).mean_figures(points)
        return [None if f is None else np.array([f.prefill_ms if self._splits(obs) else f.ttft_ms, f.itl_ms])
                for (obs, _), f in zip(pairs, figures, strict=True)]

    def observed(self, obs: Observation) -> NDArray[np.float64]:
        """[TTFT, ITL]: under the step family, TTFT less the queueing time where the window records it. The
        queueing is the chain's structure, not the service law's: fitted to whole TTFTs, the law's terms bend
        to absorb the chain's queueing error near saturation and carry it to every other shape (the decode
        step at small batches, hence their capacity). gen1 and gen2 keep whole TTFTs: their prompt law, one
        smooth maximum, fits a prompt's own steps only by trading it against the decode step, and the
        queueing near saturation is what holds that trade (held-out ITL error 0.04 -> 0.07 without it)."""
        if self._splits(obs):
            return np.array([obs.ttft_ms - float(obs.queue_ms or 0.0), obs.itl_ms])
        return np.array([obs.ttft_ms, obs.itl_ms])

    def _splits(self, obs: Observation) -> bool:
        return self.prior.family == "step" and obs.splits_queue

    def log_predict(self, obs: Observation, x: NDArray[np.float64] | None = None) -> NDArray[np.float64]:
        """h(x) in log space: the filter works on relative errors, and latency's 1 / (1 - rho) growth near
        saturation becomes a gentle slope a linearised update can follow."""
        out: NDArray[np.float64] = np.log(self.predict(obs, x))
        return out

    def jacobian(self, obs: Observation) -> NDArray[np.float64]:
        """Of log h, by central differences, eps = 1 % of each parameter (every perturbed state in one call)."""
        states: list[NDArray[np.float64]] = []
        for j in range(len(self.x)):
            eps = 0.01 * abs(self.x[j]) or 1e-6
            up, down = self.x.copy(), self.x.copy()
            up[j] += eps
            down[j] = max(down[j] - eps, 1e-12)
            states += [up, down]
        logs = [np.log(h) for h in self.predict_many([(obs, x) for x in states]) if h is not None]
        if len(logs) < len(states):
            raise ModelInputError("the model cannot take this window's load at a perturbed state")
        cols = [(logs[2 * j] - logs[2 * j + 1]) / (states[2 * j][j] - states[2 * j + 1][j]) for j in range(len(self.x))]
        return np.column_stack(cols)

    def _reject(self, reason: str, nis: float = float("nan")) -> Verdict:
        self.rejected[reason] = self.rejected.get(reason, 0) + 1
        return Verdict(False, reason, nis)

    def update(self, obs: Observation) -> Verdict:
        """Fold one observation in; returns accepted or the reason it was rejected. A usable window with a
        power reading also refits the draw curve, whatever its latencies say."""
        problem = obs.problem()
        if problem is not None:
            return self._reject(problem)
        self.updates += 1
        verdict = self._update_latency(obs)
        self._refit(obs)
        profile = self._latency_profile(self.x)
        if profile is not None:
            params = self.params()[0]
            self.clock.observe(obs, params, self.draw.applied(profile), self.queue_model)
            self.draw.observe(obs, params, self.clock.applied(profile), self.queue_model)
        return verdict

    def refit_draw(self) -> None:
        """Fit the draw curve over every window it keeps now (as `update` does only where one is missed)."""
        profile = self._latency_profile(self.x)
        if profile is not None and self.draw.recent:
            self.draw.fit(self.params()[0], self.clock.applied(profile), self.queue_model)

    def _update_latency(self, obs: Observation) -> Verdict:
        if self.accepted < self.settings.warmup_observations or self.rewarm > 0:
            return self._warm(obs)
        try:
            return self._filter(obs)
        except ModelInputError:
            # The model calls a load the server evidently carried impossible: as strong a sign of a
            # wrong law as a gate rejection, and the same way out.
            return self._suspect(obs, "model-error", float("inf"))
        except (FloatingPointError, np.linalg.LinAlgError):
            return self._reject("model-error")

    def fit(self, observations: list[Observation], reset_spread: bool = True, tol: float = 1e-6) -> None:
        """Robust MAP fit of log parameters to `observations`: log errors under soft-L1 beyond the
        observation error (one burst window does not drag it), plus a prior that keeps the anchor's shape
        (the prior, or the estimate before a shift) at a free common scale, so that directions a few windows
        leave unidentified (the gamma/delta ridge) stay where the anchor had them. Trust-region reflective
        within the bounds: a few dozen model evaluations, until the cost and the step change by less than `tol`.
        `reset_spread` restarts the covariance at the initial spread (a warm-up); a periodic refit keeps the
        filter's own."""
        s = self.settings
        low, high = self.bounds
        free = self.prior_vector() > 0
        lo = np.append(np.log(low[free]), -np.log(10.0))
        hi = np.append(np.log(high[free]), np.log(10.0))
        anchor = np.log(self._anchor_for(observations)[free])
        start_x = self._carrying_start(observations)
        scaled = self._scaled()[free]
        start = np.clip(np.append(np.log(start_x[free]), np.mean((np.log(start_x[free]) - anchor)[scaled])), lo, hi)
        sigma_obs = s.error_level / 1.96
        prior_weight = sigma_obs / s.anchor_spread

        def residuals(v: NDArray[np.float64]) -> NDArray[np.float64]:
            x = self.prior_vector()
            x[free] = np.exp(v[:-1])
            out = [prior_weight * (v[:-1] - anchor - v[-1] * scaled)]
            for o, h in zip(observations, self.predict_many([(o, x) for o in observations]), strict=True):
                out.append(np.full(2, 10.0) if h is None else np.log(h / self.observed(o)))
            return np.concatenate(out)

        result = least_squares(residuals, start, bounds=(lo, hi), method="trf", diff_step=1e-4, ftol=tol,
                               xtol=tol, loss="soft_l1", f_scale=sigma_obs)
        self.x[free] = np.clip(np.exp(result.x[:-1]), low[free], high[free])
        if reset_spread:
            self.p = np.diag((s.initial_spread * self.x) ** 2)

    def _anchor_for(self, observations: list[Observation]) -> NDArray[np.float64]:
        """The shape a fit holds. A step prior written in gen1's numbers (kappa left 0) carries gen1's
        per-sequence cost in beta, the KV read at the context its windows ran included, while the step family
        reads that read apart (kappa x context): held at both, the per-sequence cost is counted twice, and the
        fit trades the excess against the other terms (the step's fixed time, the prompt's). So its beta is held
        at what is left once kappa's starting value has read the KV at these windows' mean context (at least a
        tenth of it)."""
        if self.prior.family != "step" or self.prior.kappa_ms > 0 or not np.array_equal(self.anchor,
                                                                                       self.prior_vector()):
            return self.anchor
        context = float(np.mean([o.in_tokens + o.out_tokens / 2.0 for o in observations]))
        names = NAMES["step"]
        anchor = self.anchor.copy()
        beta, kappa = names.index("beta_ms"), names.index("kappa_ms")
        anchor[beta] = max(anchor[beta] - anchor[kappa] * context, anchor[beta] / 10.0)
        return anchor

    def _scaled(self) -> NDArray[np.bool_]:
        """Which entries of the state move with the anchor's common scale: the times, not the token counts (a
        step's token budget is no time: scaled with the times, it would chunk prompts no window saw chunked)
        nor rho, a ratio of compute per token (a decode token runs a prompt token's GEMMs): scaled with the
        times it read the times' scale (0.5-0.7) where no window reaches the crossover, and put capacity at batch
        256 10-12 % over on queue_heldout's engines."""
        names = [*NAMES[self.prior.family], "prefill_sensitivity"][: len(self.x)]
        return np.array([not n.endswith("_tokens") and n != "rho" for n in names])

    def _carrying_start(self, observations: list[Observation]) -> NDArray[np.float64]:
        """The estimate, scaled down until the model carries every observed load: where it calls one
        impossible the loss is flat, and a fit started there cannot leave."""
        low, _ = self.bounds
        free = self.prior_vector() > 0
        for scale in (1.0, 0.7, 0.5, 0.35, 0.25, 0.15, 0.1):
            x = self.x.copy()
            x[free] = np.maximum(x[free] * scale, low[free])
            if all(h is not None for h in self.predict_many([(o, x) for o in observations])):
                return x
        return self.x.copy()

    def _refit(self, obs: Observation) -> None:
        """Keep `obs` among the recent windows and, every `refit_every` of them, refit on them all. Gated
        windows count too: the gate guards a linearised step from an outlier, and the robust loss discounts
        one as well, but a window far from a young estimate is often the one that identifies a term."""
        if not any(o is obs for o in (*self.history, *self.suspects)):  # a rejected one waits among the suspects
            self.history = [*self.history, obs][-self.settings.refit_window:]
        self.since_refit += 1
        warming = self.accepted < self.settings.warmup_observations or self.rewarm > 0
        if self.settings.refit_every and self.since_refit >= self.settings.refit_every and not warming:
            self.since_refit = 0
            # the filter's spread stays what its updates made it
            # it starts at the estimate, over up to refit_window windows: a relative change of 1e-4 in cost and
            # step is close enough (the daemon's CPU with the step family, its laws then solved point by point,
            # 52 -> 40 s a simulated hour); a warm-up or a shift's fit settles the shape from a few, at 1e-6
            self.fit([*self.history, *self.suspects][-self.settings.refit_window:], reset_spread=False, tol=1e-4)

    def _warm(self, obs: Observation) -> Verdict:
        self.warmup.append(obs)
        self.fit(self.warmup)
        self.accepted += 1
        self.rewarm = max(0, self.rewarm - 1)
        if self.accepted >= self.settings.warmup_observations and self.rewarm == 0:
            self.warmup.clear()
        return Verdict(True, "warmup")

    def _suspect(self, obs: Observation, reason: str, nis: float) -> Verdict:
        """Reject `obs`, unless it completes a run of rejections: then it is a shift, and the warm-up
        starts again from the rejected observations."""
        self.suspects.append(obs)
        if len(self.suspects) < self.settings.shift_after:
            return self._reject(reason, nis)
        if self._explains_all():
            return Verdict(True, "refit", nis)
        self.warmup = list(self.suspects)
        self.history = list(self.suspects)  # the windows of the old law no longer describe the server
        self.suspects.clear()
        self.anchor = self.x.copy()
        self.fit(self.warmup)
        self.rewarm = self.settings.warmup_observations
        self.accepted += 1
        return Verdict(True, "shift", nis)

    def _explains_all(self) -> bool:
        """Whether one law explains the recent windows and the rejected run together (a young estimate, not
        a shift): the robust fit over them all, kept if it puts every rejected window within 3 sigma of the
        observation error, and as many of the recent ones as the estimate did before it (80 % of them where it
        did better): a shift is a run the old windows' law cannot take in without losing them. Measured against
        the estimate, not absolutely: a law that misses some steady windows (gen1's queueing at 80 % load, 0.28
        to 0.37 out) missed them before the run too, and a new warm-up on the run alone would only forget them.
        Kept too where every rejected window errs as the recent windows of its shape do under that law
        (`_as_neighbours`): a law that cannot fit one shape with the rest misses the run there as it missed them.
        Otherwise the estimate is left as it was."""
        windows = [*self.history, *self.suspects]
        x, p = self.x.copy(), self.p.copy()
        before = self._within(self._residuals(self.history))
        self.fit(windows, reset_spread=False)
        residuals = self._residuals(windows)
        if residuals is None:  # the joint law cannot take some window's load: it explains nothing
            self.x, self.p = x, p
            return False
        within = self._within(residuals)
        rejected_fit = all(within[len(self.history):])
        kept = float(np.mean(within[: len(self.history)] or [True]))
        if (rejected_fit and kept >= min(0.8, float(np.mean(before or [True])))) or self._as_neighbours(residuals):
            self.history = windows[-self.settings.refit_window:]
            self.suspects.clear()
            return True
        self.x, self.p = x, p
        return False

    def _residuals(self, windows: list[Observation]) -> list[NDArray[np.float64]] | None:
        """Log errors [TTFT, ITL] of the estimate at each window (None where the model cannot take one's load)."""
        figures = self.predict_many([(o, self.x) for o in windows])
        if any(h is None for h in figures):
            return None
        return [np.log(h / self.observed(o)) for o, h in zip(windows, figures, strict=True) if h is not None]

    @property
    def _limit(self) -> float:
        """Three sigma of the observation error, in log."""
        return 3.0 * self.settings.error_level / 1.96

    def _within(self, residuals: list[NDArray[np.float64]] | None) -> list[bool]:
        """Which residuals are within 3 sigma of the observation error (none where the law could take no load)."""
        if residuals is None:
            return [False]
        return [bool(np.abs(r).max() <= self._limit) for r in residuals]

    def _as_neighbours(self, residuals: list[NDArray[np.float64]]) -> bool:
        """Whether every rejected window errs as the recent windows of its shape do (within 3 sigma of their mean
        error: a max batch within 2x, prompts within 1.5x): what the law misses there, not a change in time. A
        server that changed leaves its old windows and the run on either side of any law fitted to both."""
        if not self.history:
            return False
        limit = self._limit
        recent = residuals[: len(self.history)]
        for obs, error in zip(self.suspects, residuals[len(self.history):], strict=True):
            like = [r for o, r in zip(self.history, recent, strict=True)
                    if 0.5 <= o.max_batch / obs.max_batch <= 2.0 and 1 / 1.5 <= o.in_tokens / obs.in_tokens <= 1.5]
            if not like or np.abs(error - np.mean(like, axis=0)).max() > limit:
                return False
        return True

    def _filter(self, obs: Observation) -> Verdict:
        s = self.settings
        z = np.log(self.observed(obs))
        ekf = ExtendedKalmanFilter(dim_x=len(self.x), dim_z=len(z))
        ekf.x = self.x.reshape(-1, 1).copy()
        ekf.P = self.p.copy()
        ekf.Q = np.diag((s.process_noise * self.x) ** 2)
        ekf.R = np.eye(len(z)) * (s.error_level / 1.96) ** 2
        ekf.predict()
        h = self.jacobian(obs)
        y = z - self.log_predict(obs)
        innovation_cov = h @ ekf.P @ h.T + ekf.R
        nis = float(y @ np.linalg.solve(innovation_cov, y))
        self.last_nis = nis
        if nis > chi2.ppf(s.gate_probability, len(z)):
            return self._suspect(obs, "gate", nis)
        self.history = [*self.history, *self.suspects][-s.refit_window:]  # outliers, not a shift: kept
        self.suspects.clear()
        ekf.update(z.reshape(-1, 1), lambda _x: h, lambda x: self.log_predict(obs, x.ravel()).reshape(-1, 1))
        new_x = ekf.x.ravel()
        if np.any(new_x[self.prior_vector() > 0] <= 0):
            return self._reject("non-positive", nis)
        low, high = self.bounds
        self.x = np.clip(new_x, low, high)
        self.p = 0.5 * (ekf.P + ekf.P.T)
        self.accepted += 1
        return Verdict(True, "accepted", nis)


def _cache(params: ServiceParams, obs: Observation) -> ServiceParams:
    """The parameters at the KV cache of the replicas that served `obs`, where it says (else the prior's)."""
    return dataclasses.replace(params, kv_tokens=obs.kv_tokens) if obs.kv_tokens > 0.0 else params
