"""Demand response: a signal that lowers the budget to `budget_w` until its deadline.

The signal is a small JSON file, `{"budget_w": 1500, "deadline": "2026-12-01T17:00:00Z", "reason": "..."}`,
that the daemon re-reads when it changes. It arrives either written by an operator's tool or through
`accept_signal`, the handler of a loopback-only HTTP endpoint that validates a posted signal and stores it
in that file, so that one path carries both. A broken file is an error (the combiner then holds its last
value for its TTL and falls back to the safe budget); no file or a past deadline sets no limit.
"""

from __future__ import annotations

import datetime as dt
import errno
import ipaddress
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from controller.budget.api_http import MalformedAnswer, number, parse_time_s
from controller.budget.base import BudgetReading, TransientBudgetError, utc_iso
from tuner.own_files import atomic_write_text, open_plain

MAX_SIGNAL_BYTES = 4096
MIN_SIGNAL_W = 1.0
"""The lowest budget a signal may set (1: every GPU at its floor); below a watt no site runs."""
MAX_REASON_CHARS = 200
"""Longest reason a signal may carry (the decision log quotes it)."""
KEYS = {"budget_w", "deadline", "reason"}


@dataclass(frozen=True)
class DemandSignal:
    budget_w: float
    deadline_s: float
    """Unix time the signal ends."""
    reason: str


def loads(text: bytes) -> Any:
    """JSON with each key once: a signal that names its budget twice says two things (ValueError)."""

    def once(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise ValueError(f"{key!r} given twice")
            seen.add(key)
        return dict(pairs)

    return json.loads(text, object_pairs_hook=once)


def parse_signal(doc: Any, what: str) -> DemandSignal:
    """A signal from its JSON document; a missing or unknown key, a budget <= 0 or a deadline without an
    offset raises MalformedAnswer."""
    if not isinstance(doc, dict):
        raise MalformedAnswer(f"{what}: not a JSON object")
    unknown = sorted(set(doc) - KEYS)
    if unknown:
        raise MalformedAnswer(f"{what}: unknown key {unknown[0]!r} (expected {sorted(KEYS)})")
    budget_w = number(doc.get("budget_w"), f"{what}: budget_w")
    if budget_w < MIN_SIGNAL_W:  # below a watt no site runs: 1e-300 was taken, and logged as "0 W"
        raise MalformedAnswer(f"{what}: budget_w must be at least 1 W (1: every GPU at its floor), got {budget_w:g}")
    reason = doc.get("reason", "")
    if not isinstance(reason, str) or len(reason) > MAX_REASON_CHARS or not reason.isprintable():
        raise MalformedAnswer(f"{what}: reason must be a printable string of at most {MAX_REASON_CHARS} characters "
                              "(it is logged)")
    deadline_s = parse_time_s(doc.get("deadline"), f"{what}: deadline")  # within 1970-9998: written back as UTC
    return DemandSignal(budget_w, deadline_s, reason)


class DemandResponseSource:
    def __init__(self, path: str, retry_s: float = 5.0) -> None:
        self.path, self.retry_s = path, retry_s
        self.seen: tuple[int, int, int] | None = None
        self.signal: DemandSignal | None = None

    def step(self, now: float) -> BudgetReading | None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            self.seen, self.signal = None, None
            return None
        except OSError as exc:
            raise TransientBudgetError(f"demand response {self.path}: {exc}", self.retry_s) from exc
        if (st.st_mtime_ns, st.st_size, st.st_ino) != self.seen:
            self.signal = None
            what = f"demand response {self.path}"
            try:
                self.signal = read_signal(self.path, what)
            except (OSError, ValueError, RecursionError) as exc:  # RecursionError: JSON nested thousands deep
                raise MalformedAnswer(f"{what}: unreadable: {str(exc)[:200]}", self.retry_s) from None
            except MalformedAnswer as exc:
                raise MalformedAnswer(str(exc), self.retry_s) from exc
            self.seen = (st.st_mtime_ns, st.st_size, st.st_ino)
        s = self.signal
        if s is None or now >= s.deadline_s:
            return None
        why = f"demand response {s.budget_w:.0f} W until {utc_iso(s.deadline_s)}" + (  # "N s more" went stale held
            f" ({s.reason})" if s.reason else "")
        return BudgetReading(s.budget_w, why, s.deadline_s)


def read_signal(path: str, what: str) -> DemandSignal:
    """The signal a file holds (raises OSError, ValueError, RecursionError or MalformedAnswer where it holds none)."""
    with open_plain(path, "rb") as f:
        return parse_signal(loads(f.read(MAX_SIGNAL_BYTES + 1)), what)


def store_signal(path: str, signal: DemandSignal) -> None:
    """Write the signal whole (a temporary file renamed over the old one), so a reader never sees half."""
    deadline = dt.datetime.fromtimestamp(signal.deadline_s, dt.UTC).isoformat()
    if not Path(path).parent.is_dir():  # a signal file where the source was not told to look is no signal
        raise FileNotFoundError(errno.ENOENT, "no such directory", str(Path(path).parent))
    atomic_write_text(Path(path), json.dumps({"budget_w": signal.budget_w, "deadline": deadline,
                                              "reason": signal.reason}))


def is_loopback(host: str) -> bool:
    """Whether `host` is a loopback address, an IPv4 one mapped into IPv6 (::ffff:127.0.0.1) included."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


def accept_signal(client_host: str, method: str, body: bytes, now: float, path: str,
                  idle_w: float = 0.0) -> tuple[int, dict[str, Any]]:
    """Handle one request to the signal endpoint: (HTTP status, JSON reply). Only POSTs from a loopback
    address are taken; a signal whose deadline has passed is refused. The reply says which signal in force the
    stored one replaces (one file holds one signal), and warns of a budget under the fleet's idle draw `idle_w`
    (taken, as the utility asks it, but no cap can meet it)."""
    if not is_loopback(client_host):
        return 403, {"error": "signals are taken from loopback only"}
    if method != "POST":
        return 405, {"error": "POST a signal"}
    if len(body) > MAX_SIGNAL_BYTES:
        return 413, {"error": f"a signal is at most {MAX_SIGNAL_BYTES} bytes"}
    try:
        signal = parse_signal(loads(body), "signal")
    except (ValueError, RecursionError) as exc:
        return 400, {"error": f"not JSON: {str(exc)[:200]}"}
    except MalformedAnswer as exc:
        return 400, {"error": str(exc)}
    if signal.deadline_s <= now:
        return 400, {"error": "deadline has passed"}
    before = _in_force(path, now)
    try:
        store_signal(path, signal)
    except OSError as exc:
        return 500, {"error": f"could not store the signal: {exc.strerror}"}
    reply: dict[str, Any] = {"budget_w": signal.budget_w, "deadline_s": signal.deadline_s}
    if before is not None:
        reply["replaced"] = {"budget_w": before.budget_w, "deadline_s": before.deadline_s}
    if signal.budget_w < idle_w:
        reply["warning"] = (f"{signal.budget_w:g} W is below the fleet's idle draw, {idle_w:g} W: every GPU is held "
                            "at its floor until the deadline, and the site still draws more")
    return 200, reply


def _in_force(path: str, now: float) -> DemandSignal | None:
    """The signal the file holds, where its deadline is still ahead (none where there is no such file, or one
    that does not parse: a new signal replaces it all the same)."""
    try:
        signal = read_signal(path, "signal file")
    except (OSError, ValueError, RecursionError, MalformedAnswer):
        return None
    return signal if signal.deadline_s > now else None
