"""`wattscale operator` and `wattscale agent` refuse what they cannot start on in one line, exit 2: an API server
that cannot be reached (refused or silent, within a bounded probe), a kubeconfig that is not YAML, a node
without NVML."""

from __future__ import annotations

import http.server
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, free_port
from fake_pynvml import FakeNvml

from controller import cli_cluster
from controller.cli import main
from controller.config_loader import ConfigError
from controller.settings import load_settings
from controller.wiring import build_parts

OPERATOR = ["operator", "--metrics-port", "0", "--plan-port", "0", "--duration", "10"]


def kubeconfig(path: Path, server: str) -> str:
    """A kubeconfig whose one context points at `server` with a token."""
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "c",
        "clusters": [{"name": "c", "cluster": {"server": server, "insecure-skip-tls-verify": True}}],
        "users": [{"name": "u", "user": {"token": "t"}}],
        "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}]}))
    return str(path)


def test_the_operator_refuses_an_api_server_that_refuses_connections_in_one_line(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A closed loopback port: one line naming the server, exit 2, before kopf starts (it exited 0 with
    --duration 10, never having reached the API, and after a minute of retries 1 with tracebacks otherwise)."""
    server = f"https://127.0.0.1:{free_port()}"
    assert main([*OPERATOR, "--kubeconfig", kubeconfig(tmp_path / "kc.yaml", server)]) == 2
    err = capsys.readouterr().err
    assert err == f"wattscale: operator: kubernetes API {server} unreachable (Connection refused)\n", err


def test_the_operators_probe_of_a_silent_api_server_is_bounded(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """A server that takes the connection and never answers: refused within the probe's timeout."""
    monkeypatch.setattr(cli_cluster, "PROBE_TIMEOUT_S", 0.5)
    with socket.create_server(("127.0.0.1", 0)) as silent:
        server = f"https://127.0.0.1:{silent.getsockname()[1]}"
        assert main([*OPERATOR, "--kubeconfig", kubeconfig(tmp_path / "kc.yaml", server)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"wattscale: operator: kubernetes API {server} unreachable (") and err.count("\n") == 1
    assert "timed out" in err and "Traceback" not in err


def test_the_operator_refuses_a_web_server_that_is_no_kubernetes_api_in_one_line(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A wrong URL or a proxy that answers 200 to everything passed the probe, and kopf then failed on its
    discovery documents ('versions') with a page of tracebacks, exit 1."""

    class Anything(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", "13")
            self.end_headers()
            self.wfile.write(b"<html></html>")

        def log_message(self, *_: object) -> None:
            pass

    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), Anything) as web:
        threading.Thread(target=web.serve_forever, daemon=True).start()
        server = f"http://127.0.0.1:{web.server_address[1]}"
        try:
            assert main([*OPERATOR, "--kubeconfig", kubeconfig(tmp_path / "kc.yaml", server)]) == 2
        finally:
            web.shutdown()
    err = capsys.readouterr().err
    assert err == (f"wattscale: operator: kubernetes API {server} answered /version with no Kubernetes version "
                   "(gitVersion): is it a Kubernetes API server?\n"), err


@pytest.mark.parametrize("url", ["not a url", "ftp://host:9466", "http://[::1", "http://:9466"])
def test_the_agent_refuses_an_operator_url_it_could_never_fetch_before_nvml(
        url: str, capsys: pytest.CaptureFixture[str]) -> None:
    """The URL went unchecked into every fetch, and NVML's error came first: on a GPU node a typo started an agent
    whose GPUs fell to their safe caps once the TTL ran out."""
    assert main(["agent", "--node", "n1", "--metrics-port", "0", "--operator-url", url]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"wattscale: --operator-url: must be an http(s) URL with a host, got {url!r}: ") and (
        err.count("\n") == 1)


@pytest.mark.parametrize("command", [OPERATOR, ["agent", "--node", "n1", "--metrics-port", "0", "--duration", "1"]])
def test_a_kubeconfig_that_is_not_yaml_is_refused_in_one_line(
        command: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Not YAML: one line with where the parser stopped (it was yaml's ParserError through a traceback)."""
    bad = tmp_path / "kc.yaml"
    bad.write_text("not: [yaml\n")
    assert main([*command, "--kubeconfig", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"wattscale: {command[0]}: kubernetes: kubeconfig {bad} is not valid YAML: ") and \
        err.count("\n") == 1, err
    assert "(line 2, column 1)" in err and "Traceback" not in err


@pytest.mark.parametrize("text", ["not: [yaml\n", "- a\n- b\n"])
def test_a_broken_kubeconfig_named_by_its_environment_is_named_as_such(
        text: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """$KUBECONFIG's file read as "~/.kube/config is not a kubeconfig" where it was not YAML or no kubeconfig."""
    bad = tmp_path / "env.yaml"
    bad.write_text(text)
    monkeypatch.setenv("KUBECONFIG", str(bad))
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.kube/config beside it
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    assert main(["agent", "--node", "n1", "--metrics-port", "0", "--duration", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("wattscale: agent: kubernetes: ") and str(bad) in err and "~/.kube" not in err, err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_connection_errors_kopf_logs_keep_their_message_without_the_traceback() -> None:
    """kopf's 'Resource observer has failed' came with aiohttp's traceback each time: one line stays, as the
    operator's logging is set up (`_logging`)."""
    script = """
import logging
from controller import cli_cluster, log_writer
cli_cluster._logging("INFO")
for exc in (ConnectionRefusedError(111, "Connect call failed"), ValueError("a bug")):
    try:
        raise exc
    except Exception:
        logging.getLogger("test.kopf").error("Resource observer has failed: %s", exc, exc_info=True)
log_writer.flush(5.0)
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert "Resource observer has failed: [Errno 111] Connect call failed\n" in done.stderr, done.stderr
    assert done.stderr.count("Traceback") == 1 and "ValueError: a bug" in done.stderr  # other errors keep theirs


def test_without_nvml_the_agent_and_the_daemon_each_say_what_they_can_do(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
        sim_config: Callable[..., Path]) -> None:
    """The NVML error told the agent to `use gpu_source = "sim"`, an option only the daemon has: the agent is
    told where it runs, the daemon which setting it can change."""
    monkeypatch.setitem(sys.modules, "pynvml", FakeNvml([], library=False))
    agent = ["agent", "--node", "n1", "--metrics-port", "0"]
    assert main([*agent, "--kubeconfig", kubeconfig(tmp_path / "kc.yaml", "https://127.0.0.1:1")]) == 2
    err = capsys.readouterr().err
    assert err == ("wattscale: agent: NVML init: libnvidia-ml.so.1 not found: install the NVIDIA driver (or run on a "
                   "GPU host); the agent sets this node's GPUs through NVML, so it runs on GPU nodes only "
                   "(deploy/kubernetes/base/agent.yaml selects nvidia.com/gpu.present=true)\n"), err
    config = sim_config({'gpu_source = "sim"': 'gpu_source = "nvml"'})
    with pytest.raises(ConfigError) as exc:
        build_parts(load_settings(config), FakeNvml([], library=False))
    assert exc.value.where == "telemetry.gpu_source" and exc.value.reason.endswith('; off a GPU host, "sim" (as '
                                                                                   'config/sim.toml)')


def test_a_storm_of_stop_signals_logs_no_traceback_per_signal() -> None:
    """kopf stops on SIGTERM by setting a future's result; each further signal set it again, and asyncio logged
    an InvalidStateError traceback for each (13 in a 3-s storm). Another callback's error still shows."""
    script = """
import asyncio, signal
from controller import cli_cluster, log_writer
cli_cluster._logging("INFO")
loop = asyncio.new_event_loop()
stopped = loop.create_future()
stopped.set_result(signal.SIGTERM)
for sig in (signal.SIGTERM, signal.SIGINT):  # as loop.add_signal_handler calls it, signal after signal
    loop.call_soon(stopped.set_result, sig)
loop.call_soon(int, "not a number")  # a real error in a callback
loop.run_until_complete(asyncio.sleep(0.01))
log_writer.flush(5.0)
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert "InvalidStateError" not in done.stderr and done.stderr.count("Traceback") == 1, done.stderr
    assert "ValueError: invalid literal for int()" in done.stderr
