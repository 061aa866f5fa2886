"""check-config: the shipped file passes; each kind of bad file exits 2 with one line naming the field."""

from __future__ import annotations

import argparse
import logging
import os
import re
import socket
import subprocess
import sys
import threading
import tomllib
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from conftest import free_port, mixed_host

from controller.cli import main
from controller.cli_args import add_tune_args
from controller.config_loader import ConfigError
from controller.settings import load_settings
from controller.simulate.scenario import load_scenario
from queuemodels import ServiceParams, default_delta_ms, default_prior_ms

ROOT = Path(__file__).resolve().parents[1]
GOOD = (ROOT / "config" / "sim.toml").read_text().replace("port = 9464", "port = 0")
"""The shipped file on a port of the system's choosing (a daemon running beside the tests holds 9464)."""


@pytest.mark.parametrize("bom", [b"", b"\xef\xbb\xbf"])
def test_shipped_sim_config_is_valid(tmp_path: Path, capsys: pytest.CaptureFixture[str], bom: bytes) -> None:
    """The shipped file as it is, but on a port nothing else holds; also as an editor that writes a UTF-8 byte-order
    mark saves it (read as "invalid TOML: Invalid statement (at line 1, column 1)", naming nothing)."""
    path = tmp_path / "sim.toml"
    path.write_bytes(bom + GOOD.replace("port = 0", f"port = {free_port()}").encode())
    assert main(["check-config", str(path)]) == 0
    out = capsys.readouterr()
    assert "ok" in out.out and out.err == ""
    path.write_bytes(bom + b'[power]\nmode = "x\xffy"\n')
    assert main(["check-config", str(path)]) == 2
    assert f"not UTF-8 text (byte {len(bom) + 17})" in capsys.readouterr().err  # counted from the file's start


@pytest.mark.parametrize(
    "edit,field",
    [
        (lambda t: t.replace("[power]", "[power"), "invalid TOML"),
        (lambda t: "# emptied by an editor\n", r"holds no settings \(empty, or only comments\)"),
        (lambda t: t.replace('model = "qwen2.5-14b"', 'model = "llama-3.1-8b"'),
         r"services\[code\].prior: differs from services\[chat\]'s, which runs llama-3.1-8b on H100-SXM too: they "
         "share one tuned model, so one prior"),
        (lambda t: t.replace("budget_w = 4000", "budget_w = 4000\nbudget_kw = 4"), "power.budget_kw: unknown key"),
        (lambda t: t.replace("budget_w = 4000", 'budget_w = "lots"'), "power.budget_w: must be a number"),
        (lambda t: t.replace("budget_w = 4000", "budget_w = -5"), r"power.budget_w: must be in \(0, 1e\+08\], got -5"),
        (lambda t: t.replace("budget_w = 4000", "budget_w = nan"), "power.budget_w: must be a number, got nan"),
        (lambda t: t.replace("budget_w = 4000", "budget_w = true"), "power.budget_w: must be a number, got true$"),
        (lambda t: t.replace("batch_sizes = [16, 32, 64, 128]", "batch_sizes = 64.0", 1),
         r"optimizer.batch_sizes: must be a list, got 64.0$"),
        (lambda t: t.replace("[optimizer]", "[optimizer]\ndrain_s = 1e308", 1),
         r"optimizer.drain_s: must be in \[1, 86400\], got 1e\+308"),
        (lambda t: t.replace("[optimizer]", "[optimizer]\ndrain_s = 1e-300", 1),  # any queue read as 1e300 rps
         r"optimizer.drain_s: must be in \[1, 86400\], got 1e-300"),
        (lambda t: t.replace("budget_w = 4000", "budget_w = 4000\nramp_up_w_per_s = 1e-300", 1),
         r"power.ramp_up_w_per_s: must be 0 \(no ramp limit\) or at least 1 W a second \(a limit is set to the "
         r"watt\), got 1e-300"),  # every GPU held at its floor, and status blamed the budget
        (lambda t: t.replace("max_replicas = 4", "max_replicas = 0", 1),
         r"services\[chat\].max_replicas: must be in 1..1024, got 0"),
        (lambda t: t.replace("ttft_ms = 300", "ttft_ms = 0"),
         r"services\[chat\].ttft_ms: must be in \(0, 1e\+07\], got 0"),
        (lambda t: t.replace('power = "sim"', 'power = "ipmi"'), "actuators.power: must be one of"),
        (lambda t: t.replace('solver = "greedy"', 'solver = "cplex"'), "optimizer.solver: must be one of"),
        (lambda t: t.replace('statistic = "p95"', 'statistic = "p42"'), r"services\[code\].statistic: unknown"),
        (lambda t: t.replace("num_gpus = 8", "num_gpus = 8.5"), "simulator.num_gpus: must be an integer"),
        (lambda t: t.replace("num_gpus = 8", 'num_gpus = 3\ngpu_types = ["H100-SXM", "H100-SXM"]'),  # 3 was unread
         "simulator.num_gpus: 3 but gpu_types lists 2 GPUs: give one"),
        (lambda t: t.replace('solver = "greedy"', 'solver = "greedy"\nqueue_model = "mg1"'),
         "optimizer.queue_model: unknown"),
        (lambda t: t.replace("initial_max_batch = 64", "initial_max_batch = 64\ngpus = [0, -1]", 1),
         r"services\[chat\].gpus: GPU indices must be in 0..1023"),
        (lambda t: t.replace('solver = "greedy"', 'solver = "greedy"\nresize_tolerance = 0.9'),
         "optimizer.resize_tolerance: must be in"),
        (lambda t: t.replace("in_tokens_cv = 0.6", "in_tokens_cv = -0.1", 1),
         r"services\[chat\].in_tokens_cv: must be in \[0, 10\], got -0.1"),
        (lambda t: t.replace("budget_w = 4000", "budget_w = 4000\nplan_margin = 0.6"),
         r"power.plan_margin: must be in \[0, 0.5\)"),
        # every bound `run` relies on, named with the service path and the value
        (lambda t: t.replace("initial_max_batch = 64", "initial_max_batch = 0", 1),
         r"services\[chat\].initial_max_batch: must be in 1..4096, got 0"),
        (lambda t: t.replace("initial_max_batch = 64", "initial_max_batch = -64", 1),
         r"services\[chat\].initial_max_batch: must be in 1..4096, got -64"),
        (lambda t: t.replace("initial_max_batch = 128", "initial_max_batch = 1000000000"),
         r"services\[batch-summaries\].initial_max_batch: must be in 1..4096, got 1000000000"),
        (lambda t: t.replace("batch_sizes = [16, 32, 64, 128]", "batch_sizes = [16, 1000000000]"),
         r"optimizer.batch_sizes: must be 1..64 integers in 1..4096, each once, got \[16, 1000000000\]"),
        # a Python type's name ("must be a str")
        (lambda t: t.replace('state_dir = "../var/state"', "state_dir = 5"),
         "daemon.state_dir: must be a string, got 5"),
        (lambda t: t.replace('state_dir = "../var/state"', 'state_dir = ""'),  # the config's own folder, unsaid
         "daemon.state_dir: must name a directory, got ''"),
        (lambda t: t.replace("[actuators]", '[actuators]\nrestore_power_limits = "yes"'),
         "actuators.restore_power_limits: must be true or false, got 'yes'"),
        (lambda t: t.replace("batch_sizes = [16, 32, 64, 128]", "batch_sizes = [16, 16]"),  # sized each shape twice
         r"optimizer.batch_sizes: must be 1..64 integers in 1..4096, each once, got \[16, 16\]"),
        (lambda t: t.replace("power_levels = [0.6, 0.75, 0.9, 1.0]", "power_levels = [0.6, 0.6]"),
         r"optimizer.power_levels: must be 1..64 shares in \(0, 1\], each once, got \[0.6, 0.6\]"),
        (lambda t: t.replace("batch_sizes = [16, 32, 64, 128]", "batch_sizes = []"), "optimizer.batch_sizes: must be"),
        (lambda t: t.replace("batch_sizes = [16, 32, 64, 128]", f"batch_sizes = {list(range(1, 34))}")
         .replace("power_levels = [0.6, 0.75, 0.9, 1.0]", f"power_levels = {[k / 32 for k in range(1, 33)]}"),
         r"optimizer.clock_levels: batch_sizes x power_levels x clock_levels give 1056 shapes"),
        (lambda t: t.replace("rate_rps = 12.0", "rate_rps = 1e6"),
         r"services\[chat\].sim.rate_rps: must be in \[0, 10000\]"),
        (lambda t: t.replace("rate_rps = 12.0", "rate_rps = inf"), r"services\[chat\].sim.rate_rps: .*got inf"),
        (lambda t: t.replace("rate_rps = 12.0", "rate_rps = 9000.0"),  # the cycle's crest passed the bound
         r"services\[chat\].sim.cycle_amplitude: 0.3 takes the rate up to 11700 rps"),
        (lambda t: t.replace("rate_rps = 12.0", "rate_rps = 5000.0").replace("speed = 1.0", "speed = 10.0"),
         r"simulator.speed: 10 x the services' sim.rate_rps is 50110 simulated arrivals per second"),
        (lambda t: t.replace("sim = { rate_rps = 5.0 }", "sim = { rate_rps = 9999.0 }"),  # named the speed, left at 1
         r"services\[code\].sim.rate_rps: 1 x the services' sim.rate_rps is 10017 simulated arrivals per second, "
         r"more than 8000 \(code's 9999 the most\)"),
        (lambda t: t.replace("sim = { rate_rps = 5.0 }", "sim = { rate_rps = 9999.0 }").replace("speed = 1.0",
                                                                                               "speed = 1.01"),
         r"services\[code\].sim.rate_rps: 1.01 x"),  # past the bound at any speed: the speed is not what to mend
        (lambda t: t.replace("cycle_period_s = 900", "cycle_period_s = 0"),
         r"services\[chat\].sim.cycle_period_s: must be in \[1, 604800\], got 0.0"),
        (lambda t: t.replace("cycle_period_s = 900", "cycle_period_s = 1e308"),  # a scenario's is held to a week
         r"services\[chat\].sim.cycle_period_s: must be in \[1, 604800\], got 1e\+308"),
        (lambda t: t.replace("num_gpus = 8", "num_gpus = 100000"),
         "simulator.num_gpus: must be in 1..1024, got 100000"),
        (lambda t: t.replace("speed = 1.0", "speed = 1e12"),
         r"simulator.speed: must be in \[0.01, 100\], got 1000000000000.0"),
        (lambda t: t.replace("speed = 1.0", "speed = 1e-308"),  # a simulated host that never moved
         r"simulator.speed: must be in \[0.01, 100\], got 1e-308"),
        (lambda t: t.replace("num_gpus = 8", "num_gpus = 1024").replace("count = 8", "count = 1024")
         .replace("speed = 1.0", "speed = 50.0").replace("budget_w = 4000", "budget_w = 200000"),
         "simulator.speed: 50 x 1024 GPUs is more than 1024"),
        (lambda t: t.replace("num_gpus = 8", "num_gpus = 256").replace("count = 8", "count = 256")
         .replace("speed = 1.0", "speed = 8.0").replace("budget_w = 4000", "budget_w = 200000"),
         "simulator.speed: 8 x 256 GPUs is more than 1024"),  # check-config said ok; run skipped 23 of 30 ticks
        (lambda t: t.replace("seed = 7", "seed = -7"), r"simulator.seed: must be in 0..2\^63-1, got -7"),
        (lambda t: t.replace("slow_interval_s = 15.0", "slow_interval_s = 1e300"),
         r"daemon.slow_interval_s: must be in \[0.1, 86400\], got 1e\+300"),
        (lambda t: t.replace("slow_interval_s = 15.0", "slow_interval_s = inf"), "daemon.slow_interval_s: .*got inf"),
        (lambda t: t.replace('vllm_source = "sim"', 'vllm_source = "sim"\nprometheus_url = "localhost:9090"'),
         "telemetry.prometheus_url: must be an http\\(s\\) URL with a host, got 'localhost:9090': no http"),
        # a trial: each said ok, then failed every cycle; credentials were never sent, and printed in the log, the
        # decision log and `status`; a newline forged a log line of its own
        *((lambda t, u=u: t.replace('vllm_source = "sim"', f'vllm_source = "sim"\nprometheus_url = "{u}"'),
           f"telemetry.prometheus_url: must be an http\\(s\\) URL with a host, got '{shown}': {why}")
          for u, shown, why in (
              ("http://admin:s3cret@127.0.0.1:19090", "http://\\*\\*\\*@127.0.0.1:19090", "credentials in it"),
              ("http://", "http://", "no http"),
              ("http://127.0.0.1:99999", "http://127.0.0.1:99999", "a bracket left open, or a port"),
              ("http://127.0.0.1:19090 /x", "http://127.0.0.1:19090 /x", "whitespace or a control character"),
              ("http://127.0.0.1:19090\\r\\nX: y", "http://127.0.0.1:19090\\\\r\\\\nX: y", "whitespace"),
              ("http://127.0.0.1:19090/?x=1#frag", "http://127.0.0.1:19090/\\?x=1#frag", "a query or a fragment"),
              # a review: an empty query lost the API's path; a password holding "/" read as a port, shown whole
              ("http://127.0.0.1:19090?", "http://127.0.0.1:19090\\?", "a query or a fragment"),
              ("http://u:pa/ss@h:9090", "http://\\*\\*\\*@h:9090", "credentials in it"))),
        (lambda t: t.replace('vllm_source = "sim"', 'vllm_source = "sim"\nwindow_s = 1.5'),  # queried as [2s]
         "telemetry.window_s: must be whole seconds, got 1.5"),
        (lambda t: t.replace('vllm_source = "sim"', 'vllm_source = "sim"\nwindow_s = 0.4'),  # queried as [0s]
         r"telemetry.window_s: must be in \[1, 86400\], got 0.4"),
        (lambda t: t.replace('listen = "127.0.0.1"', 'listen = "not-an-ip"'),
         "metrics.listen: must be an IP address, got 'not-an-ip'"),
        *((lambda t, a=a: t.replace('listen = "127.0.0.1"', f'listen = "{a}"'),  # (a new user's trial) it bound,
           f"metrics.listen: must be an address of this host, not a broadcast or multicast one, got '{a}'")  # unread
          for a in ("255.255.255.255", "224.0.0.1", "ff02::1", "::ffff:224.0.0.1")),
        (lambda t: t.replace("beta_ms = 0.2,", "beta_ms = inf,", 1), r"services\[chat\].prior.beta_ms: .*got inf"),
        (lambda t: t.replace("alpha_ms = 20.0,", "alpha_ms = 0.0,", 1),
         r"services\[chat\].prior.alpha_ms: must be in \(0, 60000\]"),
        (lambda t: t.replace("initial_max_batch = 64", "initial_max_batch = 64\nmax_queue = -5", 1),
         r"services\[chat\].max_queue: must be in 0..1000000, got -5"),
        (lambda t: t.replace('name = "code"', 'name = ""'), r"services\[1\].name: must not be empty"),
        (lambda t: t.replace('name = "code"', 'name = "chat"'), r"services\[chat\].name: duplicate service name"),
        (lambda t: t.replace('name = "code"', 'name = "CHAT"'),
         r"services\[CHAT\].name: duplicate service name 'CHAT' \(as 'chat': names are compared in lower case"),
        (lambda t: t.replace("beta_ms = 0.2,", "beta_ms = 1e-12,", 1),
         r"services\[chat\].prior.beta_ms: must be 0 or at least 1e-09, got 1e-12"),
        (lambda t: t.replace("alpha_ms = 20.0,", "alpha_ms = 1e-10,", 1),  # 0, offered, was refused as out of range
         r"services\[chat\].prior.alpha_ms: must be at least 1e-09, got 1e-10$"),
        (lambda t: t.replace('family = "step"', 'family = "gen2"', 1),  # a term the family never reads was dropped
         r"services\[chat\].prior.delta_ms: the gen2 family has no such term, got 0.06"),
        (lambda t: t.replace('family = "step", alpha_ms', 'family = "gen1", kappa_ms = 0.01, alpha_ms', 1),
         r"services\[chat\].prior.kappa_ms: the gen1 family has no such term, got 0.01"),
        (lambda t: t.replace('family = "step", alpha_ms', 'family = "gen1", rho = 1.2, alpha_ms', 1),
         r"services\[chat\].prior.rho: the gen1 family has no such term, got 1.2"),
        (lambda t: t.replace('family = "step", alpha_ms', 'family = "step", budget_tokens = -1, alpha_ms', 1),
         r"services\[chat\].prior.budget_tokens: must be in \[0, 1e\+06\], got -1"),
        (lambda t: t.replace('family = "step", alpha_ms', 'family = "step", budget_tokens = 0.5, alpha_ms', 1),
         r"services\[chat\].prior.budget_tokens: must be 0 or at least 1, got 0.5"),
        (lambda t: t.replace('family = "step", alpha_ms', 'family = "step", expert_weight_share = 64, alpha_ms', 1),
         r"services\[chat\].prior.expert_weight_share: must be in \[0, 0.99\], got 64"),
        (lambda t: t.replace('family = "step", alpha_ms', 'family = "step", expert_weight_share = 0.9, '
                             'expert_token_share = 0.125, alpha_ms', 1)
         .replace("[optimizer]", '[optimizer]\nqueue_model = "mm1k-batch"'),
         r"services\[chat\].prior.expert_weight_share: optimizer.queue_model mm1k-batch has no experts' term"),
        (lambda t: t.replace('family = "step", alpha_ms', 'family = "step", expert_weight_share = 0.9, alpha_ms', 1),
         r"services\[chat\].prior.expert_token_share: needed with expert_weight_share 0.9: the experts a token runs"),
        (lambda t: t.replace("initial_max_batch = 64",
                             'initial_max_batch = 64\nvariants = [{ accelerator = "H100-SXM", kv_cache_tokens = 1 }]',
                             1),
         r"services\[chat\].variants\[H100-SXM\].kv_cache_tokens: 1 holds no whole request of this service"),
        (lambda t: t.replace('mode = "predicted"\n', 'mode = "predicted"\n[power.budget]\nsafe_budget_w = 1\n'
                             '[[power.budget.sources]]\nkind = "fixed"\nbudget_w = 3000\n'),
         "power.budget.safe_budget_w: 1 W is below the fleet's idle draw, 760 W"),
        (lambda t: t.replace('mode = "predicted"\n', 'mode = "predicted"\n[power.budget]\nsafe_budget_w = 3000\n'
                             '[[power.budget.sources]]\nkind = "fixed"\nbudget_w = 500\n'),
         r"power.budget.sources\[0\].budget_w: 500 W is below the fleet's idle draw, 760 W"),
        (lambda t: t.replace('mode = "predicted"\n', 'mode = "predicted"\n[power.budget]\nsafe_budget_w = 3000\n'
                             '[[power.budget.sources]]\nkind = "carbon_csv"\npath = "grid.csv"\n'
                             'curve = [[100, 4000], [300, 500]]\n'),  # it ran at 500 W with no word
         r"power.budget.sources\[0\].curve\[1\]: 500 W is below the fleet's idle draw, 760 W"),
        (lambda t: t.replace("initial_max_batch = 64", "initial_max_batch = 64\ngpus = [99]", 1),
         r"services\[chat\].gpus: GPU 99 is not on the simulated host \(GPUs 0..7\)"),
        (lambda t: t.replace("initial_max_batch = 64", "initial_max_batch = 64\ngpus = [1]")
         .replace("initial_max_batch = 128", "initial_max_batch = 128\ngpus = [1]"),
         r"services\[code\].gpus: GPU 1 is already services\[chat\]'s"),
        (lambda t: t.replace("initial_max_batch = 64", "initial_max_batch = 64\ngpus = [1, 1]", 1),
         r"services\[chat\].gpus: GPU 1 is listed twice"),  # "is already services[chat]'s", of chat's own list
        (lambda t: t.replace("count = 8", "count = 64"),
         r"accelerators\[H100-SXM\].count: 64 is not the simulated host's 8 H100-SXM GPUs"),
        (lambda t: t.replace("count = 8", "count = 1"), r"accelerators\[H100-SXM\].count: 1 is not"),
        (lambda t: t + '[[accelerators]]\nname = "A100-SXM4"\ncount = 4\n',
         r"accelerators\[A100-SXM4\].count: 4 is not the simulated host's 0 A100-SXM4 GPUs"),
        (lambda t: t.replace('solver = "greedy"', 'solver = "greedy"\ntransition_penalty = inf'),
         r"optimizer.transition_penalty: must be in \[0, 1\], got inf"),
        (lambda t: t.replace('solver = "greedy"', 'solver = "greedy"\ntransition_penalty = -0.1'),
         r"optimizer.transition_penalty: must be in \[0, 1\], got -0.1"),
        (lambda t: t.replace('solver = "greedy"', 'solver = "greedy"\ntime_limit_s = 20'),
         r"optimizer.time_limit_s: 20 s must be shorter than daemon.slow_interval_s \(15 s\): lower the one or raise "
         "the other"),
        # a file that never set time_limit_s, whose slow_interval_s is within its own range
        (lambda t: t.replace("slow_interval_s = 15.0", "slow_interval_s = 2.0"),
         r"optimizer.time_limit_s: 2 s \(its default\) must be shorter than daemon.slow_interval_s \(2 s\)"),
        (lambda t: t.replace("min_replicas = 1", "min_replicas = 4"),
         r"services\[batch-summaries\].min_replicas: the services' min_replicas up to here add up to 12, more "
         r"replicas than the accelerators hold \(8; accelerators\[H100-SXM\] 8: 8 GPUs, 1 a replica\)"),
        (lambda t: t.replace("count = 8", "count = 8\ngpus_per_replica = 8", 1),  # the key changed went unnamed
         r"services\[code\].min_replicas: the services' min_replicas up to here add up to 2, more replicas than the "
         r"accelerators hold \(1; accelerators\[H100-SXM\] 1: 8 GPUs, 8 a replica\)"),
        (lambda t: t.replace("budget_w = 4000", "budget_w = 700"),
         "power.budget_w: 700 W is below the fleet's idle draw, 760 W"),
        (lambda t: t.replace("budget_w = 4000", "budget_w = 1e300"),
         r"power.budget_w: must be in \(0, 1e\+08\], got 1e\+300"),
        (lambda t: t.replace("max_replica_step = 1", "max_replica_step = 99999999999999999999"),
         "stability.max_replica_step: must be an integer of at most 64 bits, got 99999999999999999999"),
        (lambda t: t.replace("budget_w = 4000", "budget_w = 99999999999999999999"),
         "power.budget_w: must be a number of at most 64 bits, got 99999999999999999999"),
        (lambda t: t.replace("budget_w = 4000", f"budget_w = {10**400}"),  # it printed all 401 digits
         r"power.budget_w: must be a number of at most 64 bits, got 1000000000\d{70}\.\.\. \(401 characters\)$"),
    ],
)
def test_bad_file_exits_2_naming_the_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], edit: object, field: str
) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(edit(GOOD))  # type: ignore[operator]
    assert main(["check-config", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert re.search(field, err), err


def test_two_variants_of_one_service_on_one_gpu_say_whose_it_is(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """The GPU was the service's own other variant's: "listed twice" read as though one list held it twice (a
    review)."""
    host = ROOT / "config" / "scenarios" / "hosts" / "h100-l40s.toml"
    text = host.read_text().replace('variants = [{ accelerator = "H100-SXM" }, { accelerator = "L40S" }]',
                                    'variants = [{ accelerator = "H100-SXM", gpus = [1] }, '
                                    '{ accelerator = "L40S", gpus = [1] }]', 1)
    (tmp_path / "h.toml").write_text(text.replace('"../../../var/state-h100-l40s"', f'"{tmp_path}/state"'))
    assert main(["check-config", "--file-only", str(tmp_path / "h.toml")]) == 2
    assert "variants[L40S].gpus: GPU 1 is already services[chat].variants[H100-SXM]'s" in capsys.readouterr().err


@pytest.mark.parametrize("name,shown", [
    ("co\\u001b[31mde\\nX", r"got 'co\\x1b\[31mde\\nX'"),  # an escape code and a newline for the log
    ("x" * 100_000, r"got 'x{40}'\.\.\."),
    ("Code Service!", r"got 'Code Service!'"),
    ("-code", r"got '-code'"),
])
def test_a_service_name_that_would_garble_logs_or_labels_is_refused(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str, shown: str) -> None:
    """A name goes into log lines, Prometheus labels and Kubernetes objects: one line naming the service by its
    index (the name itself is the bad value), and the value quoted, cut to its start."""
    path = tmp_path / "bad.toml"
    path.write_text(GOOD.replace('name = "code"', f'name = "{name}"'))
    assert main(["check-config", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and len(err) < 400, err
    assert re.search(r"services\[1\]\.name: must be 1-253 letters, digits.*" + shown, err), err


@pytest.mark.parametrize(("command", "text", "said"), [
    # a daemon config's budget_w at the top, not under [power]: it had been "an optimize spec: run it with optimize"
    (["check-config", "--file-only"], 'budget_w = 4000\n[simulator]\nnum_gpus = 4\n[[accelerators]]\n'
     'name = "H100-SXM"\ncount = 4\n[[services]]\nname = "chat"\nmodel = "llama-3.1-8b"\nttft_ms = 500\nitl_ms = 50\n',
     "budget_w: unknown key"),
    # a stray kind: it had been "a plan spec: run it with plan"
    (["check-config", "--file-only"], 'kind = "sim"\n' + GOOD, "kind: unknown key"),
    # a scenario without its config: "an optimize spec", whose command then said "name: unknown key", a circle
    (["simulate", "--report", "r"], 'name = "x"\nduration_s = 60\nbudget_w = 3000\n',
     "config: required key is missing"),
    # and check-config read it as a daemon config: "services: at least one service is required"
    (["check-config"], 'name = "x"\ndescription = "tiny"\nduration_s = 60\nbudget_w = 3000\n',
     "config: required key is missing"),
    # a file whose keys say one kind alone is still named as that kind
    (["simulate", "--report", "r"], GOOD, "is a daemon config, not a scenario: run it with `wattscale run --config"),
    (["optimize"], GOOD, "is a daemon config, not an optimize spec"),
    (["plan"], (ROOT / "config" / "examples" / "optimize.toml").read_text(), "is an optimize spec, not a plan spec"),
])
def test_a_file_is_named_as_another_kind_only_where_its_keys_say_that_kind_alone(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], command: list[str], text: str, said: str) -> None:
    path = tmp_path / "file.toml"
    path.write_text(text)
    argv = [command[0], *command[1:2], str(path), *command[2:]] if command[0] == "check-config" else \
        [command[0], str(path), *command[1:]]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert said in err and len(err.splitlines()) == 1, err


def test_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-config", str(tmp_path / "nope.toml")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_a_link_that_loops_or_points_nowhere_is_said_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A link to itself read "no such file": the file is there, the link is what to fix."""
    (tmp_path / "loop.toml").symlink_to(tmp_path / "loop.toml")
    (tmp_path / "gone.toml").symlink_to(tmp_path / "nowhere.toml")
    assert main(["check-config", str(tmp_path / "loop.toml")]) == 2
    assert "a link that loops" in capsys.readouterr().err
    assert main(["check-config", str(tmp_path / "gone.toml")]) == 2
    assert "a link to no such file" in capsys.readouterr().err


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_unreadable_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "secret.toml"
    path.write_text(GOOD)
    path.chmod(0)
    assert main(["check-config", str(path)]) == 2
    assert "not readable" in capsys.readouterr().err


def test_unreadable_file_as_root_too(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A directory in place of the file is unreadable as a config for every user."""
    path = tmp_path / "dir.toml"
    path.mkdir()
    assert main(["check-config", str(path)]) == 2
    assert "not a regular file" in capsys.readouterr().err


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "w.toml"
    path.write_text(text.replace("port = 0", f"port = {free_port()}"))
    return path


def test_metrics_port_in_use_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        path = tmp_path / "w.toml"
        path.write_text(GOOD.replace("port = 0", f"port = {port}"))
        assert main(["check-config", str(path)]) == 2
        assert main(["run", "--config", str(path), "--duration", "1"]) == 2  # refused before anything starts
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"wattscale: metrics.port: {port} is already in use on 127.0.0.1 (by a running wattscale? a reload, "
                   "SIGHUP, checks an edited file itself and keeps the running config if it is bad)"] * 2


def test_metrics_listen_not_on_this_host(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, GOOD.replace('listen = "127.0.0.1"', 'listen = "192.0.2.1"'))  # TEST-NET-1
    assert main(["check-config", str(path)]) == 2
    assert "metrics.listen: 192.0.2.1 is not an address of this host" in capsys.readouterr().err


@pytest.mark.parametrize("state_dir", ["afile", "afile/state"])
def test_a_state_dir_that_is_a_file_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                               state_dir: str) -> None:
    """It was a warning, and `run` went on with no lock, no tuner state and no decision log, each said as "File
    exists"; a tuner state or decision log that is a folder is refused, and so is this."""
    (tmp_path / "afile").write_text("")
    path = write(tmp_path, GOOD.replace('state_dir = "../var/state"', f'state_dir = "{state_dir}"'))
    said = (f"wattscale: daemon.state_dir: {tmp_path / 'afile'} is not a directory: the daemon keeps its lock, tuner "
            "state and decision log in this folder\n")
    for command in (["check-config", str(path)], ["run", "--config", str(path), "--duration", "1"]):
        assert main(command) == 2
        assert capsys.readouterr().err == said


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes any directory")
def test_read_only_state_dir_is_a_warning(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "ro").mkdir()
    (tmp_path / "ro").chmod(0o500)
    path = write(tmp_path, GOOD.replace('state_dir = "../var/state"', 'state_dir = "ro/state"'))
    assert main(["check-config", str(path)]) == 0
    assert "no file can be created in " in (err := capsys.readouterr().err)
    assert err.strip().endswith(" (Permission denied); tuner state will not be saved")


def test_a_state_dir_on_a_virtual_file_system_is_a_warning_for_root_too(tmp_path: Path,
                                                                        capsys: pytest.CaptureFixture[str]) -> None:
    """os.access says yes to root under /proc; a file made there says no."""
    path = write(tmp_path, GOOD.replace('state_dir = "../var/state"', 'state_dir = "/proc/wattscale-test/state"'))
    assert main(["check-config", str(path)]) == 0
    assert "daemon.state_dir: no file can be created in /proc (" in capsys.readouterr().err


@pytest.mark.parametrize("duration", ["nan", "-5", "0", "inf", "soon"])
def test_run_duration_must_be_finite_and_positive(duration: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["run", "--config", str(ROOT / "config" / "sim.toml"), "--duration", duration])
    assert exc.value.code == 2
    assert "--duration: must be" in capsys.readouterr().err


@pytest.mark.parametrize("unit", ["/etc/passwd", "-H", "vllm chat", "", "vllm@", "@1", "v" * 240])
def test_a_systemd_unit_name_that_systemd_would_not_take_is_refused(tmp_path: Path, unit: str,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """'/x' made the batch file's path leave its folder, and '-x' reached systemctl as an option."""
    text = vllm_child(sys.executable).replace('batch = "vllm"', 'batch = "vllm"\nvllm_runner = "systemd"')
    for k, name in enumerate(SERVICES):
        given = unit if k == 1 else f"{name}-0"
        text = text.replace(f"vllm_ports = [{8000 + k}]", f'vllm_ports = [{8000 + k}]\nsystemd_units = ["{given}"]')
    assert main(["check-config", str(write(tmp_path, text))]) == 2
    from controller.config_loader import quoted

    assert f"services[{SERVICES[1]}].systemd_units: {quoted(unit)} is no unit name" in capsys.readouterr().err


@pytest.mark.parametrize("old,new", [
    ("initial_max_batch = 64", "initial_max_batch = 0"),
    ("batch_sizes = [16, 32, 64, 128]", "batch_sizes = [1000000000]"),
    ("rate_rps = 12.0", "rate_rps = 1e6"),
    ("num_gpus = 8", "num_gpus = 100000"),
    ("speed = 1.0", "speed = 1e12"),
])
def test_run_refuses_what_hung_the_daemon_at_once(tmp_path: Path, old: str, new: str) -> None:
    """The configs whose slow tick never ended are refused by `run` itself, in one line."""
    path = write(tmp_path, GOOD.replace(old, new, 1))
    argv = [sys.executable, "-m", "controller.cli", "run", "--config", str(path), "--duration", "30"]
    # a run that started would last its 30 s: 20 s leaves a busy 2-core machine its imports (5 s did not, once)
    done = subprocess.run(argv, capture_output=True, text=True, timeout=20, cwd=ROOT)
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr


SERVICES = ("chat", "code", "batch-summaries")


def vllm_child(exe: str) -> str:
    """The sim config with each service's batch changed by restarting a child process (`exe`) on a port."""
    text = GOOD.replace('batch = "sim"', 'batch = "vllm"')
    for k, name in enumerate(SERVICES):
        text = text.replace(f'name = "{name}"', f'name = "{name}"\nvllm_ports = [{8000 + k}]\nvllm_command = ["{exe}"]')
    return text


def test_backends_programs_and_packages_are_probed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-config", str(write(tmp_path, vllm_child(sys.executable)))]) == 0
    assert main(["check-config", str(write(tmp_path, vllm_child("no-such-vllm")))]) == 2
    assert "services[chat].vllm_command: 'no-such-vllm' is not an executable program" in capsys.readouterr().err
    wrapper = tmp_path / "wrapper.sh"  # runs from a shell; `run` failed on it with ENOEXEC (a new user's trial)
    wrapper.write_text('exec python3 serve.py "$@"\n')
    wrapper.chmod(0o755)
    assert main(["check-config", str(write(tmp_path, vllm_child(str(wrapper))))]) == 2
    err = capsys.readouterr().err  # the path as quoted (shortened where long)
    assert "services[chat].vllm_command: '" in err and "is no program the kernel starts: a script needs a #!" in err
    wrapper.write_text('#!/bin/sh\nexec python3 serve.py "$@"\n')
    assert main(["check-config", str(write(tmp_path, vllm_child(str(wrapper))))]) == 0
    fifo = tmp_path / "fifo"  # executable and no directory, so `which` finds it: the probe's open waited for a writer
    os.mkfifo(fifo, 0o755)
    checked = threading.Thread(target=lambda: main(["check-config", str(write(tmp_path, vllm_child(str(fifo))))]),
                               daemon=True)
    checked.start()
    checked.join(10.0)
    assert not checked.is_alive() and "is no program the kernel starts" in capsys.readouterr().err
    kube = GOOD.replace('replicas = "sim"', 'replicas = "kubernetes"\nkubeconfig = "missing.yaml"')
    assert main(["check-config", str(write(tmp_path, kube))]) == 2
    assert f"actuators.kubeconfig: {tmp_path / 'missing.yaml'} is not a readable file" in capsys.readouterr().err


@pytest.mark.parametrize(("kubeconfig", "why"), [
    ("garbage: [", r"kubeconfig \S+broken.yaml is not valid YAML"),
    ("hello", r"\S+broken.yaml is not a kubeconfig \(TypeError"),  # a traceback
    ("", r"no usable credentials in ~/.kube/config, which does not exist"),
], ids=["broken-file", "not-a-mapping", "none-at-all"])
def test_kubernetes_credentials_run_cannot_read_are_refused_by_check_config(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, kubeconfig: str,
        why: str) -> None:
    """check-config read only whether a named kubeconfig was a file: it said ok to a broken one, and to none at all
    outside a cluster, where `run` then stopped at once on the credentials."""
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.kube/config
    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    named = ""
    if kubeconfig:
        (tmp_path / "broken.yaml").write_text(kubeconfig)
        named = '\nkubeconfig = "broken.yaml"'
    path = write(tmp_path, GOOD.replace('replicas = "sim"', f'replicas = "kubernetes"{named}'))
    for command in (["check-config", str(path)], ["run", "--config", str(path), "--duration", "1"]):
        assert main(command) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert re.search(r"^wattscale: actuators\.kubeconfig: kubernetes: " + why, err[-1]), err


def test_an_unwritable_batch_dir_is_a_warning(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tmp_path.chmod(0o755)  # the folder it is in, as /var/lib/wattscale is: pytest's own are 0700
    (tmp_path / "afile").write_text("")
    text = vllm_child(sys.executable).replace('batch = "vllm"', 'batch = "vllm"\nvllm_runner = "systemd"\n'
                                              'systemd_batch_dir = "afile"')
    for k, name in enumerate(SERVICES):
        text = text.replace(f"vllm_ports = [{8000 + k}]", f'vllm_ports = [{8000 + k}]\nsystemd_units = ["{name}-0"]')
    assert main(["check-config", str(write(tmp_path, text))]) == 0
    assert (f"wattscale: warning: actuators.systemd_batch_dir: {tmp_path / 'afile'} is not a directory; changes "
            "of max batch will fail") in capsys.readouterr().err
    assert main(["check-config", str(write(tmp_path, text.replace('"afile"', '"units"')))]) == 0
    assert "warning" not in capsys.readouterr().err  # made at the first change
    (tmp_path / "units").mkdir(mode=0o700)  # the units' users fell back to their own max batch, unsaid
    (tmp_path / "units").chmod(0o700)
    assert main(["check-config", str(write(tmp_path, text.replace('"afile"', '"units"')))]) == 0
    assert f"{tmp_path / 'units'} cannot be entered by the vLLM units' users (mode 700)" in capsys.readouterr().err
    (tmp_path / "units").chmod(0o755)
    (tmp_path / "units" / "chat-0.service.batch").write_text("8\n")
    (tmp_path / "units" / "chat-0.service.batch").chmod(0o600)
    assert main(["check-config", str(write(tmp_path, text.replace('"afile"', '"units"')))]) == 0
    assert "chat-0.service.batch cannot be read by the vLLM unit's user (mode 600)" in capsys.readouterr().err


@pytest.mark.parametrize("old,new", [
    ("batch_sizes = [16, 32, 64, 128]", "batch_sizes = [1000000000]"),
    ("initial_max_batch = 64", "initial_max_batch = 64\nmax_queue = -5"),
])
def test_sighup_with_a_bad_bound_keeps_the_running_config(tmp_path: Path, old: str, new: str) -> None:
    from controller.daemon import Daemon
    from controller.settings import load_settings

    path = tmp_path / "w.toml"
    path.write_text(GOOD)
    daemon = Daemon(path, load_settings(path))
    before = daemon.settings
    path.write_text(GOOD.replace(old, new, 1))
    daemon.reload()
    assert daemon.settings is before
    assert daemon.registry.get_sample_value("wattscale_config_reloads_total", {"result": "refused"}) == 1.0


def test_a_reload_says_what_it_changed_and_the_budget_in_force(tmp_path: Path,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    """Its line gave the configured budget (a source's lower one in force) and said nothing of what changed: a
    10 MB comment read as a reload like any other."""
    from controller.daemon import Daemon
    from controller.settings import load_settings

    path = tmp_path / "w.toml"
    path.write_text(GOOD)
    daemon = Daemon(path, load_settings(path))
    path.write_text(GOOD.replace("budget_w = 4000", "budget_w = 3000").replace("ttft_ms = 300", "ttft_ms = 250", 1)
                    .replace("cooldown_s = 60", "cooldown_s = 90"))
    with caplog.at_level(logging.INFO, logger="wattscale.daemon"):
        daemon.reload()
        assert daemon.slow_due.is_set()  # the next plan now, not at the period
        daemon.slow_due.clear()
        path.write_text(path.read_text() + "# a comment\n")
        daemon.reload()
        assert not daemon.slow_due.is_set()
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("config reloaded")]
    assert lines == ["config reloaded: changed power.budget_w 4000.0 -> 3000.0, services[chat].ttft_ms 300.0 -> 250.0, "
                     "stability.cooldown_s 60.0 -> 90.0; budget 3000 W, 3 services",
                     "config reloaded: changed nothing; budget 3000 W, 3 services"], lines


def test_a_reload_that_cuts_the_budget_under_a_racks_line_is_taken_and_a_rack_under_its_floors_warned_of(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A trial: an emergency cut by reload (4,000 to 2,000 W) was refused while a rack's 2,600-W breaker stood above
    it, though a budget source's cut went through; and a rack under its GPUs' lowest limits came in by reload with
    no word, where `run` and check-config warn of it."""
    from controller.daemon import Daemon
    from controller.settings import load_settings

    rack = 'mode = "predicted"\n[[power.domains]]\nname = "rack-b"\nlimit_w = 2600\ngpus = [4, 5, 6, 7]\n'
    path = tmp_path / "w.toml"
    path.write_text(GOOD.replace('mode = "predicted"\n', rack))
    daemon = Daemon(path, load_settings(path))
    path.write_text(GOOD.replace('mode = "predicted"\n', rack).replace("budget_w = 4000", "budget_w = 2000"))
    with caplog.at_level(logging.INFO, logger="wattscale.daemon"):
        daemon.reload()
        assert daemon.refused is None and daemon.settings.power.budget_w == 2000.0
        path.write_text(path.read_text().replace("limit_w = 2600", "limit_w = 700"))
        daemon.reload()
    assert daemon.settings.power.domains[0].limit_w == 700.0
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING] == [
        "reload: power.domains[rack-b].limit_w: 700 W (679 W less headroom) is below its GPUs' lowest limits, 800 W: "
        "busy, they draw over it whatever the governor sets"]


def test_a_reload_log_says_a_table_added_or_removed_by_name_in_toml_terms(tmp_path: Path) -> None:
    """A domain added read `power.domains [] -> [PowerDomainSettings(name='rack-a', limit_w=900.0, ...)]`."""
    from controller.power_settings import PowerDomainSettings
    from controller.reload import changes
    from controller.settings import load_settings

    path = tmp_path / "w.toml"
    path.write_text(GOOD)
    old = load_settings(path)
    rack_a, rack_b = PowerDomainSettings("rack-a", 900.0, (0, 1, 2, 3)), PowerDomainSettings("rack-b", 900.0, (4, 5))
    both = replace(old, power=replace(old.power, domains=(rack_a, rack_b)))
    assert changes(old, replace(old, power=replace(old.power, domains=(rack_a,)))) == (
        "power.domains[rack-a] (none) -> {name = 'rack-a', limit_w = 900.0, gpus = [0, 1, 2, 3]}")
    assert changes(both, replace(both, power=replace(both.power, domains=(replace(rack_a, limit_w=800.0),)))) == (
        "power.domains[rack-a].limit_w 900.0 -> 800.0, power.domains[rack-b] {name = 'rack-b', limit_w = 900.0, "
        "gpus = [4, 5]} -> (none)")
    assert changes(both, replace(both, power=replace(both.power, domains=(rack_b, rack_a)))) == (
        "power.domains order ['rack-a', 'rack-b'] -> ['rack-b', 'rack-a']")


def test_a_reload_through_a_link_into_another_folder_is_refused(tmp_path: Path,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    """Config management swapped /etc's file for a link into another folder: the reload took the new base_dir, the
    daemon kept writing the old state, `status` then read the new folder's, and the next start lost the tuner's."""
    from controller.daemon import Daemon
    from controller.settings import load_settings

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    path = tmp_path / "a" / "w.toml"
    text = GOOD.replace('state_dir = "../var/state"', 'state_dir = "state"')  # each folder's own
    path.write_text(text)
    daemon = Daemon(path, load_settings(path))
    before = daemon.settings
    (tmp_path / "b" / "w.toml").write_text(text.replace("budget_w = 4000", "budget_w = 3000"))
    link = tmp_path / "a" / "w.tmp"
    link.symlink_to(tmp_path / "b" / "w.toml")
    link.replace(path)
    with caplog.at_level(logging.WARNING, logger="wattscale.daemon"):
        daemon.reload()
    assert daemon.settings is before
    assert any("daemon.state_dir: resolves to" in r.getMessage() for r in caplog.records), caplog.records


def test_a_configmap_update_through_its_flipped_links_reloads(tmp_path: Path) -> None:
    """kubelet mounts config.toml -> ..data/config.toml, ..data -> ..<timestamp>/, and flips ..data on each update:
    the file's folder moves every time, and refusing that refused every reload (the state is an absolute path). A
    relative kubeconfig no backend reads blocked them too, and a budget source's file that is a looping link."""
    from controller.daemon import Daemon
    from controller.settings import load_settings

    (tmp_path / "loop.json").symlink_to(tmp_path / "loop.json")  # an absolute path to a link that loops
    budget = ('[power.budget]\nsafe_budget_w = 3000\n\n[[power.budget.sources]]\nkind = "fixed"\nname = "contract"\n'
              'budget_w = 5000\n\n[[power.budget.sources]]\nkind = "demand_response"\nname = "utility"\n'
              f'path = "{tmp_path / "loop.json"}"\n\n')
    text = GOOD.replace('state_dir = "../var/state"', f'state_dir = "{tmp_path / "state"}"').replace(
        "[optimizer]", budget + "[optimizer]", 1).replace('replicas = "sim"', 'replicas = "sim"\nkubeconfig = "kube"')
    mount = tmp_path / "mount"
    (mount / "..2026_12_01").mkdir(parents=True)
    (mount / "..2026_12_01" / "config.toml").write_text(text)
    (mount / "..data").symlink_to("..2026_12_01")
    (mount / "config.toml").symlink_to("..data/config.toml")
    daemon = Daemon(mount / "config.toml", load_settings(mount / "config.toml"))
    (mount / "..2026_12_02").mkdir()
    (mount / "..2026_12_02" / "config.toml").write_text(text.replace("budget_w = 4000", "budget_w = 3000"))
    (mount / "..data_tmp").symlink_to("..2026_12_02")
    (mount / "..data_tmp").replace(mount / "..data")
    daemon.reload()
    assert daemon.settings.power.budget_w == 3000.0


def test_a_reload_through_a_link_is_refused_where_a_file_read_since_start_would_move(tmp_path: Path) -> None:
    """Only the state dir was compared: a demand-response source built from v1/dr-signal.json read it on after the
    file became a link into v2, and the reload said nothing. And an edited state_dir is named as an edit, not as a
    link."""
    from controller.reload import check_reload
    from controller.settings import load_settings

    budget = ('[power.budget]\nsafe_budget_w = 3000\n\n[[power.budget.sources]]\nkind = "fixed"\nname = "contract"\n'
              'budget_w = 4000\n\n[[power.budget.sources]]\nkind = "demand_response"\nname = "utility"\n'
              'path = "dr-signal.json"\n\n')
    text = GOOD.replace('state_dir = "../var/state"', f'state_dir = "{tmp_path / "state"}"').replace(
        "[optimizer]", budget + "[optimizer]", 1)
    for folder in ("v1", "v2"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "w.toml").write_text(text)
    (tmp_path / "w.toml").symlink_to(tmp_path / "v1" / "w.toml")
    running = load_settings(tmp_path / "w.toml")
    (tmp_path / "w.tmp").symlink_to(tmp_path / "v2" / "w.toml")
    (tmp_path / "w.tmp").replace(tmp_path / "w.toml")
    with pytest.raises(ConfigError, match=r"^power\.budget\.sources\[utility\]\.path: resolves to .*v2/dr-signal"):
        check_reload(running, load_settings(tmp_path / "w.toml"))
    (tmp_path / "v1" / "w.toml").write_text(text.replace(f'"{tmp_path / "state"}"', f'"{tmp_path / "state2"}"'))
    with pytest.raises(ConfigError, match=r"^daemon\.state_dir: changes need a restart"):
        check_reload(load_settings(tmp_path / "v2" / "w.toml"), load_settings(tmp_path / "v1" / "w.toml"))


def test_a_refused_reload_is_said_in_the_units_status_until_one_goes_through(tmp_path: Path) -> None:
    """`systemctl reload` exits 0 either way (READY=1 follows RELOADING=1): a refusal, with an urgent budget change in
    it, was said in the journal alone."""
    from controller.daemon import Daemon
    from controller.settings import load_settings

    path = tmp_path / "w.toml"
    path.write_text(GOOD)
    daemon = Daemon(path, load_settings(path))
    sent: list[tuple[str, ...]] = []
    daemon.notifier.send = lambda *lines: sent.append(lines)  # type: ignore[method-assign]
    path.write_text(GOOD.replace("budget_w = 4000", "budget_w = nan"))
    daemon.reload()
    assert sent[-1][0] == "READY=1" and "last reload refused: power.budget_w" in sent[-1][1], sent
    path.write_text(GOOD.replace("budget_w = 4000", "budget_w = 3000"))
    daemon.reload()
    assert sent[-1][1] == "STATUS=budget 3000 W, 3 services", sent


def test_a_reload_that_only_moves_a_service_block_is_taken(tmp_path: Path) -> None:
    """Two `[[services]]` blocks swapped in the running file: "services: reordered: services change with a restart",
    though their order means nothing (`priority` ranks them; a new user's trial). Taken, in the running order."""
    from controller.daemon import Daemon
    from controller.settings import load_settings

    path = tmp_path / "w.toml"
    path.write_text(GOOD)
    daemon = Daemon(path, load_settings(path))
    head, *blocks = GOOD.split("[[services]]")
    assert len(blocks) == 3
    path.write_text("[[services]]".join([head, blocks[1], blocks[0], blocks[2]])
                    .replace("budget_w = 4000", "budget_w = 3000"))
    daemon.reload()
    assert daemon.refused is None and daemon.settings.power.budget_w == 3000.0
    assert [s.name for s in daemon.settings.services] == ["chat", "code", "batch-summaries"]


def test_a_reload_that_fails_past_every_check_keeps_the_running_config(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """A value no check caught (a budget source's `kind = []` was a TypeError) ended the daemon on SIGHUP."""
    from controller import daemon as daemon_module
    from controller.daemon import Daemon
    from controller.settings import load_settings

    path = tmp_path / "w.toml"
    path.write_text(GOOD)
    daemon = Daemon(path, load_settings(path))
    before = daemon.settings

    def unchecked(path: Path) -> None:
        raise TypeError("unhashable type: 'list'")

    monkeypatch.setattr(daemon_module, "load_settings", unchecked)
    daemon.reload()
    assert daemon.settings is before
    assert daemon.registry.get_sample_value("wattscale_config_reloads_total", {"result": "refused"}) == 1.0


def test_a_catalogue_gpu_the_simulator_lacks_is_a_config_error(tmp_path: Path) -> None:
    """H200-SXM is in the catalogue (measured) but not simulated: `run` died in build_host with a bare ValueError."""
    text = (ROOT / "config" / "sim.toml").read_text()
    (tmp_path / "h200.toml").write_text(text.replace('gpu_type = "H100-SXM"', 'gpu_type = "H200-SXM"'))
    with pytest.raises(ConfigError, match=r"^simulator\.gpu_type: 'H200-SXM' is not a GPU the simulator has"):
        load_settings(tmp_path / "h200.toml")


def test_simulator_personalities_are_named_and_reach_the_host(tmp_path: Path) -> None:
    from controller.wiring import build_host

    text = (ROOT / "config" / "sim.toml").read_text().replace(
        "start_delay_s = 20", 'start_delay_s = 20\npersonalities = { "llama-3.1-8b" = "chunked" }')
    (tmp_path / "p.toml").write_text(text)
    host = build_host(load_settings(tmp_path / "p.toml"))
    assert host.personality("llama-3.1-8b").name == "chunked" and host.personality("mistral-7b").name == "roofline"
    (tmp_path / "bad.toml").write_text(text.replace('"chunked"', '"fast"'))
    with pytest.raises(ConfigError, match=r"simulator\.personalities\.llama-3\.1-8b: unknown 'fast'"):
        load_settings(tmp_path / "bad.toml")
    (tmp_path / "unused.toml").write_text(text.replace('"llama-3.1-8b" = "chunked"', '"llama-3.1-70b-fp8" = "chunked"'))
    with pytest.raises(ConfigError, match=r"^simulator\.personalities\.llama-3\.1-70b-fp8: no service runs model"):
        load_settings(tmp_path / "unused.toml")


def power_laws_config(tmp_path: Path, laws: str) -> Path:
    """config/sim.toml with `power_laws = {laws}` in its [simulator] table."""
    path = tmp_path / "laws.toml"
    path.write_text((ROOT / "config" / "sim.toml").read_text().replace(
        "start_delay_s = 20", f"start_delay_s = 20\npower_laws = {{ {laws} }}"))
    return path


def test_simulator_power_laws_reach_the_host(tmp_path: Path) -> None:
    from controller.wiring import build_host

    settings = load_settings(power_laws_config(tmp_path, '"H100-SXM" = "memory-heavy"'))
    assert {g.law.name for g in build_host(settings).gpus} == {"memory-heavy"}


@pytest.mark.parametrize(("laws", "message"), [
    ('"H100-SXM" = "cubic"', r"^simulator\.power_laws\.H100-SXM: unknown 'cubic', expected one of \['dynamic', "
                             r"'memory-heavy', 'voltage-floor'\]"),
    ('"L40S" = "memory-heavy"', r"^simulator\.power_laws\.L40S: the simulated host has no GPU type 'L40S'"),
])
def test_a_power_law_is_refused_by_its_name_or_its_gpu_type(tmp_path: Path, laws: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_settings(power_laws_config(tmp_path, laws))


def unset_prior(tmp_path: Path, prior: str) -> ServiceParams:
    """The first service's prior of config/sim.toml, written as `prior` instead."""
    text = (ROOT / "config" / "sim.toml").read_text()
    old = 'prior = { family = "step", alpha_ms = 20.0, beta_ms = 0.2, gamma_ms = 20.0, delta_ms = 0.06 }'
    assert old in text
    (tmp_path / "p.toml").write_text(text.replace(old, f"prior = {prior}"))
    return load_settings(tmp_path / "p.toml").services[0].prior.params()


@pytest.mark.parametrize(("prior", "beta_ms", "gamma_ms"), [('{ family = "gen2" }', 0.01, 1e-4),
                                                         ('{ family = "gen1" }', 0.1, 10.0),
                                                         ('{ family = "gen2", gamma_ms = 0.001 }', 0.01, 0.001)])
def test_a_prior_left_unset_starts_at_its_familys_values(tmp_path: Path, prior: str, beta_ms: float,
                                                           gamma_ms: float) -> None:
    """gen1's 20-ms gamma read as gen2's per-context-token term made a 10-second decode step."""
    params = unset_prior(tmp_path, prior)
    assert (params.beta_ms, params.gamma_ms) == (beta_ms, gamma_ms)


@pytest.mark.parametrize("family", ["step", "gen1", "gen2"])
def test_a_prior_left_unset_is_the_one_tune_starts_from(tmp_path: Path, family: str) -> None:
    """The config's defaults were alpha 20, beta 0.2, gamma 20 where `wattscale tune`'s were 15, 0.1, 10: a service
    given no prior started from another law than the one its windows were fitted from."""
    parser = argparse.ArgumentParser()
    add_tune_args(parser)
    (tmp_path / "rows.csv").write_text("")
    args = parser.parse_args([str(tmp_path / "rows.csv"), "--family", family])
    params = unset_prior(tmp_path, f'{{ family = "{family}" }}')
    assert (params.alpha_ms, params.beta_ms, params.gamma_ms, params.delta_ms) == (
        args.alpha_ms, default_prior_ms(family, "beta_ms"), default_prior_ms(family, "gamma_ms"),
        default_delta_ms(family))


def test_a_model_whose_weights_a_gpu_type_cannot_hold_is_refused_by_name(tmp_path: Path) -> None:
    """A 70-GB model on an L40S (48 GB) ran on a 2-GB KV cache of the simulator's own, every request missing, where
    vLLM would not start; check-config said ok."""
    host = (ROOT / "config" / "scenarios" / "hosts" / "h100-l40s.toml").read_text()
    (tmp_path / "fits.toml").write_text(host.replace('model = "llama-3.1-8b"', 'model = "llama-3.1-70b-fp8"', 1))
    with pytest.raises(ConfigError, match=r"^services\[chat\]\.model: 'llama-3\.1-70b-fp8''s weights take 70 GB, "
                                          r"more than the 43\.2 GB vLLM may use of one L40S \(0\.9 of its memory\)"):
        load_settings(tmp_path / "fits.toml")
    sim = (ROOT / "config" / "sim.toml").read_text()  # an H100's 72 GB hold it
    (tmp_path / "h100.toml").write_text(sim.replace('model = "llama-3.1-8b"', 'model = "llama-3.1-70b-fp8"', 1))
    assert load_settings(tmp_path / "h100.toml").services[0].model == "llama-3.1-70b-fp8"


def test_a_mean_request_the_kv_cache_of_one_replica_cannot_hold_is_refused_by_name(
        tmp_path: Path, small_scenario: Callable[..., Path]) -> None:
    """The 70-GB model on an H100 keeps 12,500 tokens of KV cache: a mean request of 32,000 ran alone, every one a
    miss (2 of 45 finished in a trial's run), where vLLM would not start; check-config said ok. Refused in the
    config and where a scenario's workload sets the lengths."""
    sim = (ROOT / "config" / "sim.toml").read_text().replace('model = "llama-3.1-8b"', 'model = "llama-3.1-70b-fp8"', 1)
    (tmp_path / "long.toml").write_text(sim.replace("in_tokens = 400", "in_tokens = 12400", 1))
    with pytest.raises(ConfigError, match=r"^services\[chat\]\.in_tokens: in_tokens \+ out_tokens, the mean request, "
                                          r"is 12\d{3} tokens, more than the KV cache of one 'llama-3\.1-70b-fp8' "
                                          r"replica on one H100-SXM holds \(12500 tokens\)"):
        load_settings(tmp_path / "long.toml")
    scn = small_scenario('name = "kv"\nduration_s = 60\n[workload.chat]\nrate_rps = 1.0\nin_tokens = 30000\n'
                         'out_tokens = 2000\n')
    (tmp_path / "host.toml").write_text((tmp_path / "host.toml").read_text().replace(
        'model = "llama-3.1-8b"', 'model = "llama-3.1-70b-fp8"'))
    with pytest.raises(ConfigError, match=r"workload\.chat\.in_tokens: with the service's other mean, in_tokens \+ "
                                          r"out_tokens, the mean request, is 32000 tokens, more than the KV cache"):
        load_scenario(scn)


def test_a_model_the_simulated_host_does_not_serve_is_refused_by_name(tmp_path: Path) -> None:
    """Caught where check-config looks, not by the host when `run` builds it."""
    text = (ROOT / "config" / "sim.toml").read_text().replace('model = "qwen2.5-14b"', 'model = "Qwen/Qwen2.5-14B"')
    (tmp_path / "m.toml").write_text(text)
    with pytest.raises(ConfigError, match=r"^services\[code\]\.model: 'Qwen/Qwen2\.5-14B' is not a model the "
                                          r"simulator serves; expected one of \['granite-13b'"):
        load_settings(tmp_path / "m.toml")


def test_nvml_limits_with_cluster_gpu_numbering_are_refused(tmp_path: Path) -> None:
    text = (ROOT / "config" / "sim.toml").read_text().replace('gpu_source = "sim"', 'gpu_source = "dcgm"')
    (tmp_path / "c.toml").write_text(text.replace('power = "sim"', 'power = "nvml"'))
    with pytest.raises(ConfigError, match=r'^actuators\.power: "nvml" sets this host'):
        load_settings(tmp_path / "c.toml")


def test_power_domains_are_read_and_must_be_on_the_host(tmp_path: Path) -> None:
    rack = '\n[[power.domains]]\nname = "rack-a"\nlimit_w = 1800\ngpus = [0, 1, 2, 3]\n'
    text = (ROOT / "config" / "sim.toml").read_text().replace('mode = "predicted"\n', 'mode = "predicted"\n' + rack)
    (tmp_path / "d.toml").write_text(text)
    domains = load_settings(tmp_path / "d.toml").power.domains
    assert [(d.name, d.limit_w, d.gpus) for d in domains] == [("rack-a", 1800.0, (0, 1, 2, 3))]
    (tmp_path / "bad.toml").write_text(text.replace("gpus = [0, 1, 2, 3]", "gpus = [0, 9]"))
    with pytest.raises(ConfigError, match=r"^power\.domains\[rack-a\]\.gpus: GPU 9 is not on the simulated host"):
        load_settings(tmp_path / "bad.toml")


@pytest.mark.parametrize(("domains", "message"), [
    ('name = "rack-a"\nlimit_w = 1800\ngpus = []\n', r"^power\.domains\[rack-a\]\.gpus: must list GPU indices"),
    ('name = "rack-a"\nlimit_w = 1800\ngpus = [0, 1, 2, 3]\n[[power.domains]]\nname = "rack-b"\nlimit_w = 1800\n'
     'gpus = [3, 4, 5]\n', r"^power\.domains\[rack-b\]\.gpus: GPU 3 is in domain 'rack-a' too, and neither holds"),
    ('name = "rack-a"\nlimit_w = 1800\ngpus = [0, 1, 2, 3]\n[[power.domains]]\nname = "pdu-1"\nlimit_w = 1900\n'
     'gpus = [0, 1]\n', r"^power\.domains\[pdu-1\]\.limit_w: 1900 W is above 1800 W of domain 'rack-a'"),
    ('name = "rack-a"\nlimit_w = 2000\ngpus = [0, 0, 0]\n',
     r"^power\.domains\[rack-a\]\.gpus: GPU 0 is listed more than once, got \[0, 0, 0\]"),
    ('name = "rack-a"\nlimit_w = 380\ngpus = [0, 1, 2, 3]\n',
     r"^power\.domains\[rack-a\]\.limit_w: 380 W leaves 369 W to plan with .*below its GPUs' idle draw, 380 W"),
])
def test_power_domain_errors_name_the_field(tmp_path: Path, domains: str, message: str) -> None:
    """A domain with no GPUs, a rack above the site, a GPU in two racks, a PDU above its rack: each refused by
    its field; a PDU inside its rack is fine."""
    base = (ROOT / "config" / "sim.toml").read_text()
    text = base.replace('mode = "predicted"\n', 'mode = "predicted"\n[[power.domains]]\n' + domains)
    (tmp_path / "d.toml").write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_settings(tmp_path / "d.toml")
    nested = ('name = "rack-a"\nlimit_w = 1800\ngpus = [0, 1, 2, 3]\n[[power.domains]]\nname = "pdu-1"\n'
              'limit_w = 900\ngpus = [0, 1]\n')
    (tmp_path / "ok.toml").write_text(base.replace('mode = "predicted"\n', 'mode = "predicted"\n[[power.domains]]\n'
                                                   + nested))
    assert [d.name for d in load_settings(tmp_path / "ok.toml").power.domains] == ["rack-a", "pdu-1"]


def test_intervals_and_replica_sizes_are_refused_with_their_values(tmp_path: Path) -> None:
    text = (ROOT / "config" / "sim.toml").read_text()
    (tmp_path / "i.toml").write_text(text.replace("fast_interval_s = 1.0", "fast_interval_s = 30.0"))
    with pytest.raises(ConfigError, match=r"^daemon\.slow_interval_s: must not be shorter than fast_interval_s "
                                          r"\(15 s < 30 s\)"):
        load_settings(tmp_path / "i.toml")
    (tmp_path / "g.toml").write_text(text.replace("count = 8", "count = 8\ngpus_per_replica = 16"))
    with pytest.raises(ConfigError, match=r"^accelerators\[H100-SXM\]\.gpus_per_replica: 16 is more than the 8 GPUs"):
        load_settings(tmp_path / "g.toml")


def test_base_dir_is_not_a_key_a_config_may_set(tmp_path: Path) -> None:
    """Relative paths are read from the config file's directory; a top-level key must not move them all."""
    (tmp_path / "b.toml").write_text('base_dir = "/nonexistent"\n' + (ROOT / "config" / "sim.toml").read_text())
    with pytest.raises(ConfigError, match=r"^base_dir: unknown key"):
        load_settings(tmp_path / "b.toml")


def test_a_budget_below_the_min_replicas_floor_is_a_warning(tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    """3 replicas busy at 200 W and 5 GPUs idle at 95 W: 1,075 W. A warning, not a refusal: a budget source or a
    reload may bring the same budget, and the daemon then sheds replicas down to min_replicas."""
    path = tmp_path / "floor.toml"
    path.write_text(GOOD.replace("budget_w = 4000", "budget_w = 900"))
    assert main(["check-config", str(path)]) == 0
    err = capsys.readouterr().err.strip()
    assert err == ("wattscale: warning: power.budget_w: 900 W (873 W less headroom) is below what the services' "
                   "min_replicas draw busy at their GPUs' lowest limits with every other GPU idle, 1075 W: under "
                   "load no cap holds it, and the plan cannot go below min_replicas")


def test_a_budget_below_every_gpus_lowest_limit_says_its_caps_do_not_apply(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Eight H100s' 200-W floors are 1,600 W: under a 1,300-W budget the governor holds every limit at its floor (a
    GPU no replica holds counts at its limit), while the plan, which counts such a GPU at its draw, planned caps
    of 630 W that never applied: chat met its SLO in 0.39 of requests on a simulated run, and nothing said why."""
    path = tmp_path / "floors.toml"
    path.write_text(GOOD.replace("budget_w = 4000", "budget_w = 1300"))
    assert main(["check-config", str(path)]) == 0
    assert capsys.readouterr().err.strip() == (
        "wattscale: warning: power.budget_w: 1300 W (1261 W less headroom) is below the GPUs' lowest limits, 1600 W: "
        "every GPU is held at its lowest limit, so a cap planned above it does not apply and the plan serves less "
        "than it predicts")


@pytest.mark.parametrize(("old", "new", "field"), [
    ('state_dir = "../var/state"', 'state_dir = "a\\u0000b"', "daemon.state_dir"),
    ('state_dir = "../var/state"', 'state_dir = "../var/state"\ndecision_log = "d\\u0000.jsonl"',
     "daemon.decision_log"),
    ("[power]", '[power]\nbudget = { safe_budget_w = 1000, sources = [{ kind = "carbon_csv", path = "a\\u0000b.csv", '
                'curve = [[100, 3000]] }, { kind = "fixed", budget_w = 2000 }] }', "power.budget.sources[0].path"),
])
def test_a_nul_character_in_a_path_is_refused_by_field(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                       old: str, new: str, field: str) -> None:
    """A path holding NUL raised ValueError ("embedded null byte") from os.stat: a traceback in check-config and
    run, where a demand-response signal's passed check-config and failed at run time."""
    assert main(["check-config", str(write(tmp_path, GOOD.replace(old, new, 1)))]) == 2
    assert f"{field}: must not contain a NUL character" in capsys.readouterr().err


@pytest.mark.parametrize(("new", "field"), [
    ('state_dir = "/tmp/' + "d" * 300 + '/state"', "daemon.state_dir"),
    ('state_dir = "../var/state"\ndecision_log = "' + "e" * 256 + '.jsonl"', "daemon.decision_log"),
])
def test_a_path_with_a_name_too_long_for_a_file_system_is_refused_by_field(tmp_path: Path, new: str, field: str,
                                                                         capsys: pytest.CaptureFixture[str]) -> None:
    """check-config warned and said ok; `run` exited 1 with "File name too long", naming no field."""
    assert main(["check-config", str(write(tmp_path, GOOD.replace('state_dir = "../var/state"', new, 1)))]) == 2
    err = capsys.readouterr().err
    assert f"{field}: " in err and "bytes, past the 255 a file system takes" in err


@pytest.mark.parametrize("name", [".", "..", "sub/dir/", "../../x/y.jsonl", "/tmp/decisions.jsonl"])
def test_a_decision_log_that_is_no_file_name_in_state_dir_is_refused(tmp_path: Path, name: str,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """"." passed check-config and named the state dir itself: `run` warned "Is a directory" every cycle and
    status had nothing to read; a path wrote outside state_dir, which the docs say holds it."""
    text = GOOD.replace('state_dir = "../var/state"', f'state_dir = "../var/state"\ndecision_log = "{name}"', 1)
    assert main(["check-config", "--file-only", str(write(tmp_path, text))]) == 2
    assert capsys.readouterr().err.strip() == (f"wattscale: daemon.decision_log: '{name}' must be a file name in "
                                               "state_dir, with no directory in it")


@pytest.mark.parametrize("name", ["tuner.json", "tuner.json.bad", ".tuner.json.x1"])
def test_a_decision_log_on_the_tuner_state_is_refused(tmp_path: Path, name: str,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """"tuner.json" passed: the decision lines appended to the tuner's state made it unreadable, set aside at the
    next start with what the tuner had learnt."""
    text = GOOD.replace('state_dir = "../var/state"', f'state_dir = "../var/state"\ndecision_log = "{name}"', 1)
    assert main(["check-config", "--file-only", str(write(tmp_path, text))]) == 2
    assert capsys.readouterr().err.strip() == f"wattscale: daemon.decision_log: '{name}' is the tuner state's file"


@pytest.mark.parametrize(("name", "what"), [("slo_margins.json", "the SLO margins' file"),
                                            (".slo_margins.json.x1", "the SLO margins' file"),
                                            ("daemon.lock", "the daemon's lock")])
def test_a_decision_log_on_another_of_the_daemons_files_is_refused(tmp_path: Path, name: str, what: str,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """The SLO margins' file and the lock share the state dir with the log: lines appended to the margins made them
    unreadable at the next start, and to the lock file they went into a file `status` reads a pid from."""
    text = GOOD.replace('state_dir = "../var/state"', f'state_dir = "../var/state"\ndecision_log = "{name}"', 1)
    assert main(["check-config", "--file-only", str(write(tmp_path, text))]) == 2
    assert capsys.readouterr().err.strip() == f"wattscale: daemon.decision_log: '{name}' is {what}"


@pytest.mark.parametrize(("old", "new"), [
    ('statistic = "mean"', 'statistic = "' + "p" * 100_000 + '"'),
    ('family = "step"', 'family = "' + "s" * 100_000 + '"'),
    ('name = "H100-SXM"', 'name = "' + "H" * 100_000 + '"'),
    ("[telemetry]", '[telemetry]\nprometheus_url = "' + "u" * 100_000 + '"'),
])
def test_an_error_quotes_a_long_value_cut_not_whole(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                    old: str, new: str) -> None:
    """A 100-KB value made a 100-KB error line (the loader's own checks cut it at 80 characters; these did not)."""
    assert main(["check-config", str(write(tmp_path, GOOD.replace(old, new, 1)))]) == 2
    err = capsys.readouterr().err
    assert len(err) < 400 and "characters" in err, err[:400]


@pytest.mark.parametrize(("old", "new", "rc", "message"), [
    ("port = 0", "port = 1" + "0" * 5000, 2, "invalid TOML: Exceeds the limit"),  # tomllib: a plain ValueError
    ('state_dir = "../var/state"', 'state_dir = "' + "s" * 100_000 + '"', 2,
     "holds a name of 100000 bytes, past the 255 a file system takes"),
])
def test_a_value_past_what_the_system_takes_is_one_short_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                              old: str, new: str, rc: int, message: str) -> None:
    """A 5,001-digit integer and a 100-KB state_dir ended check-config with a traceback (tomllib's ValueError,
    Path.exists' ENAMETOOLONG)."""
    assert main(["check-config", str(write(tmp_path, GOOD.replace(old, new, 1)))]) == rc
    err = capsys.readouterr().err
    assert message in err and len(err) < 600 and "Traceback" not in err, err[:600]


def test_check_config_file_only_checks_a_host_config_off_its_host(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """A host config names NVML, which a laptop or CI has not: check-config refused the good file as it refuses a
    bad one (exit 2), so no config could be checked off its host. The file's own checks still run."""
    host = ROOT / "config" / "examples" / "host.toml"
    assert main(["check-config", "--file-only", str(host)]) == 0
    assert capsys.readouterr().out == f"{host}: ok (3 services, budget 4000 W; the file alone: this host was not " \
        "probed)\n"
    bad = tmp_path / "host.toml"
    bad.write_text(host.read_text().replace("budget_w = 4000", "budget_w = -5"))
    assert main(["check-config", "--file-only", str(bad)]) == 2
    assert "power.budget_w: must be in (0, 1e+08], got -5.0" in capsys.readouterr().err


def test_a_carbon_csv_with_no_row_in_force_now_is_a_warning(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                                            ) -> None:
    """check-config read the CSV as of 1970 and said ok; `run` fell to the safe budget within 3 s ("no intensity
    in force at 1796353655")."""
    header = ("Datetime (UTC),Country,Zone name,Zone id,Carbon intensity gCO₂eq/kWh (direct),"
              "Carbon intensity gCO₂eq/kWh (Life cycle)\n")

    def check(hours_ago: float) -> str:
        at = datetime.now(UTC) - timedelta(hours=hours_ago)
        (tmp_path / "grid.csv").write_text(header + f"{at:%Y-%m-%d %H:%M:%S},X,X,X,200,250\n")
        budget = ('[power]\nbudget = { safe_budget_w = 3000, sources = [{ kind = "carbon_csv", path = "grid.csv", '
                  'curve = [[100, 4000], [500, 2500]] }] }')
        assert main(["check-config", str(write(tmp_path, GOOD.replace("[power]", budget, 1)))]) == 0
        return capsys.readouterr().err

    assert "grid.csv" not in check(0.5)
    (tmp_path / "kg.toml").write_text((tmp_path / "w.toml").read_text().replace("[[100, 4000], [500, 2500]]",
                                                                                "[[0.1, 4000], [0.5, 2500]]"))
    assert main(["check-config", str(tmp_path / "kg.toml")]) == 0  # a trial: a curve in kg pinned 2,500 W all day
    assert ("power.budget.sources[carbon_csv].curve: every intensity of 'grid.csv' (250-250 gCO2eq/kWh) lies past "
            "the curve's points (0.1-0.5): its budget is 2500 W (the point at 0.5) all the time; is the curve in other "
            "units than the file's grams a kWh?") in capsys.readouterr().err
    err = check(24 * 365 * 5)  # the rows of past years alone
    assert "power.budget.sources[carbon_csv].path: csv" in err and "no intensity in force at 20" in err
    assert "its latest point, at 20" in err and "is older than stale_after_s (7200 s)" in err
    assert "it counts as 3000 W (safe_budget_w, at most budget_w) until it gives one" in err
    err = check(-5)  # a forecast alone: nothing in force yet
    assert "no intensity in force at 20" in err and ": its first point starts at 20" in err
    # its curve goes down to 2,500 W, under the safe budget: a failure, once its last reading ends, lifts its cut
    assert ("power.budget.safe_budget_w: 3000 W is above the 2500 W that sources[carbon_csv] can set: failed, once "
            "its last reading ends, it counts as the safe budget, and the budget rises") in err
    (tmp_path / "held.toml").write_text((tmp_path / "w.toml").read_text().replace("budget_w = 4000",
                                                                                         "budget_w = 2800", 1))
    main(["check-config", "--file-only", str(tmp_path / "held.toml")])
    assert ("power.budget.safe_budget_w: 3000 W (held to budget_w, 2800 W) is above the 2500 W that "
            "sources[carbon_csv]") in capsys.readouterr().err  # the value the file gives, and the one that holds


@pytest.mark.parametrize(("actuators", "warned"), [
    ('restore_power_limits = true\nbatch = "vllm"\nvllm_runner = "systemd"', True),
    ('restore_power_limits = true\nbatch = "dry-run"', True),  # servers someone else runs
    ('restore_power_limits = true\nbatch = "vllm"\nvllm_runner = "child"', False),  # they stop with the daemon
    ('restore_power_limits = false\nbatch = "vllm"\nvllm_runner = "systemd"', False)])
def test_default_limits_restored_while_servers_outlive_the_daemon_are_a_warning(actuators: str, warned: bool) -> None:
    """A host example restored 8 x 700 W of default limits at each stop of the daemon under a 4,000-W budget, while
    its vLLM units served on: nothing said the budget was not held until the daemon was back."""
    from controller.config_warnings import file_warnings
    from controller.settings import settings_from

    text = (ROOT / "config" / "examples" / "host.toml").read_text()
    for line in ("restore_power_limits = false", 'batch = "vllm"', 'vllm_runner = "systemd"'):
        text = "\n".join(x for x in text.split("\n") if not x.startswith(line))
    text = text.replace("[actuators]", f"[actuators]\n{actuators}").replace(
        "vllm_ports =", 'vllm_command = ["vllm", "serve", "m"]\nvllm_ports =')
    settings = settings_from(tomllib.loads(text), ROOT / "config" / "examples")
    said = [w for w in file_warnings(settings) if w.startswith("actuators.restore")]
    assert bool(said) == warned and all("the budget is not held until it is back" in w for w in said)


def test_a_dry_run_replica_backend_that_may_scale_is_a_warning() -> None:
    """host.toml runs its units under `replicas = "dry-run"`, min_replicas = max_replicas: a trial set them apart, and
    the daemon counted the replica it would have started (status read two where one ran, the caps flipped with it),
    unsaid."""
    from controller.config_warnings import file_warnings
    from controller.settings import settings_from

    text = (ROOT / "config" / "examples" / "host.toml").read_text()
    settings = settings_from(tomllib.loads(text), ROOT / "config" / "examples")
    assert not [w for w in file_warnings(settings) if "dry-run" in w]
    apart = settings_from(tomllib.loads(text.replace("min_replicas = 4", "min_replicas = 2", 1)),
                          ROOT / "config" / "examples")
    assert [w for w in file_warnings(apart) if "dry-run" in w] == [
        'services[chat].min_replicas: 2 < max_replicas 4 under actuators.replicas = "dry-run": the plan counts the '
        "replicas it asks for as running; right where an HPA or KEDA scales the service to wattscale_desired_replicas, "
        "else set both to the replicas it runs"]


def test_power_levels_under_the_gpus_lowest_limit_are_a_warning(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """[0.01] passed without a word: the plan holds such a level at the GPU's floor, a cap the file did not ask."""
    path = write(tmp_path, GOOD.replace("power_levels = [0.6, 0.75, 0.9, 1.0]", "power_levels = [0.01, 0.2, 1.0]"))
    assert main(["check-config", "--file-only", str(path)]) == 0
    assert capsys.readouterr().err.strip() == ("wattscale: warning: optimizer.power_levels: 0.01, 0.2 of H100-SXM's "
                                               "700 W is below its lowest limit, 200 W: planned at that limit")


def test_a_domain_under_its_gpus_lowest_limits_is_a_warning(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A rack of four H100s under 500 W (above their idle 380 W) passed without a word, and drew 800 W a whole run:
    the governor takes no GPU below its lowest limit."""
    for limit_w, warned in ((500, True), (1000, False)):
        rack = f'\n[[power.domains]]\nname = "rack-a"\nlimit_w = {limit_w}\ngpus = [0, 1, 2, 3]\n'
        text = (ROOT / "config" / "sim.toml").read_text().replace('mode = "predicted"\n', 'mode = "predicted"\n' + rack)
        (tmp_path / "d.toml").write_text(text)
        assert main(["check-config", "--file-only", str(tmp_path / "d.toml")]) == 0
        err = capsys.readouterr().err.strip()
        assert (err == "wattscale: warning: power.domains[rack-a].limit_w: 500 W (485 W less headroom) is below its "
                       "GPUs' lowest limits, 800 W: busy, they draw over it whatever the governor sets") == warned, err



def test_a_domain_of_another_gpu_type_on_a_mixed_simulated_host_is_held_to_its_own_floor(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The L40S rack of the H100 + L40S host was read as H100s (800 W of lowest limits where its four draw 400 W)."""
    assert main(["check-config", "--file-only", str(mixed_host(tmp_path / "h.toml", 420))]) == 0
    assert "power.domains" not in capsys.readouterr().err


def test_two_variants_of_a_service_may_not_scale_one_deployment(tmp_path: Path) -> None:
    """Draining one variant scales its Deployment to 0, the other's replicas with it, and the operator counted the
    same pods once per variant: accepted, the plan could never settle."""
    path = tmp_path / "mixed.toml"
    shared = 'variants = [{ accelerator = "H100-SXM", deployment = "vllm-chat" }, { accelerator = "L40S", ' \
             'deployment = "vllm-chat" }]'
    with pytest.raises(ConfigError, match=r"^services\[chat\]\.variants\[L40S\]\.deployment: 'vllm-chat' is "
                                          r"services\[chat\]\.variants\[H100-SXM\]'s too: each variant scales a "
                                          r"Deployment of its own$"):
        load_settings(mixed_host(path, chat=shared))
    # a name as the other's default is, and another service's variant, alike
    default = 'variants = [{ accelerator = "H100-SXM", deployment = "chat-l40s" }, { accelerator = "L40S" }]'
    with pytest.raises(ConfigError, match=r"^services\[chat\]\.variants\[L40S\]\.deployment: 'chat-l40s' is "):
        load_settings(mixed_host(path, chat=default))
    theirs = 'variants = [{ accelerator = "H100-SXM", deployment = "code-h100-sxm" }, { accelerator = "L40S" }]'
    mixed_host(path, chat=theirs)
    with pytest.raises(ConfigError, match=r"^services\[code\]\.variants\[H100-SXM\]\.deployment: 'code-h100-sxm' "
                                          r"is services\[chat\]\.variants\[H100-SXM\]'s too"):
        load_settings(tmp_path / "mixed.toml")


def test_a_config_with_no_service_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Only a file must name a service: the operator governs a policy whose LLMServices are all left out."""
    text = "".join(part for part in re.split(r"(?m)^(?=\[)", GOOD) if not part.startswith(("[[services", "[services")))
    assert main(["check-config", "--file-only", str(write(tmp_path, text))]) == 2
    assert capsys.readouterr().err.strip() == "wattscale: services: at least one service is required"


def test_more_power_domains_than_a_site_has_are_refused_in_one_line(tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """Their nesting is checked pair by pair: 30,000 domains took check-config, `run` and each reload past minutes."""
    domains = "".join(f'\n[[power.domains]]\nname = "d{k}"\nlimit_w = 3000.0\ngpus = [0]\n' for k in range(513))
    text = GOOD.replace("\n[[accelerators]]", domains + "\n[[accelerators]]", 1)
    assert main(["check-config", "--file-only", str(write(tmp_path, text))]) == 2
    assert capsys.readouterr().err.strip() == "wattscale: power.domains: at most 512 domains, got 513"


def test_a_budget_source_name_is_held_to_the_rule_other_names_keep(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """A source's name goes into log lines: one with a newline and an escape wrote a forged CRITICAL record."""
    source = ('\n[power.budget]\nsafe_budget_w = 3000\n'
              'sources = [{kind = "fixed", budget_w = 3500, name = "x\\nCRITICAL forged"}]\n')
    text = GOOD.replace("\n[optimizer]", source + "\n[optimizer]", 1)
    assert main(["check-config", "--file-only", str(write(tmp_path, text))]) == 2
    assert capsys.readouterr().err.strip().startswith("wattscale: power.budget.sources[0].name: must be 1-253 letters")


@pytest.mark.parametrize(("services", "reason"), [
    ("chat", "must be a list of [[services]] tables, got 'chat'"),  # said "at least one service is required"
    ({"name": "chat"}, "must be a list of [[services]] tables, got {'name': 'chat'}"),  # [services], one bracket
    ([], "at least one service is required"),
])
def test_services_that_are_not_a_list_of_tables_are_named_as_such(services: object, reason: str) -> None:
    from controller.settings import settings_from

    with pytest.raises(ConfigError) as err:
        settings_from({"services": services}, ROOT)
    assert (err.value.where, err.value.reason) == ("services", reason)


def test_in_caps_mode_a_domain_leaves_room_over_its_gpus_lowest_limits(tmp_path: Path) -> None:
    """Caps mode counts a free GPU at its lowest limit, where the governor holds it (optimizer.Problem.floor_w): a
    rack's room is what its line leaves over those, not over their draw with no replica."""
    rack = 'mode = "caps"\n[[power.domains]]\nname = "rack-a"\nlimit_w = 700\ngpus = [0, 1, 2, 3]\n'
    (tmp_path / "d.toml").write_text(GOOD.replace('mode = "predicted"\n', rack))
    with pytest.raises(ConfigError, match=r"^power\.domains\[rack-a\]\.limit_w: 700 W leaves 679 W to plan with .*"
                                          r"below its GPUs' lowest limits \(caps mode\), 800 W"):
        load_settings(tmp_path / "d.toml")
    (tmp_path / "p.toml").write_text(GOOD.replace('mode = "predicted"\n', rack.replace("caps", "predicted")))
    assert load_settings(tmp_path / "p.toml").power.domains[0].limit_w == 700.0  # over their 380 W of idle draw


def test_check_config_reads_the_file_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    """It parsed a daemon config twice: once to tell its kind, again to check it."""
    import controller.toml_file as toml_file

    path = tmp_path / "host.toml"
    path.write_text(GOOD)
    parsed: list[Path] = []
    real = toml_file._parsed
    monkeypatch.setattr(toml_file, "_parsed", lambda p: parsed.append(p) or real(p))
    assert main(["check-config", str(path), "--file-only"]) == 0
    assert parsed == [path] and "ok (3 services" in capsys.readouterr().out
    (tmp_path / "spec.toml").write_text((ROOT / "config" / "examples" / "optimize.toml").read_text())
    assert main(["check-config", str(tmp_path / "spec.toml"), "--file-only"]) == 2  # another kind: refused as before
    assert "is an optimize spec, not a daemon config" in capsys.readouterr().err
