"""Where TTFT's spread comes from at loads that do not queue: the prompt steps in flight, and the budget's queue."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from queuemodels import Load, ServerShape, ServiceParams, get_model
from queuemodels.continuous_law import continuous_law
from queuemodels.operating_point import solve_chain
from queuemodels.roofline import Roofline
from queuemodels.tails import _in_flight_variance, ttft_quantiles

STEP = ServiceParams("step", 11.5, 0.01, 6.2, 0.034, kappa_ms=5e-5, epsilon_ms=0.5, rho=1.0, budget_tokens=8000.0)
MODEL = get_model("mm1k-cb")


def test_a_prompt_step_in_flight_widens_the_wait_for_it_and_only_where_prompts_cost() -> None:
    states = np.arange(0.0, 20.0)
    long = continuous_law(STEP, Load(3.0, 2048, 256, in_cv=0.5), None, ServerShape(32, None))
    step = long.decode(np.maximum(states, 1.0))
    residual = (states > 0) * (0.5 * step + long.residual_ms)
    wider = _in_flight_variance(long, step, residual, first_empty=True)  # state 0 first
    assert np.all(wider[1:] > 2.0 * residual[1:] ** 2 / 3.0)  # a mixture with the prompt steps' long tail
    assert wider[0] == 0.0  # an idle engine has no step in flight
    no_prompt = dataclasses.replace(long, prompt_ms=0.0)
    assert np.array_equal(_in_flight_variance(no_prompt, step, residual, first_empty=True), residual**2 / 3.0)


def test_the_spread_moves_the_tail_and_leaves_the_mean() -> None:
    load, shape = Load(3.0, 2048, 256, in_cv=0.5), ServerShape(32, None)
    perf = MODEL.analyze(STEP, load, shape)
    assert perf.ttft_p95_ms > 1.6 * perf.ttft_ms
    short = MODEL.analyze(STEP, dataclasses.replace(load, in_tokens=128), shape)
    assert short.ttft_p95_ms < 1.6 * short.ttft_ms  # short prompts: the decode step in flight is the spread


def test_a_budget_queue_is_a_variable_wait_with_an_m_g_1_spread() -> None:
    params = dataclasses.replace(STEP, budget_tokens=512.0)
    load = Load(2.0, 2048, 256, in_cv=0.5)
    roofline = Roofline.of(params, load)
    wait, variance = roofline.budget_wait_ms(load, 20.0, 15.0)
    use = 2.0 * 2048 * 15.0 / (1000.0 * (512.0 - 20.0))
    assert wait == pytest.approx(use * roofline.chunks(20.0) * 15.0 * 1.25 / (2.0 * (1.0 - use)))
    assert variance == pytest.approx(wait**2 * (2.0 / use - 1.0))
    law = continuous_law(params, load, None, ServerShape(32, None))
    assert (law.budget_wait_ms, law.budget_wait_var) != (0.0, 0.0)
    # the wait counts once in the mean, and spreads the tail where a fixed wait would only shift it
    shape = ServerShape(32, None)
    chain = solve_chain(law, shape, load.rate_rps)
    fixed = dataclasses.replace(law, budget_wait_ms=0.0, budget_wait_var=0.0)  # the same wait, in p0, fixed
    spread, shifted = (ttft_quantiles(chain, x, 0.0, (0.5, 0.95)) for x in (law, fixed))
    assert spread[1] > shifted[1] + 0.5 * law.budget_wait_ms and spread[0] < shifted[0]


def test_prompts_that_ride_one_step_pay_its_fixed_cost_once() -> None:
    params = dataclasses.replace(STEP, epsilon_ms=12.0)
    shape = ServerShape(256, None)

    def shares(rate: float) -> tuple[float, float]:
        law = continuous_law(params, Load(rate, 128, 256), None, shape)
        phi = law.prompt_share  # the GPU's share on prompts
        return phi, rate * law.prompt_ms / 1000.0  # against each prompt paying all of its step's fixed cost

    trickle, busy = shares(0.2), shares(30.0)
    assert trickle[0] == pytest.approx(trickle[1], rel=0.01)
    assert busy[0] < 0.8 * busy[1]
    law = continuous_law(params, Load(30.0, 128, 256), None, shape)
    assert law.prompt_ms > 12.0  # a prompt's own first token still waits for all of it
