"""Extended Kalman filter over one (model, accelerator) pair's queue-model parameters.

State x = the family's service-time parameters (ms), plus the prefill power sensitivity when power
caps vary. Observation z = log [TTFT, ITL] (ms); h(x) is the queue model at the observed load, batch limit
and cap (after llm-inferno's model-tuner). Observed GPU power trains the pair's draw curve apart (`tuner/draw.py`):
it says nothing true about service times, which would otherwise absorb the draw model's error. Windows
run at different locked SM clocks train the pair's clock sensitivities (`tuner/clock.py`).
Robustness: a robust least-squares warm-up that keeps the prior's shape where the windows leave it open
(`tuner/robust_fit.py`), the same fit over the recent windows every few updates, a chi-square NIS gate,
clamping to [prior/10, 10 prior], rejection of non-positive parameters, and after a run of gate rejections
either a warm-up on them anchored on the estimate before (a shift: a linearised update from far away
overshoots) or a joint fit where one law explains them with the recent windows (`tuner/shift.py`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from functools import partial

import numpy as np
from numpy.typing import NDArray
from scipy.special import gammaincinv

from queuemodels import DEFAULT_MODEL, ModelInputError, PowerProfile, ServiceParams, get_model
from queuemodels.params import LEAST_TERM
from tuner.clock import ClockFit
from tuner.draw import DrawFit
from tuner.filter_settings import FilterSettings, Verdict
from tuner.observation import Observation, binds_cap
from tuner.robust_fit import anchor_for, carrying_start, log_jacobian, map_fit, scaled_entries
from tuner.shift import one_law, three_sigma, within

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
        return np.maximum(x0 / 10.0, LEAST_TERM * (x0 > 0)), 10.0 * x0

    def _latency_profile(self, v: NDArray[np.float64]) -> PowerProfile | None:
        """The catalogue profile with the fitted prefill sensitivity (the draw curve's anchor)."""
        if self.fit_power and self.profile is not None:
            return dataclasses.replace(self.profile, prefill_sensitivity=float(v[len(self.prior.as_vector())]))
        return self.profile

    def params(self, x: NDArray[np.float64] | None = None) -> tuple[ServiceParams, PowerProfile | None]:
        v = self.x if x is None else x
        n = len(self.prior.as_vector())
        # the KV cache's size and the experts' routing are read, not fitted: the prior's here (a window's KV cache in
        # predict)
        params = self.prior.with_vector(v[:n].tolist())
        profile = self._latency_profile(v)
        return params, None if profile is None else self.draw.applied(self.clock.applied(profile))

    def predict(self, obs: Observation, x: NDArray[np.float64] | None = None) -> NDArray[np.float64]:
        """h(x): the model's [TTFT, ITL] at the observation's operating point; TTFT's rest after the queueing
        time where `observed` reads that (the prompt's own steps at the batch it joins)."""
        return self.predicted(obs, x)[1]

    def predicted(self, obs: Observation, x: NDArray[np.float64] | None = None) -> tuple[
            NDArray[np.float64], NDArray[np.float64]]:
        """The model's [TTFT, ITL] at `obs` whole, and as the filter fits them (`predict`), from one analysis."""
        params, profile = self.params(x)
        perf = get_model(self.queue_model).analyze(obs.at_cache(params), obs.load, obs.shape, profile, tails=False)
        fitted = perf.extra["prefill_ms"] if self._splits(obs) else perf.ttft_ms
        return np.array([perf.ttft_ms, perf.itl_ms]), np.array([fitted, perf.itl_ms])

    def predict_many(self, pairs: list[tuple[Observation, NDArray[np.float64] | None]]) -> list[
            NDArray[np.float64] | None]:
        """`predict` at many (observation, state) pairs in one call of the queue model (which solves them together:
        a fit's windows, a Jacobian's perturbed states); None where the model cannot take the load."""
        made = {k: self.params(x) for k, x in {id(x): x for _, x in pairs}.items()}  # once a state, not a window
        points = [(obs.at_cache(made[id(x)][0]), obs.load, obs.shape, made[id(x)][1]) for obs, x in pairs]
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
        return np.log(self.predict(obs, x))

    def jacobian(self, obs: Observation) -> NDArray[np.float64]:
        """Of log h at `obs`, by central differences (`log_jacobian`); 0 for a term the prior leaves out."""
        return log_jacobian(lambda xs: self.predict_many([(obs, x) for x in xs]), self.x, self.prior_vector() > 0)

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
        """Robust MAP fit to `observations` (tuner/robust_fit.py), holding the anchor's shape (the prior, or the
        estimate before a shift). `reset_spread` restarts the covariance at the initial spread (a warm-up); a
        periodic refit keeps the filter's own."""
        low, high = self.bounds
        free = self.prior_vector() > 0
        if self.fit_power and self.profile is not None and not any(binds_cap(o, self.profile) for o in observations):
            free[len(self.prior.as_vector())] = False  # nothing here says it: moved, it followed the times' scale
        errors = partial(self._log_errors, observations)
        start = carrying_start(self.x, low, free, errors)
        anchor = anchor_for(self.prior, self.anchor, self.prior_vector(), observations)
        self.x = map_fit(errors, start, anchor, scaled_entries(self.prior.family, len(self.x)),
                         free, (low, high), self.settings, tol)
        if reset_spread:
            self.p = np.diag((self.settings.initial_spread * self.x) ** 2)

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
            # the filter's spread stays what its updates made it; the fit starts at the estimate, over up to
            # refit_window windows: a relative change of 1e-4 in cost and step is close enough (the daemon's CPU with
            # the step family, 52 -> 40 s a simulated hour); a warm-up or a shift's fit settles the shape at 1e-6
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
        """Whether one law explains the recent windows and the rejected run together (tuner/shift.py): then it is
        the estimate; otherwise the estimate is left as it was."""
        windows = [*self.history, *self.suspects]
        x, p = self.x.copy(), self.p.copy()
        limit = three_sigma(self.settings.error_level)
        before = within(self._residuals(self.history), limit)
        self.fit(windows, reset_spread=False)
        residuals = self._residuals(windows)
        # a joint law that cannot take some window's load explains nothing
        if residuals is not None and one_law(self.history, self.suspects, before, residuals, limit):
            self.history = windows[-self.settings.refit_window:]
            self.suspects.clear()
            return True
        self.x, self.p = x, p
        return False

    def _residuals(self, windows: list[Observation]) -> list[NDArray[np.float64]] | None:
        """The estimate's `_log_errors` at each window; None where the model cannot take one's load."""
        errors = self._log_errors(windows, [self.x])[0]
        return None if any(e is None for e in errors) else [e for e in errors if e is not None]

    def _log_errors(self, windows: list[Observation], xs: list[NDArray[np.float64]]) -> list[
            list[NDArray[np.float64] | None]]:
        """Log errors [TTFT, ITL] of each state at each window (None: a load it cannot take), solved in one call."""
        figures = iter(self.predict_many([(o, x) for x in xs for o in windows]))
        seen = [self.observed(o) for o in windows]
        return [[None if h is None else np.log(h / z) for z, h in zip(seen, figures, strict=False)] for _ in xs]

    def _filter(self, obs: Observation) -> Verdict:
        s = self.settings
        z = np.log(self.observed(obs))
        from filterpy.kalman import ExtendedKalmanFilter  # here: its scipy.stats is 0.7 s of every command's start
        ekf = ExtendedKalmanFilter(dim_x=len(self.x), dim_z=len(z))
        ekf.x = self.x.reshape(-1, 1).copy()
        ekf.P = self.p.copy()
        ekf.Q = np.diag((s.process_noise * self.x) ** 2)
        ekf.R = np.eye(len(z)) * (s.error_level / 1.96) ** 2
        ekf.predict()
        h, hx = self.jacobian(obs), self.log_predict(obs)  # h(x) once: the filter's predicted state is x itself
        y = z - hx
        innovation_cov = h @ ekf.P @ h.T + ekf.R
        nis = float(y @ np.linalg.solve(innovation_cov, y))
        self.last_nis = nis
        if nis > 2.0 * gammaincinv(len(z) / 2.0, s.gate_probability):  # chi2.ppf, without scipy.stats' 0.6-s import
            return self._suspect(obs, "gate", nis)
        self.history = [*self.history, *self.suspects][-s.refit_window:]  # outliers, not a shift: kept
        self.suspects.clear()
        ekf.update(z.reshape(-1, 1), lambda _x: h, lambda _x: hx.reshape(-1, 1))
        new_x = ekf.x.ravel()
        if np.any(new_x[self.prior_vector() > 0] <= 0):
            return self._reject("non-positive", nis)
        low, high = self.bounds
        self.x = np.clip(new_x, low, high)
        self.p = 0.5 * (ekf.P + ekf.P.T)
        self.accepted += 1
        return Verdict(True, "accepted", nis)
