"""The daemon as a process on the sim config: metrics, budget, SIGHUP reloads, SIGTERM."""

from __future__ import annotations

import contextlib
import functools
import itertools
import json
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import free_port

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.integration


@contextlib.contextmanager
def daemon_process(cfg: Path, log_path: Path, duration_s: int,
                   entry: str = "controller.cli") -> Iterator[subprocess.Popen[bytes]]:
    """`wattscale run` on `cfg`, its output in `log_path`; killed on the way out if still running. `entry`:
    controller.launch is the installed command's."""
    with log_path.open("w") as log:
        argv = [sys.executable, "-m", entry, "run", "--config", str(cfg), "--duration", str(duration_s)]
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        try:
            yield proc
        finally:
            if proc.poll() is None:
                proc.kill()


def stops_on_sigterm_within_5_s(proc: subprocess.Popen[bytes]) -> None:
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=5) == 0
    assert time.monotonic() - started < 5


def metric(text: str, name: str) -> float:
    m = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
    assert m, name
    return float(m.group(1))


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        return str(r.read().decode())


def wait_for(pred: object, timeout_s: float, poll_s: float = 0.3) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if pred():  # type: ignore[operator]
                return True
        except OSError:
            pass
        time.sleep(poll_s)
    return False


def write_config(path: Path, port: int, state: Path, budget_w: int) -> None:
    text = (ROOT / "config" / "sim.toml").read_text()
    text = text.replace("port = 9464", f"port = {port}").replace("budget_w = 4000", f"budget_w = {budget_w}")
    text = text.replace('state_dir = "../var/state"', f'state_dir = "{state}"')
    text = text.replace("slow_interval_s = 15.0", "slow_interval_s = 3.0").replace("speed = 1.0", "speed = 5.0")
    path.write_text(text)


def test_a_second_daemon_on_the_same_state_dir_is_refused_in_one_line(tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """Two daemons on one state_dir overwrote each other's tuner state and decision log, silently: the second now
    stops at once, naming the field and the first's pid; once the first has gone its state_dir is free again."""
    from controller.cli import main

    port = free_port()
    first, second = tmp_path / "first.toml", tmp_path / "second.toml"
    write_config(first, port, tmp_path / "state", 4000)
    write_config(second, free_port(), tmp_path / "state", 4000)
    with daemon_process(first, tmp_path / "first.log", 60) as proc:
        assert wait_for(lambda: "wattscale_service_replicas" in scrape(port), 30), "daemon never served metrics"
        assert main(["run", "--config", str(second), "--duration", "1"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        said = (f"wattscale: daemon.state_dir: {tmp_path / 'state'} is in use by another wattscale run "
                f"(pid {proc.pid}); give each daemon its own state_dir")
        assert err == [said], err  # the one line, before a word of the run (it had logged its tuner state)
        assert main(["check-config", str(second)]) == 2  # which check-config had passed as ok
        assert capsys.readouterr().err.strip().splitlines() == [said]
        stops_on_sigterm_within_5_s(proc)
    assert main(["check-config", str(second)]) == 0
    assert main(["run", "--config", str(second), "--duration", "1"]) == 0


def test_the_last_line_says_the_daemon_has_stopped(tmp_path: Path) -> None:
    """It had ended "stopping": the journal did not say whether the loops and parts ever came down."""
    cfg = tmp_path / "sim.toml"
    write_config(cfg, free_port(), tmp_path / "state", 4000)
    done = subprocess.run([*LAUNCH, "run", "--config", str(cfg), "--duration", "1"], capture_output=True, text=True,
                          cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr
    assert [line.split(": ", 1)[-1] for line in done.stderr.strip().splitlines()[-2:]] == ["stopping", "stopped"]


def test_daemon_end_to_end(tmp_path: Path) -> None:
    port = free_port()
    cfg = tmp_path / "wattscale.toml"
    write_config(cfg, port, tmp_path / "state", 2000)
    with daemon_process(cfg, tmp_path / "daemon.log", 120) as proc:
        assert wait_for(lambda: "wattscale_service_replicas" in scrape(port), 30), "daemon never served metrics"
        text = scrape(port)
        names = ("wattscale_gpu_power_watts", "wattscale_gpu_power_limit_watts", "wattscale_gpu_energy_joules",
                 "wattscale_power_budget_watts", "wattscale_service_ttft_predicted_ms", "wattscale_service_max_batch",
                 "wattscale_cycle_duration_seconds", "wattscale_service_replicas",
                 # the process's own: a restart under systemd, memory that grows
                 "process_start_time_seconds", "process_resident_memory_bytes", 'wattscale_build_info{version="')
        for name in names:
            assert name in text, name
        assert metric(text, "wattscale_power_budget_watts") == 2000
        # Give the governor a few seconds of load, then the measured draw must sit within the budget.
        assert wait_for(lambda: "wattscale_service_ttft_observed_ms" in scrape(port), 30)
        time.sleep(3)
        assert metric(scrape(port), "wattscale_power_draw_watts") <= 2000 * 0.97 + 8  # the threshold (1 W a GPU)

        write_config(cfg, port, tmp_path / "state", 1500)
        proc.send_signal(signal.SIGHUP)
        assert wait_for(lambda: metric(scrape(port), "wattscale_power_budget_watts") == 1500, 10)

        cfg.write_text(cfg.read_text().replace("budget_w = 1500", "budget_w = -1"))
        proc.send_signal(signal.SIGHUP)
        assert wait_for(lambda: 'wattscale_config_reloads_total{result="refused"} 1.0' in scrape(port), 10)
        assert metric(scrape(port), "wattscale_power_budget_watts") == 1500
        decision_log = tmp_path / "state" / "decisions.jsonl"
        assert wait_for(lambda: '"budget_w":1500.0' in decision_log.read_text(), 10), "no cycle under the reload"

        stops_on_sigterm_within_5_s(proc)
    output = (tmp_path / "daemon.log").read_text()
    decisions = [json.loads(line) for line in (tmp_path / "state" / "decisions.jsonl").read_text().splitlines()]
    assert decisions and decisions[-1]["budget_w"] == 1500.0
    assert set(decisions[-1]["services"]) == {"chat", "code", "batch-summaries"}
    assert {"in_force", "planned", "gate_held", "asked"} <= set(decisions[-1]["services"]["chat"])
    assert "reload refused" in output and "power.budget_w" in output


WALL_CLOCK_STEP = """
import datetime, sys, time
Real, t0, step_s = datetime.datetime, time.monotonic(), float(sys.argv[2])
def stepped(): return step_s if time.monotonic() - t0 >= 2.0 else 0.0
class Stepped(Real):
    @classmethod
    def now(cls, tz=None): return Real.now(tz) - datetime.timedelta(seconds=stepped())
wall = time.time
time.time = lambda: wall() - stepped()
from controller import cli, daemon
for module in list(sys.modules.values()):  # every module that reads the wall clock as `datetime.now()`
    if module is not datetime and getattr(module, "datetime", None) is Real:
        module.datetime = Stepped
ticks = []
fast = daemon.Daemon.fast
daemon.Daemon.fast = lambda self: (ticks.append(time.monotonic() - t0), fast(self))[1]
code = cli.main(["run", "--config", sys.argv[1], "--duration", "6"])
print(" ".join(f"{t:.2f}" for t in ticks))
sys.exit(code)
"""


def test_a_wall_clock_stepped_back_holds_no_tick_of_the_governor(tmp_path: Path) -> None:
    """NTP, a resumed VM or `date -s` steps the wall clock back a minute 2 s into the run: the fast loop ticks on
    every second regardless (its APScheduler job waited out the step: 40 s back held the governor 41 s)."""
    write_config(tmp_path / "w.toml", 0, tmp_path / "state", 4000)
    done = subprocess.run([sys.executable, "-c", WALL_CLOCK_STEP, str(tmp_path / "w.toml"), "60"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    ticks = [float(t) for t in done.stdout.split()]
    assert 5 <= len(ticks) <= 8 and ticks[-1] > 5.0, ticks  # one a second, before the step and after
    assert max(b - a for a, b in itertools.pairwise(ticks)) < 1.6, ticks


def test_a_slow_tick_that_hangs_leaves_the_governor_ticking(tmp_path: Path) -> None:
    """vLLM metrics from a Prometheus that accepts connections and never answers (20 s timeout): the slow
    tick hangs in its first query, the governor still ticks every second, a budget step-down by SIGHUP is
    held within 2 s, and SIGTERM still stops the daemon within 5 s."""
    port, prom = free_port(), socket.socket()
    prom.bind(("127.0.0.1", 0))
    prom.listen(16)  # connections queue in the backlog; nothing ever reads or answers them
    cfg = tmp_path / "wattscale.toml"

    def write(budget_w: int) -> None:
        write_config(cfg, port, tmp_path / "state", budget_w)
        text = cfg.read_text().replace('vllm_source = "sim"', 'vllm_source = "prometheus"\nprometheus_url = '
                                       f'"http://127.0.0.1:{prom.getsockname()[1]}"\ntimeout_s = 20')
        cfg.write_text(text.replace("speed = 5.0", "speed = 1.0"))

    write(4000)
    fast = 'wattscale_cycle_duration_seconds_count{loop="fast"}'
    with prom, daemon_process(cfg, tmp_path / "daemon.log", 60) as proc:
        assert wait_for(lambda: fast in scrape(port), 30), "daemon never served metrics"
        time.sleep(4.0)  # the first slow tick (3 s) is now stuck in its first query
        before, started = metric(scrape(port), fast), time.monotonic()
        time.sleep(5.0)
        ticks = metric(scrape(port), fast) - before
        assert ticks >= 0.8 * (time.monotonic() - started), ticks
        assert 'wattscale_cycle_duration_seconds_count{loop="slow"}' not in scrape(port)  # no slow tick ended
        draw = metric(scrape(port), "wattscale_power_draw_watts")
        budget = max(1250, int(0.8 * draw))  # 3 busy GPUs at their 200 W floor and 5 idle draw about 1,075 W
        assert draw > budget + 50, draw  # a step the governor must act on
        write(budget)
        proc.send_signal(signal.SIGHUP)
        stepped = time.monotonic()
        assert wait_for(lambda: metric(scrape(port), "wattscale_power_budget_watts") == budget, 2)
        assert wait_for(lambda: metric(scrape(port), "wattscale_power_draw_watts") <= budget, 2.5 - (
            time.monotonic() - stepped)), (draw, budget)
        stops_on_sigterm_within_5_s(proc)


def catches(pid: int, sig: signal.Signals = signal.SIGHUP) -> bool:
    """Whether the process has a handler for `sig` (Linux: bit sig - 1 of SigCgt in /proc/PID/status)."""
    status = Path(f"/proc/{pid}/status").read_text()
    caught = int(re.search(r"^SigCgt:\s*([0-9a-f]+)$", status, re.M).group(1), 16)  # type: ignore[union-attr]
    return bool(caught >> (sig - 1) & 1)


LAUNCH = [sys.executable, "-c", "import sys; from controller.launch import main; sys.exit(main())"]
"""The installed `wattscale` command's entry point, with its arguments to follow."""


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc")
def test_a_sighup_while_the_daemon_starts_is_a_reload_once_it_runs(tmp_path: Path) -> None:
    """`wattscale run` spends a second or more importing before its handlers are in: a SIGHUP then ended it
    (exit 129). The entry point keeps the request, and the daemon reloads once it runs."""
    cfg = tmp_path / "sim.toml"
    write_config(cfg, free_port(), tmp_path / "state", 4000)
    log_path = tmp_path / "daemon.log"
    argv = [*LAUNCH, "run", "--config", str(cfg), "--duration", "4"]
    with log_path.open("w") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        try:
            assert wait_for(lambda: catches(proc.pid), 10.0, poll_s=0.002)  # polled finer than a warm start takes
            assert "wattscale running" not in log_path.read_text()  # still starting
            proc.send_signal(signal.SIGHUP)
            assert proc.wait(timeout=30) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
    text = log_path.read_text()
    assert "config reloaded: changed nothing; budget 4000 W, 3 services" in text and "Traceback" not in text, text


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc")
def test_a_stop_while_the_daemon_starts_ends_it_with_one_line(tmp_path: Path) -> None:
    """A SIGTERM (systemctl stop) in the second or more `wattscale run` spends importing met Python's default and
    killed it (exit -15), and a SIGINT printed a traceback of whatever module was importing: now it stops with one
    line and exit 0, as a running daemon does."""
    cfg = tmp_path / "sim.toml"
    write_config(cfg, free_port(), tmp_path / "state", 4000)
    for sig in (signal.SIGTERM, signal.SIGINT):
        log_path = tmp_path / f"daemon-{sig.name}.log"
        with log_path.open("w") as log:
            proc = subprocess.Popen([*LAUNCH, "run", "--config", str(cfg), "--duration", "30"], stdout=log,
                                    stderr=subprocess.STDOUT, cwd=ROOT)
            try:
                # the entry point's handler, in the ms after the start: polled finer than a warm start's imports
                # take (handler at 14 ms, running at 0.3 s: a 0.3-s poll sent the signal after the start had finished)
                assert wait_for(functools.partial(catches, proc.pid, signal.SIGTERM), 10.0, poll_s=0.002)
                proc.send_signal(sig)
                assert wait_for(lambda p=proc: p.poll() is not None, 10.0), signal_state(proc.pid)
                assert proc.returncode == 0
            finally:
                if proc.poll() is None:
                    proc.kill()
        text = log_path.read_text()
        assert text == f"wattscale: stopped by {sig.name} while starting\n", text


SWALLOWED = """
import os, signal, sys, weakref
def swallowed(sig):
    \"\"\"A signal whose handler runs inside a weakref callback, as it does where it lands in importlib's (one at
    every module lock an import drops): Python prints what the handler raises there and goes on.\"\"\"
    class Held: pass
    def dropped(_ref):
        os.kill(os.getpid(), sig)
        for _ in range(100_000): pass
    held = Held(); ref = weakref.ref(held, dropped); del held
"""
"""A script's preamble: `swallowed(sig)` delivers `sig` where its handler's exception cannot propagate."""


def test_a_stop_whose_raise_an_import_swallows_still_stops_the_command() -> None:
    """About one stop in 150 while `wattscale run` started went unanswered (the daemon ran on, after an "Exception
    ignored" traceback): the handler's raise had landed in importlib's weakref callback. The entry point keeps the
    signal and acts on it once the import returns: a short command is killed by it, with one line."""
    script = SWALLOWED + """
import types
import controller
fake = types.ModuleType("controller.cli")
def lookup(name):
    swallowed(signal.SIGINT)
    return lambda argv=None: print("the command ran") or 0
fake.__getattr__ = lookup
sys.modules["controller.cli"] = fake
sys.argv = ["wattscale", "analyze"]
from controller.launch import main
sys.exit(main())
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert (done.returncode, done.stdout, done.stderr) == (-signal.SIGINT, "", "wattscale: interrupted by SIGINT\n")


def test_a_stop_a_short_command_swallows_as_it_runs_still_ends_it_killed_by_the_signal() -> None:
    """A stop swallowed in a lazy import inside the command (scipy's, simulate's) let it run on and exit 0, the
    Ctrl-C lost: the entry point acts on it once the command returns."""
    script = SWALLOWED + """
import controller.cli
def command(argv=None):
    swallowed(signal.SIGINT)
    print("the command ran")
    return 0
controller.cli.main = command
sys.argv = ["wattscale", "analyze"]
from controller.launch import main
sys.exit(main())
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert (done.returncode, done.stderr) == (-signal.SIGINT, "wattscale: interrupted by SIGINT\n"), done


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_swallowed_before_the_daemon_s_handlers_stops_it_once_they_are_in(tmp_path: Path,
                                                                                  sig: signal.Signals) -> None:
    """The same after the imports, before `run` installs its own handlers: the daemon stops as a starting one does
    (one line, exit 0), where it ran its whole --duration."""
    cfg = tmp_path / "sim.toml"
    write_config(cfg, free_port(), tmp_path / "state", 4000)
    script = SWALLOWED + f"""
import controller.cli
real = controller.cli.main
def command(argv=None):
    swallowed(signal.{sig.name})
    return real(argv)
controller.cli.main = command
sys.argv = ["wattscale", "run", "--config", {str(cfg)!r}, "--duration", "30"]
from controller.launch import main
sys.exit(main())
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert done.stderr.endswith(f"wattscale: stopped by {sig.name} while starting\n"), done.stderr
    assert "wattscale running" not in done.stderr and "Exception ignored" not in done.stderr, done.stderr


def signal_state(pid: int) -> str:
    """A process's signal masks (/proc/PID/status: pending, blocked, ignored, caught), for a signal that went
    unanswered (the test above failed so about one run in twelve, before the stop's raise swallowed in an import
    was kept: the tests below)."""
    status = Path(f"/proc/{pid}/status").read_text()
    return "not stopped; " + " ".join(line for line in status.splitlines() if line.startswith(("Sig", "ShdPnd")))


def test_signals_that_keep_coming_while_it_stops_do_not_kill_it(tmp_path: Path) -> None:
    """A second SIGTERM (or SIGINT, SIGHUP) a few ms after the first met the default handlers Python's exit
    puts back: the daemon, already stopped cleanly, was reported killed by the signal."""
    port = free_port()
    cfg = tmp_path / "wattscale.toml"
    write_config(cfg, port, tmp_path / "state", 2000)
    with daemon_process(cfg, tmp_path / "daemon.log", 60, "controller.launch") as proc:
        assert wait_for(lambda: "wattscale_service_replicas" in scrape(port), 30), "daemon never served metrics"
        deadline = time.monotonic() + 10
        while proc.poll() is None and time.monotonic() < deadline:
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(sig)
            time.sleep(0.002)
        assert proc.wait(timeout=5) == 0


@pytest.mark.parametrize("command", ["operator", "agent"])
def test_sighup_does_not_end_the_operator_or_the_agent(command: str) -> None:
    """Neither reads a file to reload (their settings are the cluster's): SIGHUP's default ended them at once,
    the agent without restoring its GPUs' limits and the operator without giving back its Lease."""
    script = f"""
import os, signal, sys, time
import controller.cli
def command(argv=None):
    os.kill(os.getpid(), signal.SIGHUP)
    time.sleep(0.3)
    return 0
controller.cli.main = command
sys.argv = ["wattscale", "{command}"]
from controller.launch import main
sys.exit(main())
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert done.returncode == 0, (done.returncode, done.stderr)
