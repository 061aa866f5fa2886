"""The observations `wattscale tune` reads, bounded: the offline reader takes any float, and a window of
1e308 tokens or an infinite batch is a traceback deep in the queue model, not a reading of a real server."""

from __future__ import annotations

import math
from pathlib import Path

from actuators.vllm_servers import MAX_BATCH
from controller.service_settings import MAX_TOKENS, MIN_RATE_RPS
from controller.settings_checks import MAX_QUEUE
from queuemodels import PowerProfile
from queuemodels.types import MAX_TOKENS_PER_STEP, kept_past_drafts
from tuner.observation import LEAST_LATENCY_MS
from tuner.observation_file import ObservationFileError, ObservationRows, read_observations, require_usable

GATED = ("rate_rps", "in_tokens", "out_tokens", "ttft_ms", "itl_ms")
"""Columns the filter itself gates when not finite ("non-finite"): NaN there is a row to skip, not an error."""
UNSAID = ("served_rps", "queue_growth", "queue_ms")
"""Columns whose NaN reads as a window that does not say them (as an empty cell); any other value out of bounds
is refused."""
BOUNDS: dict[str, tuple[float, float]] = {
    "rate_rps": (0.0, 1e6), "in_tokens": (0.0, MAX_TOKENS), "out_tokens": (0.0, MAX_TOKENS),
    "max_batch": (1, MAX_BATCH), "max_queue": (0, MAX_QUEUE), "ttft_ms": (0.0, 1e7), "itl_ms": (0.0, 1e7),
    "power_cap_w": (0.0, 1e4), "power_w": (0.0, 1e4), "waiting": (0.0, 1e9), "preemptions": (0.0, 1e9),
    "in_cv": (0.0, 10.0), "out_cv": (0.0, 10.0), "served_rps": (0.0, 1e6), "queue_growth": (-1e9, 1e9),
    "queue_ms": (0.0, 1e7), "tokens_per_step": (1.0, MAX_TOKENS_PER_STEP),
    "draft_tokens": (0.0, MAX_TOKENS_PER_STEP - 1.0),
}

MAX_ROWS = 20_000
"""The most observations `tune` reads: the filter takes about 8 ms a row (a full EKF step with the model's
Jacobian), so 20,000 rows are under three minutes; a longer file is refused (its message says to keep the recent
rows)."""


DRAW_SLACK = 1.25
"""How far a window's mean draw may read past the GPU's most power, or its cap: NVML's 1-s means pass a limit
briefly while it is enforced, never by a quarter; a column in kW or tenths of a watt does."""
LEAST_DRAW_SHARE = 0.25
"""The least share of its idle draw a window's mean draw may read: no GPU with a model loaded draws less."""


def power_bounds(prof: PowerProfile) -> dict[str, tuple[float, float]]:
    """The power columns' bounds on one accelerator: a cap within its limits, a draw within what it can draw."""
    return {"power_cap_w": (prof.min_power_w, prof.max_power_w),
            "power_w": (LEAST_DRAW_SHARE * prof.idle_power_w, DRAW_SLACK * prof.max_power_w)}


def _shown(value: float) -> str:
    """A value as read: a float whole (875.0004 is no 875), a whole count whole up to 18 digits (99999999 read as
    1e+08) and short past them (10**300 as 1e+300)."""
    return repr(value) if isinstance(value, float) else str(value) if abs(value) < 10**18 else f"{value:g}"


def queue_not_in_ttft(observations: ObservationRows) -> list[str]:
    """Where (`path:line`) a row says a queue_ms the filter does not split its TTFT by (`Observation.splits_queue`:
    at or past its ttft_ms, the bounds having refused one below 0), so the row is read whole: histograms that
    disagree, or a unit slip the user is told of. An empty or NaN cell says none, and a row with no TTFT no split."""
    return [observations.where(i) for i, o in enumerate(observations)
            if o.queue_ms is not None and math.isfinite(o.queue_ms) and o.ttft_ms > 0.0 and not o.splits_queue]


def read_bounded(path: Path, prof: PowerProfile | None = None) -> ObservationRows:
    """The file's observations, at most `MAX_ROWS` of them, each value within what a real server reports (its
    power cap and draw within what `prof`, the accelerator's, allows, where it is known, and no draw far past its
    own cap); ObservationFileError names the row (`path:line`), the column and the value."""
    observations = read_observations(path, MAX_ROWS)
    bounds = BOUNDS if prof is None else {**BOUNDS, **power_bounds(prof)}
    for i, obs in enumerate(observations):
        for name, (low, high) in bounds.items():
            value = getattr(obs, name)
            if value is None or (name in GATED and not math.isfinite(value)) or (name in UNSAID and math.isnan(value)):
                continue
            if not (math.isfinite(value) and low <= value <= high):
                raise ObservationFileError(f"{observations.where(i)}: column {name!r} must be in "
                                           f"[{low:g}, {high:g}], got {_shown(value)}")
            if name == "rate_rps" and 0.0 < value < MIN_RATE_RPS:  # 1e-300 was fitted
                raise ObservationFileError(f"{observations.where(i)}: column 'rate_rps' must be 0 or at least "
                                           f"{MIN_RATE_RPS:g}, got {_shown(value)}")
            if name in ("ttft_ms", "itl_ms") and 0.0 < value < LEAST_LATENCY_MS:
                raise ObservationFileError(f"{observations.where(i)}: column {name!r} must be 0 (no traffic) or "
                                           f"in [{LEAST_LATENCY_MS:g}, {high:g}], got {_shown(value)}")
        if why := kept_past_drafts(obs.tokens_per_step, obs.draft_tokens):
            raise ObservationFileError(f"{observations.where(i)}: column 'tokens_per_step' {why}")
        # (without an accelerator a row with a cap is refused as such: its cap is no bound to read a draw against)
        if prof is not None and obs.power_w is not None and obs.power_cap_w is not None and (
                obs.power_w > (most := DRAW_SLACK * obs.power_cap_w)):
            raise ObservationFileError(f"{observations.where(i)}: column 'power_w' must be at most {most:g} W "
                                       f"({DRAW_SLACK:g} x the row's power_cap_w, {obs.power_cap_w:g} W), got "
                                       f"{obs.power_w!r}")
    return require_usable(observations)  # after the bounds: a value out of them names its column
