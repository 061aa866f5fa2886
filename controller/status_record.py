"""The fields `status` reads of a decision record, checked before it reads them: one of another type (a hand edit,
another version's record, a foreign file) is named by its path and value, where Python's own words ("'<=' not
supported between instances of 'int' and 'str'") had reached the user.

Each check raises ValueError("<path> <value>") or ("<path> has no field '<name>'"); fields status does not read are
not checked (a newer daemon may add some)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

Check = Callable[[Any, str], None]


def _bad(value: Any, path: str) -> ValueError:
    return ValueError(f"{path or 'the record'} {value!r:.40}")


def _at(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def number(value: Any, path: str) -> None:
    """A finite number (no bool: JSON's true is no figure)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise _bad(value, path)


def amount(value: Any, path: str) -> None:
    """A finite number >= 0 (replicas, a batch, watts)."""
    number(value, path)
    if value < 0:
        raise _bad(value, path)


def share(value: Any, path: str) -> None:
    """A share of the time: a finite number in [0, 1]."""
    number(value, path)
    if not 0 <= value <= 1:
        raise _bad(value, path)


MOST_COUNT = 1 << 31
"""Largest count a record holds (replicas, a batch, GPUs): 10^30 replicas were printed whole."""


def whole(value: Any, path: str) -> None:
    """A count: replicas, a batch (no bool, no 2.7, none past MOST_COUNT)."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MOST_COUNT:
        raise _bad(value, path)


def latency(value: Any, path: str) -> None:
    """A window's latency: >= 0, or NaN where none was measured (as an older daemon wrote it)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise _bad(value, path)


def pid(value: Any, path: str) -> None:
    """A process id: 0 and -1 would signal a process group, not a process; Linux's are below 2^22."""
    whole(value, path)
    if not 0 < value < 1 << 22:
        raise _bad(value, path)


def text(value: Any, path: str) -> None:
    if not isinstance(value, str):
        raise _bad(value, path)


def items(value: Any, path: str) -> None:
    """A list of strings, or a lone string (one item): a number among them reached `startswith`."""
    if not isinstance(value, list | str) or (isinstance(value, list) and not all(isinstance(v, str) for v in value)):
        raise _bad(value, path)


def watts(value: Any, path: str) -> None:
    """A power figure: >= 0 and at most a megawatt (1e308 W printed 309 digits)."""
    amount(value, path)
    if value > 1e6:
        raise _bad(value, path)


def optional(check: Check) -> Check:
    def run(value: Any, path: str) -> None:
        if value is not None:
            check(value, path)
    return run


def table(fields: dict[str, Check], required: tuple[str, ...] = ()) -> Check:
    """An object whose named fields, where present (or `required`), pass their checks."""
    def run(value: Any, path: str) -> None:
        if not isinstance(value, dict):
            raise _bad(value, path)
        for name in required:
            if name not in value:
                raise ValueError(f"{path or 'the record'} has no field {name!r}")
        for name, check in fields.items():
            if name in value:
                check(value[name], _at(path, name))
    return run


def each(check: Check) -> Check:
    """An object whose every value passes `check` (services by name)."""
    def run(value: Any, path: str) -> None:
        if not isinstance(value, dict):
            raise _bad(value, path)
        for name, v in value.items():
            check(v, _at(path, name))
    return run


SHAPE = optional(table({"accelerator": text, "replicas": whole, "max_batch": whole, "cap_w": watts,
                        "sm_clock_share": optional(share)}, ("accelerator", "replicas", "max_batch", "cap_w")))
LATENCIES = {name: optional(latency) for name in ("ttft_ms", "itl_ms", "ttft_p95_ms", "itl_p95_ms")}
SERVICE = table({
    "in_force": SHAPE, "applied": SHAPE, "planned": SHAPE,
    "gpus": optional(table({"draw_w": amount, "limit_w": amount, "capped_share": optional(share)},
                           ("draw_w", "limit_w"))),
    "observed": optional(table(LATENCIES)),
    "reason": optional(text), "short_rps": optional(amount),
    "gate_held": optional(items), "actuator_held": optional(items), "ceiling_w": optional(amount),
})
RECORD = table({
    "services": each(SERVICE), "wall_time": optional(number),
    "budget_w": amount, "predicted_w": optional(amount), "draw_w": optional(amount),
    "degradation": optional(table({"step": text, "gpus_held_below_plan": whole})),
    "budget": optional(table({"why": optional(text)})),
    "errors": optional(items), "blocked": optional(items), "config": optional(text), "pid": optional(pid),
    "held_untold": optional(items),
}, ("services", "budget_w"))


SHOWN_CHARS = 400
"""Characters of a record's string status shows (a 100-kB reason was printed whole)."""


def printable(value: Any) -> Any:
    """`value` (a report, or a part of one) with every string cut at SHOWN_CHARS, its length said, for the text
    (whose control characters are escaped as it is printed); the JSON keeps them whole, and the matching of names
    and paths reads them whole."""
    if isinstance(value, str):
        return value if len(value) <= SHOWN_CHARS else f"{value[:SHOWN_CHARS]}... ({len(value)} characters)"
    if isinstance(value, dict):
        return {printable(k): printable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [printable(v) for v in value]
    return value


def check_record(record: Any) -> None:
    """Refuse a record whose fields status reads are not what the daemon writes (ValueError naming the first)."""
    RECORD(record, "")
