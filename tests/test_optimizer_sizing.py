"""Replica counts searched on the count itself agree with sizing through the max rate, and cost few solves."""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import replace

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from controller.optimizer import counts, sizing
from controller.optimizer.counts import fit_search
from controller.optimizer.sizing import Sizer, size_together
from queuemodels import Load, ServerShape, ServiceParams, Targets, get_model
from queuemodels.accelerators import CATALOG
from queuemodels.law_arrays import Points
from queuemodels.step_arrays import Bools

PARAMS = ServiceParams("gen1", 12, 0.09, 10, 0.035)
STEP = ServiceParams("step", 12, 0.09, 10, 0.035, kappa_ms=1e-4, epsilon_ms=2.0, rho=1.0, budget_tokens=1024.0)
"""A step law that bends: decode convex past the roofline's crossover, prompts chunked by a token budget."""
H100 = CATALOG["H100-SXM"]


def first_fit(fits: Callable[[int], bool], most: int, guess: int) -> int | None:
    """`fit_search` answered by `fits`, one check at a time."""
    search = fit_search(most, guess)
    try:
        n = next(search)
        while True:
            n = search.send(fits(n))
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]


@given(st.integers(1, 40), st.integers(1, 41), st.integers(-5, 60))
def test_first_fit_finds_the_smallest_fitting_count_from_any_guess(most: int, need: int, guess: int) -> None:
    checked: list[int] = []

    def fits(n: int) -> bool:
        assert 1 <= n <= most
        checked.append(n)
        return n >= need

    assert first_fit(fits, most, guess) == (need if need <= most else None)
    assert len(checked) <= 2 * math.ceil(math.log2(most + 1)) + 2


@pytest.mark.parametrize("params", [PARAMS, STEP], ids=["gen1", "step"])
@pytest.mark.parametrize("model", ["mm1k-cb", "mm1k-batch"])
@pytest.mark.parametrize("targets", [Targets(300, 40), Targets(900, 60, "p95"), Targets(40, 20)])
@pytest.mark.parametrize("batch", [8, 64, 256])
def test_replicas_needed_agrees_with_the_max_rate(params: ServiceParams, model: str, targets: Targets,
                                                  batch: int) -> None:
    shape = ServerShape(batch, 1024, 560.0)
    unit = Load(1.0, 800, 200)
    per_replica = Sizer(model, params, unit, targets, H100).rate_per_replica(shape)
    for rate in (0.3, 2.0, 7.5, 31.0, 95.0):
        need = Sizer(model, params, replace(unit, rate_rps=rate), targets, H100).need(shape, 16)
        if per_replica <= 0:
            assert need is None
            continue
        by_rate = math.ceil(rate / per_replica - 1e-9)
        if need != (by_rate if by_rate <= 16 else None):
            # The same test bisected to a relative 1e-4: counts differ only where a share sits within it.
            assert need == by_rate - 1 and rate / need <= per_replica * (1 + 2e-4)


def fresh_tables(monkeypatch: pytest.MonkeyPatch) -> None:
    """Sizing with nothing known from earlier tests."""
    for name, empty in (("_brackets", OrderedDict()), ("_guesses", {}), ("_bases", {}), ("_max_rates", {})):
        monkeypatch.setattr(sizing, name, empty)


@pytest.mark.parametrize("moved", [1.0, 1.13, 0.62], ids=["same", "up", "down"])
def test_services_sized_together_need_what_each_needs_alone(monkeypatch: pytest.MonkeyPatch, moved: float) -> None:
    """A fleet's rounds answered in one call each give each service the needs it has sized alone, with nothing
    known before: the first time (services sharing a basis in waves), and a cycle later, the loads moved (side by
    side, on the brackets they share)."""
    shapes = [ServerShape(batch, 1024, cap) for batch in (8, 64, 256) for cap in (None, 450.0)]
    fleet = [(params, Load(rate, 800, 200), targets) for params in (PARAMS, STEP)
             for targets in (Targets(300, 40), Targets(900, 60, "p95")) for rate in (0.5, 6.0, 6.5, 40.0)]
    fresh_tables(monkeypatch)
    cycles = [[(Sizer("mm1k-cb", p, replace(load, rate_rps=load.rate_rps * k), t, H100), shapes, 16)
               for p, load, t in fleet] for k in (1.0, moved)]
    together = [size_together("mm1k-cb", jobs) for jobs in cycles]
    alone = []
    for sizer, _, _ in cycles[1]:
        fresh_tables(monkeypatch)
        alone.append([Sizer("mm1k-cb", *sizer.base[:2], sizer.targets, H100).need(shape, 16) for shape in shapes])
    assert together[1] == alone
    assert {n for needs in together[0] for n in needs} > {None, 1}  # light and heavy loads, shapes carrying none


def test_a_tiny_rate_sized_before_does_not_overflow_the_next_search(monkeypatch: pytest.MonkeyPatch) -> None:
    """A shape's fitting rate is kept as a guess for the same model, targets and profile: one left by a load of
    1e-320 rps (a daemon plans in one process, cycle after cycle) made the next load's guess rate / 1e-320, an
    infinite count (OverflowError). The guess is held to the replicas a service may run."""
    fresh_tables(monkeypatch)
    shapes = [ServerShape(64, 1024, None)]
    assert size_together("mm1k-cb", [(Sizer("mm1k-cb", PARAMS, Load(1e-320, 800, 200), Targets(300, 40), H100),
                                      shapes, 16)]) == [[1]]
    moved = replace(PARAMS, alpha_ms=12.5)  # another basis, the same guess
    need = size_together("mm1k-cb", [(Sizer("mm1k-cb", moved, Load(6.0, 800, 200), Targets(300, 40), H100),
                                      shapes, 16)])
    fresh_tables(monkeypatch)
    assert need == [[Sizer("mm1k-cb", moved, Load(6.0, 800, 200), Targets(300, 40), H100).need(shapes[0], 16)]]


def test_a_load_that_drifts_is_answered_by_the_brackets(monkeypatch: pytest.MonkeyPatch) -> None:
    """Once a shape is sized, its brackets are widened to what a load within DRIFT of it needs: the next cycles'
    loads, up or down, cost no solve (where the shape's max rate is not within the drift of a share)."""
    solves = counting_solves(monkeypatch)
    shape, targets, rate = ServerShape(64, 1024, 600.0), Targets(300, 40), 20.0
    sizer = Sizer("mm1k-cb", PARAMS, Load(rate, 800, 200), targets, H100)
    need = sizer.need(shape, 16)
    cold = len(solves)
    per_replica = Sizer("mm1k-cb", PARAMS, Load(rate, 800, 200), targets, H100).rate_per_replica(shape)
    assert need is not None and need > 1
    assert rate * (1 + counts.DRIFT) / need < per_replica < rate * (1 - counts.DRIFT) / (need - 1)
    del solves[cold:]
    for k in (0.92, 0.97, 1.04, 1.09):
        assert Sizer("mm1k-cb", PARAMS, Load(rate * k, 800, 200), targets, H100).need(shape, 16) == need
    assert len(solves) == cold


def counting_solves(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Every rate the queue model is asked to check from here on, the sizing tables fresh."""
    model = get_model("mm1k-cb")
    solves: list[float] = []
    real = type(model).within_targets_of

    def counted(self: object, points: Points, targets: list[Targets]) -> Bools:
        solves.extend(points.rates_rps.tolist())
        return real(model, points, targets)  # type: ignore[arg-type]

    fresh_tables(monkeypatch)
    monkeypatch.setattr(type(model), "within_targets_of", counted)
    return solves


def test_a_shape_sized_before_costs_no_solve(monkeypatch: pytest.MonkeyPatch) -> None:
    solves = counting_solves(monkeypatch)
    shape, targets = ServerShape(64, 1024, 600.0), Targets(300, 40)
    first = Sizer("mm1k-cb", PARAMS, Load(20.0, 800, 200), targets, H100).need(shape, 16)
    cold = len(solves)
    # The load moves a little, as it does from one cycle to the next: the bracket answers.
    again = Sizer("mm1k-cb", PARAMS, Load(19.0, 800, 200), targets, H100).need(shape, 16)
    assert first is not None and again in (first - 1, first)
    assert 1 <= cold <= 6 and len(solves) - cold <= 1


def test_a_shape_that_carries_no_share_costs_no_solve_again(monkeypatch: pytest.MonkeyPatch) -> None:
    """Targets a shape meets at no rate (a TTFT below its prefill): once its most replicas' share is known to miss,
    a load a little larger is answered by the bracket alone."""
    solves = counting_solves(monkeypatch)
    shape, targets = ServerShape(64, 1024, 600.0), Targets(5, 40)
    assert Sizer("mm1k-cb", PARAMS, Load(20.0, 800, 200), targets, H100).need(shape, 16) is None
    cold = len(solves)
    assert Sizer("mm1k-cb", PARAMS, Load(20.6, 800, 200), targets, H100).need(shape, 16) is None
    assert cold >= 1 and len(solves) == cold


@given(st.floats(0.01, 50.0), st.floats(0.01, 50.0), st.floats(0.0, 3.0), st.integers(1, 40))
def test_a_bracket_that_decides_gives_what_the_search_would(fits_rps: float, gap: float, rate: float,
                                                             most: int) -> None:
    load_rps = rate * fits_rps * 10

    def fits(n: int) -> bool:
        share = load_rps / n
        assert share <= fits_rps or share >= fits_rps + gap, "the search needed a solve"
        return share <= fits_rps

    decided, need = counts.from_brackets(np.array([fits_rps, 0.0, 0.0]),
                                         np.array([fits_rps + gap, np.inf, fits_rps + gap]), load_rps, most)
    assert not decided[1]  # nothing known
    if decided[0]:
        assert (need[0] if need[0] <= most else None) == first_fit(fits, most, 1)
    # only a rate that misses known: decided exactly where the most replicas' share is at or above it (none fits)
    assert decided[2] == (load_rps / most >= fits_rps + gap)
    assert not decided[2] or need[2] == most + 1


def test_what_a_shape_list_learnt_outlives_a_search_on_another_shape(monkeypatch: pytest.MonkeyPatch) -> None:
    """A restart's one extra shape (Sizer.need) must not hide what the service's shapes were sized with: the
    partial candidates rank their shapes by it."""
    fresh_tables(monkeypatch)
    shapes = [ServerShape(64, 1024, 600.0), ServerShape(32, 1024, 600.0)]
    sizer = Sizer("mm1k-cb", PARAMS, Load(20.0, 800, 200), Targets(300, 40), H100)
    size_together("mm1k-cb", [(sizer, shapes, 16)])
    known = [sizer.brackets_of(shapes).known_fit_rps(s) for s in shapes]
    sizer.need(ServerShape(128, 1024, 600.0), 16)
    assert min(known) > 0 and [sizer.brackets_of(shapes).known_fit_rps(s) for s in shapes] == known
