"""Config packing (seed 002): which GPU configs to rent so every request of a workload is held, at least cost.

Two capacity models. `shared` (ours, the default): a config's capacity is shared by the request types it
holds, sum_w flow[w, c] / h[w, c] <= y_c. `per_type` (the seed's): flow[w, c] <= y_c h[w, c] for every type
separately, which counts one config once per type and so under-buys when types mix.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np

from controller.lp import Lp
from controller.planner.packing_spec import PackingSpec

CapacityModel = Literal["shared", "per_type"]
MIN_HOLDS = 1e-6
"""Fewest requests of a type a copy holds for it to count as holding any (1e-300 overflowed greedy's copy count
and made HiGHS's model an error)."""


@dataclass(frozen=True)
class Config:
    name: str
    """`<gpu>_x<k>`."""
    gpu: str
    """GPU type."""
    cards: int
    """Cards in the config."""
    cost_per_h: float
    """Rental of all its cards ($/h)."""
    holds: tuple[float, ...]
    """Requests of each type (in request-type order) one copy holds; 0 where the type does not fit."""


@dataclass(frozen=True)
class PackingResult:
    solver: str
    """Which solver produced it."""
    feasible: bool
    """False when the workload cannot be held by what is available."""
    cost_per_h: float
    """Total rental ($/h); inf when infeasible."""
    copies: dict[str, int]
    """Config name -> copies rented."""
    solve_s: float
    """Solver wall time."""
    note: str = ""
    """Why it failed, or the solver's status."""
    optimal: bool = False
    """Proven optimal within its gap: only a MILP solve that finished says so (greedy and the homogeneous
    baselines answer other questions)."""
    mip_gap: float = float("nan")
    """The MILP's relative gap between this plan and the best bound (nan for the other solvers)."""
    stopped: bool = False
    """No packing, because the MILP's time limit ran out before it found one: not a proof that none exists."""

    def cards(self, configs: list[Config]) -> dict[str, int]:
        by_name = {c.name: c for c in configs}
        out: dict[str, int] = {}
        for name, n in self.copies.items():
            c = by_name[name]
            out[c.gpu] = out.get(c.gpu, 0) + n * c.cards
        return out


def enumerate_configs(spec: PackingSpec) -> list[Config]:
    configs = []
    for g, gs in spec.gpus.items():
        per_card = [
            0.0 if t.memory_gb > gs.memory_gb * spec.fit_margin
            else min(gs.memory_gb * spec.mem_util / t.memory_gb, gs.compute * spec.compute_adjust / t.compute)
            for t in spec.request_types.values()
        ]
        for k, s in zip(spec.cards, spec.speedups, strict=True):
            holds = tuple(h * s if h * s >= MIN_HOLDS else 0.0 for h in per_card)
            configs.append(Config(f"{g}_x{k}", g, k, gs.price_per_h * k, holds))
    return configs


def available_cards(spec: PackingSpec, scenario: str) -> dict[str, int]:
    avail = spec.scenarios[scenario]
    return {g: avail.get(g, 0) * spec.availability_scale for g in spec.gpus}


def draw_workload(spec: PackingSpec, trace: str, requests: int) -> np.ndarray:
    """Request counts per type: one multinomial draw, reproducible per (seed, trace, requests)."""
    shares = np.array([spec.traces[trace].get(t, 0.0) for t in spec.request_types])
    rng = np.random.default_rng([spec.seed, list(spec.traces).index(trace), requests])
    return rng.multinomial(requests, shares / shares.sum()).astype(float)


def solve_milp(configs: list[Config], counts: np.ndarray, cards: dict[str, int],
               capacity: CapacityModel = "shared", time_limit_s: float = 10.0, mip_gap: float = 1e-4,
               type_names: tuple[str, ...] = ()) -> PackingResult:
    """min sum_c cost_c y_c over integer copies y and continuous flows, on HiGHS."""
    t0 = time.perf_counter()
    name = "milp" if capacity == "shared" else "milp_per_type"
    homeless = _homeless(configs, counts, type_names)
    if homeless is not None:  # before anything is built
        return PackingResult(name, False, math.inf, {}, time.perf_counter() - t0, homeless)
    lp = Lp()
    y = [lp.var(("y", c), integer=True, cost=cf.cost_per_h) for c, cf in enumerate(configs)]
    flow = {(w, c): lp.var(("f", w, c)) for c, cf in enumerate(configs) for w, h in enumerate(cf.holds) if h > 0}
    by_type: list[list[tuple[int, float]]] = [[] for _ in counts]
    by_config: list[list[tuple[int, float]]] = [[] for _ in configs]
    for (w, c), f in flow.items():  # each flow's rows, gathered once (a scan of every flow per row was quadratic)
        by_type[w].append((f, 1.0))
        by_config[c].append((f, 1.0 / configs[c].holds[w]))
    for w, n in enumerate(counts):
        lp.row(by_type[w], float(n), float(n))
    if capacity == "shared":
        for c in range(len(configs)):
            lp.row([*by_config[c], (y[c], -1.0)], -np.inf, 0.0)
    # f[w, c] <= min(n_w, h[w, c]) y_c: implied (a flow is at most its type's count), and it keeps a copy that holds
    # billions from carrying a workload as a millionth of itself, within HiGHS' integrality tolerance (per_type:
    # its own row, tightened)
    for (w, c), f in flow.items():
        lp.row([(f, 1.0), (y[c], -min(float(counts[w]), configs[c].holds[w]))], -np.inf, 0.0)
    for g, n in cards.items():
        lp.row([(y[c], float(cf.cards)) for c, cf in enumerate(configs) if cf.gpu == g], -np.inf, float(n))
    res = lp.solve(time_limit_s=time_limit_s, mip_gap=mip_gap)
    solve_s = time.perf_counter() - t0
    if not res.ok:
        held = ", ".join(f"{g} {n}" for g, n in cards.items() if n > 0)
        why = (f"stopped before any packing was found ({res.message}): a longer time_limit_s may find one"
               if res.limited else res.message if not res.infeasible else f"infeasible: the cards available "
               f"({held}) cannot hold {int(counts.sum())} requests" if held else "infeasible: the scenario has no card")
        return PackingResult(name, False, math.inf, {}, solve_s, why, stopped=res.limited)
    rented = [round(res.x[col]) for col in y]
    # a last resort: the rows above bound each flow by its config's copies, so a config carrying half a request or
    # more has a copy unless the solver's integrality tolerance rounded one of under 1e-6 to none (one suffices)
    short = sorted({c for (_, c), f in flow.items() if res.x[f] >= 0.5 and rented[c] == 0})
    for c in short:
        rented[c] = 1
    total = sum(cf.cost_per_h * n for cf, n in zip(configs, rented, strict=True))
    copies = {cf.name: n for cf, n in zip(configs, rented, strict=True) if n > 0}
    stopped = "" if res.optimal else f"stopped at the time limit, gap {res.gap:.2%}"
    if short:
        over = [g for g, n in cards.items() if sum(k * cf.cards for cf, k in zip(configs, rented, strict=True)
                                                     if cf.gpu == g) > n]
        note = ("the solver's copies fell short of its flows (its integrality tolerance, with configs holding "
                f"{max(max(cf.holds) for cf in configs):.3g} requests): rounded up, not proven optimal"
                + (f"; {stopped}" if stopped else ""))
        if over:
            return PackingResult(name, False, math.inf, {}, solve_s, f"{note}; then over the {over[0]} available")
        return PackingResult(name, True, total, copies, solve_s, note, False, res.gap)
    return PackingResult(name, True, total, copies, solve_s, stopped, res.optimal, res.gap)


def _named(w: int, type_names: tuple[str, ...]) -> str:
    return repr(type_names[w]) if w < len(type_names) else f"#{w}"


def _homeless(configs: list[Config], counts: np.ndarray, type_names: tuple[str, ...]) -> str | None:
    """Why no solver can hold the workload where a type with requests fits no config; None where every one fits."""
    for w in np.flatnonzero(counts > 0).tolist():
        if not any(cf.holds[w] > 0 for cf in configs):
            return f"request type {_named(w, type_names)} fits no config"
    return None


def solve_greedy(configs: list[Config], counts: np.ndarray, cards: dict[str, int],
                 type_names: tuple[str, ...] = ()) -> PackingResult:
    """Two passes. Each type first rents whole copies of its cheapest config per request (then the next cheapest
    when cards run out); the remainders, each less than a copy, then share copies: repeatedly rent the copy that
    covers the most remainder value (requests x their best price) per dollar. Where the cards run out first, the
    same again counting each config's cards instead of its dollars (scarce cards spent where they hold most)."""
    t0 = time.perf_counter()
    homeless = _homeless(configs, counts, type_names)
    if homeless is not None:
        return PackingResult("greedy", False, math.inf, {}, time.perf_counter() - t0, homeless)
    copies = _greedy(configs, counts, cards, lambda cf: cf.cost_per_h)
    if isinstance(copies, int):
        copies = _greedy(configs, counts, cards, lambda cf: float(cf.cards))
    if isinstance(copies, int):
        return PackingResult("greedy", False, math.inf, {}, time.perf_counter() - t0,
                             f"request type {_named(copies, type_names)}: the greedy ran out of cards before it held "
                             "every request (a heuristic: the MILP may still find a packing)")
    total = sum(configs[c].cost_per_h * n for c, n in copies.items())
    return PackingResult("greedy", True, total, {configs[c].name: n for c, n in copies.items()},
                         time.perf_counter() - t0)


def _greedy(configs: list[Config], counts: np.ndarray, cards: dict[str, int],
            price: Callable[[Config], float]) -> dict[int, int] | int:
    """The two passes at `price` per copy: the copies rented, or the first request type left unheld."""
    left = dict(cards)
    copies: dict[int, int] = {}
    need = counts.astype(float).copy()
    unit = np.full(len(counts), np.inf)
    for w in range(len(counts)):
        usable = sorted((c for c, cf in enumerate(configs) if cf.holds[w] > 0),
                        key=lambda c: price(configs[c]) / configs[c].holds[w])
        if usable:
            unit[w] = price(configs[usable[0]]) / configs[usable[0]].holds[w]
        for c in usable:
            cf = configs[c]
            whole = min(int(need[w] // cf.holds[w]), left[cf.gpu] // cf.cards)
            if whole:
                _rent(c, whole, cf, copies, left)
                need[w] -= whole * cf.holds[w]
    need[need < 1e-9] = 0.0
    while need.any():
        best: tuple[float, int, np.ndarray] | None = None
        for c, cf in enumerate(configs):
            if left[cf.gpu] < cf.cards:
                continue
            room, take = 1.0, np.zeros(len(need))
            for w in np.argsort(-unit):
                if need[w] > 0 and cf.holds[w] > 0 and room > 0:
                    take[w] = min(need[w], room * cf.holds[w])
                    room -= take[w] / cf.holds[w]
            score = float(take @ np.where(np.isfinite(unit), unit, 0.0)) / price(cf)
            if take.any() and (best is None or score > best[0]):
                best = (score, c, take)
        if best is None:
            return int(np.flatnonzero(need)[0])
        _, c, take = best
        _rent(c, 1, configs[c], copies, left)
        need = np.where(need - take < 1e-9, 0.0, need - take)
    return copies


def _rent(c: int, n: int, cf: Config, copies: dict[int, int], left: dict[str, int]) -> None:
    copies[c] = copies.get(c, 0) + n
    left[cf.gpu] -= n * cf.cards


def solve_homogeneous(configs: list[Config], counts: np.ndarray, cards: dict[str, int], gpu: str,
                      capacity: CapacityModel = "shared") -> PackingResult:
    """One GPU type and one config size for everything: the cheapest size that holds the workload."""
    t0 = time.perf_counter()
    best: tuple[float, str, int] | None = None
    fewest: int | None = None  # the fewest cards a config that holds every type needs
    for cf in configs:
        if cf.gpu != gpu or any(n > 0 and h <= 0 for n, h in zip(counts, cf.holds, strict=True)):
            continue
        loads = [n / h for n, h in zip(counts, cf.holds, strict=True) if n > 0]
        # a billionth of slack for the sum's rounding, and a workload of less than that still needs its one copy
        n = max(math.ceil((sum(loads) if capacity == "shared" else max(loads, default=0.0)) - 1e-9), int(bool(loads)))
        fewest = n * cf.cards if fewest is None else min(fewest, n * cf.cards)
        if n * cf.cards <= cards.get(gpu, 0) and (best is None or n * cf.cost_per_h < best[0]):
            best = (n * cf.cost_per_h, cf.name, n)
    solve_s = time.perf_counter() - t0
    if best is None:
        why = ("no config of it holds every request type" if fewest is None else
               f"it needs {fewest} cards, {cards.get(gpu, 0)} available")
        return PackingResult(f"homogeneous:{gpu}", False, math.inf, {}, solve_s,
                             f"{gpu} alone cannot hold this workload: {why}")
    return PackingResult(f"homogeneous:{gpu}", True, best[0], {best[1]: best[2]} if best[2] else {}, solve_s)
