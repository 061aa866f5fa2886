"""Planning margins learned from the windows in which a service missed its SLO.

The queue model predicts a plan's latencies; what is judged is each window's statistic, read off vLLM's
histograms. That reading swings with the window's arrivals, interpolates a percentile inside a wide bucket
(ITL's 25-50 ms), and the model errs on an engine it was not shaped on. Planned exactly at its targets, a
service sits where any of these tips a share of its windows over them. So each service carries a margin
(`Targets.margin`: a percentile target then allows a smaller share of requests and tokens over it, a mean
target a smaller value), learned from its own windows as a stochastic-approximation quantile tracker: a steady
window that missed adds `step`, one that met takes `step x miss_share / (1 - miss_share)` off, so the level
settles where `miss_share` of windows miss. The optimizer reads it in whole steps, so one window's verdict
resizes nothing; a level above `max_margin` counts as that.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field


@dataclass
class SloMargins:
    """Each service's learned margin; kept across reloads (its Estimator is long-lived)."""

    level: dict[str, float] = field(default_factory=dict)

    def observe(self, name: str, met: bool, step: float, miss_share: float, max_margin: float) -> None:
        """One steady window's verdict for `name` (the targets met, or not)."""
        if step <= 0.0:
            self.level.pop(name, None)
            return
        now = self.level.get(name, 0.0)
        now += step if not met else -step * miss_share / (1.0 - miss_share)
        self.level[name] = min(max(now, 0.0), max_margin)

    def margin(self, name: str, step: float) -> float:
        """The margin planned with: the level in whole steps (0 where no window missed yet)."""
        if step <= 0.0:
            return 0.0
        return step * math.floor(self.level.get(name, 0.0) / step + 1e-9)
