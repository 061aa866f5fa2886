"""The step family's roofline: decode convex in the batch past the memory/compute crossover, a prompt costing
what the decodes leave unhidden, and the chain's batch inverted through the bent law."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from queuemodels import Load, ModelInputError, ServerShape, ServiceParams, get_model
from queuemodels.continuous_law import continuous_law
from queuemodels.params import STEP_DEFAULTS
from queuemodels.roofline import Roofline
from queuemodels.service_time import StepLaw, cap_factors
from queuemodels.types import PowerProfile

STEP = ServiceParams("step", 11.0, 0.005, 6.0, 0.035, kappa_ms=5e-5, epsilon_ms=0.5)
BENT = dataclasses.replace(STEP, rho=1.6)
LOAD = Load(1.0, 256, 256)


def test_decode_bends_past_the_crossover_and_not_before() -> None:
    roof = Roofline.of(BENT, LOAD)
    batches = np.array([1.0, 8.0, 64.0, 128.0, 256.0])
    bend = roof.bend_ms(batches)
    assert bend[0] < 1e-3 and bend[1] < 0.02  # memory-bound: the compute hides under the weights' read
    assert np.all(np.diff(np.diff(bend)) > 0)  # convex
    # past the crossover a sequence costs its compute, rho delta, rather than its KV read
    slope = (roof.bend_ms(512.0) - roof.bend_ms(384.0)) / 128.0 + roof.memory_per_seq_ms
    assert slope == pytest.approx(roof.compute_per_seq_ms, rel=0.05)
    assert Roofline.of(STEP, LOAD).bend_ms(256.0) == 0.0  # rho 0: the affine law


def test_a_prompt_hides_under_memory_only_until_the_decodes_are_compute_bound() -> None:
    roof = Roofline.of(BENT, LOAD)
    alone = roof.prompt_ms(1.0) - roof.prompt_overhead_ms
    assert alone < 0.55 * roof.prompt_compute_ms  # 9 ms of compute, most of it under the 6 ms weights' read
    full = roof.prompt_ms(512.0) - roof.prompt_overhead_ms
    assert 0.9 * roof.prompt_compute_ms < full < roof.prompt_compute_ms  # the step is compute-bound: nearly all


@pytest.mark.parametrize("params", [STEP, BENT], ids=["affine", "bent"])
def test_a_cap_slows_a_prompts_compute_not_its_overhead_nor_what_memory_hides(params: ServiceParams) -> None:
    profile = PowerProfile("H100", max_power_w=700, min_power_w=200, idle_power_w=95)
    slow, _ = cap_factors(profile, 420.0)
    assert slow > 1.3
    with_overhead = dataclasses.replace(params, epsilon_ms=10.0)

    def prompt_ms(load: Load, cap_w: float | None) -> float:
        return continuous_law(with_overhead, load, profile, ServerShape(32, None, cap_w)).prompt_ms

    short, long = Load(0.2, 64, 256), Load(0.2, 8192, 256)  # 2 ms of compute under a 6 ms read; 287 ms of it
    assert prompt_ms(short, 420.0) < 1.03 * prompt_ms(short, None)  # the host's overhead and hidden compute
    added = (prompt_ms(long, 420.0) - 10.0) / (prompt_ms(long, None) - 10.0)
    assert added == pytest.approx(slow, rel=0.03)  # a compute-bound prompt slows with the clock


def test_a_lock_slows_decode_only_where_its_compute_shows() -> None:
    """Under the roofline a locked clock slows the compute inside a step's smooth maximum, not its memory time:
    memory-bound decode keeps its pace (at a trickle of prompts, whose share of the GPU would stretch it; the affine
    law's compute share, B / (B + batch_half) of the draw, had
    slowed it by half the clock's factor), the compute-bound batch past the crossover slows by nearly the clock's
    factor, and a prompt by it."""
    profile = PowerProfile("H100", max_power_w=700, min_power_w=200, idle_power_w=95, batch_half=8.0)

    def law(clock: float | None, in_tokens: int = 256) -> StepLaw:
        return continuous_law(BENT, Load(0.01, in_tokens, 256), profile, ServerShape(512, None, None, clock))

    free, half = law(None), law(0.5)
    assert half.decode(8.0) / free.decode(8.0) < 1.01  # memory-bound at batch 8: the lock does not show
    assert half.decode(512.0) / free.decode(512.0) > 1.5  # compute-bound: 2x its compute, most of the step
    assert law(0.5, 4096).prompt_ms / law(None, 4096).prompt_ms > 1.8  # a 4,096-token prompt is compute


def test_a_locks_share_of_the_per_step_time_slows_a_roofline_step_only() -> None:
    """The fitted share of a decode step's fixed time that runs on the GPU's clock (`clock_step_share`) follows the
    lock under the roofline; the affine laws' decodes follow it by their compute share, as before."""
    prof = PowerProfile("H100", max_power_w=700, min_power_w=200, idle_power_w=95, clock_step_share=0.5)
    plain = dataclasses.replace(prof, clock_step_share=0.0)
    load, shape = Load(0.01, 256, 256), ServerShape(64, None, None, 0.5)
    slowed, kept = continuous_law(BENT, load, prof, shape), continuous_law(BENT, load, plain, shape)
    assert slowed.d0 / kept.d0 == pytest.approx(1.5, rel=1e-6)  # alpha, half of it at half the clock: 1.5x
    assert slowed.d1 == pytest.approx(kept.d1, rel=1e-6)
    assert continuous_law(STEP, load, prof, shape) == continuous_law(STEP, load, plain, shape)


@pytest.mark.parametrize("params", [STEP, BENT, dataclasses.replace(BENT, rho=4.0)], ids=["affine", "bent", "rho4"])
def test_a_lock_never_makes_a_capped_gpu_faster_at_any_batch(params: ServiceParams) -> None:
    """A GPU under a cap and a lock runs at the lower of the two clocks, so its decode step is never shorter than
    under either lever alone, at any batch (deciding once at the full batch which lever sets the clock had read a
    compute-bound law locked at 0.3 under 230 W up to 13 % faster than capped alone at smaller batches); a cap that
    does not bind leaves the lock's law as it is."""
    prof = PowerProfile("H100", max_power_w=700, min_power_w=200, idle_power_w=95, batch_half=16.0)

    def decode(load: Load, batch: int, cap_w: float | None, clock: float | None) -> np.ndarray:
        return continuous_law(params, load, prof, ServerShape(batch, 1024, cap_w, clock)).at_batches(batch).decode

    for load in (Load(0.5, 256, 256), Load(2.0, 1024, 256)):
        for batch in (16, 256):
            for clock in (0.3, 0.5, 0.9):
                lock_alone = decode(load, batch, None, clock)
                np.testing.assert_allclose(decode(load, batch, 700.0, clock), lock_alone, rtol=1e-12)
                for cap_w in (210.0, 230.0, 420.0):
                    both = decode(load, batch, cap_w, clock)
                    assert np.all(both >= np.maximum(decode(load, batch, cap_w, None), lock_alone) * (1.0 - 1e-12))


def test_the_bend_lowers_capacity_at_large_batches_only() -> None:
    model = get_model("mm1k-cb")
    ratio = {b: model.saturation_rps(BENT, LOAD, ServerShape(b, None)) / model.saturation_rps(STEP, LOAD,
                                                                                              ServerShape(b, None))
             for b in (8, 256)}
    assert ratio[8] > 0.98 and ratio[256] < 0.8


def test_the_effective_batch_inverts_the_bent_service_time() -> None:
    law = continuous_law(BENT, Load(20.0, 256, 256), None, ServerShape(256, None))
    for batch in (0.5, 7.0, 100.0, 255.0):
        assert law.batch_at(float(law.tau(batch)), 256.0) == pytest.approx(batch, rel=1e-6)
    assert law.batch_at(float(law.tau(300.0)), 256.0) == 256.0
    perf = get_model("mm1k-cb").analyze(BENT, Load(20.0, 256, 256), ServerShape(256, None))
    # Little's law: the mean batch a request is served in gives back its mean service time
    assert float(law.tau(perf.extra["n_eff"])) == pytest.approx(perf.extra["service_ms"], rel=1e-6)


def test_the_tuner_starts_rho_at_one_and_learns_it_where_large_batches_are_seen() -> None:
    from tuner import Observation, PairFilter

    model = get_model("mm1k-cb")
    obs = []
    for batch, n_in, share in ((b, n, u) for u in (0.3, 0.8) for b in (32, 256) for n in (256, 1024)):
        load = Load(1.0, n_in, 256)
        sat = model.saturation_rps(BENT, load, ServerShape(batch, None))
        perf = model.analyze(BENT, dataclasses.replace(load, rate_rps=share * sat), ServerShape(batch, 1024),
                             tails=False)
        obs.append(Observation(share * sat, n_in, 256, batch, 1024, perf.ttft_ms, perf.itl_ms))
    pair = PairFilter(ServiceParams("step", 15.0, 0.01, 8.0, 0.05, kappa_ms=1e-4, epsilon_ms=1.0), None)
    assert pair.x[6] == STEP_DEFAULTS["rho"]
    for o in obs * 2:
        pair.update(o)
    fitted, _ = pair.params()
    shape = ServerShape(256, None)
    assert model.saturation_rps(fitted, LOAD, shape) == pytest.approx(model.saturation_rps(BENT, LOAD, shape),
                                                                      rel=0.05)
    assert fitted.rho > 1.2


def _windows(truth: ServiceParams, batches: tuple[int, ...] = (32, 64)) -> list:
    """queue_heldout's narrow design from the model itself: prompts 256/1024, 20-80 % load."""
    from tuner import Observation

    model = get_model("mm1k-cb")
    out = []
    for batch, n_in, share in ((b, n, u) for u in (0.2, 0.8, 0.5) for b in batches for n in (256, 1024)):
        load = Load(1.0, n_in, 256)
        sat = model.saturation_rps(truth, load, ServerShape(batch, None))
        perf = model.analyze(truth, dataclasses.replace(load, rate_rps=share * sat), ServerShape(batch, 1024),
                             tails=False)
        out.append(Observation(share * sat, n_in, 256, batch, 1024, perf.ttft_ms, perf.itl_ms))
    return out


def test_a_prompt_past_the_budget_spans_steps_and_waits_for_their_decodes() -> None:
    model, shape, load = get_model("mm1k-cb"), ServerShape(128, None), Load(2.0, 2048, 256)
    wide, narrow = (dataclasses.replace(BENT, budget_tokens=b) for b in (8192.0, 512.0))
    assert Roofline.of(narrow, load).chunks(100.0) == pytest.approx(2048 / 412, rel=0.01)
    assert Roofline.of(wide, load).chunks(100.0) == pytest.approx(1.0, abs=0.01)
    a, b = model.analyze(wide, load, shape), model.analyze(narrow, load, shape)
    assert b.ttft_ms > a.ttft_ms + a.itl_ms  # four steps to a first token, each with the others' decodes
    assert b.itl_ms < a.itl_ms  # each chunk hides under a step's memory time: the decodes stall less
    short = Load(2.0, 128, 256)
    assert model.analyze(narrow, short, shape).ttft_ms == pytest.approx(model.analyze(wide, short, shape).ttft_ms,
                                                                        rel=0.01)


def test_the_tuner_finds_a_budget_the_windows_show_and_keeps_one_they_do_not() -> None:
    from tuner import PairFilter

    found = {}
    # a start within reach: from twice the longest prompt or more, one chunk holds it and nothing moves the budget
    for budget, start in ((512.0, 1024.0), (16384.0, 0.0)):
        truth = dataclasses.replace(STEP, rho=1.0, budget_tokens=budget)
        pair = PairFilter(ServiceParams("step", 15.0, 0.1, 10.0, 0.05, budget_tokens=start), None)
        for o in _windows(truth) * 2:
            pair.update(o)
        found[budget] = pair.params()[0].budget_tokens
    assert found[512.0] == pytest.approx(512.0, rel=0.25)
    # 1,024-token prompts never fill a 2,048 budget: it stays, whatever common scale the times take
    assert found[16384.0] == pytest.approx(STEP_DEFAULTS["budget_tokens"], rel=0.1)


def test_a_budget_serialises_prompts_and_bounds_capacity_by_its_room() -> None:
    model, load = get_model("mm1k-cb"), Load(1.0, 2048, 256)
    narrow = dataclasses.replace(BENT, budget_tokens=512.0)
    shape = ServerShape(256, None)
    sat = model.saturation_rps(narrow, load, shape)
    # the decodes leave the prompts (512 - B) tokens a step: at most an eighth of a 2,048-token prompt at 256
    wide = model.saturation_rps(dataclasses.replace(BENT, budget_tokens=8192.0), load, shape)
    assert sat < 0.9 * wide
    assert model.saturation_rps(narrow, load, ServerShape(32, None)) > 0.97 * model.saturation_rps(
        dataclasses.replace(BENT, budget_tokens=8192.0), load, ServerShape(32, None))  # room for them at 32
    with pytest.raises(ModelInputError, match="saturates at"):
        model.analyze(narrow, dataclasses.replace(load, rate_rps=1.5 * sat), ServerShape(256, None))
    # the wait for the prompts ahead grows with the load, where a wide budget lets them share a step
    waits = [model.analyze(narrow, dataclasses.replace(load, rate_rps=u * sat), shape).ttft_ms for u in (0.3, 0.8)]
    assert waits[1] > 2.0 * waits[0]


def test_prompts_riding_one_step_share_the_memory_time_that_hides_them() -> None:
    """A step that carries several prompts is one forward pass: its memory time hides their compute once."""
    roof = Roofline.of(BENT, Load(1.0, 2048, 256))
    alone = roof.prompt_ms(192.0)
    assert roof.prompt_gpu_ms(192.0, 1e-6) == pytest.approx(alone, rel=1e-5)  # the Poisson sum's own limit
    costs = [roof.prompt_gpu_ms(192.0, x) for x in (0.25, 0.75, 2.0, 8.0, 30.0)]
    assert np.all(np.diff(costs) > 0)  # the more ride one step, the less of each one's compute hides
    # many riders: each pays its whole compute, and a share of the step's fixed cost that vanishes
    assert costs[-1] == pytest.approx(roof.prompt_compute_ms, rel=0.03)
    assert alone < 0.8 * roof.prompt_compute_ms  # alone, a quarter or more of it hides under the KV read
    # short prompts at a small batch hide under the weights' read even a few at a time: riders cost them little
    short = Roofline.of(BENT, Load(1.0, 16, 256))
    compute = short.prompt_gpu_ms(8.0, 1.0) - short.prompt_overhead_ms * (1.0 - np.exp(-1.0))
    assert 0.0 < compute < 0.05 * short.prompt_compute_ms


@pytest.mark.parametrize("x", [0.05, 0.9, 3.0, 30.0])
def test_the_poisson_sum_is_the_same_term_by_term_as_over_arrays(monkeypatch: pytest.MonkeyPatch, x: float) -> None:
    """The riders' sum is taken one term at a time where it has few terms and over arrays where it has many: the
    two agree to rounding on either side of the switch."""
    import queuemodels.roofline as roofline

    roof = Roofline.of(BENT, Load(1.0, 2048, 256))
    monkeypatch.setattr(roofline, "SHORT_SUM", 10_000)
    monkeypatch.setattr(roofline, "_LOG_FACTORIAL", [math.lgamma(n + 1.0) for n in range(10_001)])
    by_term = roof.prompt_gpu_ms(96.0, x)
    monkeypatch.setattr(roofline, "SHORT_SUM", 0)
    assert roof.prompt_gpu_ms(96.0, x) == pytest.approx(by_term, rel=1e-13)


def test_a_laws_batch_tables_are_its_own_times_and_shared_read_only() -> None:
    """`at_batches` holds what decode, prefill and tau give at batches 1..n; it is cached on the law, so the arrays
    are read-only, and a law built from it by `replace` (another cap's) starts without them."""
    shape = ServerShape(64, None)
    law = continuous_law(dataclasses.replace(BENT, budget_tokens=1024.0), Load(2.0, 512, 256), None, shape)
    batch = np.arange(1.0, 65.0)
    tables = law.at_batches(64)
    for table, times in zip(tables, (law.decode(batch), law.prefill(batch), law.tau(batch)), strict=True):
        np.testing.assert_array_equal(table, times)
        with pytest.raises(ValueError, match="read-only"):
            table[0] = 0.0
    assert law.at_batches(64) is tables
    other = dataclasses.replace(law, bend_scale=2.0)
    assert other.at_batches(64).decode[-1] > tables.decode[-1]
    assert dataclasses.replace(law) == law and hash(dataclasses.replace(law)) == hash(law)  # the cache is not compared
