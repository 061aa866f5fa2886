"""Demand response: a signal file lowers the budget until its deadline; the loopback endpoint's handler
validates a posted signal and stores it where the source reads it."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from controller.budget.api_http import MalformedAnswer, parse_time_s
from controller.budget.demand_response import DemandResponseSource, accept_signal

T0 = parse_time_s("2026-12-01T15:00:00Z", "test")
SIGNAL = {"budget_w": 1500, "deadline": "2026-12-01T15:30:00Z", "reason": "grid event 42"}


def test_a_signal_lowers_the_budget_until_its_deadline(tmp_path: Path) -> None:
    path = tmp_path / "signal.json"
    source = DemandResponseSource(str(path))
    assert source.step(T0) is None  # no file: no limit
    path.write_text(json.dumps(SIGNAL))
    reading = source.step(T0 + 60.0)
    assert reading is not None and reading.budget_w == 1500.0
    assert reading.valid_until_s == T0 + 1800.0 and "grid event 42" in reading.why
    # the deadline itself, not "for 1740 s more": held while the file is broken, that went stale in status
    assert reading.why == "demand response 1500 W until 2026-12-01T15:30:00+00:00 (grid event 42)"
    assert source.step(T0 + 1800.0) is None  # the deadline passed
    path.unlink()
    assert source.step(T0 + 60.0) is None


@pytest.mark.parametrize(("doc", "message"), [
    ("{not json", "unreadable"),
    (json.dumps({**SIGNAL, "budget_w": 0}), "budget_w must be at least 1 W"),
    (json.dumps({**SIGNAL, "budget_w": 1e-300}), "budget_w must be at least 1 W .*got 1e-300"),
    (json.dumps({**SIGNAL, "deadline": "2026-12-01T15:30:00"}), "no offset"),
    (json.dumps({**SIGNAL, "until": "x"}), "unknown key 'until'"),
    (json.dumps({"deadline": SIGNAL["deadline"]}), "budget_w"),
    (json.dumps([SIGNAL]), "not a JSON object"),
    ('{"budget_w": 1' + "0" * 400 + ', "deadline": "2030-01-01T00:00:00Z"}',
     "budget_w: an integer out of a float's range"),
    ("[" * 3000, "unreadable"),
])
def test_a_broken_signal_file_is_an_error_until_it_is_fixed(tmp_path: Path, doc: str, message: str) -> None:
    path = tmp_path / "signal.json"
    path.write_text(doc)
    source = DemandResponseSource(str(path), retry_s=5.0)
    with pytest.raises(MalformedAnswer, match=message) as caught:
        source.step(T0)
    assert caught.value.retry_after_s == 5.0
    path.write_text(json.dumps(SIGNAL))
    fixed = source.step(T0)
    assert fixed is not None and fixed.budget_w == 1500.0


def test_the_handler_stores_a_valid_signal_from_loopback_only(tmp_path: Path) -> None:
    path = tmp_path / "signal.json"
    body = json.dumps(SIGNAL).encode()
    assert accept_signal("10.0.0.5", "POST", body, T0, str(path))[0] == 403
    assert accept_signal("not-an-address", "POST", body, T0, str(path))[0] == 403
    assert accept_signal("::ffff:10.0.0.5", "POST", body, T0, str(path))[0] == 403
    assert accept_signal("127.0.0.1", "GET", body, T0, str(path))[0] == 405
    assert accept_signal("::1", "POST", b"x" * 5000, T0, str(path))[0] == 413
    assert accept_signal("::1", "POST", b"{oops", T0, str(path))[0] == 400
    status, reply = accept_signal("127.0.0.1", "POST", json.dumps({**SIGNAL, "budget_w": -1}).encode(), T0, str(path))
    assert status == 400 and "budget_w" in reply["error"]
    assert accept_signal("127.0.0.1", "POST", body, T0 + 1800.0, str(path)) == (400, {"error": "deadline has passed"})
    assert not path.exists()
    assert accept_signal("::1", "POST", body, T0, str(path)) == (200, {"budget_w": 1500.0, "deadline_s": T0 + 1800.0})
    reading = DemandResponseSource(str(path)).step(T0)
    assert reading is not None and reading.budget_w == 1500.0 and reading.valid_until_s == T0 + 1800.0
    assert accept_signal("::ffff:127.0.0.1", "POST", body, T0, str(path))[0] == 200
    assert sorted(p.name for p in tmp_path.iterdir()) == ["signal.json"]  # no temporary file left behind
    status, reply = accept_signal("127.0.0.1", "POST", body, T0, str(tmp_path / "gone" / "signal.json"))
    assert status == 500 and "could not store" in reply["error"]


def test_a_signal_says_what_it_replaces_and_warns_of_a_budget_under_the_idle_draw(tmp_path: Path) -> None:
    """One file holds one signal: a short event posted during a long one had erased it without a word, and a
    budget below the fleet's idle draw was taken with a plain 200."""
    path = str(tmp_path / "signal.json")
    assert "replaced" not in accept_signal("::1", "POST", json.dumps(SIGNAL).encode(), T0, path)[1]
    short = {**SIGNAL, "budget_w": 300, "deadline": "2026-12-01T15:10:00Z"}
    status, reply = accept_signal("::1", "POST", json.dumps(short).encode(), T0, path, idle_w=760.0)
    assert status == 200 and reply["replaced"] == {"budget_w": 1500.0, "deadline_s": T0 + 1800.0}
    assert reply["warning"] == ("300 W is below the fleet's idle draw, 760 W: every GPU is held at its floor until "
                                "the deadline, and the site still draws more")
    later = accept_signal("::1", "POST", json.dumps(SIGNAL).encode(), T0 + 900.0, path)[1]  # the short one ended
    assert "replaced" not in later and "warning" not in later


@pytest.fixture
def endpoint(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A loopback HTTP server whose POSTs go to accept_signal at time T0; it stops itself after 10 s."""
    path = tmp_path / "signal.json"

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            status, reply = accept_signal(self.client_address[0], "POST", body, T0, str(path))
            data = json.dumps(reply).encode()
            self.send_response(status)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
    timer = threading.Timer(10.0, server.shutdown)
    timer.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/signal", path
    timer.cancel()
    server.shutdown()
    server.server_close()


def test_a_signal_posted_over_loopback_reaches_the_source(endpoint: tuple[str, Path]) -> None:
    url, path = endpoint
    source = DemandResponseSource(str(path))
    with urllib.request.urlopen(urllib.request.Request(url, data=json.dumps(SIGNAL).encode()), timeout=2) as r:
        assert json.loads(r.read())["budget_w"] == 1500.0
    reading = source.step(T0 + 1.0)
    assert reading is not None and reading.budget_w == 1500.0
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(urllib.request.Request(url, data=b'{"budget_w": 1}'), timeout=2)
    assert caught.value.code == 400


@pytest.mark.parametrize(("doc", "words"), [
    ('{"budget_w": 1' + "0" * 400 + ', "deadline": "2030-01-01T00:00:00Z"}', "out of a float's range"),
    (json.dumps({**SIGNAL, "deadline": "9999-12-31T23:59:59-14:00"}), "is outside 1970-9998 UTC"),
    (json.dumps({**SIGNAL, "reason": "peak\nWARNING fake line"}), "printable"),
    ("[" * 3000, "not JSON"),
    ('{"budget_w": 1500, "budget_w": 150000, "deadline": "2030-01-01T00:00:00Z"}', "'budget_w' given twice"),
])
def test_a_hostile_post_gets_a_400_not_a_dropped_connection(tmp_path: Path, doc: str, words: str) -> None:
    """Each of these was a traceback in the handler's thread (OverflowError, year 10000, RecursionError) and a
    connection closed without an answer, or (a newline) a log line forged."""
    status, reply = accept_signal("127.0.0.1", "POST", doc.encode(), T0, str(tmp_path / "signal.json"))
    assert status == 400 and words in reply["error"], reply
    assert not (tmp_path / "signal.json").exists()
