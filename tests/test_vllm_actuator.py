"""Batch backend `vllm`: real child processes (a stand-in server with /health) restarted with the new
--max-num-seqs one replica at a time, a value that never gets healthy rolled back, and the systemd batch file."""

from __future__ import annotations

import contextlib
import json
import os
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

from actuators import ActuatorError, BatchInForce, PermanentActuatorError, TransientActuatorError
from actuators.vllm import VllmBatchSizer
from actuators.vllm_servers import ChildRunner, Replica, SystemdRunner, shutdown_timeout_s, with_max_num_seqs
from controller.http_fetch import healthy_within as healthy

STANDIN = str(Path(__file__).resolve().parent / "standin_vllm.py")


def flags(port: int) -> dict[str, int]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/flags", timeout=2) as r:
        return dict(json.loads(r.read()))


@pytest.fixture
def fleet() -> Iterator[tuple[VllmBatchSizer, ChildRunner, list[int], list[int]]]:
    ports = [free_port(), free_port()]
    reps = tuple(Replica(f"chat-{i}", f"http://127.0.0.1:{p}/health",
                         (sys.executable, STANDIN, "--port", str(p), "--max-seqs-limit", "100", "--lifetime-s", "60",
                          "--max-num-seqs", "8"))
                 for i, p in enumerate(ports))
    runner = ChildRunner(stop_timeout_s=5.0)
    unhealthy_seen: list[int] = []

    def probe(url: str, timeout_s: float) -> bool:  # records how many replicas are down at every check
        unhealthy_seen.append(sum(not healthy(r.health_url, 1.0) for r in reps))
        return healthy(url, timeout_s)

    sizer = VllmBatchSizer(runner, {"chat": reps}, {"chat": 32}, health_timeout_s=10.0, poll_s=0.1, probe=probe)
    try:
        sizer.start()
        yield sizer, runner, ports, unhealthy_seen
    finally:
        runner.close()


def test_restarts_each_replica_with_the_new_flag_one_at_a_time(fleet: tuple[VllmBatchSizer, ChildRunner,
                                                                            list[int], list[int]]) -> None:
    sizer, _, ports, unhealthy_seen = fleet
    before = [flags(p) for p in ports]
    assert [f["max_num_seqs"] for f in before] == [32, 32]
    unhealthy_seen.clear()
    sizer.set_max_batch("chat", 64)  # returns at once: the rollout runs in the background
    with pytest.raises(TransientActuatorError, match="still rolling out"):
        sizer.set_max_batch("chat", 48)
    sizer.wait(30)
    after = [flags(p) for p in ports]
    assert [f["max_num_seqs"] for f in after] == [64, 64]
    assert all(a["pid"] != b["pid"] for a, b in zip(after, before, strict=True))  # really restarted
    assert max(unhealthy_seen) == 1  # never more than one replica down
    assert sizer.current["chat"] == 64 and sizer.actions[-1].value == 64


def test_a_value_that_never_gets_healthy_is_rolled_back(fleet: tuple[VllmBatchSizer, ChildRunner,
                                                                      list[int], list[int]]) -> None:
    sizer, _, ports, _ = fleet
    sizer.health_timeout_s = 2.0
    sizer.set_max_batch("chat", 128)  # the stand-in cannot fit more than 100
    sizer.wait(30)
    assert [flags(p)["max_num_seqs"] for p in ports] == [32, 32]
    assert sizer.current["chat"] == 32
    with pytest.raises(PermanentActuatorError, match="rolled back to 32"):  # reported on the next change
        sizer.set_max_batch("chat", 16)


def test_close_stops_the_children(fleet: tuple[VllmBatchSizer, ChildRunner, list[int], list[int]]) -> None:
    _, runner, ports, _ = fleet
    pids = [flags(p)["pid"] for p in ports]
    runner.close()
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


DRAINING = ("import pathlib, signal, sys, time\n"
            "signal.signal(signal.SIGTERM, lambda *_: (time.sleep(1.0), sys.exit(0)))  # vLLM draining\n"
            "pathlib.Path({ready!r}).touch()\n"
            "time.sleep(60)")


@pytest.mark.parametrize("flag", [(), ("--shutdown-timeout", "5"), ("--shutdown-timeout=5",)])
def test_a_server_with_a_shutdown_timeout_is_given_it_to_drain(flag: tuple[str, ...], tmp_path: Path) -> None:
    """Killed after stop_timeout_s without the flag (vLLM then aborts at once anyway); with it, the 1-s drain
    ends on its own."""
    runner = ChildRunner(stop_timeout_s=0.2)
    ready = tmp_path / "handler-installed"
    script = DRAINING.format(ready=str(ready))
    replica = Replica("chat-0", "http://127.0.0.1:1/health", (sys.executable, "-c", script, *flag))
    runner.restart(replica, 8)
    proc = runner.procs["chat-0"][0]
    deadline = time.monotonic() + 30.0
    while not ready.exists() and time.monotonic() < deadline:  # its handler installed, not a guessed sleep
        time.sleep(0.02)
    runner.close()
    assert proc.returncode == (0 if flag else -9)
    assert shutdown_timeout_s(("vllm", "serve", *flag)) == (5.0 if flag else 0.0)
    assert shutdown_timeout_s(("--shutdown-timeout", "soon")) == 0.0 == shutdown_timeout_s(("--shutdown-timeout",))
    assert shutdown_timeout_s(("--shutdown-timeout=inf",)) == 3600.0  # bounded: an exit never waits for ever
    assert shutdown_timeout_s(("--shutdown-timeout=nan",)) == 0.0
    with pytest.raises(PermanentActuatorError, match="the daemon is stopping"):
        runner.restart(replica, 16)  # a rollout thread still draining when the daemon closed starts nothing
    assert not runner.procs


def test_bad_requests_are_permanent() -> None:
    sizer = VllmBatchSizer(ChildRunner(), {}, {}, healthy)
    with pytest.raises(PermanentActuatorError, match="no vLLM servers"):
        sizer.set_max_batch("nope", 8)


def test_flag_is_replaced_in_either_spelling() -> None:
    assert with_max_num_seqs(("vllm", "serve", "m", "--max-num-seqs", "8", "--port", "1"), 16) == [
        "vllm", "serve", "m", "--port", "1", "--max-num-seqs", "16"]
    assert with_max_num_seqs(("vllm", "--max-num-seqs=8"), 4) == ["vllm", "--max-num-seqs", "4"]


def test_systemd_runner_writes_the_units_max_batch_then_restarts_it(tmp_path: Path) -> None:
    """One number in a file the unit's `wattscale vllm-exec` reads, readable by the unit's user; no drop-in under /etc
    (whoever held the daemon's user could write `User=root` into one) and no daemon-reload."""
    log = tmp_path / "systemctl.log"
    script = tmp_path / "systemctl.py"
    script.write_text("import sys\nopen(sys.argv[1], 'a').write(' '.join(sys.argv[2:]) + '\\n')\n"
                      "sys.exit(3 if 'broken.service' in sys.argv else 0)\n")
    runner = SystemdRunner(tmp_path / "units", (sys.executable, str(script), str(log)))
    runner.restart(Replica("vllm-chat@0.service", "http://127.0.0.1:1/health"), 48)
    batch = tmp_path / "units" / "vllm-chat@0.service.batch"
    assert batch.read_text() == "48\n" and batch.stat().st_mode & 0o777 == 0o644
    assert batch.parent.stat().st_mode & 0o777 == 0o755
    assert log.read_text().splitlines() == ["restart vllm-chat@0.service"]
    assert [p.name for p in batch.parent.iterdir()] == [batch.name]  # no temporary file left behind
    with pytest.raises(PermanentActuatorError, match=r"systemctl restart broken\.service failed"):
        runner.restart(Replica("broken.service", "http://127.0.0.1:1/health"), 8)


def test_the_folders_the_runner_makes_can_be_entered_and_one_an_operator_made_keeps_its_mode(tmp_path: Path) -> None:
    """Under the daemon's umask 0077 the folders it made were its own alone: the units' users could not read their
    files and fell back to their own max batch, unsaid; and a chmod of the folder at each write reset an operator's."""
    old = os.umask(0o077)
    try:
        deep = tmp_path / "made" / "units"
        SystemdRunner(deep, (sys.executable, "-c", "pass")).restart(Replica("v-0", "http://127.0.0.1:1/health"), 8)
        assert [p.stat().st_mode & 0o777 for p in (deep.parent, deep)] == [0o755, 0o755]
        own = tmp_path / "own"
        own.mkdir()
        own.chmod(0o750)
        SystemdRunner(own, (sys.executable, "-c", "pass")).restart(Replica("v-0", "http://127.0.0.1:1/health"), 8)
        assert own.stat().st_mode & 0o777 == 0o750
    finally:
        os.umask(old)


@pytest.mark.parametrize(("unit", "file"), [("vllm-chat-0", "vllm-chat-0.service.batch"),
                                            ("vllm@1", "vllm@1.service.batch"),
                                            ("vllm-1.5b", "vllm-1.5b.service.batch"),
                                            ("vllm-chat-0.service", "vllm-chat-0.service.batch")])
def test_a_unit_named_without_its_suffix_gets_the_file_its_full_name_reads(tmp_path: Path, unit: str,
                                                                           file: str) -> None:
    """The host example names its units as systemctl takes them, without `.service`, where `%n` in the unit's
    ExecStart is its full name (the drop-in had gone to `vllm-chat-0.d`, which systemd never read)."""
    runner = SystemdRunner(tmp_path / "units", (sys.executable, "-c", "pass"))
    runner.restart(Replica(unit, "http://127.0.0.1:1/health"), 32)
    assert [p.name for p in (tmp_path / "units").iterdir()] == [file]


def test_config_with_the_vllm_backend_supervises_the_servers(tmp_path: Path) -> None:
    """`batch = "vllm"`, child runner: the wiring builds one replica per port from the service's command."""
    from controller.settings import load_settings
    from controller.wiring import build_parts

    text = (Path(__file__).resolve().parents[1] / "config" / "sim.toml").read_text()
    text = text.replace('batch = "sim"', 'batch = "vllm"\nhealth_timeout_s = 10.0')
    ports: dict[str, int] = {}
    for name in ("chat", "code", "batch-summaries"):
        ports[name] = free_port()
        command = json.dumps([sys.executable, STANDIN, "--lifetime-s", "60"])
        text = text.replace(f'name = "{name}"\n',
                            f'name = "{name}"\nvllm_command = {command}\nvllm_ports = [{ports[name]}]\n')
    path = tmp_path / "host.toml"
    path.write_text(text)
    parts = build_parts(load_settings(path))
    assert isinstance(parts.batch, VllmBatchSizer)
    try:
        parts.batch.start()
        assert flags(ports["chat"])["max_num_seqs"] == 64 and flags(ports["batch-summaries"])["max_num_seqs"] == 128
        parts.batch.set_max_batch("code", 16)
        parts.batch.wait(30)
        assert flags(ports["code"])["max_num_seqs"] == 16
    finally:
        parts.batch.close()


def test_a_health_port_that_speaks_no_http_is_not_healthy() -> None:
    """`-ERR` on the health port (another server, a wrong port) raised http.client.BadStatusLine out of the
    rollout: a traceback, no rollback, and `run` ended with its child still serving."""
    import threading

    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        port = server.getsockname()[1]

        def answer() -> None:
            conn, _ = server.accept()
            with conn:
                conn.recv(4096)
                conn.sendall(b"-ERR unknown command\r\n")

        threading.Thread(target=answer, daemon=True).start()
        assert healthy(f"http://127.0.0.1:{port}/health", 2.0) is False


def test_servers_that_never_get_healthy_at_start_are_one_line_and_stopped(tmp_path: Path,
                                                                          capsys: pytest.CaptureFixture[str]) -> None:
    """`run` raised TransientActuatorError with a traceback and left its vLLM children running (PPID 1)."""
    from controller.cli import main
    from controller.config_loader import ConfigError
    from controller.daemon import Daemon
    from controller.settings import load_settings

    marker = f"never-healthy-{free_port()}"
    path = never_healthy_host(tmp_path, marker, 2.5)
    daemon = Daemon(path, load_settings(path))
    started = time.monotonic()
    with pytest.raises(ConfigError, match=r"^actuators\.batch: the vLLM servers did not start: chat:"):
        daemon.run(5.0)
    assert daemon.last_fast - started >= 1.0  # the governor ticked while the servers started (it waited for them)
    assert main(["run", "--config", str(path), "--duration", "5"]) == 2
    err = capsys.readouterr().err
    assert "wattscale: actuators.batch: the vLLM servers did not start: chat:" in err and "Traceback" not in err
    assert running(marker) == [], f"vLLM children left running: {running(marker)}"


def test_systemds_start_timeout_is_pushed_on_while_the_servers_start(tmp_path: Path) -> None:
    """The daemon tells systemd it is ready once every supervised server answers /health, up to `health_timeout_s`
    (300 s) each, one after another: under the unit's default 90-s start timeout a slow model load had the daemon
    killed at every start (a new user's trial). While servers start it sends EXTEND_TIMEOUT_USEC."""
    from controller.config_loader import ConfigError
    from controller.daemon import Daemon
    from controller.settings import load_settings

    marker = f"never-healthy-{free_port()}"
    path = never_healthy_host(tmp_path, marker, 2.0)
    daemon = Daemon(path, load_settings(path))
    address = str(tmp_path / "notify")
    said: list[bytes] = []
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as systemd:
        systemd.bind(address)
        systemd.settimeout(0.1)
        daemon.notifier.address = address
        with pytest.raises(ConfigError):
            daemon.run(4.0)
        with contextlib.suppress(TimeoutError):
            while True:
                said.append(systemd.recv(4096))
    assert any(m.startswith(b"EXTEND_TIMEOUT_USEC=30000000\nSTATUS=starting the vLLM servers") for m in said), said
    assert running(marker) == []


def never_healthy_host(tmp_path: Path, marker: str, health_timeout_s: float) -> Path:
    """sim.toml with the vllm backend, each service's server a process that never answers /health (`marker` in
    its command line)."""
    text = (Path(__file__).resolve().parents[1] / "config" / "sim.toml").read_text()
    text = text.replace('batch = "sim"', f'batch = "vllm"\nhealth_timeout_s = {health_timeout_s}')
    text = text.replace("port = 9464", "port = 0").replace('state_dir = "../var/state"',
                                                           f'state_dir = "{tmp_path / "state"}"')
    command = json.dumps([sys.executable, "-c", "import time; time.sleep(60)", marker])
    for name in ("chat", "code", "batch-summaries"):
        text = text.replace(f'name = "{name}"\n',
                            f'name = "{name}"\nvllm_command = {command}\nvllm_ports = [{free_port()}]\n')
    path = tmp_path / "host.toml"
    path.write_text(text)
    return path


def running(marker: str) -> list[str]:
    """The pids of processes with `marker` in their command line."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        with contextlib.suppress(OSError):
            if marker.encode() in cmdline.read_bytes():
                found.append(cmdline.parent.name)
    return found


def test_a_stop_while_the_servers_come_up_ends_the_daemon_at_once(tmp_path: Path) -> None:
    """`run` waited out every server's health timeout (300 s by default) before it looked at a SIGTERM or its
    --duration: a stop while vLLM loaded took minutes, and systemd's own timeout killed it."""
    marker = f"slow-to-load-{free_port()}"
    path = never_healthy_host(tmp_path, marker, 120.0)
    log = tmp_path / "daemon.log"
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "controller.cli", "run", "--config", str(path)], stdout=out,
                                stderr=subprocess.STDOUT, cwd=Path(__file__).resolve().parents[1])
    try:
        deadline = time.monotonic() + 30.0
        while not running(marker) and time.monotonic() < deadline:  # the first server is up: the wait has begun
            time.sleep(0.1)
        assert running(marker), log.read_text()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15.0) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "stopping" in log.read_text() and running(marker) == []


@pytest.mark.parametrize(("code", "said"), [
    ("raise SystemExit(3)", "exited with status 3"),
    ("import os, signal; os.kill(os.getpid(), signal.SIGKILL)", "was killed by SIGKILL"),  # not "status -9"
])
def test_a_server_that_exits_as_it_starts_fails_at_once_with_its_status(code: str, said: str) -> None:
    """A command that cannot run (a bad flag, a missing model) was waited on for the whole health timeout."""
    rep = Replica("chat-0", f"http://127.0.0.1:{free_port()}/health", (sys.executable, "-c", code))
    runner = ChildRunner(stop_timeout_s=5.0)
    sizer = VllmBatchSizer(runner, {"chat": (rep,)}, {"chat": 32}, healthy, health_timeout_s=60.0, poll_s=0.1)
    started = time.monotonic()
    try:
        with pytest.raises(TransientActuatorError, match=rf"^chat: chat-0 {said} before its /health"):
            sizer.start()
    finally:
        runner.close()
    assert time.monotonic() - started < 10.0


def test_a_batch_file_that_cannot_be_written_is_one_permanent_error_and_leaves_nothing(
        tmp_path: Path) -> None:
    """The folder is a file (as a read-only or full disk would also refuse): an OSError raised in the rollout thread
    ended it without a word, and the change was never reported."""
    (tmp_path / "units").write_text("not a folder")
    runner = SystemdRunner(tmp_path / "units", (sys.executable, "-c", "pass"))
    with pytest.raises(PermanentActuatorError, match=r"vllm-chat@0\.service: cannot write its max batch in .*units"):
        runner.restart(Replica("vllm-chat@0.service", "http://127.0.0.1:1/health"), 48)


class FlakyRunner:
    """Records restarts; the replica named in `fails` raises what `error` makes of it, once per value."""

    supervises = False

    def __init__(self, fails: str, error: Exception) -> None:
        self.fails, self.error = fails, error
        self.restarts: list[tuple[str, int]] = []

    def restart(self, replica: Replica, max_num_seqs: int) -> None:
        self.restarts.append((replica.name, max_num_seqs))
        if replica.name == self.fails and max_num_seqs != 32:
            raise self.error

    def exited(self, name: str) -> int | None:
        return None

    def close(self) -> None:
        pass


@pytest.mark.parametrize("error,kind", [
    (PermanentActuatorError("c1: systemctl restart failed"), PermanentActuatorError),
    (OSError("bug"), PermanentActuatorError),
    (TransientActuatorError("c1: systemctl restart: timed out", 30.0), TransientActuatorError),
])
def test_a_replica_that_fails_to_restart_puts_back_the_ones_changed_and_is_raised_next(
        error: Exception, kind: type[ActuatorError]) -> None:
    """A transient failure stays transient (a systemctl timeout is tried again after its delay; made permanent, it
    froze the service's batch until its config changed)."""
    reps = tuple(Replica(f"c{i}", f"http://h/{i}") for i in range(3))
    runner = FlakyRunner("c1", error)
    sizer = VllmBatchSizer(runner, {"chat": reps}, {"chat": 32}, health_timeout_s=1.0, poll_s=0.01,
                           probe=lambda url, timeout_s: True)
    sizer.set_max_batch("chat", 64)
    sizer.wait(5.0)
    # c1 itself is put back too (a failed restart may have half-run), then c0: the service runs one value
    assert runner.restarts == [("c0", 64), ("c1", 64), ("c1", 32), ("c0", 32)]
    assert sizer.get_max_batch("chat").max_batch == 32
    with pytest.raises(kind, match=r"chat: .*(systemctl restart failed|bug|timed out).*rolled back to 32") as caught:
        sizer.set_max_batch("chat", 16)
    assert type(caught.value) is kind and (kind is PermanentActuatorError or caught.value.delay_s == 30.0)


def test_a_health_answer_trickled_a_byte_at_a_time_is_not_healthy_within_the_probes_time() -> None:
    """urllib's timeout bounds each read: a server sending its answer a byte every 0.2 s held `healthy` for the
    whole answer, and a rollout's probe with it. The daemon's probe bounds the whole answer."""
    import threading
    import time

    from controller.http_fetch import healthy_within

    answer = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Pad: " + b"x" * 40 + b"\r\n\r\nok"
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(5.0)
    port = server.getsockname()[1]

    def trickle() -> None:
        with server, server.accept()[0] as conn:
            for byte in answer:
                try:
                    conn.sendall(bytes([byte]))
                except OSError:
                    return
                time.sleep(0.2)

    thread = threading.Thread(target=trickle, daemon=True)
    thread.start()
    started = time.monotonic()
    assert not healthy_within(f"http://127.0.0.1:{port}/health", 1.0)
    assert time.monotonic() - started < 3.0
    thread.join(15.0)


def test_a_restarted_daemon_reads_what_its_systemd_units_start_with(tmp_path: Path,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    """The units outlive the daemon. A restarted daemon took the config's initial max batch (64) as in force while
    they ran the batch files' 128: windows labelled 64, and a plan at 64 never asked. It now reads the files; units
    left apart (one file missing, or two values) read as mixed, the least in force, until a rollout gives them one."""
    reps = {"chat": (Replica("vllm-chat@0", "http://127.0.0.1:1/health"),
                     Replica("vllm-chat@1", "http://127.0.0.1:2/health"))}

    def sizer() -> VllmBatchSizer:  # as controller/wiring.py builds it: initial = the config's initial_max_batch
        return VllmBatchSizer(SystemdRunner(tmp_path, ("true",)), reps, {"chat": 64}, lambda url, t: True, 5.0, 0.01)

    first = sizer()
    first.set_max_batch("chat", 128)
    first.wait()
    again = sizer()
    again.start()
    assert again.get_max_batch("chat") == BatchInForce(128)
    (tmp_path / "vllm-chat@1.service.batch").write_text("32\n")
    apart = sizer()
    apart.start()
    assert apart.get_max_batch("chat") == BatchInForce(32, None, True)
    assert "its units start with different max batches (128, 32)" in caplog.text
    apart.set_max_batch("chat", 32)
    apart.wait()
    assert apart.get_max_batch("chat") == BatchInForce(32)
    assert (tmp_path / "vllm-chat@0.service.batch").read_text() == "32\n"


def test_units_apart_with_one_down_wait_for_it_before_a_change(tmp_path: Path) -> None:
    """Units a restarted daemon finds apart read as mixed and are asked again; with one of them down, the enforcer
    still waits for every replica serving (it had restarted the only healthy one first: none serving, twice). Only a
    Kubernetes stall, which holds its replica down itself, is repaired without that wait."""
    from prometheus_client import CollectorRegistry

    from actuators.dryrun import DryRunReplicaScaler
    from controller.enforce import Enforcer
    from controller.optimizer import Assignment
    from controller.own_metrics import OwnMetrics

    reps = {"chat": (Replica("u0", "http://127.0.0.1:1/health"), Replica("u1", "http://127.0.0.1:2/health"))}
    (tmp_path / "u0.service.batch").write_text("64\n")
    (tmp_path / "u1.service.batch").write_text("128\n")
    sizer = VllmBatchSizer(SystemdRunner(tmp_path, ("true",)), reps, {"chat": 64}, lambda url, t: True, 5.0, 0.01)
    sizer.start()
    enforcer = Enforcer(DryRunReplicaScaler({("chat", "H100-SXM"): 2}), sizer, OwnMetrics(CollectorRegistry()))
    got, _ = enforcer.in_force("chat", ("H100-SXM",), Assignment("H100-SXM", 2, 64, 700.0), {})
    _, done = enforcer.apply(15.0, "chat", got, Assignment("H100-SXM", 2, 64, 700.0), serving=1)
    assert done.held == ("max batch: waits for 2 replicas serving (1 now)",)
    sizer.wait()
    assert (tmp_path / "u1.service.batch").read_text() == "128\n"  # no restart began (each writes its file first)
