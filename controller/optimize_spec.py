"""The `wattscale optimize` spec: a TOML system description (see docs/optimize-spec.md), and JSON output."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from controller.config_loader import (
    UNIQUE,
    ConfigError,
    build,
    check_name,
    check_range,
    item_path,
    quoted,
)
from controller.idle_floor import below_idle
from controller.minimums import minimum_fits
from controller.optimizer import Problem, ServiceDemand, Solution
from controller.optimizer_settings import check_choices, check_clock_levels, check_shapes
from controller.service_settings import MIN_RATE_RPS, check_service_bounds
from controller.settings import AcceleratorSettings, PriorSettings
from controller.settings_checks import MAX_POWER_W, MAX_SERVICES, check_sizings
from controller.toml_file import read_toml
from queuemodels import DEFAULT_MAX_QUEUE, Load, Targets
from queuemodels.accelerators import CATALOG
from queuemodels.types import MAX_TOKENS_PER_STEP, kept_past_drafts

MAX_RATE_RPS = 1e6
"""Highest request rate of one service in a spec."""

@dataclass(frozen=True)
class SpecService:
    name: str
    """Service name."""
    rate_rps: float
    """Request rate to serve."""
    ttft_ms: float
    """TTFT objective (ms)."""
    itl_ms: float
    """ITL objective (ms)."""
    params: dict[str, PriorSettings]
    """Queue-model parameters per accelerator name."""
    statistic: Literal["mean", "p95", "p99"] = "mean"
    """Statistic the objectives apply to."""
    priority: int = 1
    """1 is most important."""
    in_tokens: float = 512.0
    """Mean prompt tokens."""
    out_tokens: float = 256.0
    """Mean output tokens."""
    in_tokens_cv: float = 1.0
    """Spread of prompt lengths (std / mean)."""
    out_tokens_cv: float = 1.0
    """Spread of output lengths (std / mean)."""
    tokens_per_step: float = 1.0
    """Tokens a decoding request gains per engine step: 1, or under speculative decoding 1 + the drafts accepted (as
    the daemon reads it off vLLM's counters); the ITL objective is then the gap between outputs, one a step."""
    draft_tokens: float = 0.0
    """Tokens drafted a step for a decoding request under speculative decoding, over its steps (vLLM's
    num_speculative_tokens for a draft head): each is verified, kept or not, and takes a token of the step's budget;
    0 without it or where not read."""
    min_replicas: int = 1
    """Lower replica bound of a plan that serves the service (a service no room is left for is shed, x0)."""
    max_replicas: int = 64
    """Upper replica bound."""
    max_queue: int = DEFAULT_MAX_QUEUE
    """Queue bound per replica."""

    def check(self, where: str) -> None:
        check_name(self.name, where)
        check_range(self, where, ("rate_rps",), 0.0, MAX_RATE_RPS)
        check_range(self, where, ("tokens_per_step",), 1.0, MAX_TOKENS_PER_STEP)
        check_range(self, where, ("draft_tokens",), 0.0, MAX_TOKENS_PER_STEP - 1.0)
        if why := kept_past_drafts(self.tokens_per_step, self.draft_tokens):
            raise ConfigError(f"{where}.tokens_per_step", why)
        if 0.0 < self.rate_rps < MIN_RATE_RPS:
            raise ConfigError(f"{where}.rate_rps", f"must be 0 or at least {MIN_RATE_RPS:g}, got {self.rate_rps}")
        check_service_bounds(self, where)
        if not self.params:
            raise ConfigError(f"{where}.params", "needs the queue-model parameters of at least one accelerator")
        for acc in self.params:
            if acc not in CATALOG:
                raise ConfigError(f"{where}.params.{acc}", f"unknown accelerator, expected one of {sorted(CATALOG)}")


@dataclass(frozen=True)
class Spec:
    budget_w: float
    """Site power budget (W)."""
    accelerators: tuple[AcceleratorSettings, ...]
    """Inventory."""
    services: tuple[SpecService, ...]
    """Services."""
    objective: Literal["cost", "token_speed", "energy"] = "token_speed"
    """What to optimise."""
    mode: Literal["predicted", "caps"] = "predicted"
    """Budget predicted draw or caps."""
    batch_sizes: tuple[int, ...] = field(default=(8, 16, 32, 64, 128, 256), metadata=UNIQUE)
    """Candidate max batch sizes."""
    power_levels: tuple[float, ...] = field(default=(0.6, 0.7, 0.8, 0.9, 1.0), metadata=UNIQUE)
    """Candidate caps as shares of the maximum limit."""
    clock_levels: tuple[float, ...] = field(default=(1.0,), metadata=UNIQUE)
    """Candidate locked SM clocks as shares of the maximum (1.0: unlocked; docs/clocks.md)."""
    transition_penalty: float = 0.0
    """Penalty on changes (no current allocation in a spec)."""

    def check(self, where: str) -> None:
        check_range(self, "", ("budget_w",), 0.0, MAX_POWER_W, low_open=True)  # as a config's
        if not self.services:
            raise ConfigError("services", "at least one service is required")
        if len(self.services) > MAX_SERVICES:
            raise ConfigError("services", f"{len(self.services)} listed, more than the {MAX_SERVICES} one spec plans")
        if not self.accelerators:
            raise ConfigError("accelerators", "at least one accelerator type is required")
        check_choices("", self.batch_sizes, self.power_levels)
        check_clock_levels("", self.clock_levels)
        check_shapes("", self.batch_sizes, self.power_levels, self.clock_levels)  # 64 x 64 sized for minutes
        check_range(self, "", ("transition_penalty",), 0.0, 1.0)
        names = {a.name for a in self.accelerators}
        if len(names) < len(self.accelerators):
            dup = next(a.name for a in self.accelerators if sum(b.name == a.name for b in self.accelerators) > 1)
            raise ConfigError(f"accelerators[{dup}].name", f"duplicate accelerator {quoted(dup)}")
        seen: dict[str, str] = {}  # by the name in lower case, as a daemon config's (its Kubernetes objects') are
        for svc in self.services:
            if (other := seen.get(svc.name.lower())) is not None:
                raise ConfigError(f"services[{svc.name}].name", f"duplicate service name {quoted(svc.name)}" + (
                    "" if other == svc.name else f" (as {quoted(other)}: names are compared in lower case, as a "
                    "daemon config's are)"))
            seen[svc.name.lower()] = svc.name
            for acc in svc.params:
                if acc not in names:
                    raise ConfigError(f"services[{svc.name}].params.{acc}", f"{acc} is not in the inventory "
                                      f"(accelerators: {sorted(names)})")
        check_sizings([(svc.name, len(svc.params)) for svc in self.services], self.batch_sizes, self.power_levels,
                      self.clock_levels, "params")
        minimum_fits(self.accelerators, self.services, [list(svc.params) for svc in self.services])


REQUIRED_PARAMS = ("alpha_ms", "beta_ms", "gamma_ms")
"""Queue-model parameters a spec must give for each accelerator (docs/optimize-spec.md): a spec describes a
fitted system, so a left-out one is a mistake, not the daemon's prior default."""


def _check_required_params(data: dict[str, Any]) -> None:
    """Each `params."ACCELERATOR"` table names REQUIRED_PARAMS (read from the file: the settings class fills
    the daemon's defaults in); run after `build`, which has checked the tables' types."""
    for i, svc in enumerate(data.get("services", [])):
        for acc, table in svc.get("params", {}).items():
            missing = [k for k in REQUIRED_PARAMS if k not in table]
            if missing:
                raise ConfigError(f"{item_path('services', i, svc)}.params.{acc}.{missing[0]}",
                                  f"required key is missing (a spec gives {', '.join(REQUIRED_PARAMS)})")


def load_spec(path: Path) -> Problem:
    data = read_toml(path, "optimize spec")
    spec = build(Spec, data)
    _check_required_params(data)
    accs = tuple(a.offer() for a in spec.accelerators)
    services = tuple(
        ServiceDemand(s.name, s.priority, Targets(s.ttft_ms, s.itl_ms, s.statistic),
                      Load(s.rate_rps, s.in_tokens, s.out_tokens, s.in_tokens_cv, s.out_tokens_cv, s.tokens_per_step,
                           s.draft_tokens),
                      {k: v.params() for k, v in s.params.items()},
                      s.min_replicas, s.max_replicas, s.max_queue)
        for s in spec.services
    )
    problem = Problem(services, accs, spec.budget_w, spec.objective, spec.mode, spec.batch_sizes, spec.power_levels,
                      spec.transition_penalty, clock_levels=spec.clock_levels)
    idle = sum(a.count * a.profile.empty_draw_w for a in accs)
    if spec.budget_w < idle:  # as check-config refuses a daemon's: no plan can be under it
        raise below_idle("budget_w", spec.budget_w, idle, "inventory")
    return problem


def solution_json(sol: Solution) -> dict[str, Any]:
    services = []
    for r in sol.services:
        a, p = r.assignment, r.performance
        services.append({
            "name": r.name,
            "accelerator": a.accelerator if a else None,
            "replicas": a.replicas if a else 0,
            "max_batch": a.max_batch if a else None,
            "power_cap_w": a.power_cap_w if a else None,
            "sm_clock_share": a.sm_clock_fraction if a else None,
            "ttft_ms": p.ttft_ms if p else None,
            "itl_ms": p.itl_ms if p else None,
            "ttft_p95_ms": p.ttft_p95_ms if p else None,
            "itl_p95_ms": p.itl_p95_ms if p else None,
            "power_w": r.power_w,
            "cost": r.cost_per_hour,
            "short_rps": r.short_rps,
            "reason": r.reason,
        })
    return {
        "services": services,
        "totals": {"cost": sol.cost_per_hour, "power_w": sol.power_w, "objective": sol.objective,
                   "solve_s": sol.solve_s, "candidates_s": sol.candidates_s, "solver": sol.solver},
        "shortfalls": [{"name": s.name, "short_rps": s.short_rps, "reason": s.reason} for s in sol.shortfalls],
        "notes": sol.notes,
    }
