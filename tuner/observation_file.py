"""Recorded observations for `wattscale tune`: the CSV file, each row checked and named by its file line.

CSV columns (a header row names them; order is free):
  rate_rps, in_tokens, out_tokens, max_batch, ttft_ms, itl_ms   required, one row per replica and cycle
  max_queue                                                     optional, default 1024 (0: a client that drops)
  power_cap_w, power_w                                          optional, empty = not capped / not sampled;
                                                                watts, power_w one GPU's mean draw
  waiting, preemptions                                          optional, default 0 (saturation gating)
  in_cv, out_cv                                                 optional, default 1 (token-length spread)
  steady                                                        optional, 1 or 0 (0: a restart in the window)
  served_rps, queue_growth                                      optional: completions per second, and waiting
                                                                at the window's end less at its start; with
                                                                them a window is judged steady from its data
  queue_ms                                                      optional: mean time from arrival to scheduling
                                                                (vllm:request_queue_time_seconds); with it the
                                                                law is fitted to TTFT less it
  tokens_per_step                                               optional, default 1: tokens a decoding request
                                                                gains per step (speculative decoding: 1 + the
                                                                drafts accepted), in [1, 64]
  draft_tokens                                                  optional, default 0 (not read): tokens drafted
                                                                a step for a decoding request (vLLM's
                                                                spec_decode_num_draft_tokens over the ITL
                                                                samples), in [0, 63]
rate_rps is the offered arrival rate per replica (requests per second), ttft_ms the mean time to first token
of the window's requests, itl_ms the mean gap between a request's consecutive outputs, one a step, as vLLM's
inter-token latency histogram records it (sum over count): per token where a step gives one, as without
speculative decoding.
A file with no usable row is refused, with why each row is not (`REASONS`).
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from queuemodels import DEFAULT_MAX_QUEUE
from tuner.observation import Observation
from tuner.own_files import open_plain

REQUIRED = ("rate_rps", "in_tokens", "out_tokens", "max_batch", "ttft_ms", "itl_ms")
OPTIONAL = ("max_queue", "power_cap_w", "power_w", "waiting", "preemptions", "in_cv", "out_cv", "steady", "served_rps",
            "queue_growth", "queue_ms", "tokens_per_step", "draft_tokens")


class ObservationFileError(ValueError):
    """A recorded-observation file that cannot be read; the message names the row and column."""


def plain(text: str) -> str:
    """`text`, where it is a number as a CSV or a command line writes one (ValueError else): Python reads "1_0" as 10
    and full-width digits as digits, which no writer means."""
    if "_" in text or not text.isascii():
        raise ValueError(text)
    return text


def _parse(text: str, col: str, where: str) -> float:
    try:
        value = float(plain(text))
    except ValueError:
        raise ObservationFileError(f"{where}: column {col!r} is not a number: {_shown(text)}") from None
    if math.isinf(value) and "inf" not in text.lower():  # 1e999, 400 digits: read as inf, a missing figure
        raise ObservationFileError(f"{where}: column {col!r} is past any number a float holds: "
                                   f"{_shown(text, quoted=False)}")
    return value


def _shown(text: str, quoted: bool = True) -> str:
    """A value as an error quotes it: at most 40 characters, and how long it was where it was cut (a quote left open
    made one value of the rest of a file, 88 KB in one line)."""
    cut = text[:40]
    return (repr(cut) if quoted else cut) + (f"... ({len(text)} characters)" if len(text) > 40 else "")


def _required(row: dict[str, str], col: str, where: str) -> float:
    text = (row.get(col) or "").strip()
    if not text:
        raise ObservationFileError(f"{where}: column {col!r} is empty")
    return _parse(text, col, where)


def _optional(row: dict[str, str], col: str, where: str) -> float | None:
    text = (row.get(col) or "").strip()
    return _parse(text, col, where) if text else None


def _default(row: dict[str, str], col: str, where: str, default: float) -> float:
    value = _optional(row, col, where)
    if value is not None and not 0 <= value < math.inf:
        raise ObservationFileError(f"{where}: column {col!r} must be a number >= 0, got {value}")
    return default if value is None else value


def _row(row: dict[str, str], where: str) -> Observation:
    v = {c: _required(row, c, where) for c in REQUIRED}
    if not (math.isfinite(v["max_batch"]) and v["max_batch"] >= 1 and v["max_batch"] == int(v["max_batch"])):
        raise ObservationFileError(f"{where}: column 'max_batch' must be a whole number >= 1, got {v['max_batch']}")
    max_queue = _optional(row, "max_queue", where)
    if max_queue is not None and not (math.isfinite(max_queue) and max_queue >= 0 and max_queue == int(max_queue)):
        raise ObservationFileError(f"{where}: column 'max_queue' must be a whole number >= 0, got {max_queue}")
    steady = _optional(row, "steady", where)
    if steady not in (None, 0.0, 1.0):
        raise ObservationFileError(f"{where}: column 'steady' must be 1 or 0, got {steady}")
    return Observation(
        rate_rps=v["rate_rps"], in_tokens=v["in_tokens"], out_tokens=v["out_tokens"], max_batch=int(v["max_batch"]),
        max_queue=DEFAULT_MAX_QUEUE if max_queue is None else int(max_queue), ttft_ms=v["ttft_ms"], itl_ms=v["itl_ms"],
        power_cap_w=_optional(row, "power_cap_w", where), power_w=_optional(row, "power_w", where),
        waiting=_optional(row, "waiting", where) or 0.0, preemptions=_optional(row, "preemptions", where) or 0.0,
        in_cv=_default(row, "in_cv", where, 1.0), out_cv=_default(row, "out_cv", where, 1.0),
        steady=steady != 0.0, served_rps=_optional(row, "served_rps", where),
        queue_growth=_optional(row, "queue_growth", where), queue_ms=_optional(row, "queue_ms", where),
        tokens_per_step=1.0 if (per_step := _optional(row, "tokens_per_step", where)) is None else per_step,
        draft_tokens=_default(row, "draft_tokens", where, 0.0),
    )


class ObservationRows(list[Observation]):
    """A file's observations with the file line of each (the header is line 1): every message about one row,
    the reader's, the bounds' and the tuner's rejections, names it the same way, `path:line`."""

    def __init__(self, path: Path, rows: list[tuple[int, Observation]]) -> None:
        super().__init__(obs for _, obs in rows)
        self.path = path
        self.lines = [line for line, _ in rows]

    def where(self, i: int) -> str:
        """`path:line` of the i-th observation (0-based)."""
        return f"{self.path}:{self.lines[i]}"


def _names(names: list[str], most: int = 8) -> str:
    """Column names for a message, cut: a file without newlines makes its whole text one header."""
    shown = [n if len(n) <= 40 else n[:40] + "..." for n in names[:most]]
    return f"{shown}" + (f" and {len(names) - most} more" if len(names) > most else "")


def _header_hint(fieldnames: list[str]) -> str:
    """What a header that names none of the columns most likely is: a comment line above it, or a file whose
    separator is not a comma (a spreadsheet's `;` or a tab)."""
    first = ",".join(fieldnames)
    if first.lstrip().startswith("#"):
        return f"; its first line is {_names([first], 1)}: the header must be the first line, with no comment above it"
    for sep, name in ((";", "semicolons"), ("\t", "tabs"), ("|", "bars")):
        if len(fieldnames) == 1 and sep in first:
            return f"; its header is one column, {_names([first], 1)}: separate the columns with commas, not {name}"
    return ""


def _check_header(path: Path, fieldnames: list[str]) -> None:
    twice = sorted({c for c in fieldnames if fieldnames.count(c) > 1})
    if twice:
        raise ObservationFileError(f"{path}: column {_names(twice)} named more than once in the header")
    if not fieldnames:
        raise ObservationFileError(f"{path}: is empty (a header of the columns {list(REQUIRED)} comes first)")
    missing = [c for c in REQUIRED if c not in fieldnames]
    if missing:
        raise ObservationFileError(f"{path}: missing columns {missing} (need {list(REQUIRED)})"
                                   + _header_hint(fieldnames))
    unknown = [c for c in fieldnames if c not in REQUIRED + OPTIONAL]
    if unknown:
        raise ObservationFileError(f"{path}: unknown columns {_names(unknown)}")


MAX_LINE_CHARS = 100_000
"""The most characters a line, or a record over several lines (a quoted value left open), may hold: a row of every
column reads in a few hundred, and a file of one 600-MB line held 3 GB before its row was refused."""


def _lines(f: IO[str], path: Path) -> Iterator[str]:
    """The file's lines, each read at most MAX_LINE_CHARS at a time; a line, or a record running over lines within
    an open quote, past MAX_LINE_CHARS is refused by its first line (the csv module holds a record whole)."""
    n = first = record = quotes = 0
    while line := f.readline(MAX_LINE_CHARS + 1):
        n += 1
        if quotes % 2 == 0:  # the lines before closed their quotes: a record starts here
            first, record, quotes = n, 0, 0
        record, quotes = record + len(line), quotes + line.count('"')
        if record > MAX_LINE_CHARS:
            raise ObservationFileError(
                f"{path}:{first}: a line of more than {MAX_LINE_CHARS} characters (a row of observations takes a few "
                "hundred)" if first == n else f"{path}:{first}: a quoted value runs on over {MAX_LINE_CHARS} "
                "characters (a quote left open?)")
        yield line


def read_observations(path: Path, max_rows: int | None = None) -> ObservationRows:
    """Parse the CSV (a UTF-8 byte-order mark, as Excel writes, is read past); NaN values are kept (the filter
    gates them), malformed ones are refused, each by its file line. A file of more than `max_rows` observations
    is refused as soon as its reader gets there, not after parsing all of it. Whether any row is usable is the
    caller's to ask (`require_usable`), once it has checked the values' bounds: those name a row's column."""
    done = 0
    """The file line the last record read ended on."""
    try:
        with open_plain(path, "r", encoding="utf-8-sig", newline="") as f:  # a FIFO or a device: refused
            reader = csv.reader(_lines(f, path))
            header = [name.strip() for name in next(reader, [])]  # "a, b" as a spreadsheet writes
            _check_header(path, header)
            done = reader.line_num
            rows: list[tuple[int, Observation]] = []
            for record in reader:
                first, done = done + 1, reader.line_num
                if not "".join(record).strip():  # a blank line, or one of empty cells as a spreadsheet writes
                    continue
                if done > first:  # only a quoted value spans lines: a quote left open took the lines after it
                    raise ObservationFileError(f"{path}:{first}: a quoted value runs on to line {done} (a quote "
                                               "left open?)")
                where = f"{path}:{done}"
                if len(record) != len(header):
                    raise ObservationFileError(f"{where}: {len(record)} values for {len(header)} columns")
                if max_rows is not None and len(rows) >= max_rows:
                    raise ObservationFileError(f"{path}: more than the {max_rows} observations tune reads (about "
                                               f"8 ms each; the next is line {done}); keep the recent ones")
                rows.append((done, _row(dict(zip(header, record, strict=True)), where)))
    except OSError as exc:
        raise ObservationFileError(f"{path}: cannot read ({exc.strerror})") from None
    except UnicodeDecodeError as exc:
        raise ObservationFileError(f"{path}: not a CSV text file ({str(exc)[:200]})") from None
    except csv.Error as exc:  # past the csv module's field limit: a quote left open ran on through the file
        raise ObservationFileError(f"{path}:{done + 1}: not CSV text from here ({str(exc)[:200]}; a quote left "
                                   "open?)") from None
    out = ObservationRows(path, rows)
    if not out:
        raise ObservationFileError(f"{path}: no observations")
    return out


def require_usable(out: ObservationRows) -> ObservationRows:
    """The rows, where one at least is usable; else one error counting why each is not."""
    problems = [o.problem() for o in out]
    if all(p is not None for p in problems):
        counts = ", ".join(f"{problems.count(p)} {p}" for p in sorted({str(p) for p in problems}))
        first = str(problems[0])
        raise ObservationFileError(f"{out.path}: no usable observation ({counts}; the first, {out.where(0)}: {first} "
                                   f"{REASONS.get(first, '')})")
    return out


REASONS = {
    "non-finite": "(a latency, rate or token count is missing or infinite: +Inf is a quantile past the last bucket)",
    "implausible": "(a figure past 1e9: no reading)",
    "no-traffic": "(no requests or zero latency)",
    "transient": "(a restart in the window)", "unsteady-rate": "(served far from offered: a ramp or a backlog)",
    "unsteady-queue": "(the queue grew through the window)",
    "saturated": "(a full batch queued, preemptions, or with no queue requests turned away)",
    "gate": "(far from the model's prediction: an outlier)", "model-error": "(the model cannot evaluate it)",
    "non-positive": "(the update would make a parameter <= 0)",
    "bad-shape": "(a locked clock or power cap no GPU runs at)",
}
"""What each rejection reason means, for the warning `tune` prints."""
