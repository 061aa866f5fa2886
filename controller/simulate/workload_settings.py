"""A scenario's workload per service: its mean rate, a daily cycle, bursts and token mixes (a heavy prompt tail
among them), each checked with one clear error naming the field."""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass
from itertools import pairwise

from controller.config_loader import ConfigError, check_range
from controller.service_settings import MAX_DURATION_S, MAX_SIM_RATE_RPS, check_crest
from controller.simulate.scenario_checks import MAX_BURSTS
from simulator.traffic import Burst, burst_steps
from simulator.workload import CONTEXT_TOKENS

MAX_ARRIVALS = 10_000_000
"""The most requests a scenario's services may be expected to send over its duration: a run keeps every request of
a policy (some 150 bytes each) and sizes the baselines by load tests as long; 108 million (10,000 rps of three
services for an hour) would have taken 11-17 GB a policy. The shipped scenarios send under 170,000."""


@dataclass(frozen=True)
class BurstSettings:
    start_s: float
    """When the burst starts (s from the scenario's start)."""
    duration_s: float
    """How long it lasts (s)."""
    factor: float
    """The rate is multiplied by this while it lasts."""

    def check(self, where: str) -> None:
        check_range(self, where, ("start_s",), 0.0, MAX_DURATION_S)
        check_range(self, where, ("duration_s",), 1e-3, MAX_DURATION_S)
        check_range(self, where, ("factor",), 0.0, 100.0)


@dataclass(frozen=True)
class PromptTailSettings:
    share: float
    """Share of prompts drawn from the Pareto tail instead of the log-normal body."""
    min_tokens: float
    """Shortest tail prompt (the Pareto scale)."""
    alpha: float = 1.5
    """Pareto shape: smaller is heavier (<= 2: infinite variance)."""

    def check(self, where: str) -> None:
        check_range(self, where, ("share",), 0.0, 1.0)
        check_range(self, where, ("min_tokens",), 1.0, CONTEXT_TOKENS)
        check_range(self, where, ("alpha",), 0.5, 10.0)


@dataclass(frozen=True)
class WorkloadSettings:
    rate_rps: float
    """Mean arrival rate (requests/s)."""
    cycle_amplitude: float = 0.0
    """Relative amplitude of a sinusoidal cycle of the rate, in [0, 1]."""
    cycle_period_s: float = 3600.0
    """Period of that cycle (s)."""
    phase_s: float = 0.0
    """Shift of the cycle (s): the rate is mean * (1 + amplitude sin(2 pi (t - phase) / period))."""
    bursts: tuple[BurstSettings, ...] = ()
    """Spans where the rate is multiplied."""
    in_tokens: float = 0.0
    """Mean prompt length (tokens); 0: the service's `in_tokens`."""
    out_tokens: float = 0.0
    """Mean output length (tokens); 0: the service's `out_tokens`."""
    in_cv: float = 0.6
    """Coefficient of variation of the log-normal prompt lengths."""
    out_cv: float = 0.6
    """Coefficient of variation of output lengths."""
    prompt_tail: PromptTailSettings | None = None
    """A heavy tail of long prompts on top of the log-normal body; None: none."""

    def peak_rate(self) -> tuple[float, float]:
        """The highest rate the bursts reach (overlapping ones multiply), and where."""
        edges, factors = burst_steps([Burst(b.start_s, b.duration_s, b.factor) for b in self.bursts])
        top, at_s = max(zip(factors, edges, strict=True), key=lambda fe: fe[0], default=(1.0, 0.0))
        return (self.rate_rps * top, at_s) if top > 1.0 and self.rate_rps else (self.rate_rps, 0.0)

    def arrivals(self, duration_s: float) -> float:
        """The requests expected over the first `duration_s` seconds: the cycle's integral over each span the bursts
        hold at one factor, times that factor."""
        if not self.rate_rps:  # a rate of 0 stays 0 under any burst (0 x inf read NaN, and NaN passed the bound)
            return 0.0
        edges, factors = burst_steps([Burst(b.start_s, b.duration_s, b.factor) for b in self.bursts])
        omega, a = 2.0 * math.pi / self.cycle_period_s, self.cycle_amplitude

        def cycle(t: float) -> float:  # the integral of 1 + a sin(omega (t - phase)) from 0 to t
            return t - a / omega * (math.cos(omega * (t - self.phase_s)) - math.cos(omega * self.phase_s))

        cuts = [0.0, *(e for e in edges if 0.0 < e < duration_s), duration_s]
        spans = ((lo, hi, bisect.bisect_right(edges, lo) - 1) for lo, hi in pairwise(cuts))
        return self.rate_rps * sum((factors[k] if k >= 0 else 1.0) * (cycle(hi) - cycle(lo)) for lo, hi, k in spans)

    def check(self, where: str) -> None:
        if len(self.bursts) > MAX_BURSTS:
            raise ConfigError(f"{where}.bursts", f"{len(self.bursts)} listed, more than {MAX_BURSTS}")
        check_range(self, where, ("rate_rps",), 0.0, MAX_SIM_RATE_RPS)
        check_range(self, where, ("cycle_amplitude",), 0.0, 1.0)
        check_range(self, where, ("cycle_period_s",), 1.0, MAX_DURATION_S)
        check_range(self, where, ("phase_s",), -MAX_DURATION_S, MAX_DURATION_S)
        check_range(self, where, ("in_tokens", "out_tokens"), 0.0, CONTEXT_TOKENS)  # the engines' context
        for name in ("in_tokens", "out_tokens"):  # a mean under one token is none; 0 is "the service's"
            if 0.0 < (v := getattr(self, name)) < 1.0:
                raise ConfigError(f"{where}.{name}", f"must be 0 (the service's) or at least 1, got {v}")
        if self.in_tokens + self.out_tokens > CONTEXT_TOKENS:  # no request would fit: every one a miss, slowly
            raise ConfigError(f"{where}.out_tokens", f"in_tokens + out_tokens is {self.in_tokens + self.out_tokens:g}, "
                              f"over the engines' context of {CONTEXT_TOKENS} tokens")
        peak, at_s = self.peak_rate()
        if not peak <= MAX_SIM_RATE_RPS:  # bursts that overlap multiply (past a float: inf)
            raise ConfigError(f"{where}.bursts", f"the rate reaches {peak:.6g} rps at {at_s:g} s (rate_rps x the "
                              f"bursts then), over {MAX_SIM_RATE_RPS:g}")
        check_crest(where, peak, self.cycle_amplitude, "rate_rps x the bursts")
        check_range(self, where, ("in_cv", "out_cv"), 0.0, 10.0)


def check_arrivals(workloads: dict[str, WorkloadSettings], duration_s: float) -> None:
    """Refuse a run whose services are expected to send more than MAX_ARRIVALS requests, naming the largest."""
    each = {name: w.arrivals(duration_s) for name, w in workloads.items()}
    total = sum(each.values())
    if not total <= MAX_ARRIVALS:  # NaN too
        name = max(each, key=lambda n: each[n])
        raise ConfigError(f"workload.{name}", f"{each[name]:.3g} of the {total:.3g} requests the services are expected "
                          f"to send over duration_s {duration_s:g}, more than the {MAX_ARRIVALS:g} a run holds (each "
                          "policy keeps every request); shorten duration_s or lower the rates")
