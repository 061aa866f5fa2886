"""The optimizer's settings ([optimizer]): what it plans among and for, and how often a plan may change."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from actuators.vllm_servers import MAX_BATCH
from controller.config_loader import UNIQUE, ConfigError, check_positive, check_range, quoted, shown
from controller.settings_checks import MAX_CHOICES, MAX_SHAPES, shape_count
from queuemodels import DEFAULT_MODEL, MODELS


@dataclass(frozen=True)
class OptimizerSettings:
    objective: Literal["cost", "token_speed", "energy"] = "token_speed"
    """Minimum cost, maximum sum of per-request token speed (seed 000), or minimum energy."""
    solver: Literal["auto", "greedy", "milp", "exhaustive"] = "auto"
    """Solver by name. auto: the MILP beside greedy where the problem is small (a host's services), the better
    plan taken; greedy alone at fleet scale. exhaustive (a few services only) plans with auto, and says so, in a
    cycle whose candidates make more than 2,000,000 combinations."""
    queue_model: str = field(default=DEFAULT_MODEL, metadata={"schema": {"enum": sorted(MODELS)}})
    """Queue model by name: mm1k-cb (continuous batching, vLLM) or mm1k-batch (llm-inferno)."""
    batch_sizes: tuple[int, ...] = field(default=(8, 16, 32, 64, 128, 256), metadata=UNIQUE)
    """Candidate `--max-num-seqs` values."""
    power_levels: tuple[float, ...] = field(default=(0.6, 0.7, 0.8, 0.9, 1.0), metadata=UNIQUE)
    """Candidate power caps as shares of each accelerator's maximum limit."""
    clock_levels: tuple[float, ...] = field(default=(1.0,), metadata=UNIQUE)
    """Candidate locked SM clocks as shares of each GPU's maximum (1.0: unlocked); levels below 1 need a clock
    backend (`actuators.clocks`)."""
    energy_weight: float = 0.0
    """With the token_speed objective, what a watt of predicted draw costs, as a share of the fleet's token speed
    per watt of the site's draw (idle included): at 1.0 a plan gives up 1 % of token speed for 1 % less draw (the
    product of token speed and tokens per joule is what it maximises); 0 leaves energy out."""
    clock_min_saving: float = 0.05
    """Least share of a service's energy per request a locked clock must be predicted to save against the best
    plan at the free clock before it is planned: a smaller saving is within the model's own draw errors."""
    transition_penalty: float = 0.05
    """Share of its score a candidate must gain over what runs before a scale is made; a new max batch (a rolling
    restart) or a move to another accelerator must gain twice that. Moving a cap costs nothing."""
    time_limit_s: float = 2.0
    """Time limit of the MILP solver."""
    mip_gap: float = 0.01
    """Optimality gap of the MILP solver, as a share of the plan's score (the objective summed over each service's best
    candidate), not of the whole valued objective that the shed penalties dominate."""
    resize_tolerance: float = 0.05
    """Relative move of a fitted parameter or token mean below which candidates keep their cached sizing."""
    drain_s: float = 120.0
    """Time within which a queued backlog is to be served: waiting / drain_s joins the demand sized for
    (shorter drains faster, but sizes every transient queue as lasting demand)."""
    slo_margin_step: float = 0.1
    """Margin a service's planning targets gain for each steady window that missed them (controller/slo_margin.py:
    a percentile target allows a smaller share over it, a mean target a smaller value); 0 plans at the targets."""
    slo_miss_share: float = 0.02
    """Share of its steady windows a service may miss its targets in: each window that met them takes
    slo_margin_step x slo_miss_share / (1 - slo_miss_share) off the margin, so it settles at this miss rate."""
    slo_margin_max: float = 0.5
    """Largest margin a service is planned with; also the one an accelerator type it may run on, but that no window
    of its model has measured, is planned at (its prior was written for another type)."""

    def check(self, where: str) -> None:
        if not 0 <= self.resize_tolerance < 0.5:
            raise ConfigError(f"{where}.resize_tolerance", f"must be in [0, 0.5), got {self.resize_tolerance}")
        check_choices(where, self.batch_sizes, self.power_levels)
        check_clock_levels(where, self.clock_levels)
        check_shapes(where, self.batch_sizes, self.power_levels, self.clock_levels)
        check_range(self, where, ("transition_penalty", "mip_gap"), 0.0, 1.0)
        check_range(self, where, ("energy_weight",), 0.0, 10.0)
        if self.energy_weight and self.objective != "token_speed":  # read by no other objective: dropped unsaid
            raise ConfigError(f"{where}.energy_weight", f"prices watts against token speed, and objective is "
                              f"{self.objective!r}: set it 0, or objective \"token_speed\", got {self.energy_weight:g}")
        check_range(self, where, ("clock_min_saving", "slo_margin_step"), 0.0, 0.5)
        check_range(self, where, ("slo_margin_max",), 0.0, 0.9)
        check_positive(self, where, ("slo_miss_share",))
        check_range(self, where, ("slo_miss_share",), 0.0, 0.5, low_open=True)
        check_positive(self, where, ("time_limit_s", "drain_s"))
        check_range(self, where, ("time_limit_s",), 0.0, 60.0, low_open=True)
        check_range(self, where, ("drain_s",), 1.0, 86400.0)  # 1e-300 read any queue as 1e300 rps of demand
        if self.queue_model not in MODELS:
            raise ConfigError(f"{where}.queue_model", f"unknown {quoted(self.queue_model)}, expected one of "
                                                      f"{sorted(MODELS)}")


LEAST_CLOCK_LEVEL = 0.1
"""Lowest clock level, a share of the maximum SM clock."""
ITEM_BOUNDS = {"batch_sizes": {"minimum": 1, "maximum": MAX_BATCH},
               "power_levels": {"exclusiveMinimum": 0, "maximum": 1},
               "clock_levels": {"minimum": LEAST_CLOCK_LEVEL, "maximum": 1}}
"""Each item's bounds in the optimizer's lists, as `check_choices` and `check_clock_levels` hold them (the JSON
Schemas' too)."""


def check_choices(where: str, batch_sizes: tuple[int, ...], power_levels: tuple[float, ...]) -> None:
    """Candidate batch sizes and power levels: non-empty, short enough to size, each in range and given once (a
    second 16 sized every shape twice)."""
    if not 1 <= len(batch_sizes) <= MAX_CHOICES or not all(1 <= b <= MAX_BATCH for b in batch_sizes) or \
            len(set(batch_sizes)) < len(batch_sizes):
        raise ConfigError(f"{where}.batch_sizes" if where else "batch_sizes",
                          f"must be 1..{MAX_CHOICES} integers in 1..{MAX_BATCH}, each once, got {shown(batch_sizes)}")
    if not 1 <= len(power_levels) <= MAX_CHOICES or not all(0 < p <= 1 for p in power_levels) or \
            len(set(power_levels)) < len(power_levels):
        raise ConfigError(f"{where}.power_levels" if where else "power_levels",
                          f"must be 1..{MAX_CHOICES} shares in (0, 1], each once, got {shown(power_levels)}")


def check_shapes(where: str, batch_sizes: tuple[int, ...], power_levels: tuple[float, ...],
                 clock_levels: tuple[float, ...]) -> None:
    """The shapes a plan sizes per service and accelerator, at most MAX_SHAPES (sizing work grows with them)."""
    shapes = shape_count(batch_sizes, power_levels, clock_levels)
    if shapes > MAX_SHAPES:
        raise ConfigError(f"{where}.clock_levels" if where else "clock_levels",
                          f"batch_sizes x power_levels x clock_levels give {shapes} shapes to size per service and "
                          f"accelerator; at most {MAX_SHAPES}")


def check_clock_levels(where: str, clock_levels: tuple[float, ...]) -> None:
    """Candidate locked clocks: non-empty, short enough to size, each a share in [0.1, 1]."""
    if not 1 <= len(clock_levels) <= MAX_CHOICES or not all(
            isinstance(c, int | float) and LEAST_CLOCK_LEVEL <= c <= 1 for c in clock_levels) or \
            len(set(clock_levels)) < len(clock_levels):
        raise ConfigError(f"{where}.clock_levels" if where else "clock_levels",
                          f"must be 1..{MAX_CHOICES} shares in [{LEAST_CLOCK_LEVEL:g}, 1], each once, got "
                          f"{shown(clock_levels)}")
