"""Grid carbon intensity from a CSV in Electricity Maps' export format (REFERENCE.md section 12).

Columns are matched by meaning, case-insensitively, since header spellings differ between export
versions: the datetime (UTC) column and the direct or life-cycle intensity column. Rows with an empty
intensity are left out. Every row after `now` serves as forecast: the file is a known curve (a scenario's
day, or a day-ahead table an operator drops in). The file is read again when it changes.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import os
from typing import Literal

from controller.budget.api_http import MalformedAnswer
from controller.budget.base import TransientBudgetError
from controller.budget.carbon import IntensityPoint

Basis = Literal["direct", "life_cycle"]


def column_index(header: list[str], basis: Basis) -> tuple[int, int]:
    """The positions of the datetime column and of the intensity column of `basis`."""
    names = [h.strip().lower() for h in header]
    when = [i for i, n in enumerate(names) if n.startswith("datetime")]
    wanted = ("(direct)",) if basis == "direct" else ("(life cycle)", "(lifecycle)", "(life-cycle)", "(lca)")
    value = [i for i, n in enumerate(names) if "carbon intensity" in n and n.endswith(wanted)]
    if not when or not value:
        missing = "datetime" if not when else f"carbon intensity ({basis.replace('_', ' ')})"
        raise MalformedAnswer(f"no {missing} column in header {header}")
    return when[0], value[0]


def parse_utc_s(text: str) -> float:
    """An export's time as Unix seconds: ISO 8601, with or without an offset (then UTC, as the column says)."""
    t = dt.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    return (t if t.tzinfo else t.replace(tzinfo=dt.UTC)).timestamp()


def parse_intensity_csv(text: str, basis: Basis = "life_cycle", what: str = "csv") -> list[IntensityPoint]:
    """The (time, intensity) points of an export; a row that does not parse raises MalformedAnswer
    naming its line."""
    rows = csv.reader(io.StringIO(text))
    header = next(rows, None)
    if header is None:
        raise MalformedAnswer(f"{what}: empty file")
    try:
        t_col, v_col = column_index(header, basis)
    except MalformedAnswer as exc:
        raise MalformedAnswer(f"{what}: {exc}") from exc
    out = []
    for line, row in enumerate(rows, start=2):
        if not any(cell.strip() for cell in row):
            continue
        try:
            if not row[v_col].strip():
                continue
            out.append(IntensityPoint(parse_utc_s(row[t_col]), float(row[v_col])))
        except (IndexError, ValueError) as exc:
            raise MalformedAnswer(f"{what}: line {line}: {exc}") from exc
    return out


class CsvIntensityFeed:
    def __init__(self, path: str, basis: Basis = "life_cycle", retry_s: float = 60.0) -> None:
        self.path, self.basis, self.retry_s = path, basis, retry_s
        self.name = f"csv {os.path.basename(path)}"
        self.seen: tuple[int, int, int] | None = None
        self.points: list[IntensityPoint] = []

    def fetch(self, now: float) -> list[IntensityPoint]:
        try:
            st = os.stat(self.path)
            if (st.st_mtime_ns, st.st_size, st.st_ino) != self.seen:
                with open(self.path, encoding="utf-8-sig") as f:
                    self.points = parse_intensity_csv(f.read(), self.basis, self.name)
                self.seen = (st.st_mtime_ns, st.st_size, st.st_ino)
        except OSError as exc:
            raise TransientBudgetError(f"{self.name}: {exc}", self.retry_s) from exc
        except MalformedAnswer as exc:
            raise MalformedAnswer(str(exc), self.retry_s) from exc
        return self.points
