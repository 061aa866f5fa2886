"""Exact cases, limits and monotonicity of the state-dependent M/M/1/K batch model."""

from __future__ import annotations

import dataclasses
import itertools
import math

import numpy as np
import pytest

from queuemodels import (
    DEFAULT_MODEL,
    Load,
    ModelInputError,
    PowerProfile,
    ServerShape,
    ServiceParams,
    Targets,
    best_batch_for_power,
    best_batch_for_rate,
    get_model,
    max_rate,
)
from queuemodels.accelerators import profile
from queuemodels.batch_choice import TIE
from queuemodels.chain import means
from queuemodels.continuous_law import continuous_law
from queuemodels.operating_point import solve_chain
from queuemodels.roofline import Roofline, smooth_chunks
from queuemodels.service_time import StepLaw
from queuemodels.tails import ttft_quantiles

MODEL = get_model("mm1k-batch")
H100 = PowerProfile("H100", max_power_w=700, min_power_w=200, idle_power_w=95)
PARAMS = ServiceParams("gen1", alpha_ms=20.0, beta_ms=0.5, gamma_ms=30.0, delta_ms=0.02)
LOAD = Load(rate_rps=2.0, in_tokens=512, out_tokens=128)


def mm1_params(mu_per_s: float) -> ServiceParams:
    """One output token, batch 1: the chain is a plain M/M/1/K with mean service 1/mu."""
    return ServiceParams("gen1", alpha_ms=1.0, beta_ms=0.0, gamma_ms=1000.0 / mu_per_s, delta_ms=0.0)


@pytest.mark.parametrize("lam,mu,capacity", [(0.5, 1.0, 5), (0.8, 1.0, 10), (1.7, 1.0, 20), (2.0, 3.0, 1)])
def test_batch_one_is_textbook_mm1k(lam: float, mu: float, capacity: int) -> None:
    perf = MODEL.analyze(mm1_params(mu), Load(lam, 1, 1), ServerShape(1, capacity - 1))
    rho = lam / mu
    p = np.array([rho**n for n in range(capacity + 1)])
    p /= p.sum()
    mean_in_system = float(np.arange(capacity + 1) @ p)
    throughput = lam * (1 - p[-1])
    assert perf.block_probability == pytest.approx(p[-1], rel=1e-9, abs=1e-12)
    assert perf.mean_in_system == pytest.approx(mean_in_system, rel=1e-9)
    assert perf.throughput_rps == pytest.approx(throughput, rel=1e-9)
    response_ms = 1000 * mean_in_system / throughput
    assert perf.ttft_ms == pytest.approx(response_ms, rel=1e-9)
    assert perf.utilization == pytest.approx(1 - p[0], rel=1e-9)


@pytest.mark.parametrize("rho", [0.3, 0.7, 0.9])
def test_unbounded_mm1_waiting_tail_is_exponential(rho: float) -> None:
    mu = 2.0
    perf = MODEL.analyze(mm1_params(mu), Load(rho * mu, 1, 1), ServerShape(1, None))
    service_ms = 1000 / mu
    # M/M/1: P(W > t) = rho exp(-mu (1 - rho) t); the model shifts the wait by the mean service.
    for prob, got in ((0.95, perf.ttft_p95_ms), (0.99, perf.ttft_p99_ms)):
        wait = math.log(rho / (1 - prob)) / (mu * (1 - rho)) * 1000 if rho > 1 - prob else 0.0
        assert got == pytest.approx(wait + service_ms, rel=2e-3)
    # Mean response of M/M/1 is 1 / (mu - lambda).
    assert perf.ttft_ms == pytest.approx(1000 / (mu - rho * mu), rel=1e-9)


def test_large_capacity_converges_to_unbounded() -> None:
    unbounded = MODEL.analyze(PARAMS, Load(5.0, 512, 128), ServerShape(32, None))
    bounded = MODEL.analyze(PARAMS, Load(5.0, 512, 128), ServerShape(32, 10_000))
    assert bounded.ttft_ms == pytest.approx(unbounded.ttft_ms, rel=1e-6)
    assert bounded.block_probability < 1e-12


def test_capacity_ten_thousand_overloaded_is_finite() -> None:
    perf = MODEL.analyze(PARAMS, Load(500.0, 512, 128), ServerShape(256, 9_744))
    assert all(math.isfinite(v) for v in (perf.ttft_ms, perf.ttft_p99_ms, perf.itl_p99_ms))
    assert perf.block_probability > 0.5
    assert perf.mean_in_system == pytest.approx(10_000, rel=1e-3)


def test_rate_to_zero_gives_a_lone_request() -> None:
    perf = MODEL.analyze(PARAMS, Load(1e-9, 512, 128), ServerShape(64, 100))
    assert perf.ttft_ms == pytest.approx(PARAMS.gamma_ms + PARAMS.delta_ms * 512, rel=1e-6)
    assert perf.itl_ms == pytest.approx(PARAMS.alpha_ms + PARAMS.beta_ms, rel=1e-6)
    zero = MODEL.analyze(PARAMS, Load(0.0, 512, 128), ServerShape(64, 100))
    assert zero.throughput_rps == 0.0 and zero.ttft_ms == pytest.approx(perf.ttft_ms, rel=1e-6)


def test_monotone_in_rate() -> None:
    rates = np.linspace(0.2, 12.0, 25)
    perfs = [MODEL.analyze(PARAMS, Load(r, 512, 128), ServerShape(64, 200)) for r in rates]
    for key in ("ttft_ms", "itl_ms", "ttft_p95_ms", "ttft_p99_ms", "mean_batch", "utilization"):
        values = [getattr(p, key) for p in perfs]
        assert all(b >= a - 1e-9 for a, b in itertools.pairwise(values)), key


def test_monotone_in_batch_and_cap() -> None:
    load = Load(6.0, 512, 128)
    ttft = [MODEL.analyze(PARAMS, load, ServerShape(n, 500)).ttft_ms for n in (8, 16, 32, 64)]
    assert ttft == sorted(ttft, reverse=True)  # a bigger batch absorbs more load: shorter queues
    caps = [700, 600, 500, 400, 300, 200]
    perfs = [MODEL.analyze(PARAMS, load, ServerShape(64, 500, c), H100) for c in caps]
    assert [p.ttft_ms for p in perfs] == sorted(p.ttft_ms for p in perfs)
    assert [p.itl_ms for p in perfs] == sorted(p.itl_ms for p in perfs)
    assert all(p.power_w <= c + 1e-9 for p, c in zip(perfs, caps, strict=True))


def test_prefill_feels_the_cap_more_than_decode() -> None:
    free = MODEL.analyze(PARAMS, Load(0.01, 512, 128), ServerShape(64, 10, 700), H100)
    capped = MODEL.analyze(PARAMS, Load(0.01, 512, 128), ServerShape(64, 10, 350), H100)
    assert capped.ttft_ms / free.ttft_ms > 1.5
    assert 1.0 < capped.itl_ms / free.itl_ms < 1.15


def test_a_cap_slows_decode_only_where_its_batch_would_draw_more() -> None:
    """mm1k-cb: a batch of 8 draws 270 W here, so 350 W never bites its decode steps; a full batch of 256
    would draw 603 W, and the cap slows its compute share, 256 / (256 + 64), as it slows prompts:
    1 + s_p 0.8 (603 / 350 - 1); lower caps more. (At rate 0: no prompts share the GPU.)"""
    profile = dataclasses.replace(H100, prefill_sensitivity=0.5, busy_share=0.2, batch_half=64.0)
    load = Load(0.0, 512, 128)

    def law(n: int, cap: float | None) -> StepLaw:
        return continuous_law(PARAMS, load, profile, ServerShape(n, None, cap))

    assert law(8, 350).decode(8.0) == pytest.approx(law(8, None).decode(8.0), rel=1e-12)
    draw_256 = 95 + 605 * (0.2 + 0.8 * 256 / (256 + 64))
    assert law(256, 350).decode(256.0) / law(256, None).decode(256.0) == pytest.approx(
        1 + 0.5 * 0.8 * (draw_256 / 350 - 1), rel=1e-9)
    caps = [None, 700, 560, 450, 350, 250]
    full = [law(256, c).decode(256.0) for c in caps]
    assert full == sorted(full) and full[1] == full[0] and full[-1] > full[-2]


def test_draw_is_idle_at_rest_and_the_full_batch_draw_when_overloaded() -> None:
    """mm1k-batch (no prompt share): rate 0 draws idle; an overloaded bounded queue keeps a full batch
    running and draws idle + (peak - idle) (busy + (1 - busy) N / (N + h)), or the cap below that."""
    rest = MODEL.analyze(PARAMS, Load(0.0, 512, 128), ServerShape(64, 100, 500.0), H100)
    assert rest.power_w == pytest.approx(95.0, rel=1e-12)
    full_w = 95 + 605 * (H100.busy_share + (1 - H100.busy_share) * 64 / (64 + H100.batch_half))
    over = MODEL.analyze(PARAMS, Load(500.0, 512, 128), ServerShape(64, 100), H100)
    assert over.power_w == pytest.approx(full_w, rel=1e-9)
    capped = MODEL.analyze(PARAMS, Load(500.0, 512, 128), ServerShape(64, 100, 300.0), H100)
    assert capped.power_w == pytest.approx(300.0, rel=1e-9)


def test_draw_rises_with_load_and_prompts_and_never_passes_the_cap() -> None:
    """mm1k-cb: more load runs bigger batches, longer prompts keep the GPU at the prefill knee longer;
    a cap clips each phase, so the draw never exceeds it."""
    shape = ServerShape(64, None)
    draws = [CB.analyze(PARAMS, Load(r, 512, 128), shape, H100).power_w for r in (0.0, 0.5, 2.0, 4.0, 5.0)]
    assert draws == sorted(draws) and draws[0] == pytest.approx(95.0)
    short = CB.analyze(PARAMS, Load(1.0, 256, 128), shape, H100).power_w
    long = CB.analyze(PARAMS, Load(1.0, 8192, 128), shape, H100).power_w
    assert long > short + 20.0
    for cap, rate, batch in itertools.product((200.0, 300.0, 450.0, 700.0), (0.5, 2.0, 4.0, 20.0), (8, 64, 256)):
        try:
            perf = CB.analyze(PARAMS, Load(rate, 2048, 128), ServerShape(batch, 500, cap), H100)
        except ModelInputError:  # prompts alone would need the whole GPU
            continue
        assert 95.0 <= perf.power_w <= cap + 1e-9


def test_gen2_family() -> None:
    params = ServiceParams("gen2", alpha_ms=20.58, beta_ms=0.041, gamma_ms=0.00128)
    low = MODEL.analyze(params, Load(0.01, 256, 64), ServerShape(32, 100))
    high = MODEL.analyze(params, Load(3.0, 256, 64), ServerShape(32, 100))
    assert low.itl_ms > params.alpha_ms
    assert high.itl_ms > low.itl_ms and high.ttft_ms > low.ttft_ms


def test_max_rate_sits_on_the_boundary() -> None:
    targets = Targets(ttft_ms=400, itl_ms=30)
    shape = ServerShape(64, 500)
    rate = max_rate(PARAMS, LOAD, shape, targets)
    assert MODEL.analyze(PARAMS, Load(rate, 512, 128), shape).meets(targets)
    assert not MODEL.analyze(PARAMS, Load(rate * 1.01, 512, 128), shape).meets(targets)
    p95 = max_rate(PARAMS, LOAD, shape, Targets(400, 30, "p95"))
    assert 0 < p95 < rate


@pytest.mark.parametrize("model", ["mm1k-cb", "mm1k-batch"])
@pytest.mark.parametrize("statistic", ["p95", "p99"])
def test_percentile_sizing_sits_where_the_reported_percentile_meets_the_target(model: str, statistic: str) -> None:
    """Sizing checks P(latency > target) directly; the percentiles analyze reports must agree at the boundary."""
    m = get_model(model)
    shape = ServerShape(32, 500, 450.0)
    for ttft_ms in (300.0, 900.0, 4000.0):
        targets = Targets(ttft_ms, 60.0, statistic)
        rate = m.max_rate(PARAMS, LOAD, shape, targets, H100)
        assert rate > 0
        at = m.analyze(PARAMS, Load(rate, 512, 128), shape, H100)
        above = m.analyze(PARAMS, Load(rate * 1.01, 512, 128), shape, H100)
        ttft, itl = at.latency_at(statistic)
        assert ttft <= ttft_ms * 1.005 and itl <= 60.0
        assert not above.meets(Targets(ttft_ms * 1.005, 60.0, statistic))


def test_max_rate_zero_when_targets_are_impossible() -> None:
    assert max_rate(PARAMS, LOAD, ServerShape(64, 10), Targets(ttft_ms=1.0, itl_ms=30)) == 0.0


def test_best_batch_choices() -> None:
    """The batch that takes the most rate takes at least what every other candidate does; the batch that
    draws least at a rate meets the targets there and draws no more than any other that does (within TIE)."""
    targets = Targets(ttft_ms=600, itl_ms=40)
    batches = [4, 8, 16, 32, 64]
    by_rate = best_batch_for_rate(CB, PARAMS, LOAD, batches, 200, targets)
    rates = {n: CB.max_rate(PARAMS, LOAD, ServerShape(n, 200), targets) for n in batches}
    assert by_rate.max_rate_rps == rates[by_rate.max_batch] > 0
    assert all(r <= by_rate.max_rate_rps * (1 + TIE) for r in rates.values())
    load = Load(1.0, 512, 128)
    by_power = best_batch_for_power(CB, PARAMS, load, batches, 200, targets, H100, 500)
    assert by_power is not None and by_power.performance is not None and by_power.performance.meets(targets)
    draws = [p.power_w for p in (CB.analyze(PARAMS, load, ServerShape(n, 200, 500), H100) for n in batches)
             if p.meets(targets)]
    assert by_power.performance.power_w <= min(draws) * (1 + TIE)
    assert best_batch_for_power(CB, PARAMS, Load(50.0, 512, 128), batches, 200, targets, H100, 500) is None



def test_the_smallest_batch_within_tie_of_the_best_wins_whatever_the_order() -> None:
    """Each batch was compared with the best so far: rates 1.0, 1.00009 and 1.00018 chose 64, though 32 is within
    1e-4 of it."""

    class Rates:
        def max_rate(self, params: ServiceParams, load: Load, shape: ServerShape, *_: object) -> float:
            return {16: 1.0, 32: 1.00009, 64: 1.00018}[shape.max_batch]

    choice = best_batch_for_rate(Rates(), PARAMS, LOAD, [64, 16, 32], 200, Targets(600, 40))  # type: ignore[arg-type]
    assert (choice.max_batch, choice.max_rate_rps) == (32, 1.00009)

CB = get_model("mm1k-cb")


def test_output_spread_scales_queueing_delay_allen_cunneen() -> None:
    """out_cv = 1 is the exponential chain; out_cv = 0 halves its queueing delay, (1 + cs^2) / 2, and
    the wait quantiles shrink with it; the service itself is untouched."""
    shape = ServerShape(8, None)
    exp = CB.analyze(PARAMS, Load(2.4, 512, 128), shape)
    det = CB.analyze(PARAMS, Load(2.4, 512, 128, out_cv=0.0), shape)
    assert exp.extra["wait_ms"] > 100.0  # a point where queueing matters
    assert det.extra["wait_ms"] == pytest.approx(0.5 * exp.extra["wait_ms"], rel=1e-12)
    assert exp.ttft_ms - det.ttft_ms == pytest.approx(0.5 * exp.extra["wait_ms"], rel=1e-12)
    assert det.itl_ms == exp.itl_ms and det.throughput_rps == exp.throughput_rps
    assert det.ttft_p95_ms < exp.ttft_p95_ms


def test_prompt_spread_widens_the_ttft_tail_and_its_mean_by_the_steps_it_spreads() -> None:
    """Its mean moves only through the steps' spread (the step in flight is length-biased, the next carries the
    others: terms of phi, 3 % of the GPU here), its tail by the prompt's own spread too."""
    shape = ServerShape(64, None)
    narrow = CB.analyze(PARAMS, Load(2.0, 2048, 128, in_cv=0.2), shape)
    wide = CB.analyze(PARAMS, Load(2.0, 2048, 128, in_cv=1.5), shape)
    assert narrow.ttft_ms < wide.ttft_ms < 1.02 * narrow.ttft_ms
    assert narrow.ttft_p95_ms < wide.ttft_p95_ms
    assert narrow.ttft_p99_ms < wide.ttft_p99_ms


def test_waiting_tail_same_through_incomplete_gammas_and_the_exponential() -> None:
    """A queue just long enough that the mass it cuts (about 1e-8) keeps the incomplete-gamma form, and
    the unbounded queue, whose tail is read as M/M/1's exponential: the same percentiles."""
    load = Load(2.2, 512, 128)
    unbounded = CB.analyze(PARAMS, load, ServerShape(8, None))
    rho = unbounded.utilization
    queue = math.ceil(math.log(1e-8) / math.log(rho))
    bounded = CB.analyze(PARAMS, load, ServerShape(8, queue))
    assert unbounded.extra["wait_ms"] > 100.0 and 1e-10 < bounded.block_probability < 1e-7
    assert bounded.ttft_p95_ms == pytest.approx(unbounded.ttft_p95_ms, rel=1e-6)
    assert bounded.ttft_p99_ms == pytest.approx(unbounded.ttft_p99_ms, rel=1e-6)


def test_grouped_free_states_match_the_full_mixture() -> None:
    """Batch 256 at moderate load: ~200 free states an arrival may find, merged into 32 groups."""
    shape = ServerShape(256, None)
    law = continuous_law(PARAMS, Load(8.0, 512, 128, in_cv=0.5), None, shape)
    chain = solve_chain(law, shape, 8.0)
    free = chain.p[:256]
    assert np.count_nonzero(free > 1e-12 * free.max()) > 100
    wait = means(chain).wait_ms
    grouped = ttft_quantiles(chain, law, wait, (0.5, 0.95, 0.99))
    full = ttft_quantiles(chain, law, wait, (0.5, 0.95, 0.99), groups=10**6)
    assert grouped == pytest.approx(full, rel=0.01)


@pytest.mark.parametrize(
    "build,field",
    [
        (lambda: ServiceParams("gen3", 1, 1, 1), "family"),
        (lambda: ServiceParams("gen1", -1, 1, 1), "alpha_ms"),
        (lambda: ServiceParams("gen1", 1, float("nan"), 1), "beta_ms"),
        (lambda: Load(-1, 10, 10), "rate_rps"),
        (lambda: Load(1, 10, 0), "out_tokens"),
        (lambda: Load(1, 10, 10, in_cv=-0.5), "in_cv"),
        (lambda: Load(1, 10, 10, out_cv=float("inf")), "out_cv"),
        (lambda: ServerShape(0, 10), "max_batch"),
        (lambda: ServerShape(4, -1), "max_queue"),
        (lambda: Targets(0, 10), "ttft_ms"),
        (lambda: MODEL.analyze(PARAMS, Load(100.0, 512, 128), ServerShape(8, None)), "rate_rps"),
        (lambda: get_model("nope"), "queue model"),
    ],
)
def test_bad_inputs_name_the_field(build: object, field: str) -> None:
    with pytest.raises(ModelInputError, match=field):
        build()  # type: ignore[operator]


def test_saturation_rate_is_where_a_full_batch_completes_the_arrivals_it_takes() -> None:
    params, load = ServiceParams("gen1", 11.4, 0.05, 4.9, 0.035), Load(1.0, 1024, 256)
    model = get_model("mm1k-cb")
    sat = model.saturation_rps(params, load, ServerShape(64, None))
    law = continuous_law(params, Load(sat, 1024, 256), None, ServerShape(64, None))
    assert 1000.0 * 64 / (law.t0 + law.t1 * 64) == pytest.approx(sat, rel=1e-5)
    model.analyze(params, Load(0.99 * sat, 1024, 256), ServerShape(64, None), tails=False)
    with pytest.raises(ModelInputError, match=f"saturates at {sat:.6g} rps"):
        model.analyze(params, Load(1.01 * sat, 1024, 256), ServerShape(64, None))


@pytest.mark.parametrize("max_queue", [0, 16, 1024])
def test_an_overloaded_bounded_queue_serves_its_saturation_with_tails_above_the_mean(max_queue: int) -> None:
    params = ServiceParams("gen1", 11.4, 0.05, 4.9, 0.035)
    model = get_model("mm1k-cb")
    sat = model.saturation_rps(params, Load(1.0, 1024, 256), ServerShape(64, None))
    for overload in (1.2, 2.0, 4.0):  # blocked arrivals cost no GPU time: the rest are served at saturation
        perf = model.analyze(params, Load(overload * sat, 1024, 256), ServerShape(64, max_queue))
        assert perf.throughput_rps <= sat * (1 + 1e-3)
        assert perf.throughput_rps >= sat * (0.9 if max_queue == 0 else 0.99)
        assert perf.ttft_ms <= perf.ttft_p95_ms <= perf.ttft_p99_ms


def test_a_full_queue_holds_no_longer_a_wait_than_its_length_whatever_the_spread() -> None:
    """(1 + cv^2) / 2 lengthens an open queue's wait; past saturation a queue of 1,024 read a mean wait 50 times what
    1,024 requests take to serve at an output cv of 10 (a trial of `analyze`): at most that (Little), and the tails
    with it. Below saturation the spread still lengthens the wait, as one solved together reads it."""
    params = ServiceParams("gen1", 11.4, 0.05, 4.9, 0.035)
    model = get_model("mm1k-cb")
    sat = model.saturation_rps(params, Load(1.0, 1024, 256), ServerShape(64, None))
    for cv in (1.0, 3.0, 10.0):
        perf = model.analyze(params, Load(8 * sat, 1024, 256, 1.0, cv), ServerShape(64, 1024))
        assert perf.extra["wait_ms"] <= 1024 / perf.throughput_rps * 1000 * (1 + 1e-9)
        assert perf.ttft_ms <= perf.ttft_p95_ms <= perf.ttft_p99_ms
    open_queue = model.analyze(params, Load(0.9 * sat, 1024, 256, 1.0, 3.0), ServerShape(64, 1024))
    assert open_queue.extra["wait_ms"] > 2 * model.analyze(params, Load(0.9 * sat, 1024, 256), ServerShape(
        64, 1024)).extra["wait_ms"]


@pytest.mark.parametrize(("family", "in_tokens"), [("gen1", 1), ("gen1", 64), ("step", 1)])
def test_with_no_queue_an_accepted_request_waits_out_no_step_in_flight(family: str, in_tokens: int) -> None:
    """Batch 1 and no queue: every request accepted finds the GPU idle. The step in flight was charged at the
    time-average busy share, the turned-away load's included: the mean TTFT rose with the load above its own p95
    (22.6 against 15.1 ms at 1,000 rps; a trial of `analyze`)."""
    params = ServiceParams(family, 15, 0.1, 10, 0.05)
    model = get_model("mm1k-cb")
    light, heavy = (model.analyze(params, Load(rate, in_tokens, 256), ServerShape(1, 0)) for rate in (0.01, 1000.0))
    assert heavy.ttft_ms == pytest.approx(light.ttft_ms, rel=1e-3)
    assert heavy.ttft_ms <= heavy.ttft_p95_ms * (1 + 1e-6)


PROMPT_BOUND = [  # (params, load, shape): prompts alone, or a token budget's room, fill the GPU below the offered rate
    (ServiceParams("step", 15, 0.1, 10, 0.05), Load(5.0, 8000, 4), ServerShape(256, 1024)),
    (ServiceParams("gen1", 15, 0.01, 0.1, 1.0), Load(1.0, 4000, 2), ServerShape(4096, 0)),
    (ServiceParams("step", 30, 0.1, 10, 0.02, kappa_ms=1e-4, rho=1.0, budget_tokens=2048.0),
     Load(26.46, 2048, 64, 0.5, 0.5), ServerShape(256, 0)),
    (ServiceParams("gen1", 8, 0.1, 10, 0.1), Load(2.0, 8000, 16), ServerShape(256, 10)),
]


@pytest.mark.parametrize(("params", "load", "shape"), PROMPT_BOUND)
def test_a_queue_bound_by_its_own_prompts_serves_no_more_than_its_saturation(params: ServiceParams, load: Load,
                                                                            shape: ServerShape) -> None:
    """The accepted-rate bisection ends at the last rate with a law (past it the prompts need the whole GPU), whose
    chain, its batch able to complete more, served the offered rate at the bound's law: 4.7 rps where prompts
    alone allow 2.5, with 6 % blocked. Slowed until it serves the bound, blocking takes the rest. Its steps are then
    long and most arrivals wait: each waits for the step in flight, as the mean charges it (the tails had left it out
    and read p95 at 0.70 of the mean)."""
    model = get_model("mm1k-cb")
    sat = model.saturation_rps(params, load, shape)
    perf = model.analyze(params, load, shape)
    assert perf.throughput_rps == pytest.approx(sat, rel=0.02)
    assert perf.block_probability == pytest.approx(1.0 - perf.throughput_rps / load.rate_rps, rel=1e-6)
    assert perf.ttft_ms <= perf.ttft_p95_ms <= perf.ttft_p99_ms


def test_a_law_slowed_by_k_takes_k_times_as_long_budget_wait_included() -> None:
    """The saturated queue's law is its bound's slowed (operating_point.slowed_to): the budget wait, part of p0, kept
    its unscaled size as the variable part of prefill in the tails (p95 9-11 % short)."""
    params = ServiceParams("step", 30, 0.1, 10, 0.02, kappa_ms=1e-4, rho=1.0, budget_tokens=2048.0)
    law = continuous_law(params, Load(5.0, 2048, 64, 0.5, 0.5), None, ServerShape(256, 0))
    slow = law.scaled(3.0, 3.0)
    assert law.budget_wait_ms > 0.0 and slow.budget_wait_ms == pytest.approx(3.0 * law.budget_wait_ms)
    assert slow.budget_wait_var == pytest.approx(9.0 * law.budget_wait_var)
    for batch in (1.0, 64.0, 256.0):
        assert float(slow.tau(batch)) == pytest.approx(3.0 * float(law.tau(batch)), rel=1e-12)


def test_a_plan_for_a_client_that_drops_turns_away_no_more_than_the_limit() -> None:
    """A queue of 0 at batch 8 met its latency targets at 1.9 rps while turning 25 % of them away: sizing read
    latency alone, and a plan on it left that share unserved (short_rps 0)."""
    from queuemodels.operating_point import BLOCK_LIMIT

    params, model, targets = ServiceParams("step", 15, 0.1, 10, 0.05), get_model("mm1k-cb"), Targets(500, 50)
    for batch in (8, 16):
        load, shape = Load(1.0, 512, 256), ServerShape(batch, 0)
        top = model.max_rate(params, load, shape, targets)
        assert top > 0 and model.analyze(params, load.at_rate(top), shape).block_probability <= BLOCK_LIMIT
        assert model.analyze(params, load.at_rate(1.05 * top), shape).block_probability > BLOCK_LIMIT


@pytest.mark.parametrize("max_queue", [0, 16, 1024, 200_000])
def test_the_accepted_rate_bisection_reads_blocking_in_closed_form_and_solves_one_chain(
        max_queue: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """The bisection solved the whole chain at each of its ~15 steps for P(full) alone: on a queue of a million
    states an overloaded analysis took a second, and `tune` on such windows half a minute a row. P(full) in
    closed form is the chain's own to 1e-9, and the chain is solved once."""
    from queuemodels import operating_point

    params = ServiceParams("gen1", 11.4, 0.05, 4.9, 0.035)
    model = get_model("mm1k-cb")
    sat = model.saturation_rps(params, Load(1.0, 1024, 256), ServerShape(64, None))
    shape = ServerShape(64, max_queue)
    law = continuous_law(params, Load(0.9 * sat, 1024, 256), None, shape)  # the law at an accepted rate
    for rate in (0.5 * sat, 0.99 * sat, 1.5 * sat, 3.0 * sat):  # the chain at the offered one
        p_full = float(solve_chain(law, shape, rate).p[-1])
        assert operating_point.blocking(law, shape, rate) == pytest.approx(p_full, rel=1e-9, abs=1e-300)
    solved: list[int] = []
    real = operating_point.stationary
    monkeypatch.setattr(operating_point, "stationary", lambda *a: solved.append(1) or real(*a))
    perf = model.analyze(params, Load(3.0 * sat, 1024, 256), shape)
    assert len(solved) <= 2 and perf.throughput_rps == pytest.approx(sat, rel=1e-3 if max_queue else 0.1)


def test_a_bounded_queue_a_hair_below_saturation_is_analysed_whole() -> None:
    """A long bounded queue is cut where an unbounded one's tail vanishes; a hair below saturation that cut is past
    the chain's bound, which raised "too close to 1 for an unbounded queue" on a queue of 1,024."""
    params = ServiceParams("gen1", 11.4, 0.05, 4.9, 0.035)
    model = get_model("mm1k-cb")
    sat = model.saturation_rps(params, Load(1.0, 1024, 256), ServerShape(8, None))
    perf = model.analyze(params, Load(0.99999 * sat, 1024, 256), ServerShape(8, 1024))
    assert 0.0 < perf.block_probability < 0.01 and perf.ttft_ms <= perf.ttft_p95_ms


def test_percentile_sizing_on_a_bounded_queue_stays_below_saturation() -> None:
    params, load = ServiceParams("gen1", 11.4, 0.05, 4.9, 0.035), Load(1.0, 1024, 256)
    model = get_model("mm1k-cb")
    shape = ServerShape(64, 16)
    sat = model.saturation_rps(params, load, shape)
    assert model.max_rate(params, load, shape, Targets(1e6, 1e3, "p95")) < sat


def test_no_prompt_cost_at_all_sizes_a_p95_target_as_its_limit_does() -> None:
    """delta_ms = 0 (the CLI's default) leaves states whose prefill time does not vary: their survival is a
    step, not 0 / 0. The rate a p95 target admits is the limit of a vanishing prompt cost, without warnings."""
    import warnings

    load, shape, targets = Load(10.0, 400.0, 200.0), ServerShape(64, None), Targets(300.0, 30.0, "p95")
    model = get_model(DEFAULT_MODEL)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        none = model.max_rate(ServiceParams("gen1", 11.4, 0.05, 4.9, 0.0), load, shape, targets)
    tiny = model.max_rate(ServiceParams("gen1", 11.4, 0.05, 4.9, 1e-9), load, shape, targets)
    assert none > 10.0 and none == pytest.approx(tiny, rel=1e-6)


@pytest.mark.parametrize("bad", [0.5, 0.0, 65.0, float("nan"), float("inf")])
def test_a_load_refuses_tokens_per_step_outside_one_to_64(bad: float) -> None:
    with pytest.raises(ModelInputError, match="tokens_per_step"):
        Load(1.0, 500, 200, tokens_per_step=bad)


@pytest.mark.parametrize("bad", [-0.5, 63.5, float("nan"), float("inf")])
def test_a_load_refuses_draft_tokens_outside_zero_to_63(bad: float) -> None:
    with pytest.raises(ModelInputError, match="draft_tokens"):
        Load(1.0, 500, 200, tokens_per_step=2.0, draft_tokens=bad)


def test_drafts_read_are_verified_and_charged_to_the_token_budget() -> None:
    """With the drafts read (vLLM's spec_decode counters), a decoding sequence computes 1 + its drafts in the
    verifying pass, kept or refused, and takes as many tokens of the step's budget, so a prompt's chunks are
    smaller; where none are read, it computes the tokens it keeps and takes one, as before."""
    params = ServiceParams("step", 12.0, 0.09, 10.0, 0.035, kappa_ms=1e-4, epsilon_ms=2.0, rho=1.0,
                           budget_tokens=1024.0)
    kept = Roofline.of(params, Load(0.5, 2048, 256, tokens_per_step=2.5))
    drafted = Roofline.of(params, Load(0.5, 2048, 256, tokens_per_step=2.5, draft_tokens=3.0))
    assert kept.compute_per_seq_ms == pytest.approx(1.0 * 0.035 * 2.5)
    assert drafted.compute_per_seq_ms == pytest.approx(1.0 * 0.035 * 4.0)
    for batch in (16.0, 128.0, 200.0):
        assert kept.chunks(batch) == pytest.approx(smooth_chunks(2048 / max(1024 - batch, 128.0)))
        assert drafted.chunks(batch) == pytest.approx(smooth_chunks(2048 / max(1024 - 4 * batch, 128.0)))
    assert Roofline.of(params, Load(0.5, 2048, 256)) == Roofline.of(params, Load(0.5, 2048, 256, draft_tokens=0.0))
    shape, h100 = ServerShape(128, None), profile("H100-SXM")
    model = get_model(DEFAULT_MODEL)
    sats = [model.saturation_rps(params, Load(1.0, 2048, 256, tokens_per_step=2.5, draft_tokens=k), shape, h100)
            for k in (0.0, 3.0)]
    assert sats[1] < 0.97 * sats[0]  # 5 % less: the drafts computed, and the room they take from long prompts


@pytest.mark.parametrize("model", ["mm1k-cb", "mm1k-batch"])
def test_an_answer_at_several_tokens_a_step_takes_fewer_steps(model: str) -> None:
    """Under speculative decoding a step gives a sequence several tokens and one ITL sample: an answer of N tokens at
    k a step is one of 1 + (N - 1) / k outputs (where nothing reads the tokens themselves: no KV bound, no context
    term), and holds its slot for fewer steps, so the batch is smaller and the capacity larger at the same step."""
    params = ServiceParams("gen1", 12.0, 0.09, 10.0, 0.035)
    shape, h100 = ServerShape(64, 1024, 500.0), profile("H100-SXM")
    spec = get_model(model).analyze(params, Load(4.0, 800, 256, tokens_per_step=2.5), shape, h100)
    same = get_model(model).analyze(params, Load(4.0, 800, 1 + 255 / 2.5), shape, h100)
    assert spec == same
    plain = get_model(model).analyze(params, Load(4.0, 800, 256), shape, h100)
    assert spec.mean_batch < 0.5 * plain.mean_batch
    sat = [get_model(model).saturation_rps(params, Load(4.0, 800, 256, tokens_per_step=k), shape, h100)
           for k in (1, 2.5)]
    assert sat[1] > 1.5 * sat[0]  # the prompts' share of the GPU is the same: less than 2.5 x


def test_a_step_that_keeps_several_tokens_a_sequence_computes_each() -> None:
    """The verifying pass computes every token a step keeps: under speculative decoding a large batch's decode
    turns compute-bound sooner (read as one token a sequence, its capacity at batch 128-256 read 21-61 % over), and
    a small batch's, memory-bound, barely moves."""
    params = ServiceParams("step", 12.0, 0.09, 10.0, 0.035, kappa_ms=1e-4, epsilon_ms=2.0, rho=1.0)
    shape = ServerShape(256, 1024)

    def step(k: float, batch: float) -> float:
        return float(continuous_law(params, Load(0.5, 512, 256, tokens_per_step=k), None, shape).decode(batch))

    assert step(2.5, 256.0) - step(2.5, 64.0) > 1.1 * (step(1.0, 256.0) - step(1.0, 64.0))  # 34.0 against 30.1 ms
    assert step(2.5, 4.0) == pytest.approx(step(1.0, 4.0), rel=0.02)
