"""Scenario files: the shipped ones load, and a bad one gets one clear error naming the field."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controller.cli import main
from controller.config_loader import ConfigError
from controller.settings import load_settings
from controller.simulate.report import _code, _paragraph
from controller.simulate.scenario import Scenario, fast_ticks, load_scenario
from controller.simulate.sources import SimBudget

ROOT = Path(__file__).resolve().parents[1]


def _budget_at(scn: Scenario, t_s: float, signal_dir: Path) -> float:
    """The budget the run steps at `t_s`: the scenario's events before it applied, its sources stepped."""
    budget = SimBudget(scn, signal_dir)
    for e in sorted(scn.settings.events, key=lambda e: e.at_s):
        if e.at_s <= t_s:
            budget.apply(e, e.at_s)
    return budget.step(t_s)


def test_every_shipped_scenario_loads(tmp_path: Path) -> None:
    found = {p.stem: load_scenario(p) for p in sorted((ROOT / "config" / "scenarios").glob("*.toml"))}
    assert set(found) == {"diurnal", "tight-budget", "budget-step", "gpu-lost", "engine-drift", "heavy-tail",
                          "heterogeneous", "carbon-day", "demand-response", "rack-limit", "ramp-limit"}
    assert found["carbon-day"].config.budget is not None and found["carbon-day"].config.power.budget_w == 4800
    assert [d.name for d in found["rack-limit"].config.power.domains] == ["rack-a", "rack-b"]
    assert found["ramp-limit"].config.power.ramp_down_w_per_s == 25
    assert found["diurnal"].settings.duration_s == 7200
    assert found["tight-budget"].start_budget_w == 2600
    step = found["budget-step"]
    assert _budget_at(step, 1199, tmp_path) == 3400 and _budget_at(step, 1200, tmp_path) == pytest.approx(0.7 * 3400)
    assert _budget_at(step, 2400, tmp_path) == 3400
    assert sorted(set(found["heterogeneous"].gpu_types)) == ["H100-SXM", "L40S"]


@pytest.mark.parametrize(("body", "field", "words"), [
    ('name = "x"\nduration_s = 60\n[workload.chat]\nrate_rpss = 3\n', "workload.chat.rate_rpss", "unknown key"),
    ('name = "x"\nduration_s = 60\nfoo = 1\n', "foo", "'power'"),  # taken apart from the rest: listed too
    ('name = "x"\nduration_s = 60\n[workload.chat]\nrate_rps = -1\n', "workload.chat.rate_rps", "must be in"),
    ('name = "x"\nduration_s = 60\n[workload.chat]\nrate_rps = 1\nin_tokens = 32768\nout_tokens = 32768\n',
     "workload.chat.out_tokens", "in_tokens + out_tokens is 65536, over the engines' context of 32768 tokens"),
    ('name = "x"\nduration_s = 60\n[workload.nope]\nrate_rps = 1\n', "workload.nope", "no such service"),
    ('name = "x"\nduration_s = 60\n[workload.chat]\nrate_rps = 1\nbursts = [{ start_s = 5, duration_s = 5, '
     'factor = -2 }]\n', "workload.chat.bursts[0].factor", "-2"),
    ('name = "x"\nduration_s = 60\n[[events]]\nat_s = 90\nkind = "budget"\nbudget_w = 500\n', "events[0].at_s",
     "90 s is not before the scenario's end (60 s): it would never apply"),
    ('name = "x"\nduration_s = 60\n[[events]]\nat_s = 60\nkind = "budget"\nbudget_w = 500\n', "events[0].at_s",
     "60 s is not before the scenario's end"),
    ('name = "x"\nduration_s = 60\n[[events]]\nat_s = 9\nkind = "meteor"\n', "events[0].kind", "meteor"),
    ('name = "x"\nduration_s = 60\n[[events]]\nat_s = 9\nkind = "budget"\n', "events[0].budget_w",
     "is missing: a budget event needs the new site budget (W)"),
    ('name = "x"\nduration_s = 60\n[[events]]\nat_s = 9\nkind = "budget"\nbudget_w = 0\n', "events[0].budget_w",
     "must be in (0, 1e+08], got 0"),
    ('name = "x"\nduration_s = 60\nbudget_w = 10\n', "budget_w", "10 W is below the fleet's idle draw, "),
    ('name = "x"\nduration_s = 60\n[[events]]\nat_s = 9\nkind = "budget"\nbudget_w = 10\n', "events[0].budget_w",
     "10 W is below the fleet's idle draw, "),
    ('name = "x"\nduration_s = 60\n[[events]]\nat_s = 9\nkind = "gpu_lost"\ngpu = 2\n', "events[0].gpu", "0..1"),
    ('name = "x"\nduration_s = 60\n[[events]]\nat_s = 9\nkind = "gpu_lost"\n', "events[0].gpu",
     "is missing: a gpu_lost event names the GPU, an index in 0..1"),  # it said "got -1", a value never written
    ('name = "x"\nduration_s = 60\n[workload.chat]\nrate_rps = 5\nin_tokens = 0.001\n', "workload.chat.in_tokens",
     "must be 0 (the service's) or at least 1, got 0.001"),
    ('name = "x"\nduration_s = 60\n[[events]]\nat_s = 9\nkind = "gpu_lost"\ngpu = -1\n', "events[0].gpu",
     "must be a GPU index in 0..1, got -1"),  # -1, the unset default then, read "is missing"
    ('name = "x"\nduration_s = 60\n[[events]]\nat_s = 9\nkind = "gpu_lost"\ngpu = 1\nfactor = 1e308\n',
     "events[0].factor", "does not apply to a gpu_lost event (it reads gpu), got 1e+308"),
    ('name = "x"\nduration_s = 60\n[[events]]\nat_s = 9\nkind = "slowdown"\nfactor = 1.3\n', "events[0].service",
     "required"),
    ('name = "x"\nduration_s = 60\n[[events]]\nat_s = 9\nkind = "slowdown"\nservice = "code"\n',
     "events[0].service", "'code'"),
    ('name = "x"\n', "duration_s", "required key is missing"),
    ('name = "x"\nduration_s = 60\n[workload.chat]\nrate_rps = 1\nin_tokens = 100000\n', "workload.chat.in_tokens",
     "must be in [0, 32768]"),
    # overlapping bursts multiply (4 x 100 at 10,000 rps: an 18 TiB allocation), stacked slowdowns too
    ('name = "x"\nduration_s = 60\n[workload.chat]\nrate_rps = 1000\nbursts = [{ start_s = 0, duration_s = 30, '
     'factor = 5 }, { start_s = 10, duration_s = 30, factor = 4 }]\n', "workload.chat.bursts",
     "the rate reaches 20000 rps at 10 s (rate_rps x the bursts then), over 10000"),
    ('name = "x"\nduration_s = 60\n[workload.chat]\nrate_rps = 4000\ncycle_amplitude = 0.5\nbursts = [{ start_s = 0, '
     'duration_s = 30, factor = 2 }]\n', "workload.chat.cycle_amplitude",  # the crest on a burst: 12,000 rps
     "0.5 takes the rate up to 12000 rps (rate_rps x the bursts x (1 + cycle_amplitude)), over 10000"),
    ('name = "x"\nduration_s = 60\n' + "".join(f'[[events]]\nat_s = {t}\nkind = "slowdown"\nservice = "chat"\n'
                                               f'factor = 4\n' for t in (30, 9)),
     "events[0].factor", "with the slowdowns before it, chat's steps take 16 times as long; at most 10"),
    ('name = "x"\nduration_s = 60\npersonalities = { "llama-3.1-8b" = "fast" }\n', "personalities.llama-3.1-8b",
     "'fast'"),
    ('name = "x"\nduration_s = 60\npersonalities = { "mistral-7b" = "chunked" }\n', "personalities.mistral-7b",
     "runs model 'mistral-7b'"),
    ('name = "x"\nduration_s = 60\npersonalities = { "llama-3.1-8b|NOPE" = "chunked" }\n',
     "personalities.llama-3.1-8b|NOPE", "the simulated host has no GPU type 'NOPE' (it has ['H100-SXM'])"),
    ('name = "x"\nduration_s = 60\npersonalities = { "llama-3.1-8b|" = "chunked" }\n', "personalities.llama-3.1-8b|",
     "no GPU type ''"),
    # 10,000 rps of three services for an hour: 108 million requests kept per policy (11-17 GB), none refused
    ('name = "x"\nduration_s = 3600\n[workload.chat]\nrate_rps = 10000\nin_tokens = 1\nout_tokens = 1\n',
     "workload.chat", "3.6e+07 of the 3.6e+07 requests the services are expected to send over duration_s 3600, more "
     "than the 1e+07 a run holds"),
    # a tail past the context got past the check the means are held to: every prompt of it a miss, slowly
    ('name = "x"\nduration_s = 60\n[workload.chat]\nrate_rps = 20\nprompt_tail = { share = 1, min_tokens = 32768, '
     'alpha = 10 }\n', "workload.chat.prompt_tail.min_tokens",
     "32768 with out_tokens 200 is over the engines' context of 32768 tokens: no prompt of the tail would fit"),
    ('name = "x"\nduration_s = 60\npower_laws = { "H100-SXM" = "cubic" }\n', "power_laws.H100-SXM",
     "unknown 'cubic', expected one of ['dynamic', 'memory-heavy', 'voltage-floor']"),
    ('name = "x"\nduration_s = 60\npower_laws = { "L4" = "voltage-floor" }\n', "power_laws.L4",
     "the simulated host has no GPU type 'L4' (it has ['H100-SXM'])"),
    ('name = "x"\nduration_s = 60\n' + '[[events]]\nat_s = 9\nkind = "gpu_lost"\ngpu = 1\n' * 2, "events[1].gpu",
     "GPU 1 is lost already (events[0])"),
    # budget sources and their events (tests/test_simulate_budget_sources.py)
    ('name = "x"\nduration_s = 60\n[power.budget]\nsafe_budget_w = 900\n[[power.budget.sources]]\n'
     'kind = "electricitymaps"\nzone = "DE"\ncurve = [[100, 1400]]\n', "power.budget.sources[0].kind",
     "asks a remote API"),
    # before the curve such a source needs was asked for, only to be refused once given (a new user's trial)
    ('name = "x"\nduration_s = 60\n[power.budget]\nsafe_budget_w = 900\n[[power.budget.sources]]\n'
     'kind = "watttime"\n', "power.budget.sources[0].kind", "asks a remote API"),
    ('name = "x"\nduration_s = 60\n[[events]]\nat_s = 9\nkind = "demand_response"\nbudget_w = 500\n'
     'duration_s = 30\n', "events[0].kind", "needs a demand_response source"),
    ('name = "x"\nduration_s = 60\nstart_utc = "2026-04-15T00:00:00"\n', "start_utc", "needs an offset"),
    ('name = "x"\nduration_s = 60\nstart_utc = "9999-12-31T23:59:00Z"\n', "start_utc", "ends outside the years"),
    ('name = "x"\nduration_s = 60\nstart_utc = "1955-01-01T00:00:00Z"\ngrid_time_scale = 1000\n', "start_utc",
     "starts before 1970"),  # ended in 1971 from 1955: it raised after the fleet was sized
    ('name = "x"\nduration_s = 60\ngrid_time_scale = 0\n', "grid_time_scale", "must be in"),
    ('name = "x"\nduration_s = 60\n[power]\nramp_up_w_per_s = -5\n',
     "config (host.toml) with the scenario's [power]: power.ramp_up_w_per_s", "must be in"),
    ('name = "x"\nduration_s = 60\nbudget_w = 3500\n[power]\nbudget_w = 3000\n', "power.budget_w",  # read 3,500
     "3000 and the scenario's budget_w 3500 are two budgets at the start: give one"),
    # lists whose work grew without bound (40,000 bursts took a load quadratic time), and a signal the source ignores
    ('name = "x"\nduration_s = 60\n[workload.chat]\nrate_rps = 1\nbursts = ['
     + ", ".join(f"{{ start_s = {k}, duration_s = 1, factor = 1 }}" for k in range(1001)) + "]\n",
     "workload.chat.bursts", "1001 listed, more than 1000"),
    ('name = "x"\nduration_s = 60\n[workload.chat]\nrate_rps = 1\nbursts = ['  # past a float: inf, no traceback
     + ", ".join("{ start_s = 10, duration_s = 1, factor = 100 }" for _ in range(160)) + "]\n",
     "workload.chat.bursts", "the rate reaches inf rps at 10 s"),
    ('name = "x"\nduration_s = 60\n' + '[[events]]\nat_s = 9\nkind = "budget"\nbudget_w = 1300\n' * 1001, "events",
     "1001 listed, more than 1000"),
    ('name = "x"\nduration_s = 60\n[power.budget]\n[[power.budget.sources]]\nkind = "demand_response"\n'
     'name = "utility"\npath = "signal.json"\n[[events]]\nat_s = 9\nkind = "demand_response"\nbudget_w = 1e-300\n'
     'duration_s = 30\n', "events[0].budget_w", "must be in [1, 1e+08], got 1e-300"),
    # a signal the source refused was dropped unsaid (exit 0, the report listing the event), or raised mid-run
    ('name = "x"\nduration_s = 60\n[power.budget]\n[[power.budget.sources]]\nkind = "demand_response"\n'
     'name = "utility"\npath = "signal.json"\n[[events]]\nat_s = 9\nkind = "demand_response"\nbudget_w = 500\n'
     'duration_s = 30\nreason = "peak\\tevent"\n', "events[0].reason", "must be printable, at most 200 characters"),
    ('name = "x"\nduration_s = 60\nstart_utc = "9990-01-01T00:00:00Z"\ngrid_time_scale = 1000\n[power.budget]\n'
     '[[power.budget.sources]]\nkind = "demand_response"\nname = "utility"\npath = "signal.json"\n[[events]]\n'
     'at_s = 9\nkind = "demand_response"\nbudget_w = 500\nduration_s = 604800\n', "events[0].duration_s",
     "ends the signal past the year 9998"),
    # a mean left at 0 is the service's: its sum with the other was not checked (every request a miss, slowly)
    ('name = "x"\nduration_s = 60\n[workload.chat]\nrate_rps = 1\nin_tokens = 32768\n', "workload.chat.in_tokens",
     "with the service's other mean, in_tokens + out_tokens is"),
])
def test_a_bad_scenario_names_the_field(small_scenario: Callable[..., Path], body: str, field: str,
                                        words: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_scenario(small_scenario(body))
    assert err.value.where == field
    assert words in str(err.value)


@pytest.mark.parametrize("overlay", ["", "[power]\nbudget_w = 1200\n"])
def test_a_budget_raised_by_an_event_starts_at_the_configs_own(small_scenario: Callable[..., Path], tmp_path: Path,
                                                                overlay: str) -> None:
    """Without a top-level budget_w the start was read off the config after it had been raised to the run's highest:
    a raise at 30 s held from 0 s (the report's "budget at the start" and every policy's budget until then)."""
    scn = load_scenario(small_scenario('name = "x"\nduration_s = 60\n[[events]]\nat_s = 30\nkind = "budget"\n'
                                       f'budget_w = 5000\n{overlay}', budget_w=1400.0))
    start = 1200.0 if overlay else 1400.0
    assert scn.start_budget_w == start and scn.config.power.budget_w == 5000
    assert _budget_at(scn, 29, tmp_path) == start and _budget_at(scn, 30, tmp_path) == 5000


def test_a_scenarios_power_laws_reach_its_host_and_the_baselines_sizing(small_scenario: Callable[..., Path]) -> None:
    """Added to the config's, as its personalities are: the plant's GPUs and the probes that size the baselines'
    fleet both draw by it."""
    from controller.simulate.plant import build_host
    from controller.simulate.sizing import replica_for

    scn = load_scenario(small_scenario('name = "x"\nduration_s = 60\npower_laws = { "H100-SXM" = "voltage-floor" }\n'))
    assert {g.law.name for g in build_host(scn, 7, {}).gpus} == {"voltage-floor"}
    assert replica_for(scn, scn.config.services[0], "H100-SXM", 7).power_law == "voltage-floor"


def test_check_config_checks_a_scenario_as_simulate_loads_it(small_scenario: Callable[..., Path],
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    """It refused one as "a scenario, not a daemon config": no way to check a scenario but to start a run."""
    assert main(["check-config", str(ROOT / "config" / "scenarios" / "tight-budget.toml")]) == 0
    assert capsys.readouterr().out.strip().endswith("ok (a scenario: 3 services for 3600 s, budget 2600 W at the "
                                                    "start; `wattscale simulate` runs it)")
    bad = small_scenario('name = "x"\nduration_s = 60\npower_laws = { "L4" = "dynamic" }\n')
    assert main(["check-config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.strip() == "wattscale: power_laws.L4: the simulated host has no GPU type 'L4' (it has ['H100-SXM'])"
    # its config's warnings at each budget it states, named by the scenario's field (checked at the run's highest
    # budget alone, a step under the GPUs' lowest limits, 2 x 200 W, read ok)
    step = small_scenario('name = "s"\nduration_s = 60\n[[events]]\nat_s = 30\nkind = "budget"\nbudget_w = 350\n')
    assert main(["check-config", str(step)]) == 0
    assert capsys.readouterr().err.startswith("wattscale: warning: events[0].budget_w: 350 W (340 W less headroom) is "
                                              "below the GPUs' lowest limits, 400 W")


@given(st.floats(0.0, 1.0), st.floats(60.0, 7200.0), st.floats(-3600.0, 3600.0),
       st.lists(st.tuples(st.floats(0.0, 3000.0), st.floats(1.0, 600.0), st.floats(0.0, 5.0)), max_size=4))
@settings(max_examples=30, deadline=None)
def test_a_workloads_arrivals_are_its_rates_integral(amplitude: float, period_s: float, phase_s: float,
                                                       bursts: list[tuple[float, float, float]]) -> None:
    """What the bound on a run's requests counts: the rate the plant draws arrivals at, integrated (in closed form,
    span by span of the bursts' factors) to within a midpoint sum's error over 3,600 s."""
    from controller.simulate.plant import rate_of
    from controller.simulate.workload_settings import BurstSettings, WorkloadSettings

    w = WorkloadSettings(5.0, amplitude, period_s, phase_s, tuple(BurstSettings(*b) for b in bursts))
    rate = rate_of(w)
    steps = np.arange(0.0, 3600.0, 0.05) + 0.025
    assert w.arrivals(3600.0) == pytest.approx(0.05 * sum(rate(float(t)) for t in steps), rel=2e-3, abs=1.0)


def test_a_prompt_tail_of_no_share_is_no_tail_past_the_context(small_scenario: Callable[..., Path]) -> None:
    """The same tail with any share is refused as past the context; with none it sends no prompt, and loads."""
    body = ('name = "x"\nduration_s = 60\n[workload.chat]\nrate_rps = 20\n'
            'prompt_tail = {{ share = {}, min_tokens = 32768 }}\n')
    with pytest.raises(ConfigError, match="no prompt of the tail would fit"):
        load_scenario(small_scenario(body.format(0.01)))
    load_scenario(small_scenario(body.format(0)))  # no ConfigError


def test_a_service_at_no_rate_under_bursts_past_a_float_does_not_lift_the_bound() -> None:
    """0 rps under 160 bursts of 100 (inf) read NaN arrivals, and NaN passed the bound for every service."""
    from controller.simulate.workload_settings import BurstSettings, WorkloadSettings, check_arrivals

    quiet = WorkloadSettings(0.0, bursts=tuple(BurstSettings(0.0, 10.0, 100.0) for _ in range(160)))
    assert quiet.arrivals(3600.0) == 0.0
    with pytest.raises(ConfigError, match=r"^workload\.chat: 3\.6e\+07 of the 3\.6e\+07 requests"):
        check_arrivals({"chat": WorkloadSettings(10_000.0), "code": quiet}, 3600.0)


def test_a_burst_of_zero_among_bursts_past_a_float_reads_zero_not_nan() -> None:
    """inf x 0 read NaN, which every bound let through: simulate then raised in a poisson draw or in the sizing."""
    from controller.simulate.workload_settings import BurstSettings, WorkloadSettings

    many = tuple(BurstSettings(10.0, 1.0, 100.0) for _ in range(160))
    silenced = WorkloadSettings(1.0, bursts=(*many, BurstSettings(5.0, 10.0, 0.0)))
    assert silenced.peak_rate() == (1.0, 0.0)
    silenced.check("workload.chat")
    assert WorkloadSettings(0.0, bursts=many).peak_rate() == (0.0, 0.0)


def test_a_bad_config_is_named_with_its_file(small_scenario: Callable[..., Path]) -> None:
    path = small_scenario('name = "x"\nduration_s = 60\n')
    (path.parent / "host.toml").write_text((path.parent / "host.toml").read_text().replace("ttft_ms = 300",
                                                                                           "ttft_ms = -3"))
    with pytest.raises(ConfigError) as err:
        load_scenario(path)
    assert err.value.where == "config (host.toml): services[chat].ttft_ms"


@pytest.mark.parametrize(("table", "part"), [("actuators", "power = 'dry-run'"), ("actuators", "replicas = 'dry-run'"),
                                           ("telemetry", "vllm_source = 'prometheus'")])
def test_a_config_with_a_part_that_is_not_simulated_is_refused(small_scenario: Callable[..., Path], table: str,
                                                                part: str) -> None:
    """A config whose power actuator was `nvml` or `dry-run` ran as `sim`, without a word (a new user's trial): only
    a config with no simulated part at all was refused."""
    path = small_scenario('name = "x"\nduration_s = 60\n')
    host = path.parent / "host.toml"
    host.write_text(host.read_text() + f"\n[{table}]\n{part}\n")
    with pytest.raises(ConfigError) as err:
        load_scenario(path)
    key, value = part.split(" = ")
    assert err.value.where == "config" and f"has {table}.{key} = {value}: a scenario runs a simulated host" in str(
        err.value)


@pytest.mark.parametrize("name", ["in_tokens", "out_tokens"])
def test_a_configs_token_mix_past_the_engines_context_is_named(small_scenario: Callable[..., Path], name: str) -> None:
    """The simulated engines clip draws at their context: a mean past it ran silently as another workload, under
    `simulate` and under `run` alike (which check-config passed, and whose plan was for prompts never sent)."""
    path = small_scenario('name = "x"\nduration_s = 60\n')
    host = path.parent / "host.toml"
    host.write_text(host.read_text().replace(f"{name} = ", f"{name} = 100000 # ", 1))
    with pytest.raises(ConfigError) as err:
        load_scenario(path)
    assert err.value.where == f"config (host.toml): services[chat].{name}"
    mix = "100000 + 200" if name == "in_tokens" else "400 + 100000"
    assert str(err.value).endswith(f"in_tokens + out_tokens is {mix}, past the simulated engines' context of 32768 "
                                   "tokens")
    with pytest.raises(ConfigError) as err:
        load_settings(host)
    assert err.value.where == f"services[chat].{name}"


def test_seeds_past_the_last_one_are_refused(small_scenario: Callable[..., Path], tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    """seed = 2^63-1 with --seeds 2 ran a seed of 2^63, outside the range the scenario's seed is held to."""
    path = small_scenario(f'name = "x"\nduration_s = 60\nseed = {2**63 - 1}\n')
    assert main(["simulate", str(path), "--report", str(tmp_path / "r"), "--seeds", "2"]) == 2
    assert capsys.readouterr().err.strip() == (f"wattscale: --seeds: 2 seeds from the scenario's seed {2**63 - 1} "
                                               "pass 2^63-1")


def test_the_command_says_what_is_wrong_without_a_traceback(small_scenario: Callable[..., Path], tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    path = small_scenario('name = "x"\nduration_s = 60\n[[events]]\nat_s = 9\nkind = "gpu_lost"\ngpu = 7\n')
    assert main(["simulate", str(path), "--report", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("wattscale: events[0].gpu: must be a GPU index in 0..1, got 7")
    assert "Traceback" not in err
    escaped = small_scenario('name = "a\\u001b[31mred\\n"\nduration_s = 60\n', name="escaped.toml")
    assert main(["simulate", str(escaped), "--report", str(tmp_path / "r")]) == 2  # it broke the report's heading
    assert capsys.readouterr().err == "wattscale: name: must be printable, 1-200 characters, got 'a\\x1b[31mred\\n'\n"
    described = small_scenario('name = "x"\ndescription = "one\\n# Injected heading\\u001b[31m"\nduration_s = 60\n',
                               name="described.toml")  # quoted as a paragraph, it made a heading of its own
    assert main(["simulate", str(described), "--report", str(tmp_path / "r")]) == 2
    assert capsys.readouterr().err == ("wattscale: description: must be printable (one line), at most 2000 characters, "
                                       "got 'one\\n# Injected heading\\x1b[31m'\n")
    good = small_scenario('name = "x"\nduration_s = 60\n', name="good.toml")
    assert main(["simulate", str(good), "--report", str(tmp_path / "r"), "--duration-s", "61"]) == 2
    assert "--duration-s: must be in [1, 60]" in capsys.readouterr().err
    (tmp_path / "a-file").write_text("")
    assert main(["simulate", str(good), "--report", str(tmp_path / "a-file" / "r")]) == 2
    assert f"--report: {tmp_path / 'a-file' / 'r'}: cannot be written (Not a directory)" in capsys.readouterr().err
    (tmp_path / "dangling").symlink_to(tmp_path / "gone" / "r")  # mkdir said only "File exists"
    assert main(["simulate", str(good), "--report", str(tmp_path / "dangling")]) == 2
    assert f"--report: {tmp_path / 'dangling'} is a link to {tmp_path / 'gone' / 'r'}, which does not exist" in \
        capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["simulate", str(path), "--report", str(tmp_path / "r"), "--policies", "static,hpa"])
    assert "unknown policy hpa" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # dropped unsaid, the second had read as a typo for a policy the report lacked
        main(["simulate", str(path), "--report", str(tmp_path / "r"), "--policies", "static,wattscale,static"])
    assert "argument --policies: static given twice; each policy runs once" in capsys.readouterr().err
    # a warning about the run was printed before the refusal that stops it
    two_events = small_scenario('name = "x"\nduration_s = 60\n[[events]]\nat_s = 50\nkind = "budget"\n'
                                'budget_w = 1400\n', name="two.toml")
    assert main(["simulate", str(two_events), "--report", str(tmp_path / "a-file" / "r"), "--duration-s", "30"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"wattscale: --report: {tmp_path / 'a-file' / 'r'}: cannot be written (Not a directory)"]
    with pytest.raises(SystemExit):  # an empty name wrote the report into the working directory
        main(["simulate", str(good), "--report", ""])
    assert "--report: must name a directory, got ''" in capsys.readouterr().err
    for name, make in [("summary.md", os.mkfifo), ("simulate.log", os.mkfifo), ("summary.json", os.mkdir),
                       ("trace-static.csv", lambda p: os.symlink(tmp_path / "nowhere", p))]:
        report = tmp_path / f"report-{name}"
        report.mkdir()
        make(report / name)  # a FIFO blocked the run for ever; a directory failed it after the whole simulation
        assert main(["simulate", str(good), "--report", str(report), "--policies", "static"]) == 2
        assert f"--report: {report / name} exists and is not a regular file" in capsys.readouterr().err
    mine = tmp_path / "report-mine"
    mine.mkdir()
    (tmp_path / "notes.txt").write_text("mine")
    os.symlink(tmp_path / "notes.txt", mine / "notes.md")  # a user's own files the report never writes
    os.mkdir(mine / "old-runs.json")
    os.symlink(tmp_path / "notes.txt", mine / "summary.md")  # a link to a regular file is written through
    for earlier in ("trace-wattscale.csv", "decisions-seed9.jsonl", "power.png", "summary.json"):  # an earlier
        (mine / earlier).write_text("an earlier run's")                 # report's, left beside the new summary
    (tmp_path / "mine-too").mkdir()
    (tmp_path / "mine-too" / "trace-static.csv").write_text("a user's")  # no report here: not touched
    (tmp_path / "mine-too" / "decisions-seed9.jsonl").write_text("a user's")
    assert main(["simulate", str(good), "--report", str(tmp_path / "mine-too"), "--policies", "uniform-cap",
                 "--no-progress", "--no-frontier"]) == 0
    assert (tmp_path / "mine-too" / "decisions-seed9.jsonl").read_text() == "a user's"
    assert main(["simulate", str(good), "--report", str(mine), "--policies", "static", "--no-progress"]) == 0
    capsys.readouterr()
    assert sorted(p.name for p in mine.iterdir() if not p.name.endswith(".png")) == [
        "notes.md", "old-runs.json", "simulate.log", "summary.json", "summary.md", "trace-static.csv"]
    assert not (mine / "power.png").exists() or (mine / "power.png").read_bytes() != b"an earlier run's"


def test_a_daemon_config_given_as_the_scenario_is_named_for_what_it_is() -> None:
    """`wattscale simulate config/sim.toml` read the daemon's own keys as a scenario's unknown ones."""
    with pytest.raises(ConfigError) as err:
        load_scenario(ROOT / "config" / "sim.toml")
    assert "is a daemon config, not a scenario" in str(err.value)


def test_the_report_says_each_targets_unit_each_log_lines_run_and_hold_and_why_it_has_no_figures(
        small_scenario: Callable[..., Path], tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A ratio (tokens/J against static's) printed as bare as seconds; the policies' log lines read alike; without
    matplotlib the summary's Figures section was empty and the warning went to simulate.log alone."""
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` raises ImportError
    path = small_scenario('name = "x"\nduration_s = 60\nseed = 3\nenergy_targets = true\n'
                          '[[events]]\nat_s = 20\nkind = "budget"\n'
                          'budget_w = 700\n')  # a plan to log
    report = tmp_path / "r"
    assert main(["simulate", str(path), "--report", str(report), "--policies", "static,wattscale",
                 "--no-progress"]) == 0
    out, err = capsys.readouterr()
    assert "target met: budget_violation_s = 0: 0.0 s\n" in out
    assert re.search(r"tokens_per_joule >= 1.3 x static's: [0-9.]+ x static's\n", out)
    assert re.search(r"^wattscale .*  mean budget [0-9.]+ W", out, re.M) and "mean_budget_w" not in out  # as labelled
    assert "No figures: matplotlib is not installed" in err
    summary = (report / "summary.md").read_text()
    assert "60 s of simulated time, seed 3;" in summary
    assert "chat (priority 1) mean TTFT <= 300 ms, ITL <= 30 ms." in summary  # the targets attainment is read against
    assert "No figures: matplotlib is not installed (pip install 'wattscale[plots]')." in summary
    log = (report / "simulate.log").read_text()
    runs = {line.split("]")[0] + "]" for line in log.splitlines()}
    # a plan the stability gate held back said "planned 1x ..., applied 2x ..." and not why
    held = re.findall(r"planned (\d+)x[^,]*, applied (\d+)x[^;|]*\[gate held: replicas (\d+) not (\d+)", log)
    assert held and all((p, a) == (n, g) for p, a, g, n in held), log
    assert "INFO [wattscale seed 3]" in runs and runs <= {"INFO [wattscale seed 3]", "WARNING [wattscale seed 3]",
                                                           "INFO [static seed 3]", "WARNING [static seed 3]"}


def test_the_summary_lists_the_events_the_run_reached(small_scenario: Callable[..., Path], tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """A run cut short by --duration-s listed every event of the scenario as if it had struck."""
    path = small_scenario('name = "x"\nduration_s = 120\n[[events]]\nat_s = 9\nkind = "budget"\nbudget_w = 900\n'
                          '[[events]]\nat_s = 50\nkind = "budget"\nbudget_w = 1400\n')
    assert main(["simulate", str(path), "--report", str(tmp_path), "--policies", "static", "--no-progress",
                 "--duration-s", "30"]) == 0
    err = capsys.readouterr().err
    summary = (tmp_path / "summary.md").read_text()
    assert "; events: budget at 9 s (budget_w 900) (1 more after the run's end)." in summary
    assert "--duration-s 30 ends the run before 1 of the scenario's events (budget at 50 s)" in err  # said at once
    assert json.loads((tmp_path / "summary.json").read_text())["events"] == [
        {"at_s": 9.0, "kind": "budget", "budget_w": 900.0}]


def test_a_duration_of_no_whole_fast_ticks_is_run_and_reported_as_the_ticks_it_takes(
        small_scenario: Callable[..., Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--duration-s 3.7 ran 4 fast ticks of 1 s and its report said 3.7 s of simulated time."""
    path = small_scenario('name = "x"\nduration_s = 60\nseed = 3\n')
    assert main(["simulate", str(path), "--report", str(tmp_path), "--policies", "static", "--no-progress",
                 "--no-frontier", "--duration-s", "3.7"]) == 0
    assert "a run is whole fast ticks of 1 s: 3.7 s runs as 4 s" in capsys.readouterr().err
    doc = json.loads((tmp_path / "summary.json").read_text())
    assert doc["duration_s"] == 4.0 == doc["policies"]["static"]["runs"][0]["duration_s"]
    assert "4 s of simulated time" in (tmp_path / "summary.md").read_text()


def test_a_description_that_opens_a_heading_is_a_paragraph_in_the_summary(
        small_scenario: Callable[..., Path], tmp_path: Path) -> None:
    """One printable line, "# Injected heading", made a heading of its own in summary.md."""
    path = small_scenario('name = "x"\ndescription = "# Injected heading"\nduration_s = 60\nseed = 3\n')
    assert main(["simulate", str(path), "--report", str(tmp_path), "--policies", "static", "--no-progress",
                 "--no-frontier", "--duration-s", "2"]) == 0
    lines = (tmp_path / "summary.md").read_text().splitlines()
    assert lines[2] == "\\# Injected heading" and not [line for line in lines if line.startswith("# Injected")]


@pytest.mark.parametrize(("duration_s", "fast_s", "ticks"), [(1.2, 0.1, 12), (2.9, 0.1, 29), (4.8, 0.1, 48),
                                                            (3.7, 1.0, 4), (3.7, 0.5, 8), (3600.0, 1.0, 3600),
                                                            (0.05, 1.0, 1)])
def test_a_run_takes_the_whole_fast_ticks_its_duration_needs(duration_s: float, fast_s: float, ticks: int) -> None:
    """12 x 0.1 s reads 1.2000000000000002 s in floats: a run of 1.2 s took 13 ticks where rounded up as written."""
    assert fast_ticks(duration_s, fast_s) == ticks


def test_a_reused_report_holds_this_runs_decision_log_alone(small_scenario: Callable[..., Path], tmp_path: Path
                                                            ) -> None:
    """The daemon's decision log appends: a second run into the same report put its cycles after the first's, and a
    run without wattscale kept the earlier log beside a summary that says nothing of it."""
    path = small_scenario('name = "x"\nduration_s = 60\nseed = 3\n')
    log = tmp_path / "r" / "decisions-seed3.jsonl"
    for _ in range(2):
        assert main(["simulate", str(path), "--report", str(tmp_path / "r"), "--policies", "wattscale",
                     "--no-progress"]) == 0
        times = [json.loads(line)["t"] for line in log.read_text().splitlines()]
        assert times == sorted(set(times)) and len(times) >= 2, times
    assert main(["simulate", str(path), "--report", str(tmp_path / "r"), "--policies", "static", "--no-progress"]) == 0
    assert not log.exists()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_run_interrupted_says_so_in_one_line_and_in_its_log(small_scenario: Callable[..., Path], tmp_path: Path,
                                                                sig: signal.Signals) -> None:
    """Ctrl-C on a run of minutes printed some 46 lines of numpy's frames and left an empty simulate.log; a SIGTERM
    killed it without a word. Killed by the signal still (a shell's loop stops on that), with one line."""
    scn = small_scenario("name = \"long\"\nduration_s = 3600\nseed = 1\n")
    report = tmp_path / "report"
    argv = [sys.executable, "-c", "import sys; from controller.launch import main; sys.exit(main())", "simulate",
            str(scn), "--report", str(report), "--policies", "wattscale", "--no-progress", "--no-frontier"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        deadline = time.monotonic() + 60
        while not (report / "simulate.log").exists() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        time.sleep(0.5)  # in the run
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -sig and err == f"wattscale: interrupted by {sig.name}\n" and out == "", err
    assert "interrupted: no report written" in (report / "simulate.log").read_text()
    assert not (report / "summary.json").exists()


def test_a_run_started_ignoring_ctrl_c_ignores_it(small_scenario: Callable[..., Path], tmp_path: Path) -> None:
    """A job a script starts in the background (`wattscale simulate ... &`) inherits SIGINT ignored, so a Ctrl-C
    meant for the script's foreground leaves it running, as Python itself leaves it."""
    scn = small_scenario("name = \"short\"\nduration_s = 120\nseed = 1\n")
    report = tmp_path / "report"
    script = ("import signal, sys; signal.signal(signal.SIGINT, signal.SIG_IGN); from controller.launch import main; "
              "sys.exit(main())")
    proc = subprocess.Popen([sys.executable, "-c", script, "simulate", str(scn), "--report", str(report), "--policies",
                             "static", "--no-progress", "--no-frontier"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        deadline = time.monotonic() + 60
        while not (report / "simulate.log").exists() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0 and "interrupted" not in err, err
    assert (report / "summary.json").exists()


@pytest.mark.parametrize("stop", [KeyboardInterrupt, RuntimeError])
def test_a_run_stopped_or_failed_leaves_the_earlier_report_whole(small_scenario: Callable[..., Path], tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch,
                                                                 stop: type[BaseException]) -> None:
    """The earlier report's traces, decision logs and PNGs were removed before the run: one stopped by Ctrl-C (or a
    failure midway) left its summary naming files that were gone."""
    import controller.simulate.command as command

    good = small_scenario('name = "x"\nduration_s = 60\n', name="good.toml")
    report = tmp_path / "r"
    report.mkdir()
    earlier = {"summary.json": "{}", "trace-wattscale.csv": "t", "decisions-seed9.jsonl": "d", "power.png": "p",
               "trace-static.csv": "s", "decisions-seed7.jsonl": "d7"}  # the last two this run writes too
    for name, text in earlier.items():
        (report / name).write_text(text)

    def stopped(*args: object, **kw: object) -> None:
        assert not (report / "trace-wattscale.csv").exists()  # set aside while this run writes its own
        (report / "trace-static.csv").write_text("half")  # begun when it was stopped
        (report / "decisions-seed7.jsonl").write_text("")
        raise stop()

    monkeypatch.setattr(command, "simulate", stopped)
    with pytest.raises(stop):
        main(["simulate", str(good), "--report", str(report), "--policies", "static", "--no-progress"])
    assert {name: (report / name).read_text() for name in earlier} == earlier
    assert sorted(p.name for p in report.iterdir()) == sorted([*earlier, "simulate.log"])  # nothing hidden left


def test_files_a_killed_run_set_aside_are_put_back_by_the_next(small_scenario: Callable[..., Path], tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """A run killed (SIGKILL) left the earlier report's files in a hidden `.earlier-*` folder and its own half-written
    ones under their names; the next run set the half-written ones aside as the earlier report's, and a failure then
    put those back: the earlier report's own stayed hidden for good."""
    import controller.simulate.command as command

    good = small_scenario('name = "x"\nduration_s = 60\n', name="good.toml")
    report = tmp_path / "r"
    (report / ".earlier-abc123").mkdir(parents=True)
    (report / "summary.json").write_text("{}")
    for name, text in {"trace-wattscale.csv": "t", "power.png": "p"}.items():
        (report / ".earlier-abc123" / name).write_text(text)
    (report / "trace-wattscale.csv").write_text("half")  # what the killed run had begun

    def failed(*args: object, **kw: object) -> None:
        raise RuntimeError("midway")

    monkeypatch.setattr(command, "simulate", failed)
    with pytest.raises(RuntimeError):
        main(["simulate", str(good), "--report", str(report), "--policies", "static", "--no-progress"])
    assert (report / "trace-wattscale.csv").read_text() == "t" and (report / "power.png").read_text() == "p"
    assert sorted(p.name for p in report.iterdir()) == ["power.png", "simulate.log", "summary.json",
                                                        "trace-wattscale.csv"]


def test_a_run_whose_set_aside_folder_another_run_took_back_ends_without_a_traceback(
        small_scenario: Callable[..., Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A second run into the same report put back the first's set-aside files (`_recover`) while the first still
    ran; the first then raised FileNotFoundError once its whole simulation was done (a review)."""
    import controller.simulate.command as command

    good = small_scenario('name = "x"\nduration_s = 60\n', name="good.toml")
    report = tmp_path / "r"
    report.mkdir()
    for name in ("summary.json", "trace-static.csv"):
        (report / name).write_text("earlier")
    real = command.simulate

    def raced(*args: Any, **kw: Any) -> Any:
        command._recover(report)  # the other run, started meanwhile
        return real(*args, **kw)

    monkeypatch.setattr(command, "simulate", raced)
    assert main(["simulate", str(good), "--report", str(report), "--policies", "static", "--no-progress",
                 "--no-frontier"]) == 0
    assert not [p for p in report.iterdir() if p.name.startswith(".earlier-")]


def test_a_start_written_as_a_toml_datetime_is_read_as_its_string(small_scenario: Callable[..., Path]) -> None:
    """`start_utc = 2026-04-15T00:00:00Z`, unquoted, is TOML's own datetime: it was refused with a Python repr
    ("must be a string, got datetime.datetime(2026, 4, 15, ...)"). One without an offset still needs one."""
    scn = load_scenario(small_scenario('name = "x"\nduration_s = 60\nstart_utc = 2026-04-15T00:00:00Z\n'))
    assert scn.settings.start_utc == "2026-04-15T00:00:00+00:00"
    with pytest.raises(ConfigError, match=r"^start_utc: needs an offset \(Z for UTC\), got '2026-04-15T00:00:00'"):
        load_scenario(small_scenario('name = "x"\nduration_s = 60\nstart_utc = 2026-04-15T00:00:00\n', name="n.toml"))
    for written in ("2026-04-15", "00:00:00"):  # a TOML date or time alone: its string, refused by what it lacks
        with pytest.raises(ConfigError, match=f"^start_utc: .*'{written}'"):
            load_scenario(small_scenario(f'name = "x"\nduration_s = 60\nstart_utc = {written}\n', name="d.toml"))


@pytest.mark.parametrize(("text", "written"), [("```python budget", "\\```python budget"), ("~~~ x", "\\~~~ x"),
                                               ("[a]: http://x", "\\[a]: http://x"), ("___", "\\___"),
                                               ("<div>", "\\<div>"), ("  # h", "\\# h"), ("1. x", "1\\. x"),
                                               ("GPU 0 (chat)", "GPU 0 (chat)"), ("", ""), ("   ", "")])
def test_a_description_opening_any_block_stays_a_paragraph(text: str, written: str) -> None:
    """A code fence swallowed the rest of summary.md, a link definition hid the description, `___` made a rule:
    CommonMark reads a backslash before any punctuation as the character itself."""
    assert _paragraph(text) == written


@pytest.mark.parametrize(("name", "span"), [("tight", "`tight`"), ("x` # y", "``x` # y``"), ("`a``", "``` `a`` ```")])
def test_a_name_holding_backticks_is_one_code_span_in_the_heading(name: str, span: str) -> None:
    """"x` # y" closed the heading's span after x: CommonMark ends a span at a run of backticks as long as its
    opening one."""
    assert _code(name) == span


def test_an_event_on_a_tick_applies_at_that_tick_at_tenths_of_a_second() -> None:
    """11 x 0.1 + 0.1 reads 1.2000000000000002: an event at 1.2 s applied at the tick starting at 1.1 s."""
    from controller.simulate.scenario import EventSettings
    from controller.simulate.sources import events_due

    events = [EventSettings(1.2, "budget", budget_w=500.0)]
    assert list(events_due(events, 11 * 0.1, 0.1, 10.0)) == []
    assert [e.at_s for e in events_due(events, 12 * 0.1, 0.1, 10.0)] == [1.2]
