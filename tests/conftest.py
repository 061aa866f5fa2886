"""Shared fixtures: free loopback ports, the simulated host's config with its state in a temp dir, a small
simulated host; and the hypothesis profiles of the property-based suites (tests/test_hostile.py).

Hypothesis profile `ci` (the default): derandomized and without an example database, so every run tries the
same inputs, sized to finish in well under two minutes (about 20 s). `long`: random, with 25 times the
examples (about 5 minutes), for a hunt before a release:

    .venv/bin/python -m pytest tests/test_hostile.py --hypothesis-profile=long
"""

from __future__ import annotations

import importlib.util
import signal
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

from simulator.host import SimHost
from simulator.workload import TokenDist, Workload, daily_cycle

ROOT = Path(__file__).resolve().parents[1]

settings.register_profile("ci", derandomize=True, database=None, max_examples=120, deadline=None, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("long", max_examples=3000, deadline=None, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("ci")

if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    # a suite started as a script's background job (`cmd &`) ignores SIGINT, and the commands the tests start
    # inherit that: the tests that stop one with a SIGINT waited out its whole run. They are started as a shell
    # starts them in the foreground.
    signal.signal(signal.SIGINT, signal.default_int_handler)


def load_benchmark(name: str) -> ModuleType:
    """benchmarks/<name>.py as a module (benchmarks are scripts, not a package), registered under its name: its
    dataclasses look their module up there."""
    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def free_port() -> int:
    """A port on 127.0.0.1 nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def sim_config_text(state: Path, replacements: dict[str, str] | None = None) -> str:
    """config/sim.toml with its state under `state`, and each `{old: new}` text replacement made; its metrics on a
    port of the system's choosing unless a replacement sets one (a daemon running beside the tests holds 9464)."""
    text = (ROOT / "config" / "sim.toml").read_text().replace('state_dir = "../var/state"', f'state_dir = "{state}"')
    for old, new in (replacements or {}).items():
        assert old in text, old
        text = text.replace(old, new)
    return text.replace("port = 9464", "port = 0")


@pytest.fixture
def sim_config(tmp_path: Path) -> Callable[..., Path]:
    """Writes config/sim.toml (state in the test's temp dir, text replacements as `{old: new}`); returns its path."""

    def write(replacements: dict[str, str] | None = None, name: str = "wattscale.toml") -> Path:
        path = tmp_path / name
        path.write_text(sim_config_text(tmp_path / "state", replacements))
        return path

    return write


def small_sim_host(num_gpus: int = 8) -> SimHost:
    """A simulated host with "chat" on 2 replicas and "batch" on 1, max batch 32, replicas up at once."""
    host = SimHost("H100-SXM", num_gpus, seed=3, start_delay_s=0.0)
    rng = np.random.default_rng(0)
    for name, n in (("chat", 2), ("batch", 1)):
        host.add_service(name, "llama-3.1-8b", Workload(daily_cycle(1.0, 0.0, 3600.0), TokenDist(100, 0.5),
                                             TokenDist(50, 0.5), rng), n, 32)
    return host


SMALL_HOST = """
[daemon]
fast_interval_s = 1.0
slow_interval_s = 15.0
state_dir = "state"

[power]
budget_w = {budget_w}

[optimizer]
batch_sizes = [16, 32, 64]
power_levels = [0.6, 0.8, 1.0]

[stability]
cooldown_s = 60
max_replica_step = 1

[simulator]
gpu_type = "H100-SXM"
num_gpus = {gpus}
seed = 3
start_delay_s = 20

[[accelerators]]
name = "H100-SXM"
count = {gpus}

[[services]]
name = "chat"
model = "llama-3.1-8b"
ttft_ms = 300
itl_ms = 30
min_replicas = 1
max_replicas = {gpus}
in_tokens = 400
out_tokens = 200
in_tokens_cv = 0.6
out_tokens_cv = 0.6
initial_max_batch = 64
prior = {{ family = "gen1", alpha_ms = 20.0, beta_ms = 0.2, gamma_ms = 20.0, delta_ms = 0.06 }}
sim = {{ rate_rps = {rate_rps} }}
"""


@pytest.fixture
def small_scenario(tmp_path: Path) -> Callable[..., Path]:
    """Writes a scenario (its TOML text after the config line) on a small simulated host: `gpus` H100-SXM GPUs
    serving one chat service of llama-3.1-8b at `rate_rps`, under `budget_w`; returns the scenario's path."""

    def write(body: str, gpus: int = 2, rate_rps: float = 20.0, budget_w: float = 1400.0,
              name: str = "scenario.toml") -> Path:
        (tmp_path / "host.toml").write_text(SMALL_HOST.format(gpus=gpus, rate_rps=rate_rps, budget_w=budget_w))
        path = tmp_path / name
        path.write_text('config = "host.toml"\n' + body)
        return path

    return write


MIXED_HOST = ROOT / "config" / "scenarios" / "hosts" / "h100-l40s.toml"
"""Four H100-SXM then four L40S GPUs; chat runs on either (`MIXED_CHAT`)."""
MIXED_CHAT = 'variants = [{ accelerator = "H100-SXM" }, { accelerator = "L40S" }]'


def mixed_host(path: Path, rack_w: float | None = None, chat: str = MIXED_CHAT) -> Path:
    """MIXED_HOST written to `path`, with a rack "rack-l" over its L40S GPUs at `rack_w`, chat's variants as given."""
    text = MIXED_HOST.read_text()
    assert MIXED_CHAT in text
    if rack_w is not None:
        rack = f'[[power.domains]]\nname = "rack-l"\nlimit_w = {rack_w:g}\ngpus = [4, 5, 6, 7]\n'
        text = text.replace('mode = "predicted"\n', 'mode = "predicted"\n' + rack, 1)
    path.write_text(text.replace(MIXED_CHAT, chat, 1))
    return path


def one_line(capsys: pytest.CaptureFixture[str]) -> str:
    """What a command wrote to stderr, held to one line and no traceback: how bad input is answered."""
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err
