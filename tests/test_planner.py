"""`wattscale plan`: packing solvers against brute force, greedy near the MILP, the allocation linearisation
against the bilinear model enumerated, dropped-demand explanations, the robust option, and bad specs."""

from __future__ import annotations

import itertools
import json
import math
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from scipy.optimize import linprog

from controller.cli import main
from controller.config_loader import ConfigError
from controller.planner import load_plan_spec
from controller.planner.allocation import Allocation, AllocationModel
from controller.planner.allocation_report import allocation_json, allocation_text, dropped, explain_unmet, percent
from controller.planner.allocation_spec import AllocationSpec, GpuSpec, ModelSpec, Precision, QueryType, RobustSpec
from controller.planner.packing import (
    Config,
    available_cards,
    draw_workload,
    enumerate_configs,
    solve_greedy,
    solve_homogeneous,
    solve_milp,
)
from controller.planner.packing_spec import PackingSpec

ROOT = Path(__file__).resolve().parents[1]

PLANS = Path(__file__).resolve().parent.parent / "config" / "plans"


def _brute_packing(configs: list[Config], counts: np.ndarray, cards: dict[str, int], shared: bool) -> float:
    best = math.inf
    ranges = [range(cards[c.gpu] // c.cards + 1) for c in configs]
    for y in itertools.product(*ranges):
        if any(sum(n * c.cards for n, c in zip(y, configs, strict=True) if c.gpu == g) > cards[g] for g in cards):
            continue
        cost = sum(n * c.cost_per_h for n, c in zip(y, configs, strict=True))
        if cost >= best:
            continue
        if shared:  # is there a flow? min 0 s.t. each type's demand met, each config's share <= y_c
            pairs = [(w, c) for c in range(len(configs)) for w in range(len(counts)) if configs[c].holds[w] > 0]
            a_eq = [[1.0 if pw == w else 0.0 for pw, _ in pairs] for w in range(len(counts))]
            a_ub = [[1.0 / configs[c].holds[w] if pc == c else 0.0 for w, pc in pairs] for c in range(len(configs))]
            ok = linprog(np.zeros(len(pairs)), A_ub=a_ub, b_ub=list(y), A_eq=a_eq, b_eq=counts,
                         bounds=(0, None)).status == 0
        else:
            ok = all(sum(n * c.holds[w] for n, c in zip(y, configs, strict=True)) >= counts[w] - 1e-9
                     for w in range(len(counts)))
        if ok:
            best = cost
    return best


def _small_packing(seed: int) -> tuple[list[Config], np.ndarray, dict[str, int]]:
    rng = np.random.default_rng(seed)
    holds_a = rng.uniform(1, 4, 2)
    holds_b = rng.uniform(1, 4, 2) * np.array([1.0, 0.0 if seed % 3 == 0 else 1.0])
    configs = [Config("a_x1", "a", 1, 1.0, tuple(holds_a)), Config("a_x2", "a", 2, 2.0, tuple(holds_a * 1.75)),
               Config("b_x1", "b", 1, 1.6, tuple(holds_b)), Config("b_x2", "b", 2, 3.2, tuple(holds_b * 1.75))]
    counts = rng.integers(1, 9, 2).astype(float)
    return configs, counts, {"a": int(rng.integers(2, 6)), "b": int(rng.integers(2, 6))}


@pytest.mark.parametrize(("seed", "scale"), [*((k, 1.0) for k in range(8)), *((k, 1e9) for k in range(8))])
def test_packing_milp_equals_brute_force(seed: int, scale: float) -> None:
    """Also where a copy holds millions (scale): the flows parked on a config of almost no copies, rounded to none,
    read as an empty plan, and rounded up as infeasible where a plan existed or 2-14 x its cost."""
    configs, counts, cards = _small_packing(seed)
    configs = [replace(c, holds=tuple(h * scale for h in c.holds)) for c in configs]
    for capacity in ("shared", "per_type"):
        got = solve_milp(configs, counts, cards, capacity)  # type: ignore[arg-type]
        # a copy of millions holds all of any type: a plan is a cover of the types, as the per-type row reads it
        # (linprog reads a 1e-9 share as none)
        want = _brute_packing(configs, counts, cards, capacity == "shared" and scale == 1.0)
        assert got.cost_per_h == pytest.approx(want) if math.isfinite(want) else not got.feasible


def test_per_type_row_under_states_the_cost_when_types_mix() -> None:
    configs = [Config("g_x1", "g", 1, 1.0, (2.0, 2.0))]
    counts = np.array([2.0, 2.0])
    assert solve_milp(configs, counts, {"g": 10}, "shared").cost_per_h == pytest.approx(2.0)
    assert solve_milp(configs, counts, {"g": 10}, "per_type").cost_per_h == pytest.approx(1.0)
    assert solve_homogeneous(configs, counts, {"g": 10}, "g", "per_type").cost_per_h == pytest.approx(1.0)
    assert solve_homogeneous(configs, counts, {"g": 10}, "g").cost_per_h == pytest.approx(2.0)
    short = solve_homogeneous(configs, counts, {"g": 1}, "g")
    assert not short.feasible and short.note == "g alone cannot hold this workload: it needs 2 cards, 1 available"
    unfit = solve_homogeneous([Config("g_x1", "g", 1, 1.0, (2.0, 0.0))], counts, {"g": 10}, "g")
    assert unfit.note == "g alone cannot hold this workload: no config of it holds every request type"


@pytest.mark.parametrize("capacity", ["shared", "per_type"])
def test_a_copy_holding_billions_still_rents_a_card(capacity: str) -> None:
    """A config whose copy holds 1e10 requests carried 5,000 as 5e-7 of a copy, within HiGHS' integrality
    tolerance: the plan read zero cards, feasible and "optimal". Each flow is bounded by its type's count times
    its config's copies, so the solver rents the copy (the cheapest), and proves it."""
    configs = [Config("g_x1", "g", 1, 0.5, (1e10, 1e10)), Config("h_x1", "h", 1, 0.9, (2e10, 2e10))]
    got = solve_milp(configs, np.array([3000.0, 2000.0]), {"g": 4, "h": 4}, capacity)  # type: ignore[arg-type]
    assert got.feasible and got.optimal and got.copies == {"g_x1": 1} and got.cost_per_h == 0.5, got
    only_h = solve_milp(configs, np.array([3000.0, 2000.0]), {"g": 0, "h": 4}, capacity)  # type: ignore[arg-type]
    assert only_h.copies == {"h_x1": 1}
    none_left = solve_milp(configs, np.array([3000.0, 2000.0]), {"g": 0, "h": 0}, capacity)  # type: ignore[arg-type]
    assert not none_left.feasible
    # the homogeneous baseline rounded a workload under a billionth of a copy down to none: feasible at 0 $/h
    huge = [Config("g_x1", "g", 1, 0.5, (1e13, 1e13))]
    alone = solve_homogeneous(huge, np.array([3000.0, 2000.0]), {"g": 4}, "g", capacity)  # type: ignore[arg-type]
    assert alone.feasible and alone.copies == {"g_x1": 1} and alone.cost_per_h == 0.5, alone
    assert type(alone.copies["g_x1"]) is int  # a count, not True (the JSON report printed "g_x1": true)
    assert not solve_homogeneous(huge, np.array([3000.0, 2000.0]), {"g": 0}, "g",
                                 capacity).feasible  # type: ignore[arg-type]


def test_greedy_within_one_percent_of_milp_on_seed_002() -> None:
    spec = load_plan_spec(PLANS / "seed002-packing.toml")
    assert isinstance(spec, PackingSpec)
    configs = enumerate_configs(spec)
    for scenario in spec.scenarios:
        for trace in spec.traces:
            for n in (1000, 5000):
                counts = draw_workload(spec, trace, n)
                cards = available_cards(spec, scenario)
                milp, greedy = solve_milp(configs, counts, cards), solve_greedy(configs, counts, cards)
                assert milp.feasible and greedy.feasible
                assert milp.cost_per_h <= greedy.cost_per_h + 1e-6
                assert greedy.cost_per_h <= milp.cost_per_h * 1.01, (scenario, trace, n)
                used = greedy.cards(configs)
                assert all(used[g] <= cards[g] for g in used)


SCARCE_CARDS = """kind = "packing"
cards = [1, 2]
speedups = [1.0, 1.9]
availability_scale = 1
scales = [20]
compute_adjust = 3.0
seed = 992
[gpus]
g0 = { price_per_h = 0.5, memory_gb = 80.0, compute = 150.0 }
g1 = { price_per_h = 1.75, memory_gb = 24.0, compute = 300.0 }
[request_types]
t0 = { memory_gb = 30.0, compute = 20.0 }
t1 = { memory_gb = 10.0, compute = 60.0 }
t2 = { memory_gb = 4.0, compute = 120.0 }
[scenarios]
s = { g0 = 4, g1 = 2 }
[traces]
tr = { t0 = 0.3832671358281878, t1 = 0.4065717179073731, t2 = 0.21016114626443902 }
"""


def test_the_greedy_spends_scarce_cards_where_they_hold_most_before_it_gives_up(tmp_path: Path) -> None:
    """Its cheapest configs per request took the cards another type needed: "not enough cards left", where the MILP
    packs the 20 requests on 5 of the 6 cards."""
    (tmp_path / "scarce.toml").write_text(SCARCE_CARDS)
    spec = load_plan_spec(tmp_path / "scarce.toml")
    assert isinstance(spec, PackingSpec)
    configs, counts, cards = enumerate_configs(spec), draw_workload(spec, "tr", 20), available_cards(spec, "s")
    milp, greedy = solve_milp(configs, counts, cards), solve_greedy(configs, counts, cards)
    assert milp.feasible and greedy.feasible and greedy.cost_per_h >= milp.cost_per_h - 1e-9
    used = greedy.cards(configs)
    assert all(used[g] <= cards[g] for g in used)
    short = solve_greedy(configs, counts * 3, cards)  # no packing at all: what the greedy can say, and no more
    assert not short.feasible and not solve_milp(configs, counts * 3, cards).feasible
    assert "the greedy ran out of cards before it held every request (a heuristic" in short.note


def _tiny_allocation(seed: int) -> AllocationSpec:
    rng = np.random.default_rng(seed)
    q = QueryType(input_tokens=500, output_tokens=200, arrival_rate_qph=float(rng.uniform(2e4, 2e5)),
                  compute_gflop_per_token=14.0, delay_s_per_token=0.002, error_rate=0.03,
                  delay_threshold_s=float(rng.uniform(1.0, 3.0)), error_threshold=0.05,
                  unmet_penalty=float(rng.uniform(1e-4, 1e-2)), delay_penalty=1e-5, token_size_gb=1e-6)
    gpus = {"small": GpuSpec(0.5, 16, float(rng.uniform(40, 90)), delay_factor=2.0, tp_degrees=(1, 2), available=6),
            "big": GpuSpec(2.0, 80, float(rng.uniform(200, 400)), delay_factor=0.8, tp_degrees=(1, 2), available=4)}
    return AllocationSpec(kind="allocation", budget=float(rng.uniform(20, 200)), storage_rate=1e-4,
                          storage_capacity_gb=100.0, queries={"q": q},
                          models={"m": ModelSpec(float(rng.uniform(10, 24)), 0.0005)}, gpus=gpus,
                          precisions={"fp16": Precision()}, rental_period_h=10.0, max_replicas=3,
                          token_storage="whole_period")  # the reading _brute_allocation writes out


def _brute_allocation(spec: AllocationSpec) -> float:
    """Enumerate deployments (TP n, replicas r; y = n r evaluated, not linearised) and the route; an LP in
    (x, u) for the rest. One query type and one model, so the type uses at most one tier."""
    m, (qname, qt) = spec.models["m"], next(iter(spec.queries.items()))
    model = AllocationModel(spec)  # only for its per-route figures
    tiers = spec.tiers()
    options = [[None, *[(n, r) for n in spec.gpus[g].tp_degrees
                         if m.weights_gb <= spec.mem_util * spec.gpus[g].memory_gb * n
                         for r in range(1, spec.max_replicas + 1)]] for g, _ in tiers]
    period, queries = spec.rental_period_h, qt.arrival_rate_qph * spec.rental_period_h
    tokens = qt.input_tokens + qt.output_tokens
    best = math.inf
    for combo in itertools.product(*options):
        ys = [0 if o is None else o[0] * o[1] for o in combo]
        if any(sum(y for y, (g, _) in zip(ys, tiers, strict=True) if g == gname) > gs.available
               for gname, gs in spec.gpus.items()):
            continue
        weights = sum(m.weights_gb for o in combo if o is not None)
        if weights > spec.storage_capacity_gb:
            continue
        fixed = sum(period * spec.gpus[g].rental_per_h * y for y, (g, _) in zip(ys, tiers, strict=True))
        fixed += period * spec.storage_rate * weights
        for route in [None, *[t for t, o in enumerate(combo) if o is not None]]:
            u_cost = qt.unmet_penalty * queries
            if route is None:
                total = fixed + u_cost
                if fixed <= spec.budget:
                    best = min(best, total)
                continue
            k, (n, r) = tiers[route], combo[route]
            g = spec.gpus[k[0]]
            d, e = model.delay_s("q", "m", k), model.error(qname, "m", k)
            x_cost = period * spec.storage_rate * qt.token_size_gb * tokens * queries + qt.delay_penalty * queries * d
            kv = m.kv_gb_per_token * tokens * qt.arrival_rate_qph / 3600 * d
            work = qt.compute_gflop_per_token * tokens * qt.arrival_rate_qph / 3600
            a_ub = [[kv], [work], [d - qt.delay_threshold_s], [e - qt.error_threshold],
                    [period * spec.storage_rate * qt.token_size_gb * tokens * queries]]
            b_ub = [spec.mem_util * g.memory_gb * n * r - m.weights_gb * r,
                    1000 * g.compute_tflops * spec.compute_efficiency * spec.tp_speedup[str(n)] * r, 0.0, 0.0,
                    spec.budget - fixed]
            res = linprog([x_cost - u_cost], A_ub=a_ub, b_ub=b_ub, bounds=[(0, 1)])
            if res.status == 0:
                best = min(best, fixed + u_cost + res.fun)
    return best


@pytest.mark.parametrize("seed", range(6))
def test_allocation_linearisation_equals_bilinear_enumeration(seed: int) -> None:
    spec = _tiny_allocation(seed)
    got = AllocationModel(spec).solve()
    want = _brute_allocation(spec)
    assert got.ok == math.isfinite(want)
    if got.ok:
        assert got.costs["total"] == pytest.approx(want, rel=1e-6, abs=1e-6)
        for (n, r) in got.deployments.values():
            assert n in (1, 2) and 1 <= r <= spec.max_replicas


def test_seed_001_drops_qa_and_says_which_penalty_would_serve_it() -> None:
    spec = load_plan_spec(PLANS / "seed001-allocation.toml")
    assert isinstance(spec, AllocationSpec)
    model = AllocationModel(spec)
    best = model.solve()
    assert best.ok and best.unmet["qa"] == pytest.approx(1.0)
    (why,) = explain_unmet(model, best)
    assert why["reason"] == "penalty" and why["parameter"] == "queries.qa.unmet_penalty"
    assert "cheaper than serving" in why["text"]
    costs = best.costs
    assert costs["total"] == pytest.approx(sum(costs[t] for t in ("rental", "storage", "delay_penalty",
                                                                   "unmet_penalty")))
    raised = replace(spec, queries={**spec.queries, "qa": replace(spec.queries["qa"],
                                                                  unmet_penalty=why["serve_above"] * 1.05)})
    served = AllocationModel(raised).solve()
    assert served.unmet["qa"] < 1e-6
    assert why["serve_above_proven"] and "at most" not in why["text"]


def test_the_penalty_said_to_serve_a_type_serves_all_of_it_and_one_just_under_does_not() -> None:
    """At summarization's penalty of 0 the hint said 0.0001023 $/query: serving all of it ties the plan that drops
    all of it there, but a plan with a GPU fewer that drops 44 % of it costs less, so 0.000103 still dropped 44 %.
    The price now rises until serving all of it is the optimum (0.0001625)."""
    spec = load_plan_spec(PLANS / "seed001-allocation.toml")
    assert isinstance(spec, AllocationSpec)

    def priced(penalty: float) -> AllocationSpec:
        return replace(spec, queries={**spec.queries, "summarization": replace(spec.queries["summarization"],
                                                                                unmet_penalty=penalty)})

    model = AllocationModel(priced(0.0))
    best = model.solve()
    assert best.unmet["summarization"] == pytest.approx(1.0)
    why = next(w for w in explain_unmet(model, best) if w["query"] == "summarization")
    above = why["serve_above"]
    assert why["serve_above_proven"] and f"above {above:.4g} $/query." in why["text"], why["text"]
    whole = model.solve(force_served="summarization").costs["total"]
    tie = (whole - best.costs["total"]) / (spec.queries["summarization"].arrival_rate_qph * spec.rental_period_h)
    assert above > tie * 1.2  # past the all-or-nothing tie (the old hint), where part of it was still dropped
    assert AllocationModel(priced(above)).solve().unmet["summarization"] < 1e-6  # the price printed, rounded up
    under = AllocationModel(priced(above * 0.999)).solve()
    assert under.unmet["summarization"] > 0.1
    assert all(v >= 0.0 for v in under.costs.values())


def test_a_search_for_the_price_cut_short_by_its_rounds_says_so_and_keeps_the_price_it_reached(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Stopped by its count of solves, each optimal, the text blamed the time limit and fell back to the first
    tie's price, though a higher one was already known to drop some."""
    from controller.planner import allocation_report

    spec = load_plan_spec(PLANS / "seed001-allocation.toml")
    assert isinstance(spec, AllocationSpec)
    spec = replace(spec, queries={**spec.queries, "summarization": replace(spec.queries["summarization"],
                                                                            unmet_penalty=0.0)})
    monkeypatch.setattr(allocation_report, "THRESHOLD_ROUNDS", 1)
    model = AllocationModel(spec)
    why = next(w for w in explain_unmet(model, model.solve()) if w["query"] == "summarization")
    assert not why["serve_above_proven"]
    assert "the search for the price stopped after 1 solve)" in why["text"], why["text"]
    assert why["serve_above"] == pytest.approx(0.0001625, rel=1e-3)  # the price reached, not the first tie's


def test_demand_too_small_to_price_is_said_so_not_divided_by() -> None:
    """A rate and a period of 1e-200 each (in their ranges) make 1e-400 queries a period, 0 in floats: the
    threshold's division raised ZeroDivisionError out of `plan`."""
    spec = load_plan_spec(PLANS / "seed001-allocation.toml")
    assert isinstance(spec, AllocationSpec)
    tiny = replace(spec, rental_period_h=1e-200,
                   queries={k: replace(q, arrival_rate_qph=1e-200) for k, q in spec.queries.items()})
    model = AllocationModel(tiny)
    whys = explain_unmet(model, model.solve())
    assert whys and all(w["serve_above"] is None and "No penalty per query serves it" in w["text"] for w in whys)


@pytest.mark.parametrize("where", ["gpu", "precision", "efficiency", "gpu and efficiency"])
def test_compute_figures_too_small_to_count_replicas_by_plan_nothing_rather_than_raise(where: str) -> None:
    """A card of 1e-308 TFLOPS (in its range, open at 0) made the replicas a demand needs infinite: ceil raised
    OverflowError out of `plan`. Such a card serves nothing within its replica bound."""
    spec = load_plan_spec(PLANS / "seed001-allocation.toml")
    assert isinstance(spec, AllocationSpec)
    tiny = {"gpu": replace(spec, gpus={k: replace(g, compute_tflops=1e-308) for k, g in spec.gpus.items()}),
            "precision": replace(spec, precisions={k: replace(p, compute_factor=1e-308)
                                                   for k, p in spec.precisions.items()}),
            "efficiency": replace(spec, compute_efficiency=1e-308),  # and two of 1e-200 multiply to 0:
            "gpu and efficiency": replace(spec, compute_efficiency=1e-200, gpus={  # ZeroDivisionError
                k: replace(g, compute_tflops=1e-200) for k, g in spec.gpus.items()})}[where]
    plan = AllocationModel(tiny).solve()
    assert plan.ok and not plan.deployments and plan.unmet == {q: 1.0 for q in spec.queries}


class _CutShort(AllocationModel):
    """The same MILP, each forced solve read as HiGHS reads one it stopped at the limit with an incumbent."""

    def solve(self, **kw: Any) -> Allocation:
        got = super().solve(**kw)
        return replace(got, optimal=False) if kw.get("force_served") else got


def test_a_penalty_read_off_a_cut_short_solve_is_an_upper_bound() -> None:
    spec = load_plan_spec(PLANS / "seed001-allocation.toml")
    assert isinstance(spec, AllocationSpec)
    model = _CutShort(spec)
    (why,) = explain_unmet(model, model.solve())
    assert why["reason"] == "penalty" and not why["serve_above_proven"]
    assert "would cost at most" in why["text"] and "the true threshold may be lower" in why["text"]


def test_unreachable_delay_threshold_is_named() -> None:
    spec = _tiny_allocation(1)
    q = replace(spec.queries["q"], delay_threshold_s=0.01, unmet_penalty=10.0)
    spec = replace(spec, queries={"q": q})
    model = AllocationModel(spec)
    best = model.solve()
    (why,) = explain_unmet(model, best)
    assert why["reason"] == "delay" and why["parameter"] == "queries.q.delay_threshold_s"


def test_the_budget_a_dropped_type_needs_is_the_least_that_serves_it() -> None:
    """The figure was what the optimum without the budget spends, serving the other types too: 113.98 $ where a
    budget of 71.88 $ serves summarization whole."""
    spec = replace(load_plan_spec(PLANS / "seed001-robust.toml"), budget=1e-9)
    assert isinstance(spec, AllocationSpec)
    model = AllocationModel(spec)
    why = {w["query"]: w for w in explain_unmet(model, model.solve())}
    assert why["summarization"]["reason"] == "budget"
    need = float(why["summarization"]["text"].split("a budget of at least ")[1].split(" $")[0])
    served = AllocationModel(replace(spec, budget=need + 0.01)).solve(force_served="summarization")
    assert served.ok and served.unmet["summarization"] == 0.0
    assert AllocationModel(replace(spec, budget=need - 0.01)).solve(force_served="summarization").infeasible


def test_an_unproven_least_budget_says_the_lower_of_the_budgets_known_to_serve(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Stopped at the time limit, the least-budget solve may hold more than the plan without the budget spends."""
    from controller.lp import LpResult

    spec = replace(load_plan_spec(PLANS / "seed001-robust.toml"), budget=1e-9)
    assert isinstance(spec, AllocationSpec)
    model = AllocationModel(spec)
    monkeypatch.setattr(model, "least_budget", lambda query, time_limit_s: LpResult(True, 1e6, np.empty(0), "limit"))
    why = {w["query"]: w for w in explain_unmet(model, model.solve())}
    text = why["summarization"]["text"]
    assert "the least was not proven within the time limit" in text
    assert float(text.split("A budget of ")[1].split(" $")[0]) < 1e6


def test_a_dropped_share_reads_all_or_none_only_when_it_is() -> None:
    from controller.planner.allocation_report import dropped

    assert [dropped(x) for x in (1.0, 0.9996, 0.99999, 0.5, 0.004, 0.00001, 0.0)] == [
        "100%", "99.96%", "over 99.99%", "50%", "0.40%", "under 0.01%", "0%"]


def test_weights_that_fit_no_gpu_or_too_little_compute_are_named() -> None:
    """Both read "no single limit, relaxed alone, lets it be served": the weights-fit filter leaves such a model
    out of the MILP, and the memory and compute rows were not among the limits tried."""
    spec = replace(_tiny_allocation(1), queries={"q": replace(_tiny_allocation(1).queries["q"], unmet_penalty=10.0)})
    tight = replace(spec, gpus={n: replace(g, memory_gb=4) for n, g in spec.gpus.items()})
    model = AllocationModel(tight)
    (why,) = explain_unmet(model, model.solve())
    assert why["reason"] == "memory" and "weights fit any GPU's memory" in why["text"] and "<" not in why["text"]
    slow = replace(spec, gpus={n: replace(g, compute_tflops=1e-4) for n, g in spec.gpus.items()})
    model = AllocationModel(slow)
    (why,) = explain_unmet(model, model.solve())
    assert why["reason"] == "compute" and why["parameter"] == "compute_efficiency or gpus.*.compute_tflops"
    assert why["text"].endswith("relax compute_efficiency or gpus.*.compute_tflops.")  # it said gpus.<name>..., and
    # a compute_efficiency at fault went unnamed


def test_explanations_stop_at_the_specs_time_limit() -> None:
    """Up to 8 solves a dropped type, each of up to time_limit_s: 75 s for a spec that printed "solved in 7.9 s".
    Past the limit the rest say they were not explained."""
    spec = replace(_tiny_allocation(1), queries={"q": replace(_tiny_allocation(1).queries["q"],
                                                               delay_threshold_s=0.01, unmet_penalty=10.0)})
    model = AllocationModel(spec)
    best = model.solve()
    clock = iter([0.0, *[1e9] * 20])  # the deadline is set, then every reading is past it
    (why,) = explain_unmet(model, best, lambda: next(clock))
    assert why["reason"] == "unexplained" and "not explained within time_limit_s" in why["text"]


def test_an_explanation_the_solver_ends_with_time_left_says_how_it_ended() -> None:
    """A solve that stops before it knows while the explanations' time is not spent (HiGHS's own limit here; a
    numerical failure the same) gives the solver's message, not a time limit that was never reached."""
    spec = replace(_tiny_allocation(1), queries={"q": replace(_tiny_allocation(1).queries["q"],
                                                               delay_threshold_s=0.01, unmet_penalty=10.0)})
    best = AllocationModel(spec).solve()
    (why,) = explain_unmet(AllocationModel(replace(spec, time_limit_s=1e-9)), best, lambda: 0.0)
    assert why["reason"] == "unexplained" and "the solver stopped (Time limit reached" in why["text"]


def test_robust_counterpart_costs_more_and_holds_the_worst_case() -> None:
    spec = load_plan_spec(PLANS / "seed001-allocation.toml")
    assert isinstance(spec, AllocationSpec)
    tight = replace(spec, queries={
        i: replace(q, delay_threshold_s=q.delay_s_per_token * (q.input_tokens + q.output_tokens) * 0.6)
        for i, q in spec.queries.items()})
    nominal = AllocationModel(tight).solve()
    zero = AllocationModel(replace(tight, robust=RobustSpec(gamma=0.0))).solve()
    uniform = {n: replace(p, delay_deviation=0.3) for n, p in tight.precisions.items()}  # the former --gamma model
    robust_model = AllocationModel(replace(tight, precisions=uniform, robust=RobustSpec(gamma=1.0)))
    robust = robust_model.solve()
    assert zero.costs["total"] == pytest.approx(nominal.costs["total"])
    assert robust.costs["total"] >= nominal.costs["total"] - 1e-6
    for i, q in tight.queries.items():  # worst case: the one route with the largest deviation goes 30 % slower
        routes = [(v, robust_model.delay_s(i, j, k)) for (qi, j, k), v in robust.shares.items() if qi == i]
        served = sum(v for v, _ in routes)
        if served > 1e-6:
            worst = sum(v * d for v, d in routes) + max(0.3 * v * d for v, d in routes)
            assert worst <= q.delay_threshold_s * served + 1e-6


def test_plan_cli_compare_writes_one_chart_per_scenario(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Into a folder it makes with its parents, as `simulate --report` does (it had refused a missing parent)."""
    plots = tmp_path / "new" / "plots"
    assert main(["plan", str(PLANS / "seed002-packing.toml"), "--compare", "--plots", str(plots)]) == 0
    pngs = sorted(p.name for p in plots.glob("*.png"))
    assert pngs == ["scenario_balanced.png", "scenario_high_a100.png", "scenario_rich.png", "scenario_scarce.png"]
    assert all((plots / p).read_bytes()[:4] == b"\x89PNG" for p in pngs)
    out = capsys.readouterr().out
    assert "milp_per_type" in out and out.count("\n") >= 36


def test_plots_without_matplotlib_are_refused_before_any_solve(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    """Said only after every instance was solved (up to 200, each within time_limit_s), an empty folder left."""
    import controller.planner.packing_report as report

    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setattr(report, "compare", lambda spec: pytest.fail("solved before the refusal"))
    assert main(["plan", str(PLANS / "seed002-packing.toml"), "--compare", "--plots", str(tmp_path / "p")]) == 2
    assert "--plots: needs matplotlib" in capsys.readouterr().err and not (tmp_path / "p").exists()


def test_plan_cli_packing_text_says_which_instance_it_solved_and_aligns_its_rows(
        capsys: pytest.CaptureFixture[str]) -> None:
    """Without --scenario/--trace/--requests the instance was chosen silently, and each row repeated it; a
    failed row's cost stood left of the others'."""
    assert main(["plan", str(PLANS / "seed002-packing.toml"), "--solver", "homogeneous", "--requests", "200"]) == 0
    head, *rows = capsys.readouterr().out.splitlines()
    assert head == ("200 requests of trace swiss_ai on scenario scarce (--requests 200; --scenario, --trace and "
                    "--requests choose others)")
    assert len(rows) == 3 and len({row.index("  cards ") for row in rows}) == 1, rows
    assert all("requests of trace" not in row for row in rows)


def test_plan_cli_allocation_text_says_why(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", str(PLANS / "seed001-allocation.toml")]) == 0
    out = capsys.readouterr().out
    assert "Raise queries.qa.unmet_penalty above" in out and "TP 1" in out


def test_a_spec_that_cannot_be_read_is_named(capsys: pytest.CaptureFixture[str]) -> None:
    """/proc/self/mem is a regular file whose read fails: "wattscale: Input/output error", naming no file."""
    assert main(["plan", "/proc/self/mem"]) == 2
    assert capsys.readouterr().err == "wattscale: /proc/self/mem: cannot be read (Input/output error)\n"


@pytest.mark.parametrize(("text", "where"), [
    ('kind = "fleet"', "kind"),
    ('kind = "packing"\ngpus = {}\nrequest_types = {}\nscenarios = {}\ntraces = {}', "gpus"),
    ('kind = "packing"\n[gpus.a]\nprice_per_h = -1\nmemory_gb = 8\ncompute = 1\n[request_types.t]\nmemory_gb = 1\n'
     'compute = 1\n[scenarios.s]\na = 1\n[traces.x]\nt = 1', "gpus.a.price_per_h"),
    ('kind = "packing"\n[gpus.a]\nprice_per_h = 1\nmemory_gb = 8\ncompute = 1\n[request_types.t]\nmemory_gb = 1\n'
     'compute = 1\n[scenarios.s]\nb = 1\n[traces.x]\nt = 1', "scenarios.s.b"),
])
def test_bad_plan_specs_get_one_clear_error(tmp_path: Path, text: str, where: str,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "spec.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_plan_spec(path)
    assert err.value.where == where
    assert main(["plan", str(path)]) == 2
    assert where in capsys.readouterr().err


@pytest.mark.parametrize(("spec", "old", "new", "message"), [
    ("seed002-packing.toml", "seed = 0", "seed = -1", "seed: must be in 0..2^63-1, got -1"),
    ("seed002-packing.toml", "seed = 0", "seed = 0\nmip_gap = 1.0",  # a plan 6x the optimum read as optimal
     "mip_gap: must be in [0, 0.1], got 1.0"),
    ("seed001-allocation.toml", "arrival_rate_qph = 36000", "arrival_rate_qph = 1e15",
     "queries.summarization.arrival_rate_qph: must be in [0, 1e+09], got 1000000000000000.0"),
    ("seed001-allocation.toml", "error_rate = 0.03", "error_rate = 2",
     "queries.summarization.error_rate: must be in [0, 1], got 2.0"),
    ("seed002-packing.toml", "price_per_h = 1.75", "price_per_h = 1e308",
     "gpus.A100_80G.price_per_h: must be in (0, 1e+06], got 1e+308"),
    ("seed001-allocation.toml", "compute_efficiency = 0.4", "compute_efficiency = 7",  # named neither nor the value
     "compute_efficiency: must be in (0, 1], got 7.0"),
    ("seed001-allocation.toml", "mem_util = 0.9", "mem_util = 0.9\ntp_speedup = { 1 = 1.0, 2 = 1.9, 3 = 2.5, "
     "4 = 3.6, 8 = 6.6 }", "tp_speedup.3: no TP degree: the degrees are 1, 2, 4 and 8"),  # ignored without a word
    ("seed001-allocation.toml", "mem_util = 0.9", "mem_util = 0.9\ntp_speedup = { 1 = 1.0, 2 = 1e12, 4 = 3.6, "
     "8 = 6.6 }", "tp_speedup.2: needs a value in (0, 4] (twice linear scaling) for each of 1, 2, 4, 8, got "
     "1000000000000.0"),  # HiGHS: 'Model error'
    ("seed001-allocation.toml", "[gpus.T4]", "[gpus.T4]\ntp_degrees = [1, 1, 1]",
     "gpus.T4.tp_degrees: must be a subset of [1, 2, 4, 8], each once, got [1, 1, 1]"),
    *(("seed001-allocation.toml", "mem_util = 0.9", f"mem_util = 0.9\ntoken_retention_h = {h}",  # ignored unsaid
       'token_retention_h: applies with token_storage = "retained" only') for h in (5, 1.0)),
    ("seed002-packing.toml", "cards = [1, 2, 4, 8]", "cards = []",  # had blamed speedups
     "cards: needs at least one config size, e.g. [1, 2, 4, 8]"),
    ("seed002-packing.toml", "swiss_ai = { t1 = 0.33", "swiss_ai = { t1 = 0.93",  # had been normalised away
     "traces.swiss_ai: shares sum to 1.6, not 1 (within 0.05: each is the share of the trace's requests of its type)"),
    ("seed002-packing.toml", "swiss_ai = { t1 = 0.33", "swiss_ai = { t1 = -0.33",  # "a share in [0, 1e+09]"
     "traces.swiss_ai.t1: must be a share in [0, 1], got -0.33"),
    # a blank row, or a tier label another GPU and precision also make ("A10" at "int8:fp16")
    ("seed002-packing.toml", "RTX_4090  = {", '"" = {',
     "gpus: name '' must be 1-253 letters, digits, '.', '_' or '-', a letter or digit at each end"),
    ("seed001-allocation.toml", "[gpus.T4]", '[gpus."A10:int8"]',
     "gpus: name 'A10:int8' must be 1-253 letters, digits, '.', '_' or '-', a letter or digit at each end"),
    ("seed002-packing.toml", "scarce    = {", '"a/b" = {',  # a name a --plots file could not be written under
     "scenarios: name 'a/b' must be 1-253 letters, digits, '.', '_' or '-', a letter or digit at each end"),
])
def test_plan_spec_figures_out_of_range_are_named_before_any_draw_or_solve(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], spec: str, old: str, new: str, message: str) -> None:
    """A negative seed was numpy's traceback in the draw, 1e15 queries an hour HiGHS's 'Model error' naming no
    field, an error rate of 2 accepted as a share."""
    text = (PLANS / spec).read_text()
    assert old in text
    path = tmp_path / "spec.toml"
    path.write_text(text.replace(old, new, 1))
    assert main(["plan", str(path)]) == 2
    err = capsys.readouterr().err
    assert err == f"wattscale: {message}\n", err


def test_a_solver_line_repeated_is_said_once_with_its_count() -> None:
    """`plan --gamma 1e6` passed on HiGHS's debug line twelve times over, on one line of standard error (a new
    user's trial)."""
    code = ("import os; from controller.cli_output import native_output_to_stderr\n"
            "with native_output_to_stderr():\n"
            "    os.write(1, b'tmpSolver.run();\\n' * 3 + b'other\\n')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert out.stderr == ("wattscale: native code (the HiGHS solver) printed, not an error of this command: "
                          "tmpSolver.run(); (3 times) other\n"), out.stderr


def test_solver_lines_written_to_file_descriptor_1_reach_stderr_not_the_json() -> None:
    """HiGHS prints some lines itself on descriptor 1 (seen with --gamma 1.5): while a command runs they go to
    standard error, and what the command prints stays on standard output, whole."""
    code = ("import os; from controller.cli_output import native_output_to_stderr\n"
            "with native_output_to_stderr():\n"
            "    os.write(1, b'HighsMipSolverData::transformNewIntegerFeasibleSolution tmpSolver.run();')\n"
            "    print('{}')\n"
            "    try:\n"
            "        os.write(2, b'to standard error')\n"
            "    except OSError:\n"
            "        pass\n"
            "print('[]')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert out.stdout == "{}\n[]\n"
    assert out.stderr == "to standard errorwattscale: native code (the HiGHS solver) printed, not an error of this " \
                         "command: " \
                         "HighsMipSolverData::" \
                         "transformNewIntegerFeasibleSolution tmpSolver.run();\n"  # one line (HiGHS's had no newline)
    # standard error closed: the saved standard output took its descriptor, and the line went into the JSON
    closed = subprocess.run(["sh", "-c", 'exec "$0" -c "$1" 2>&-', sys.executable, code], capture_output=True,
                            text=True, timeout=60, cwd=ROOT)
    assert closed.stdout == "{}\n[]\n", closed.stdout
    bad = ROOT / "tests" / "conftest.py"  # no plan spec: an error the command prints to a closed standard error
    plan = subprocess.run(["sh", "-c", 'exec "$0" -m controller.cli plan "$1" 2>&-', sys.executable, str(bad)],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert plan.returncode == 2 and plan.stdout == "", plan.stdout


@pytest.mark.parametrize(("spec", "options"), [
    ("seed001-allocation.toml", []),
    ("seed001-allocation.toml", ["--gamma", "1.5"]),
    ("seed001-robust.toml", ["--protection", "1", "--gamma", "3"]),
    ("seed002-packing.toml", []),
    ("seed002-packing.toml", ["--solver", "greedy", "--scenario", "scarce", "--trace", "azure", "--requests", "800"]),
    ("seed002-packing.toml", ["--solver", "homogeneous"]),
    ("seed002-packing.toml", ["--compare", "--plots", "{tmp}"]),
])
def test_plan_json_of_every_shipped_spec_and_option_passes_json_tool(spec: str, options: list[str],
                                                                     tmp_path: Path) -> None:
    """`wattscale plan SPEC --json ... | python -m json.tool`, piped as a shell would, whatever HiGHS prints."""
    argv = [sys.executable, "-m", "controller.cli", "plan", str(PLANS / spec), "--json",
            *(o.format(tmp=tmp_path) for o in options)]
    with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, cwd=ROOT) as plan:
        tool = subprocess.run([sys.executable, "-m", "json.tool"], stdin=plan.stdout, capture_output=True,
                              text=True, timeout=120)
        assert plan.wait(timeout=120) == 0
    assert tool.returncode == 0, tool.stderr
    doc = json.loads(tool.stdout)
    if spec.startswith("seed001"):  # each shipped allocation spec declares its reading of token storage
        reading = {"seed001-allocation.toml": "whole_period", "seed001-robust.toml": "retained"}[spec]
        assert doc["optimal"] is True and doc["mip_gap"] >= 0.0 and doc["token_storage"] == reading


def test_a_plan_stopped_before_optimality_is_marked_and_not_explained() -> None:
    spec = load_plan_spec(PLANS / "seed001-allocation.toml")
    assert isinstance(spec, AllocationSpec)
    model = AllocationModel(spec)
    best = model.solve()
    assert best.optimal and explain_unmet(model, best)  # the shipped spec drops qa, and says why
    stopped = replace(best, optimal=False, mip_gap=0.4)
    assert explain_unmet(model, stopped) == []
    doc = allocation_json(model, stopped, explain_unmet(model, stopped))
    assert doc["optimal"] is False and doc["dropped"] == []
    assert "not proven optimal (gap 40.00%)" in allocation_text(doc)


def test_a_query_type_without_demand_is_not_explained_as_dropped(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """A type at 0 queries an hour was a ZeroDivisionError in the report's penalty-to-serve figure."""
    text = (PLANS / "seed001-allocation.toml").read_text()
    path = tmp_path / "spec.toml"
    assert text.count("arrival_rate_qph = 180000") == 1  # qa's
    path.write_text(text.replace("arrival_rate_qph = 180000", "arrival_rate_qph = 0"))
    assert main(["plan", str(path), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["ok"] and all(d["query"] != "qa" for d in doc["dropped"])
    assert doc["unmet"]["qa"] == 0.0 and all(math.copysign(1.0, v) == 1.0 for v in doc["unmet"].values())


def test_a_milp_stopped_at_its_time_limit_is_marked_in_the_compare_table() -> None:
    """The table printed an incumbent as the optimum: greedy's gap read -27 % against it, unmarked."""
    from controller.planner.packing_report import compare_table

    def result(solver: str, cost: float, optimal: bool) -> dict[str, object]:
        return {"solver": solver, "feasible": True, "cost_per_h": cost, "optimal": optimal, "note": "",
                "stopped": False}

    rows = [{"scenario": "s", "trace": "t", "requests": 1000,
             "results": [result("milp", 658.67, False), result("greedy", 479.95, False)]}]
    table = compare_table(rows)
    assert "658.67*" in table and "479.95*" not in table and "*: not proven optimal: stopped at time_limit_s" in table
    rows[0]["results"] = [result("milp", 470.0, True), result("greedy", 479.95, False)]
    assert "*" not in compare_table(rows)


def test_a_milp_stopped_before_any_packing_reads_stopped_not_fail_in_the_compare_table() -> None:
    """The table said `fail` of a MILP its time limit stopped with nothing found, as of one proven infeasible."""
    from controller.planner.packing_report import compare_table

    def failed(solver: str, note: str) -> dict[str, object]:
        return {"solver": solver, "feasible": False, "cost_per_h": None, "optimal": False, "note": note,
                "stopped": note.startswith("stopped")}

    rows = [{"scenario": "s", "trace": "t", "requests": 1000,
             "results": [failed("milp", "stopped before any packing was found (Time limit reached): a longer "
                                        "time_limit_s may find one"),
                         failed("greedy", "infeasible: the scenario has no card")]}]
    table = compare_table(rows)
    assert table.splitlines()[1].split()[3:5] == ["stopped", "fail"]
    assert "stopped: no packing found before time_limit_s (a longer limit may find one); fail: none exists." in table
    rows[0]["results"] = [failed("milp", "infeasible: the scenario has no card")] * 2
    assert "stopped" not in compare_table(rows).splitlines()[1] and "stopped:" not in compare_table(rows)


@pytest.mark.parametrize(("price", "printed"), [(0.00016254, "0.0001626"), (1.23449e300, "1.235e+300"),
                                                (1.23449e-295, "1.235e-295"), (1.6433e-320, "1.6433e-320"),
                                                (1.7976931348623157e308, "1.798e+308"), (9.9995e-5, "0.0001")])
def test_a_price_is_printed_at_or_above_itself(price: float, printed: str) -> None:
    """Printed at 4 digits, a price read below itself (0.0001625 still dropped 44 %), a subnormal one and the
    largest float too (inf), and one near 1e300 was left unrounded."""
    from controller.planner.allocation_report import _printed, _up

    assert _printed(_up(price)) == printed
    assert float(printed) >= price


def test_a_share_reads_none_or_all_only_where_it_is_to_the_solvers_rounding() -> None:
    """A route of 0.04 % read 0.0 %, and unmet demand 100.0 % beside "99.96 % dropped"; a route HiGHS rounded to
    0.9999999999999972 then read "over 99.99%"."""
    assert [percent(x) for x in (0.0004, 1 / 3, 0.9996, 0.9999999999999972, 1e-9, 0.0)] == [
        "0.04%", "33.3%", "99.96%", "100%", "0%", "0%"]
    assert [dropped(x) for x in (0.9996, 0.9999999999999972, 0.5)] == ["99.96%", "100%", "50%"]
