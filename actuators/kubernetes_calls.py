"""One Kubernetes API call of the official client with a deadline on its whole answer and a bound on its size.

The client's `_request_timeout` bounds each socket read, not the answer: a server (or a proxy) trickling a byte
every 2 s held the slow loop for good, and in a cluster the operator's governor, whose fast tick writes the node
plans. And the client parses whatever comes holding the interpreter's lock: a 24-MB Scale held the governor's
thread 4.7 s. Here the call runs in a thread of its own; at the deadline the answer's socket is shut, which ends a
body's read, and a caller whose last call is still waiting (its server trickling the status line) starts no other.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Callable
from typing import Any

from actuators.base import TransientActuatorError

MAX_ANSWER_BYTES = 2 << 20
"""Most bytes of an answer `within` reads by default: a Scale or a NodePowerPlan is a few KB, a Deployment at most
what etcd stores (1.5 MiB)."""
CHUNK = 1 << 16
SLOW = "API server unreachable or too slow (no whole answer in time)"
"""Said of a call past its deadline (no figure in it: the same failure reads the same while it repeats)."""
_waiting: dict[tuple[int, str], threading.Thread] = {}
"""A caller's call (its API object and method) still waiting past its deadline: no other starts until it ends."""
_lock = threading.Lock()


def within(timeout_s: float, call: Callable[..., Any], *args: Any, max_bytes: int = MAX_ANSWER_BYTES,
           **kwargs: Any) -> Any:
    """`call(*args, **kwargs)`, its answer read whole within `timeout_s` and `max_bytes` and returned as JSON (None
    for an empty body); past either, a transient error. Client exceptions come out as they are, for `translate`."""
    key = (id(getattr(call, "__self__", call)), getattr(call, "__name__", ""))
    with _lock:
        stuck = _waiting.get(key)
        if stuck is not None and stuck.is_alive():
            raise TransientActuatorError(SLOW, 10.0)
        _waiting.pop(key, None)
    deadline = time.monotonic() + timeout_s
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            answer = box["answer"] = call(*args, _request_timeout=timeout_s, _preload_content=False, **kwargs)
            whole = False
            try:
                chunks, size = [], 0
                while chunk := answer.read(CHUNK):
                    size += len(chunk)
                    if size > max_bytes or time.monotonic() > deadline:
                        box["cut"] = "long" if size > max_bytes else "late"
                        return
                    chunks.append(chunk)
                if time.monotonic() > deadline:  # ended by the caller's shut: cut short, not whole
                    box["cut"] = "late"
                    return
                whole = True
            finally:
                if not whole:  # the rest of a cut answer would be read as the next one's start
                    answer.close()
                answer.release_conn()
            body = b"".join(chunks)
            try:
                box["value"] = json.loads(body) if body.strip() else None
            except ValueError:
                box["error"] = TransientActuatorError("an answer that is not JSON", 10.0)
        except BaseException as exc:  # handed to the caller's thread
            box["error"] = exc

    worker = threading.Thread(target=run, name="kubernetes call", daemon=True)
    worker.start()
    worker.join(timeout_s)
    if worker.is_alive():
        answer = box.get("answer")
        if answer is not None:  # its body trickles: shut, the read ends (urllib3 2.3 has shutdown; before, close)
            with contextlib.suppress(RuntimeError, ValueError, OSError):  # released or closed meanwhile: nothing to end
                getattr(answer, "shutdown", answer.close)()
        worker.join(0.1)
        if worker.is_alive():  # its status line trickles: the caller waits for this call before another
            with _lock:
                _waiting[key] = worker
        raise TransientActuatorError(SLOW, 10.0)
    if box.get("cut") == "late":
        raise TransientActuatorError(SLOW, 10.0)
    if box.get("cut") == "long":
        raise TransientActuatorError(f"an answer past {max_bytes} bytes", 10.0)
    if "error" in box:
        raise box["error"]
    return box["value"]
