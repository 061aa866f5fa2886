"""Strategies and harness of the property-based suites: hostile edits of a valid TOML or JSON document, a
TOML writer for them, and the CLI run under a wall-clock bound with its output captured."""

from __future__ import annotations

import contextlib
import copy
import io
import json
import math
import signal
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hypothesis import strategies as st

from controller.cli import main

ROOT = Path(__file__).resolve().parents[1]
DocPath = tuple[str | int, ...]

SPECIAL_NUMBERS = [0, -1, 1, 4096, 4097, 10**9, 2**63, -(2**63), 0.0, -0.0, 1e-300, 1e300, math.nan, math.inf,
                   -math.inf, 0.5, 3.0, -0.5]
scalars = st.one_of(
    st.sampled_from(SPECIAL_NUMBERS),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.booleans(),
)
toml_values = st.one_of(
    scalars,
    st.lists(scalars, max_size=4),
    st.dictionaries(st.text(max_size=6), scalars, max_size=3),
)


def toml_literal(value: Any) -> str:
    """A TOML literal for a value of the strategies above (inline tables and arrays)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf") if math.isinf(value) else repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_literal(v) for v in value) + "]"
    return "{" + ", ".join(f"{json.dumps(str(k))} = {toml_literal(v)}" for k, v in value.items()) + "}"


def toml_text(doc: dict[str, Any]) -> str:
    return "".join(f"{json.dumps(k)} = {toml_literal(v)}\n" for k, v in doc.items())


def leaf_paths(doc: Any, prefix: DocPath = ()) -> Iterator[DocPath]:
    """Every path into a document: each table, list and value (the edits' targets)."""
    if prefix:
        yield prefix
    if isinstance(doc, dict):
        for k, v in doc.items():
            yield from leaf_paths(v, (*prefix, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            yield from leaf_paths(v, (*prefix, i))


@dataclass(frozen=True)
class Edit:
    path: DocPath
    kind: str  # "set", "delete", "scale" or "add"
    value: Any = None


def apply(doc: dict[str, Any], edits: list[Edit]) -> dict[str, Any]:
    out = copy.deepcopy(doc)
    for e in edits:
        parent: Any = out
        for key in e.path[:-1]:
            parent = parent[key]
        key = e.path[-1]
        current = parent[key]
        if e.kind == "delete":
            parent.pop(key)
        elif e.kind == "scale" and isinstance(current, int | float) and not isinstance(current, bool):
            parent[key] = current * e.value if isinstance(e.value, float) else current * int(e.value)
        elif e.kind == "add" and isinstance(current, dict):
            current[f"x{e.value}"] = e.value
        elif e.kind == "add" and isinstance(current, list):
            current.append(copy.deepcopy(current[0]) if current else e.value)
        else:
            parent[key] = e.value
    return out


def edits_of(doc: dict[str, Any], max_edits: int = 3) -> st.SearchStrategy[list[Edit]]:
    """A few edits of `doc`, applied in order; paths are drawn from the original document, so an edit whose
    path a previous one removed is skipped (see `apply_safely`)."""
    paths = list(leaf_paths(doc))
    edit = st.one_of(
        st.builds(Edit, st.sampled_from(paths), st.just("set"), toml_values),
        st.builds(Edit, st.sampled_from(paths), st.just("delete")),
        st.builds(Edit, st.sampled_from(paths), st.just("scale"),
                  st.sampled_from([0, -1, 2, 10, 1000, 10**6, 10**12, 0.5, 1e-6, 1e300])),
        st.builds(Edit, st.sampled_from(paths), st.just("add"), st.integers(0, 3)),
    )
    return st.lists(edit, min_size=1, max_size=max_edits)


def apply_safely(doc: dict[str, Any], edits: list[Edit]) -> dict[str, Any]:
    """`apply`, edit by edit, skipping an edit whose path an earlier edit removed or retyped."""
    out = doc
    for e in edits:
        with contextlib.suppress(KeyError, IndexError, TypeError, AttributeError):
            out = apply(out, [e])
    return out


def load(relative: str) -> dict[str, Any]:
    with (ROOT / relative).open("rb") as f:
        return tomllib.load(f)


class Overran(Exception):
    """The command ran past its wall-clock bound."""


@contextlib.contextmanager
def bounded(seconds: float) -> Iterator[None]:
    """Raise Overran in the main thread if the block runs longer than `seconds` (a hang fails, not blocks)."""

    def expire(*_: object) -> None:
        raise Overran(f"ran past {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def run_cli(argv: list[str], seconds: float) -> tuple[int, str, str]:
    """The CLI's exit code, stdout and stderr; a traceback propagates (and fails the property)."""
    out, err = io.StringIO(), io.StringIO()
    with bounded(seconds), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as exc:  # argparse
            code = int(exc.code or 0)
    return code, out.getvalue(), err.getvalue()


def assert_clean(code: int, out: str, err: str, allowed: tuple[int, ...] = (0, 2)) -> None:
    """Exit 0 (warnings only on stderr) or a refusal in one line; never a traceback."""
    assert code in allowed, (code, out, err)
    if code == 2:
        assert err.count("\n") == 1 and err.startswith("wattscale"), err
    elif code == 0:
        assert all(line.startswith("wattscale: warning: ") for line in err.splitlines()), err
