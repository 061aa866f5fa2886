"""The greedy's columns read a fleet's candidates as the plain definitions do: each service's ranking is Python's
stable sort by value (ties in order), and a spare's next step is the candidate on the same accelerator and shape
with one replica more, the last of equals in the ranking."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from controller.optimizer import AcceleratorType, Assignment, Candidate, Problem, ServiceDemand
from controller.optimizer.greedy import _Columns
from controller.optimizer.trades import top
from queuemodels import Load, Targets
from queuemodels.accelerators import CATALOG

ACCS = (AcceleratorType("H100-SXM", 8, 2.99, CATALOG["H100-SXM"]), AcceleratorType("L4", 8, 0.8, CATALOG["L4"]))
ASSIGNMENTS = st.builds(Assignment, st.sampled_from([a.name for a in ACCS]), st.integers(1, 3),
                        st.sampled_from([8, 64]), st.just(300.0), st.sampled_from([None, 0.8]))
"""Few enough that a service often holds equal ones (as separate objects), and one replica more of another."""
VALUES = st.one_of(st.sampled_from([0.0, -0.0, 1.5, 7.0]), st.floats(-10.0, 10.0))


def candidate(service: int, a: Assignment, value: float, spare: int) -> Candidate:
    return Candidate(service, a, a.replicas, 100.0 * a.replicas, 1.0, 1.0, 0.0, value, value, spare)


FLEETS = st.lists(st.lists(st.tuples(ASSIGNMENTS, VALUES, st.integers(0, 2)), max_size=12), min_size=1, max_size=4)


@given(FLEETS)
def test_the_columns_rank_and_step_as_the_plain_definitions(fleet: list[list[tuple[Assignment, float, int]]]) -> None:
    cands = [[candidate(i, a, v, s) for a, v, s in rows] for i, rows in enumerate(fleet)]
    problem = Problem(tuple(ServiceDemand(f"s{i}", 1, Targets(300, 40), Load(1.0, 100, 100), {})
                            for i in range(len(cands))), ACCS, 5000.0)
    columns = _Columns.of(problem, cands, problem.shed_gpus(cands))
    for i, cs in enumerate(cands):
        ranked = sorted(cs, key=lambda c: c.value, reverse=True)
        assert [cs[k] for k in columns.rank[i].tolist()] == ranked
        assert columns.ranked(i).value.tolist() == [c.value for c in ranked]
        where = {(c.assignment.accelerator, c.assignment.replicas, c.assignment.max_batch, c.assignment.power_cap_w,
                  c.assignment.sm_clock_fraction): k for k, c in enumerate(ranked)}
        for j, c in enumerate(ranked):
            a = c.assignment
            want = where.get((a.accelerator, a.replicas + 1, a.max_batch, a.power_cap_w, a.sm_clock_fraction))
            assert columns.one_more(i, j) == want


@given(st.lists(st.sampled_from([0.0, 1.0, 2.5, -3.0, 7.0]) | st.floats(-5.0, 5.0), max_size=60), st.integers(1, 20))
def test_the_best_few_moves_are_a_stable_sorts_first(values: list[float], k: int) -> None:
    """`top` picks a round's best moves without sorting them all: the k largest, ties in index order, exactly as
    a stable sort of all of them puts first."""
    x = np.array(values, dtype=float)
    assert top(x, k).tolist() == np.argsort(-x, kind="stable")[:k].tolist()
