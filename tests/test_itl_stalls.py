"""Where the inter-token tail comes from under continuous batching: decode steps stalled behind the prompts a step
carries, which slow with the SM clock."""

from __future__ import annotations

import numpy as np
import pytest

from queuemodels import Load, PowerProfile, ServerShape, ServiceParams, get_model
from queuemodels.chain import means
from queuemodels.continuous_law import continuous_law, gated_residual_ms
from queuemodels.itl_tails import _itl_distribution, _prompt_steps, itl_exceedance
from queuemodels.operating_point import solve_chain
from queuemodels.service_time import StepLaw

MODEL = get_model("mm1k-cb")
PARAMS = ServiceParams("gen1", alpha_ms=11.9, beta_ms=0.14, gamma_ms=12.9, delta_ms=0.038)
"""About what the tuner learns for llama-3.1-8b on an H100: a 3,000-token prompt costs about 100 ms."""
PROFILE = PowerProfile("H100", max_power_w=700, min_power_w=200, idle_power_w=95, clock_time_sensitivity=1.0)
PREFILL_HEAVY = Load(4.0, 3000, 64, in_cv=0.5, out_cv=0.5)


def branching_steps(rate_per_ms: float, plain_ms: float, cost_ms: float, cv: float, steps: int) -> np.ndarray:
    """Step lengths of the process itself: a step carries the prompts that arrived during the one before (Poisson),
    each of mean cost `cost_ms` and spread `cv` (gamma)."""
    rng = np.random.default_rng(7)
    out = np.empty(steps)
    k = 0
    for i in range(steps):
        out[i] = plain_ms + (cost_ms * rng.gamma(k / cv**2, cv**2) if k else 0.0)
        k = int(rng.poisson(rate_per_ms * out[i]))
    return out


@pytest.mark.parametrize(("rate_per_ms", "cost_ms"), [(0.004, 160.0), (0.008, 100.0), (0.002, 40.0)])
def test_the_prompts_a_step_carries_follow_the_branching_process(rate_per_ms: float, cost_ms: float) -> None:
    plain, cv = 15.0, 0.5
    phi = rate_per_ms * cost_ms
    law = StepLaw(0.0, 0.0, plain / (1.0 - phi), 0.0, 10.0, prompt_ms=cost_ms, residual_share=0.5,
                  residual_ms=gated_residual_ms(cost_ms, phi, cv), prompt_cv=cv, prompt_share=phi)
    values, weights = _prompt_steps(law, np.array([plain / (1.0 - phi)]), np.array([1.0]), rate_per_ms)
    truth = branching_steps(rate_per_ms, plain, cost_ms, cv, 100_000)
    # the mean step is the law's stretched one; the tail past one and two prompts is the process's
    assert float(values @ weights) == pytest.approx(plain / (1.0 - phi), rel=0.02)
    assert float(truth.mean()) == pytest.approx(plain / (1.0 - phi), rel=0.03)
    for t in (plain + 0.5 * cost_ms, plain + 1.5 * cost_ms, plain + 2.5 * cost_ms):
        assert float(weights[values > t].sum()) == pytest.approx(float(np.mean(truth > t)), rel=0.15, abs=0.002)


def test_a_lower_clock_stalls_more_tokens_past_the_target_behind_slower_prompts() -> None:
    shape = ServerShape(256, 1000, None)
    shares = []
    for clock in (None, 0.8, 0.65):
        law = continuous_law(PARAMS, PREFILL_HEAVY, PROFILE, ServerShape(256, 1000, None, clock))
        chain = solve_chain(law, shape, PREFILL_HEAVY.rate_rps)
        shares.append(itl_exceedance(chain, law, means(chain).throughput_per_ms, 300.0))
    assert shares[0] < shares[1] < shares[2]
    assert 0.01 < shares[2] < 0.1  # steps behind two prompts at 0.65 of the clock: a few % of tokens
    # most steps carry no prompt: the median token waits a plain decode step, far below the mean
    perf = MODEL.analyze(PARAMS, PREFILL_HEAVY, ServerShape(256, 1000, None, 0.65), PROFILE)
    law = continuous_law(PARAMS, PREFILL_HEAVY, PROFILE, ServerShape(256, 1000, None, 0.65))
    chain = solve_chain(law, shape, PREFILL_HEAVY.rate_rps)
    values, cum = _itl_distribution(chain, law, means(chain).throughput_per_ms)
    median = float(values[np.searchsorted(cum, 0.5)])
    assert median < 0.6 * perf.itl_ms < perf.itl_p95_ms < perf.itl_p99_ms


def test_short_prompts_leave_the_tail_to_the_batch() -> None:
    short = Load(6.0, 128, 1024, in_cv=0.5, out_cv=0.5)
    perf = MODEL.analyze(PARAMS, short, ServerShape(128, 1000, None), PROFILE)
    assert perf.itl_p99_ms < 1.3 * perf.itl_ms  # a 128-token prompt adds a few ms to the step that carries it


def test_more_prompts_a_step_than_the_counts_read_ride_the_last_count() -> None:
    """Thousands of short prompts a second: even the mean count of prompts a step carries is past K_MAX, so every
    count read is below NEGLIGIBLE; the mass rides the last count read (an IndexError before)."""
    params, load, shape = ServiceParams("gen1", 12, 0.09, 10, 0.035), Load(5000, 8, 1), ServerShape(256, 1000)
    perf = MODEL.analyze(params, load, shape)
    assert np.isfinite(perf.itl_p95_ms) and perf.itl_p95_ms > MODEL.analyze(params, load.at_rate(50), shape).itl_p95_ms


def gated_arrivals(rate_per_ms: float, plain_ms: float, cost_ms: float, cv: float, steps: int) -> tuple[float, float]:
    """What the arrivals of the process itself wait for the step in flight and then take in the step that carries
    them (with the others that arrived in the same step), averaged over arrivals: those of a step land uniformly
    over it and ride the next. Each prompt costs a gamma draw of mean `cost_ms` and spread `cv` (0: fixed)."""
    rng = np.random.default_rng(11)
    length = plain_ms
    residual = own = 0.0
    arrivals = 0
    for _ in range(steps):
        following = int(rng.poisson(rate_per_ms * length))  # arrive during this step, ride the next
        costs = cost_ms * (rng.gamma(following / cv**2, cv**2) if cv > 0.0 else following) if following else 0.0
        nxt = plain_ms + costs
        residual += following * length / 2.0
        own += following * nxt
        arrivals += following
        length = nxt
    return residual / arrivals, own / arrivals


@pytest.mark.parametrize(("rate_rps", "cv"), [(2.0, 0.0), (8.0, 0.0), (10.0, 0.0), (8.0, 0.6), (10.0, 0.6)])
def test_a_prompt_waits_for_a_length_biased_step_and_rides_the_next_with_the_others(rate_rps: float,
                                                                                    cv: float) -> None:
    """Steps that carry every prompt that arrived during the one before vary with them: an arrival more likely
    lands in a long step, and the next carries the others that arrived in it. At phi = 0.8 the first term of the
    series (c (1 + phi^2)) read the prompt's step 40 % short; costs that spread (cv 0.6) lengthen both by a third."""
    params = ServiceParams("gen1", 15.0, 1e-6, 20.0, 0.1)
    law = continuous_law(params, Load(rate_rps, 1000.0, 100.0, in_cv=cv), None, ServerShape(1, None))
    phi = rate_rps * law.prompt_ms / 1000.0
    residual, own = gated_arrivals(rate_rps / 1000.0, 15.0, law.prompt_ms, cv, 400_000)
    assert law.prompt_share == pytest.approx(phi)
    assert law.residual_share * law.d0 + law.residual_ms == pytest.approx(residual, rel=0.03)
    assert law.p0 == pytest.approx(own, rel=0.03)  # the step stretched by 1 / (1 - phi) and the prompts it carries
