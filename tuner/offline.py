"""The tuner run offline over recorded observations (`wattscale tune OBSERVATIONS.csv`).

The observations file: tuner/observation_file.py.
Rows go through the same filter as the daemon's, in file order: warm-up fit, then EKF updates with
gating; the report gives the fitted parameters, the counts, the rows rejected and why (by file
line, the header's being 1), the parameters
held at their bounds [prior / 10, 10 x prior] (also warned on stderr), and the prediction error before each
update (one step ahead) and after the last one (in sample). A file with no usable row is refused. With
--accelerator, rows with power_w also fit the pair's draw curve (`draw` in the report, with its in-sample
error over the windows it kept).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from queuemodels import ModelInputError, get_model
from queuemodels.params import NAMES
from tuner.ekf import PairFilter
from tuner.observation import Observation
from tuner.observation_file import REASONS, ObservationRows

log = logging.getLogger(__name__)

SHOWN_ROWS = 10
"""Rows named per reason in the warning of those rejected (a 20,000-row file's thousands made one line of 200 KB)."""


@dataclass(frozen=True)
class ErrorSummary:
    """Relative absolute errors of predicted mean TTFT and ITL, and their signed medians (the bias: a prediction far
    under what was measured reads an error under 1 whatever the factor, -0.999 in bias for one 1,000 times low)."""

    median_ttft: float
    median_itl: float
    max_ttft: float
    max_itl: float
    bias_ttft: float
    bias_itl: float

    @classmethod
    def of(cls, errs: list[tuple[float, float]]) -> ErrorSummary:
        """From signed relative errors (predicted / measured - 1) of (TTFT, ITL)."""
        if not errs:
            nan = float("nan")
            return cls(nan, nan, nan, nan, nan, nan)
        signed = np.array(errs)
        a = np.abs(signed)
        return cls(*(round(float(x), 4) for x in (*np.median(a, axis=0), *a.max(axis=0),
                                                  *np.median(signed, axis=0))))


def significant(value: float) -> float:
    """`value` to six significant digits: what `analyze` and a config's prior take back as printed (a fixed six
    decimals printed a fit's 1e-9 ms as 0, which they refuse)."""
    return float(f"{value:.6g}")


Errors = tuple[float, float]


def both_errors(pair: PairFilter, obs: Observation) -> tuple[Errors, Errors] | None:
    """The signed relative errors of the mean TTFT and ITL the model predicts at `obs`, against what it measured,
    from one analysis (None: not a usable window): the whole TTFT's, queueing included, also where the filter fits
    it less the queueing time (a window with `queue_ms`: the prompt's own steps, compared with the whole measured
    TTFT, read 26 % off where the whole TTFT was within 1 %); and what the filter fits (the law alone, the chain's
    queueing left out), the same where TTFT is read whole."""
    if obs.problem() is not None:
        return None
    try:
        whole, fitted = pair.predicted(obs)
    except ModelInputError:
        return None
    seen = pair.observed(obs)
    return ((whole[0] / obs.ttft_ms - 1.0, whole[1] / obs.itl_ms - 1.0),
            (fitted[0] / seen[0] - 1.0, fitted[1] / seen[1] - 1.0))


def run(pair: PairFilter, observations: list[Observation],
        progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Feed every observation through the filter; the report `wattscale tune --json` prints. `progress` gets the rows
    done and their count after each row (rows far from the prior may each be refitted, a second or more each)."""
    ahead: list[tuple[float, float]] = []
    verdicts: dict[str, int] = {}
    rejected: dict[str, list[int]] = {}  # by reason: the file's line numbers, or the places where no file is known
    file = observations if isinstance(observations, ObservationRows) else None
    held: dict[str, str] | None = None  # the bounds the fit sat on as its warm-up ended, said then

    def place(n: int) -> str:  # `path:line`, as ObservationRows.where says it
        return f"observation {n}" if file is None else f"{file.path}:{n}"

    for row, obs in enumerate(observations, start=1):
        line = row if file is None else file.lines[row - 1]
        if pair.accepted >= pair.settings.warmup_observations:
            err = both_errors(pair, obs)
            if err is not None:
                ahead.append(err[0])
        verdict = pair.update(obs)
        verdicts[verdict.reason] = verdicts.get(verdict.reason, 0) + 1
        if held is None and pair.accepted >= pair.settings.warmup_observations:
            held = bounds_hit(pair)  # said once, as the warm-up ends: a prior that far off refits slowly
            for name, where in held.items():
                _say_held(name, where, f" after the warm-up ({place(line)})")
        if not verdict.accepted:
            rejected.setdefault(verdict.reason, []).append(line)
        if progress is not None:
            progress(row, len(observations))
    pair.refit_draw()  # the report's curve rests on every window kept, not on the last one it missed
    both = [e for e in (both_errors(pair, o) for o in observations) if e is not None]  # one analysis a window
    params, profile = pair.params()
    names, model = NAMES[params.family], get_model(pair.queue_model)
    out: dict[str, Any] = {
        "queue_model": pair.queue_model,
        "family": params.family,
        "params": {n: significant(v) for n, v in zip(names, params.as_vector(), strict=False) if model.reads(n)},
        "observations": len(observations),
        "verdicts": verdicts,
        "covariance_trace": float(np.trace(pair.p)),
        "error_one_step_ahead": ErrorSummary.of(ahead).__dict__,
        "error_in_sample": ErrorSummary.of([whole for whole, _ in both]).__dict__,
    }
    if any(whole != law for whole, law in both):  # the law was fitted to TTFT less the queueing time somewhere: its
        # own error, the chain's queueing left out
        out["error_in_sample_law"] = ErrorSummary.of([law for _, law in both]).__dict__
    if params.kv_tokens:  # read, not fitted: the cache the law was fitted at (a replica's, or a variant's)
        out["kv_tokens"] = params.kv_tokens
    if params.expert_weight_share:  # read, not fitted, but the law the times hold under: a spec copying them needs it
        out["params"].update(expert_weight_share=params.expert_weight_share,
                             expert_token_share=params.expert_token_share)
    if pair.fit_power and profile is not None:
        out["params"]["prefill_sensitivity"] = significant(profile.prefill_sensitivity)
    if profile is not None and pair.draw.busy_share is not None:
        draw_err = pair.draw.error(params, profile, pair.queue_model)
        out["draw"] = {"busy_share": round(profile.busy_share, 4), "batch_half": round(profile.batch_half, 2),
                       "windows": len(pair.draw.recent),
                       "median_abs_err_power": None if draw_err is None else round(draw_err, 4)}
    out["last_nis"] = None if math.isnan(pair.last_nis) else round(pair.last_nis, 4)
    out["rejected_rows"] = rejected
    out["bounds_hit"] = bounds_hit(pair)
    if rejected:
        log.warning("tune: rows rejected: %s", "; ".join(
            f"{why} {REASONS.get(why, '')}: {', '.join(map(place, rows[:SHOWN_ROWS]))}"
            + (f" and {len(rows) - SHOWN_ROWS} more (the report's rejected_rows lists them)"
               if len(rows) > SHOWN_ROWS else "") for why, rows in rejected.items()))
    held = held or {}
    for name in sorted(set(held) - set(out["bounds_hit"])):
        log.warning("tune: %s left its bound later on; the final fit is within what the prior allows", name)
    for name, where in out["bounds_hit"].items():
        if held.get(name) != where:
            _say_held(name, where)
    return out


def _say_held(name: str, where: str, when: str = "") -> None:
    log.warning("tune: %s held at its %s%s; the observations ask for a value outside what the prior allows (a prior "
                "nearer them fits faster)", name, where, when)


def bounds_hit(pair: PairFilter) -> dict[str, str]:
    """The fitted parameters at their clamp [prior / 10, 10 x prior] (within 0.1 %: a fit parked that close is
    held by it), each with the bound it sits on."""
    low, high = pair.bounds
    names = (*NAMES[pair.prior.family], "prefill_sensitivity")
    out: dict[str, str] = {}
    for name, x, lo, hi in zip(names, pair.x, low, high, strict=False):
        if hi > 0 and x <= lo * (1 + 1e-3):
            out[name] = f"lower bound {lo:.6g} (prior / 10)"
        elif hi > 0 and x >= hi * (1 - 1e-3):
            out[name] = f"upper bound {hi:.6g} (10 x prior)"
    return out
