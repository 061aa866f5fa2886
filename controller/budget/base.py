"""What every budget source returns, and its errors sorted by how to recover.

A source is stepped with an explicit `now` (Unix seconds, UTC): it never reads the clock nor sleeps, so
the daemon, the simulator and the tests drive it alike. It returns a `BudgetReading`, None when it sets
no limit at that time (a demand-response source with no signal in force), or raises a `BudgetError`.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Protocol


def utc_iso(t_s: float) -> str:
    """A Unix time as the UTC time a reader of the log compares with a source's rows and deadlines."""
    return dt.datetime.fromtimestamp(t_s, dt.UTC).isoformat(timespec="seconds")


@dataclass(frozen=True)
class BudgetReading:
    """A source's budget at one time, why, and until when it holds."""

    budget_w: float
    why: str
    """One line for the log and the decision log, e.g. "DE 412 gCO2/kWh in 40 min -> 1800 W"."""
    valid_until_s: float
    """Unix time after which this reading says nothing; the source should be stepped again by then."""


class BudgetError(Exception):
    """A source could not tell its budget. Neither kind below: taken as transient with the default delay."""


class TransientBudgetError(BudgetError):
    """Worth trying again after `retry_after_s` (a timeout, a 5xx, a 429 with its Retry-After)."""

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class PendingBudgetError(TransientBudgetError):
    """The source's answer is still on its way (an API's request in flight): no failure, and until its first answer
    the source sets no limit (controller/budget/prefetch.py)."""

    def __init__(self, message: str, retry_after_s: float, held: BudgetReading | None = None) -> None:
        super().__init__(message, retry_after_s)
        self.held = held
        """What the source tells meanwhile from what it holds (a carbon curve's forecast points): no fresh answer,
        so the age of the last one, and its error, still hold."""


class PermanentBudgetError(BudgetError):
    """Not worth trying again until the config changes (a refused token, an unknown zone)."""


class BudgetSource(Protocol):
    """Anything stepped with an explicit time that tells a budget."""

    def step(self, now: float) -> BudgetReading | None:
        """The budget at `now`, or None when this source sets no limit then; raises BudgetError."""
        ...
