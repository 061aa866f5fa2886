"""Budget sources in the daemon: `[power.budget]` read with the config, a demand-response signal that lowers
the budget reaching the governor at once and the plan at its next cycle, with the why in the decision log;
a reload that changes the sources is refused; a secret the environment lacks is named by check-config."""

from __future__ import annotations

import http.client
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cluster_fixtures import until
from conftest import free_port

from controller.cli import main
from controller.config_loader import ConfigError
from controller.daemon import Daemon
from controller.reload import check_reload
from controller.settings import load_settings

ROOT = Path(__file__).resolve().parents[1]


TOKEN = "0123456789abcdef"
"""The endpoint's token, as WATTSCALE_SIGNAL_TOKEN holds it."""
AUTH = {"Authorization": f"Bearer {TOKEN}"}
AUTH_LINE = f"Authorization: Bearer {TOKEN}\r\n".encode()

def budget_table(signal: Path, safe_w: int = 2000) -> str:
    return (f'\n[power.budget]\nsafe_budget_w = {safe_w}\nttl_s = 60\n'
            f'[[power.budget.sources]]\nkind = "fixed"\nname = "contract"\nbudget_w = 3800\n'
            f'[[power.budget.sources]]\nkind = "demand_response"\nname = "grid"\npath = "{signal}"\n')


def with_budget(sim_config: Callable[..., Path], signal: Path, name: str = "wattscale.toml", safe_w: int = 2000,
                ) -> Path:
    path = sim_config(name=name)
    text = path.read_text().replace('mode = "predicted"\n', 'mode = "predicted"\n' + budget_table(signal, safe_w))
    path.write_text(text)
    return path


def test_a_demand_response_signal_lowers_the_budget_now_and_the_plan_next(sim_config: Callable[..., Path],
                                                                          tmp_path: Path) -> None:
    signal = tmp_path / "signal.json"
    path = with_budget(sim_config, signal)
    daemon = Daemon(path, load_settings(path))
    ctl = daemon.controller
    daemon.step_budget()
    assert ctl.governor.settings.budget_w == 3800.0  # the contract source, below power.budget_w (4000)
    deadline = (datetime.now(UTC) + timedelta(minutes=20)).isoformat()
    signal.write_text(json.dumps({"budget_w": 2600, "deadline": deadline, "reason": "grid event 42"}))
    daemon.step_budget()
    assert ctl.governor.settings.budget_w == 2600.0
    assert daemon.registry.get_sample_value("wattscale_power_budget_watts") == 2600.0
    daemon.fast()
    daemon.slow()
    power = ctl.settings.power
    assert ctl._problem(0.0).budget_w == pytest.approx(2600.0 * (1 - power.headroom) * (1 - power.plan_margin))
    record = json.loads((tmp_path / "state" / "decisions.jsonl").read_text().splitlines()[-1])
    assert record["budget_w"] == 2600.0 and "grid event 42" in record["budget"]["why"]
    # a tick plans, checks and records one read of the budget: one the budget thread moved within it (a record had
    # read "budget 2000 W" beside a plan for 3075 W) is the next tick's, and the governor's at once
    ctl.set_budget(2400.0, "grid: a change within the tick", daemon.now())
    assert ctl.governor.settings.budget_w == 2400.0 and ctl.tick_power.budget_w == 2600.0
    assert ctl._problem(0.0).budget_w == pytest.approx(2600.0 * (1 - power.headroom) * (1 - power.plan_margin))
    ctl.set_budget(2600.0, "grid: demand response 2600 W (grid event 42)", daemon.now())
    daemon.slow()  # the next tick records both changes
    assert [c["budget_w"] for c in json.loads((tmp_path / "state" / "decisions.jsonl").read_text().splitlines()[-1])[
        "budget"]["changes"]] == [2400.0, 2600.0]
    # the same budget for another reason (or a source's newer error, a signal's time left): what status reads of it
    # is kept current, where it had kept the first why for as long as the budget stood; no change is recorded
    signal.write_text(json.dumps({"budget_w": 2600, "deadline": deadline, "reason": "grid event 43"}))
    daemon.step_budget()
    assert ctl.budget_from is not None and "grid event 43" in ctl.budget_from[1]
    daemon.slow()
    record = json.loads((tmp_path / "state" / "decisions.jsonl").read_text().splitlines()[-1])
    assert "grid event 43" in record["budget"]["why"] and record["budget"]["changes"] == []
    ctl.reconfigure(load_settings(path))  # a reload keeps the sources' budget
    assert ctl.governor.settings.budget_w == 2600.0
    # a reload to a budget under the sources': the record had kept naming the signal as why
    path.write_text(path.read_text().replace("budget_w = 4000", "budget_w = 2000", 1))
    ctl.reconfigure(load_settings(path))
    assert ctl.governor.settings.budget_w == 2000.0
    daemon.slow()
    record = json.loads((tmp_path / "state" / "decisions.jsonl").read_text().splitlines()[-1])
    assert record["budget_w"] == 2000.0
    assert record["budget"]["why"] == "power.budget_w (the sources' 2600 W is not below it)"
    daemon.parts.close()


def test_the_operators_budget_thread_keeps_the_why_current_as_the_daemon_does(sim_config: Callable[..., Path],
                                                                              tmp_path: Path) -> None:
    """Cluster mode steps the policy's sources in a thread of its own (controller/cluster/budget_thread.py); it had
    kept the first reason for as long as the budget stood."""
    from controller.cluster.budget_thread import BudgetThread

    signal = tmp_path / "signal.json"
    path = with_budget(sim_config, signal)
    daemon = Daemon(path, load_settings(path))
    ctl = daemon.controller
    deadline = (datetime.now(UTC) + timedelta(minutes=20)).isoformat()
    signal.write_text(json.dumps({"budget_w": 2600, "deadline": deadline, "reason": "grid event 42"}))
    thread = BudgetThread(daemon.metrics, str(tmp_path))

    def says(reason: str) -> bool:  # within 10 s (the thread steps the sources every fast tick, 1 s)
        deadline_s = time.monotonic() + 10.0
        while time.monotonic() < deadline_s:
            if ctl.budget_from is not None and reason in ctl.budget_from[1]:
                return True
            time.sleep(0.05)
        return False

    thread.restart(daemon.settings, ctl, daemon.now)
    try:
        assert says("grid event 42")
        signal.write_text(json.dumps({"budget_w": 2600, "deadline": deadline, "reason": "grid event 43"}))
        assert says("grid event 43")
    finally:
        thread.stop()
        daemon.parts.close()
    assert ctl.governor.settings.budget_w == 2600.0


def test_the_budget_table_is_checked_and_its_change_needs_a_restart(sim_config: Callable[..., Path],
                                                                    tmp_path: Path) -> None:
    before = load_settings(with_budget(sim_config, tmp_path / "a.json"))
    after = load_settings(with_budget(sim_config, tmp_path / "b.json", name="other.toml"))
    with pytest.raises(ConfigError, match=r"^power\.budget\.sources\[grid\]\.path: changes need a restart \("
                       r"budget sources hold tokens and readings\): '.*a\.json.* runs, the file asks '.*b\.json"):
        check_reload(before, after)  # by the source and field that changed (it printed both lists, cut alike)
    # named by its field and values
    with pytest.raises(ConfigError, match=r"^power\.budget\.safe_budget_w: changes need a restart \(budget sources "
                       r"hold tokens and readings\): 2000.0 runs, the file asks 2500.0$"):
        check_reload(before, load_settings(with_budget(sim_config, tmp_path / "a.json", name="c.toml", safe_w=2500)))
    # a safe budget above budget_w is held to it, as a source's is: refused, it barred lowering budget_w under it by
    # a reload (the safe budget's own change waits for a restart)
    high = load_settings(with_budget(sim_config, tmp_path / "a.json", name="high.toml", safe_w=5000))
    lower = replace(high, power=replace(high.power, budget_w=2800.0))
    check_reload(high, lower)


def test_check_config_names_a_secret_the_environment_lacks(sim_config: Callable[..., Path]) -> None:
    path = sim_config()
    path.write_text(path.read_text().replace('mode = "predicted"\n', 'mode = "predicted"\n'
                    '\n[power.budget]\nsafe_budget_w = 2000\n[[power.budget.sources]]\nkind = "electricitymaps"\n'
                    'zone = "DE"\ncurve = [[100.0, 4000.0], [400.0, 2500.0]]\n'))
    out = subprocess.run([sys.executable, "-m", "controller.cli", "check-config", str(path)], cwd=ROOT,
                         capture_output=True, text=True, timeout=60, env={"PATH": "/usr/bin:/bin"})
    assert out.returncode == 2 and "power.budget.sources[0].token_env" in out.stderr, out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


def test_check_config_warns_of_a_carbon_csv_it_cannot_read_and_run_says_the_budget_in_force(
        sim_config: Callable[..., Path], capsys: pytest.CaptureFixture[str]) -> None:

    path = sim_config()
    path.write_text(path.read_text().replace('mode = "predicted"\n', 'mode = "predicted"\n'
                    '\n[power.budget]\nsafe_budget_w = 2000\n[[power.budget.sources]]\nkind = "carbon_csv"\n'
                    'name = "grid"\npath = "nope.csv"\ncurve = [[100.0, 4000.0], [400.0, 2500.0]]\n'))
    assert main(["check-config", str(path)]) == 0
    err = capsys.readouterr().err
    assert f"power.budget.sources[grid].path: csv nope.csv: {path.parent / 'nope.csv'}: No such file or directory; " \
        "it counts as 2000 W (safe_budget_w, at most budget_w)" in err  # not "[Errno 2] ...", an OSError's
    (path.parent / "nope.csv").write_text("hello,world\n")  # there, but not a carbon CSV
    assert main(["check-config", str(path)]) == 0
    assert "power.budget.sources[grid].path: csv nope.csv: no datetime column" in capsys.readouterr().err
    daemon = Daemon(path, load_settings(path))
    daemon.step_budget()
    assert daemon._status().startswith("budget 2000 W (grid: safe budget"), daemon._status()
    daemon.parts.close()


def test_a_signal_posted_to_the_loopback_endpoint_lowers_the_budget(sim_config: Callable[..., Path], tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """... at once: the endpoint wakes the budget thread, which had stepped the sources a tick later (with a
    30-s tick here, the signal would wait 30 s)."""
    monkeypatch.setenv("WATTSCALE_SIGNAL_TOKEN", TOKEN)
    port = free_port()
    path = with_budget(sim_config, tmp_path / "signal.json")
    text = path.read_text().replace('path = "', f'port = {port}\npath = "')
    path.write_text(text.replace("fast_interval_s = 1.0", "fast_interval_s = 30.0").replace("slow_interval_s = 15.0",
                                                                                   "slow_interval_s = 60.0"))
    daemon = Daemon(path, load_settings(path))
    servers = daemon.signal_endpoints()
    worker = threading.Thread(target=daemon.budget_worker)
    worker.start()
    try:
        deadline = (datetime.now(UTC) + timedelta(minutes=20)).isoformat()
        body = json.dumps({"budget_w": 2400, "deadline": deadline, "reason": "site event"}).encode()
        request = urllib.request.Request(f"http://127.0.0.1:{port}/signal", data=body, method="POST", headers=AUTH)
        with urllib.request.urlopen(request, timeout=5) as answer:
            assert answer.status == 200 and json.loads(answer.read())["budget_w"] == 2400
        until(lambda: daemon.controller.governor.settings.budget_w == 2400.0, 10.0, "the signal's budget")
    finally:
        daemon.stop_event.set()
        daemon.budget_due.set()
        worker.join(10.0)
        for server in servers:
            server.shutdown()
            server.server_close()
        daemon.parts.close()
    assert not worker.is_alive()


def test_the_signal_endpoint_answers_only_requests_that_carry_its_token(
        tmp_path: Path, sim_config: Callable[..., Path], monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """Loopback alone let any local user (a vLLM unit's, a browser's page) replace the utility's signal with one
    ending in 2 s, or hold every GPU at its floor with a 1-W signal for good."""
    from controller.budget.endpoint import serve_signals

    port, refused = free_port(), []
    server = serve_signals(str(tmp_path / "signal.json"), port, TOKEN, lambda: refused.append(1))
    body = json.dumps({"budget_w": 1, "deadline": "9998-12-31T00:00:00Z"}).encode()
    try:
        for auth, data in (({}, body), ({"Authorization": "Bearer 0123456789abcdeX"}, body),
                           ({"Authorization": TOKEN}, body), ({"Authorization": "Bearer é" * 4}, body), ({}, None)):
            with pytest.raises(urllib.error.HTTPError) as caught:  # None: a GET, which says the signal in force
                urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{port}/signal", data=data,
                                                              headers=auth), timeout=5)
            assert caught.value.code == 401
        assert not (tmp_path / "signal.json").exists() and len(refused) == 5  # the GET too: every refusal counted
        with urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{port}/signal", data=body, headers={
                "Authorization": f" bearer {TOKEN}  "}), timeout=5) as answer:  # the scheme in any case (RFC 7235)
            assert answer.status == 200
    finally:
        server.shutdown()
        server.server_close()
    path = with_budget(sim_config, tmp_path / "signal.json")
    path.write_text(path.read_text().replace('path = "', f'port = {free_port()}\npath = "'))
    endpoint = path.read_text()
    for held in ("", "short", "é" * 16, "0123456789 abcdef"):  # named by check-config, as by run (its preflight)
        monkeypatch.setenv("WATTSCALE_SIGNAL_TOKEN", held)
        assert main(["check-config", str(path)]) == 2
        assert ".token_env: environment variable WATTSCALE_SIGNAL_TOKEN " in capsys.readouterr().err
    path.write_text(endpoint.replace('\npath = "', '\ntoken_env = "HOME"\npath = "'))
    assert main(["check-config", str(path)]) == 2  # another secret of the process is not a token
    assert ".token_env: must name a variable starting with WATTSCALE_, got 'HOME'" in capsys.readouterr().err


def test_the_signal_endpoint_answers_a_bad_content_length_in_one_line(tmp_path: Path) -> None:
    from controller.budget.endpoint import serve_signals

    port = free_port()
    server = serve_signals(str(tmp_path / "signal.json"), port, TOKEN)
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
            conn.sendall(b"POST /signal HTTP/1.1\r\nHost: x\r\n" + AUTH_LINE
                         + b"Content-Length: lots\r\nConnection: close\r\n\r\n")
            answer = b"".join(iter(lambda: conn.recv(4096), b"")).decode()
        assert answer.startswith("HTTP/1.0 400") and "Content-Length is not a number" in answer
    finally:
        server.shutdown()
        server.server_close()


def test_the_signal_endpoint_says_a_chunked_body_and_counts_and_logs_what_it_refuses(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A chunked POST read as empty ("not JSON: Expecting value"); a signal that could not be stored (its folder
    gone) or was refused left no trace in the daemon; a stored one said nothing of the signal it replaced."""
    from controller.budget.endpoint import serve_signals

    port, refused = free_port(), []
    server = serve_signals(str(tmp_path / "signal.json"), port, TOKEN, lambda: refused.append(1), idle_w=lambda: 760.0)

    def send(head: bytes, body: bytes = b"") -> str:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
            conn.sendall(b"POST /signal HTTP/1.1\r\nHost: x\r\n" + AUTH_LINE + b"Connection: close\r\n" + head
                         + b"\r\n" + body)
            return b"".join(iter(lambda: conn.recv(4096), b"")).decode()

    signal = json.dumps({"budget_w": 300, "deadline": "2099-01-01T00:00:00Z"}).encode()
    other = json.dumps({"budget_w": 400, "deadline": "2099-01-01T00:00:00Z"}).encode()
    post = b"Content-Length: %d\r\n" % len(signal)  # both are as long
    try:
        with caplog.at_level(logging.INFO, logger="controller.budget.endpoint"):
            assert send(b"Transfer-Encoding: chunked\r\n", b"%x\r\n%s\r\n0\r\n\r\n" % (len(signal), signal)) \
                .startswith("HTTP/1.0 411")
            assert send(post + b"Transfer-Encoding: chunked\r\n", signal).startswith("HTTP/1.0 411")  # framing read
            assert send(b"Content-Length: -5\r\n").startswith("HTTP/1.0 400")
            assert send(b"Content-Length: 2\r\n", b"{}").startswith("HTTP/1.0 400")
            stored = send(post, signal)
            assert stored.startswith("HTTP/1.0 200") and "below the fleet's idle draw, 760 W" in stored
            again = send(post, other)  # replaces the first
            assert again.startswith("HTTP/1.0 200") and '"replaced": {"budget_w": 300' in again
            assert send(post, other).startswith("HTTP/1.0 200")  # the same again: said at DEBUG only
            server.shutdown()
            server.server_close()
            gone = tmp_path / "gone" / "signal.json"
            server = serve_signals(str(gone), port, TOKEN, lambda: refused.append(1))
            assert send(post, signal).startswith("HTTP/1.0 500") and send(post, signal).startswith("HTTP/1.0 500")
            gone.parent.mkdir()
            assert send(post, signal).startswith("HTTP/1.0 200")  # a store again: the next failure is said
            shutil.rmtree(gone.parent)
            assert send(post, signal).startswith("HTTP/1.0 500")
    finally:
        server.shutdown()
        server.server_close()
    assert len(refused) == 7  # 411, 411, 400, 400 and the three 500s
    lines = [r.getMessage() for r in caplog.records]
    assert sum("a signal refused (400)" in line for line in lines) == 1  # once for its kind
    assert sum("a signal refused (500): could not store the signal" in line for line in lines) == 2  # once a run
    assert sum(line.startswith("demand-response signal stored") for line in lines) == 3, lines  # not the same one
    assert any(line.startswith("demand-response signal stored: 400 W until 2099-01-01T00:00:00+00:00, replacing 300 W "
                               "until 2099-01-01T00:00:00+00:00; 400 W is below the fleet's idle draw, 760 W")
               for line in lines), lines


def test_the_signal_endpoint_takes_signals_at_slash_signal_only(tmp_path: Path) -> None:
    """A signal POSTed to any other path (a typo, a scanner) is a 404 and stores nothing; a query string is fine."""
    from controller.budget.endpoint import serve_signals

    port, path = free_port(), tmp_path / "signal.json"
    server = serve_signals(str(path), port, TOKEN)
    deadline = (datetime.now(UTC) + timedelta(minutes=20)).isoformat()
    body = json.dumps({"budget_w": 2400, "deadline": deadline}).encode()
    try:
        for where in ("/", "/signals", "/signal/x", "/metrics"):
            with pytest.raises(urllib.error.HTTPError) as caught:
                urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{port}{where}", data=body,
                                                              headers=AUTH), timeout=5)
            assert caught.value.code == 404 and b"POST a signal to /signal" in caught.value.read()
        assert not path.exists()
        with urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{port}/signal?from=bms", data=body,
                                                           headers=AUTH),
                                    timeout=5) as answer:
            assert answer.status == 200 and path.exists()
    finally:
        server.shutdown()
        server.server_close()


def test_clients_that_hang_up_before_their_answer_are_counted_and_logged_once(
        tmp_path: Path, capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture) -> None:
    """Content-Length 100 and a hang-up (closed, or reset): the endpoint printed a BrokenPipeError traceback
    into the daemon's log each time; now each is counted, the first logged, and the next client is answered."""
    import struct

    from controller.budget.endpoint import serve_signals

    port, drops = free_port(), []
    server = serve_signals(str(tmp_path / "signal.json"), port, TOKEN, lambda: drops.append(1))
    head = b"POST /signal HTTP/1.1\r\nHost: x\r\n" + AUTH_LINE + b"Content-Length: 100\r\n\r\n{\"budget_w\": 1"
    try:
        with caplog.at_level("WARNING", logger="controller.budget.endpoint"):
            for reset in (False, True):
                conn = socket.create_connection(("127.0.0.1", port), timeout=5)
                conn.sendall(head)
                if reset:  # an RST, not a FIN: the server's read or write meets ConnectionResetError
                    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                conn.close()
            deadline = time.monotonic() + 5.0
            while len(drops) < 2 and time.monotonic() < deadline:
                time.sleep(0.02)
        for get in (b"", b"Content-Length: 5\r\n", b"Transfer-Encoding: chunked\r\nContent-Length: abc\r\n"):
            # the server goes on; a GET's body is no hang-up, nor read (a chunked one's length had raised)
            with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
                conn.sendall(b"GET /signal HTTP/1.1\r\nHost: x\r\n" + AUTH_LINE + get + b"\r\n")
                assert b"".join(iter(lambda: conn.recv(4096), b"")).startswith(b"HTTP/1.0 405")
    finally:
        server.shutdown()
        server.server_close()
    assert len(drops) == 2
    assert [r.getMessage()[:34] for r in caplog.records] == ["demand-response endpoint: a client"]
    assert "Traceback" not in capfd.readouterr().err


def test_a_top_level_budget_table_is_refused(sim_config: Callable[..., Path]) -> None:
    path = sim_config()
    path.write_text(path.read_text() + "\n[budget]\nsafe_budget_w = 1000\n")
    with pytest.raises(ConfigError, match=r"^budget: unknown key: budget sources go in \[power\.budget\]"):
        load_settings(path)


def test_a_client_dripping_its_request_is_cut_and_holds_up_no_signal(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Each read had a 10 s timeout, so a client sending a byte every few seconds held its connection and its
    thread for as long as it liked, and any number of them. Now a connection is cut REQUEST_S after accept (at
    most MAX_CLIENTS at once), counted as a client gone, and a signal gets through meanwhile."""

    from controller.budget.endpoint import serve_signals

    port, path, drops = free_port(), tmp_path / "signal.json", []
    server = serve_signals(str(path), port, TOKEN, lambda: drops.append(1))
    monkeypatch.setattr(server, "request_s", 1.0)
    deadline = (datetime.now(UTC) + timedelta(minutes=20)).isoformat()
    try:
        slow = socket.create_connection(("127.0.0.1", port), timeout=5)
        slow.sendall(b"POST /signal HTTP/1.1\r\nHost: x\r\n" + AUTH_LINE)
        t0 = time.monotonic()
        while time.monotonic() - t0 < 0.6:
            slow.sendall(b"X")
            time.sleep(0.2)
        body = json.dumps({"budget_w": 2400, "deadline": deadline}).encode()
        with urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{port}/signal", data=body, headers=AUTH),
                                    timeout=5) as answer:
            assert answer.status == 200 and path.exists()
        assert slow.recv(4096) == b"" and time.monotonic() - t0 < 3.0  # cut, unanswered
        slow.close()
        until(lambda: drops, 5.0, "the dropped client counted")
    finally:
        server.shutdown()
        server.server_close()



def test_a_connection_refused_for_want_of_a_slot_is_counted(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Sixteen connections that sent nothing held every slot for 10 s, again each time they were opened, and the valid
    signals refused meanwhile were neither counted nor logged. Now each refusal is counted, and a connection is cut
    REQUEST_CUT_S (2 s) after accept, so a signal gets through within it."""
    from controller.budget.endpoint import REQUEST_CUT_S, serve_signals

    port, path, drops = free_port(), tmp_path / "signal.json", []
    server = serve_signals(str(path), port, TOKEN, lambda: drops.append(1))
    assert server.request_s == REQUEST_CUT_S == 2.0  # the cut the slow-client test above sees act
    monkeypatch.setattr(server, "per_address", 0)  # every slot held: as by sixteen idle clients
    body = json.dumps({"budget_w": 2400, "deadline": (datetime.now(UTC) + timedelta(minutes=20)).isoformat()})
    try:
        with pytest.raises((urllib.error.URLError, ConnectionError, http.client.HTTPException)):
            urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{port}/signal", data=body.encode(),
                                                          headers=AUTH),
                                   timeout=5)
        assert drops == [1] and not path.exists()
    finally:
        server.shutdown()
        server.server_close()


def test_each_endpoint_needs_a_port_of_its_own(sim_config: Callable[..., Path], tmp_path: Path) -> None:
    """check-config probed each port alone and said ok; `run` then failed binding the second."""
    path = with_budget(sim_config, tmp_path / "signal.json")
    text = path.read_text().replace('path = "', 'port = 19501\npath = "')
    second = '[[power.budget.sources]]\nkind = "demand_response"\nname = "utility"\nport = 19501\npath = "x.json"\n'
    path.write_text(text + second)
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    reason = "19501 is also power.budget.sources[1].port's: each listener needs its own port"
    assert (caught.value.where, caught.value.reason) == ("power.budget.sources[2].port", reason)
    path.write_text(text.replace("port = 0", "port = 19501"))  # the metrics endpoint's
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    assert caught.value.where == "power.budget.sources[1].port" and "is also metrics.port's" in caught.value.reason


@pytest.mark.parametrize(("signal", "message"), [
    ("wattscale.toml", "wattscale.toml is the config file: the endpoint would write its signals over it; name a "
                       "file of its own"),
    ("state/tuner.json", "tuner.json is the tuner's state (daemon.state_dir): the endpoint would write"),
    # one POST replaced the SLO margins, or the lock a second daemon then took; a log's rotation was read as its own
    ("state/slo_margins.json", "slo_margins.json is the SLO margins (daemon.state_dir): the endpoint would write"),
    ("state/daemon.lock", "daemon.lock is the daemon's lock (daemon.state_dir): the endpoint would write"),
    ("state/decisions.jsonl.1", "decisions.jsonl.1 is daemon.decision_log (a rotation of it): the endpoint would"),
    ("nowhere/signal.json", "nowhere is no directory: the endpoint could store no signal there"),
    ("state", "state is a directory: the endpoint stores its signals in a file; name one"),  # was a warning
    # a POST replaced the FIFO with its file (and, as root, would have replaced /dev/null)
    ("signal.fifo", "signal.fifo is a FIFO: the endpoint replaces its file with each signal; name a regular file"),
])
def test_an_endpoints_signal_file_is_a_file_of_its_own(sim_config: Callable[..., Path], tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str], signal: str,
                                                       message: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """check-config said ok of an endpoint whose signal file was the config itself (one POST wrote over it, and the
    next start read invalid TOML), the tuner's state, or a file in no folder (every POST refused, 500, unsaid). A
    file that holds no signal yet (made empty beforehand) is a warning, as it was: the endpoint writes over it."""
    monkeypatch.setenv("WATTSCALE_SIGNAL_TOKEN", TOKEN)
    (tmp_path / "state").mkdir()
    if signal.endswith(".fifo"):
        os.mkfifo(tmp_path / signal)
    path = with_budget(sim_config, tmp_path / signal)
    path.write_text(path.read_text().replace('path = "', f'port = {free_port()}\npath = "'))
    assert main(["check-config", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("wattscale: power.budget.sources[grid].path: ") and message in err and err.count("\n") == 1
    if signal.endswith(".fifo"):  # the file alone: this host is not probed
        assert main(["check-config", "--file-only", str(path)]) == 0

    if signal == "nowhere/signal.json":  # an empty file made beforehand: warned of, not refused
        (tmp_path / "empty.json").write_text("")
        path.write_text(path.read_text().replace(str(tmp_path / signal), str(tmp_path / "empty.json")))
        assert main(["check-config", str(path)]) == 0
        assert "power.budget.sources[grid].path: demand response" in capsys.readouterr().err


@pytest.mark.parametrize(("signal", "message"), [
    # ENAMETOOLONG ended check-config with exit 1 and a 10-kB line naming no field
    ("a" * 10240, "holds a name of 10240 bytes, past the 255 a file system takes"),
    ("state", "is daemon.state_dir, or a folder it is in: the endpoint would write"),  # not made yet
    ("var", "is daemon.state_dir, or a folder it is in: the endpoint would write"),  # a folder the daemon makes too
    ("loop/signal.json", "cannot be resolved: Symlink loop" if sys.version_info < (3, 13) else "is no directory"),
])
def test_an_endpoints_signal_file_the_host_cannot_take_is_refused_by_name(
        sim_config: Callable[..., Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], signal: str, message: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Found by a fuzzed config (a trial): a name past what a file system takes, and the state folder itself before
    the daemon has made it, or a folder on the way to it (check-config said ok; `run` then read its signals from a
    folder), pass neither check."""
    monkeypatch.setenv("WATTSCALE_SIGNAL_TOKEN", TOKEN)
    path = with_budget(sim_config, tmp_path / signal)
    if signal.startswith("loop/"):
        (tmp_path / "loop").symlink_to(tmp_path / "loop")
    if signal == "var":  # the state folder in a folder not made yet
        path.write_text(path.read_text().replace(f'state_dir = "{tmp_path / "state"}"',
                                                 f'state_dir = "{tmp_path / "var" / "state"}"'))
    path.write_text(path.read_text().replace('path = "', f'port = {free_port()}\npath = "'))
    # Python 3.13's resolve no longer raises on a link loop: there the folder is what the host check refuses
    for only in ([], ["--file-only"]) if not signal.startswith("loop/") or sys.version_info < (3, 13) else ([],):
        assert main(["check-config", str(path), *only]) == 2
        err = capsys.readouterr().err
        assert err.startswith("wattscale: power.budget.sources[grid].path: ") and message in err, err[:300]
        assert err.count("\n") == 1 and len(err) < 500


def test_a_budget_source_without_a_kind_is_said_to_lack_it(sim_config: Callable[..., Path], tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    """It read "unknown source None"."""
    path = with_budget(sim_config, tmp_path / "signal.json")
    path.write_text(path.read_text().replace('kind = "demand_response"\n', "", 1))
    assert main(["check-config", str(path), "--file-only"]) == 2
    assert "power.budget.sources[1].kind: required key is missing (one of [" in capsys.readouterr().err


def test_an_endpoint_may_not_store_into_another_sources_file_and_file_only_checks_it(
        sim_config: Callable[..., Path], tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Two endpoints on one file wrote over each other's signals; `check-config --file-only` had said ok of an endpoint
    into the tuner's state."""
    monkeypatch.setenv("WATTSCALE_SIGNAL_TOKEN", TOKEN)
    (tmp_path / "state").mkdir()
    path = with_budget(sim_config, tmp_path / "signal.json")
    text = path.read_text().replace('path = "', f'port = {free_port()}\npath = "')
    second = (f'[[power.budget.sources]]\nkind = "demand_response"\nname = "utility"\nport = {free_port()}\n'
              f'path = "{tmp_path / "signal.json"}"\n')
    path.write_text(text + second)
    assert main(["check-config", str(path)]) == 2
    assert "power.budget.sources[grid].path: " in (err := capsys.readouterr().err)
    assert "is power.budget.sources[utility]'s file: the endpoint would write its signals over it" in err
    path.write_text(text.replace(str(tmp_path / "signal.json"), str(tmp_path / "state" / "tuner.json")))
    assert main(["check-config", str(path), "--file-only"]) == 2
    assert "tuner.json is the tuner's state (daemon.state_dir)" in capsys.readouterr().err


@pytest.mark.parametrize("link", ["state_link", "tuner_link"])
def test_an_endpoint_through_a_link_is_judged_by_the_file_it_would_replace(
        sim_config: Callable[..., Path], tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch, link: str) -> None:
    """Judged by its resolved path, a signal into the folder a linked tuner state points to passed check-config, and one
    POST replaced the state the daemon reads through the link; a link to a daemon's file, replaced itself, is no
    daemon's file."""
    monkeypatch.setenv("WATTSCALE_SIGNAL_TOKEN", TOKEN)
    (tmp_path / "state").mkdir()
    real = tmp_path / "real"
    real.mkdir()
    (real / "tuner.json").write_text("{}")
    if link == "state_link":  # the daemon's tuner state is a link into another folder: its target is the daemon's
        (tmp_path / "state" / "tuner.json").symlink_to(real / "tuner.json")
        signal, refused = real / "tuner.json", True
    else:  # the signal file is a link to the tuner state: a POST replaces the link, never the state
        (tmp_path / "state" / "tuner.json").write_text("{}")
        (real / "signal.json").symlink_to(tmp_path / "state" / "tuner.json")
        signal, refused = real / "signal.json", False
    path = with_budget(sim_config, signal)
    path.write_text(path.read_text().replace('path = "', f'port = {free_port()}\npath = "'))
    assert main(["check-config", str(path), "--file-only"]) == (2 if refused else 0)
    assert ("is the tuner's state (daemon.state_dir)" in capsys.readouterr().err) is refused


def test_a_budget_source_that_raises_every_tick_is_counted_each_time_and_logged_once(
        sim_config: Callable[..., Path], tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The budget thread steps the sources every fast tick: a source's bug had logged its traceback every second."""
    path = with_budget(sim_config, tmp_path / "signal.json")
    daemon = Daemon(path, load_settings(path))
    assert daemon.budget is not None

    def broken(now: float) -> None:
        raise KeyError("key")

    daemon.budget.step = broken  # type: ignore[method-assign,assignment]
    with caplog.at_level(logging.ERROR):
        for _ in range(5):
            daemon.step_budget()
    assert daemon.registry.get_sample_value("wattscale_errors_total", {"kind": "budget_source"}) == 5.0
    assert len([r for r in caplog.records if "budget sources failed" in r.getMessage()]) == 1
