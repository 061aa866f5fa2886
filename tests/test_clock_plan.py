"""The optimizer plans a clock per service beside its cap, in greedy and the MILP, within the SLO."""

from __future__ import annotations

from pathlib import Path

import pytest

from controller.config_loader import ConfigError
from controller.optimize_spec import load_spec
from controller.optimizer import AcceleratorType, Assignment, Problem, ServiceDemand, get_solver, solve
from controller.optimizer.candidates import enumerate_all
from controller.optimizer.clocks import sure_savings
from controller.optimizer.problem import Candidate
from queuemodels import Load, ServerShape, ServiceParams, Targets, get_model
from queuemodels.accelerators import profile

ACC = AcceleratorType("H100-SXM", 8, 2.99, profile("H100-SXM"))
PARAMS = ServiceParams("gen2", 6.0, 0.04, 2e-5)
LEVELS = (0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


def problem(targets: Targets, clock_levels: tuple[float, ...], objective: str = "energy",
            min_saving: float = 0.05) -> Problem:
    svc = ServiceDemand("decode", 1, targets, Load(6.0, 128, 1024), {"H100-SXM": PARAMS})
    return Problem((svc,), (ACC,), 10_000.0, objective, "predicted", clock_levels=clock_levels,  # type: ignore[arg-type]
                   clock_min_saving=min_saving)


@pytest.mark.parametrize("solver", ["greedy", "milp", "exhaustive"])
def test_energy_plans_lock_a_lower_clock_where_the_slo_leaves_room(solver: str) -> None:
    caps = solve(problem(Targets(2000.0, 40.0), (1.0,)), get_solver(solver))
    clocks = solve(problem(Targets(2000.0, 40.0), LEVELS), get_solver(solver))
    assert caps.services[0].assignment is not None and caps.services[0].assignment.sm_clock_fraction is None
    chosen = clocks.services[0]
    assert chosen.assignment is not None and chosen.assignment.sm_clock_fraction in LEVELS[:-1]
    assert chosen.performance is not None and chosen.performance.itl_ms <= 40.0
    assert clocks.power_w < caps.power_w


def test_a_clock_whose_saving_the_model_is_not_sure_of_stays_free() -> None:
    caps = solve(problem(Targets(2000.0, 40.0), (1.0,)), get_solver("milp")).services[0]
    unsure = solve(problem(Targets(2000.0, 40.0), LEVELS, min_saving=0.5), get_solver("milp")).services[0]
    assert unsure.assignment == caps.assignment and unsure.power_w == pytest.approx(caps.power_w)


def candidate(replicas: int, clock: float | None, above_idle_w: float, served_rps: float = 8.0) -> Candidate:
    return Candidate(0, Assignment("H100-SXM", replicas, 64, 420.0, clock), replicas, above_idle_w, 2.99 * replicas,
                     served_rps, 8.0 - served_rps, -above_idle_w)


def test_a_lower_clock_bought_with_a_replica_pays_its_idle_draw() -> None:
    free = candidate(1, None, 490.0)  # one GPU at the free clock: 585 W with its idle draw
    spread = candidate(2, 0.7, 395.0)  # two at 0.7: less above idle, 585 W with theirs: no saving
    sure = candidate(1, 0.7, 400.0)  # one at 0.7: 495 W, 15 % less
    short = candidate(1, None, 300.0, served_rps=4.0)  # the only free one serves half the load
    draws = [c.power_w + 95.0 * c.gpus for c in (free, spread, sure)]
    assert sure_savings([free, spread, sure], draws, 0.05) == [free, sure]
    assert sure_savings([free, spread, sure], draws, 0.0) == [free, spread, sure]
    assert sure_savings([free, sure], draws[::2], 0.2) == [free]
    assert sure_savings([short, spread], [490.0, draws[1]], 0.05) == [short, spread]  # none to compare it with


def test_a_lock_never_makes_a_capped_gpu_faster() -> None:
    """A GPU under a cap and a lock runs at the lower of the two clocks: each phase takes the slower of the two
    laws alone, so the pair is never faster than either lever by itself (the product of the two had a lock lower
    the draw a cap squeezes, and predicted a capped GPU faster for being locked as well)."""
    model, load, prof = get_model("mm1k-cb"), Load(4.0, 512, 512), profile("H100-SXM")

    def itl(cap_w: float | None, clock: float | None) -> float:
        return model.analyze(PARAMS, load, ServerShape(128, 1024, cap_w, clock), prof, tails=False).itl_ms

    for cap_w in (210.0, 280.0, 420.0):
        for clock in (0.5, 0.7, 0.9):
            assert itl(cap_w, clock) >= max(itl(cap_w, None), itl(None, clock)) * (1.0 - 1e-9)


def test_a_tight_slo_keeps_the_clock_where_it_is_met() -> None:
    loose = solve(problem(Targets(2000.0, 40.0), LEVELS), get_solver("milp")).services[0]
    tight = solve(problem(Targets(2000.0, 12.0), LEVELS), get_solver("milp")).services[0]
    assert loose.assignment is not None and tight.assignment is not None and tight.performance is not None
    assert (tight.assignment.sm_clock_fraction or 1.0) > (loose.assignment.sm_clock_fraction or 1.0)
    assert tight.performance.itl_ms <= 12.0


def test_a_spec_takes_clock_levels_and_refuses_bad_ones_by_name(tmp_path: Path) -> None:
    text = (Path(__file__).resolve().parents[1] / "config" / "examples" / "optimize.toml").read_text()
    spec = tmp_path / "spec.toml"
    spec.write_text(text.replace('objective = "token_speed"', 'objective = "energy"\nclock_levels = [0.5, 0.75, 1.0]'))
    assert load_spec(spec).clock_levels == (0.5, 0.75, 1.0)
    spec.write_text(text.replace('objective = "token_speed"', 'objective = "energy"\nclock_levels = [1.5]'))
    with pytest.raises(ConfigError, match=r"clock_levels: must be 1..64 shares in \[0.1, 1\], each once, got \[1.5\]"):
        load_spec(spec)


@pytest.mark.parametrize("objective", ["energy", "token_speed"])
def test_every_locked_candidate_saves_against_every_free_one_serving_as_much(objective: str) -> None:
    """Spare and partial replicas as well: they are valued after the full candidates, and compared with them too,
    not only with the free ones valued beside them (partials all run one shape, so one locked had no free peer)."""
    svc = ServiceDemand("decode", 1, Targets(2000.0, 40.0), Load(40.0, 128, 1024), {"H100-SXM": PARAMS},
                        max_replicas=8)
    p = Problem((svc,), (ACC,), 10_000.0, objective, "predicted", clock_levels=LEVELS,  # type: ignore[arg-type]
                clock_min_saving=0.05)
    [cands] = enumerate_all(p)

    def per_request(c: Candidate) -> float:  # the whole draw of the GPUs it holds, idle included
        return (c.power_w + c.gpus * ACC.profile.idle_power_w) / c.served_rps

    assert any(c.short_rps > 0 for c in cands) and (objective == "energy" or any(c.spare > 0 for c in cands))
    for c in (c for c in cands if c.assignment.sm_clock_fraction is not None):
        for free in (f for f in cands if f.assignment.sm_clock_fraction is None):
            if free.served_rps >= c.served_rps * (1.0 - 1e-9):
                assert per_request(c) <= 0.95 * per_request(free) * (1.0 + 1e-9)
