"""Budget sources: where the site's power budget comes from (fixed, a schedule, grid carbon intensity,
demand response) and how several combine (the lowest wins, failures held for a TTL, then a safe budget).

Every source is stepped with an explicit Unix time and never reads the clock; the HTTP fetch is injected.
"""

from controller.budget.base import (
    BudgetError,
    BudgetReading,
    BudgetSource,
    PermanentBudgetError,
    TransientBudgetError,
)
from controller.budget.combiner import Budget, BudgetCombiner

__all__ = ["Budget", "BudgetCombiner", "BudgetError", "BudgetReading",
           "BudgetSource", "PermanentBudgetError", "TransientBudgetError"]
