"""How eagerly a pair's filter follows observations, and what one update decided."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FilterSettings:
    """How eagerly the filter follows observations."""

    error_level: float = 0.1
    """Relative observation error at 95 % (R = (e / 1.96)^2 on log z)."""
    process_noise: float = 0.01
    """Relative random walk of the parameters per update (Q = (q x)^2)."""
    initial_spread: float = 0.15
    """Relative standard deviation of the parameters after warm-up (P0)."""
    gate_probability: float = 0.975
    """Chi-square probability of the NIS gate."""
    warmup_observations: int = 3
    """Observations fitted by least squares before filtering starts."""
    anchor_spread: float = 0.3
    """Relative spread of each parameter around the anchor's shape in a warm-up fit (their common scale
    is free): what holds the directions a few observations leave unidentified."""
    shift_after: int = 3
    """Consecutive gate rejections that mean a shift: the filter refits on them and warms up again."""
    refit_every: int = 8
    """Usable windows between robust least-squares refits over the recent ones (0: never).
    A linearised update moves along the directions one window informs; a model with terms that only a spread of
    prompts and batches separates (context, prefill overhead) needs the windows seen together."""
    refit_window: int = 32
    """The most recent usable windows a refit reads."""


@dataclass
class Verdict:
    """The outcome of one update."""

    accepted: bool
    reason: str = "accepted"
    nis: float = float("nan")
