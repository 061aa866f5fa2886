"""Planning margins learned from the windows in which a service missed its SLO.

The queue model predicts a plan's latencies; what is judged is each window's statistic, read off vLLM's
histograms. That reading swings with the window's arrivals, interpolates a percentile inside a wide bucket
(ITL's 25-50 ms), and the model errs on an engine it was not shaped on. Planned exactly at its targets, a
service sits where any of these tips a share of its windows over them. So each service carries a margin
(`Targets.margin`: a percentile target then allows a smaller share of requests and tokens over it, a mean
target a smaller value), learned from its own windows as a stochastic-approximation quantile tracker: a steady
window that missed adds `step`, one that met takes `step x miss_share / (1 - miss_share)` off, so the level
settles where `miss_share` of windows miss. The optimizer reads it in whole steps, with hysteresis: the
margin planned rises as soon as the level reaches a step, and falls only once the level is half a step
below it, so a lone miss at a step's edge does not add replicas for one cycle and take them back the next.
The margins are saved beside the tuner's state (`MARGINS_FILE`, written atomically when they change), so a
restart plans with what the windows before it taught: started at 0, a service missed its SLO again in the
windows that had raised its margin, a step a window.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

from controller.service_settings import ServiceSettings
from tuner.own_files import read_json, set_aside, write_json

MARGINS_FILE = "slo_margins.json"
"""The margins' file, beside the tuner's state in `daemon.state_dir`."""
MARGINS_KIND = "wattscale-slo-margins"
MAX_MARGINS_BYTES = 4 << 20
"""Largest margins file read (a service's entry is some 60 bytes); a larger one is set aside unread."""
AT_0 = "starting the margins at 0"
log = logging.getLogger("wattscale.controller")


@dataclass
class SloMargins:
    """Each service's learned margin; kept across reloads (its Estimator is long-lived) and, saved to `path`,
    restarts."""

    level: dict[str, float] = field(default_factory=dict)
    planned: dict[str, float] = field(default_factory=dict)
    """The margin each service is planned with (`margin`)."""
    path: Path | None = None
    """Where they are saved (None: not saved)."""
    saved: tuple[dict[str, float], dict[str, float]] = field(default_factory=lambda: ({}, {}))
    """What the file holds (or was restored from): a cycle that changed nothing writes nothing."""

    @classmethod
    def restored(cls, path: Path | None) -> tuple[SloMargins, str | None]:
        """The margins saved at `path`, and a warning where the file is there but unusable (set aside as
        `<name>.bad`: the margins start at 0, as the tuner's pairs start from their priors)."""
        margins = cls(path=path)
        if path is None:
            return margins, None
        doc, unread = read_json(path, MAX_MARGINS_BYTES, "SLO margins", AT_0)
        if doc is None:
            return margins, unread
        ours = isinstance(doc, dict) and doc.get("kind") == MARGINS_KIND and doc.get("version") == 1
        services = doc.get("services") if ours else None
        if not isinstance(services, dict) or not all(
                isinstance(v, dict) and set(v) == {"level", "planned"} and all(_share(x) for x in v.values())
                for v in services.values()):
            return margins, set_aside(path, "not a wattscale SLO margins file (version 1, shares in [0, 1])", AT_0)
        margins.level = {k: float(v["level"]) for k, v in services.items()}
        margins.planned = {k: float(v["planned"]) for k, v in services.items()}
        margins.saved = (dict(margins.level), dict(margins.planned))
        return margins, None

    def save(self) -> bool:
        """Write the margins where they changed since the last write; False (with one warning per new error) where
        the file cannot be written: the daemon runs on, and a restart starts them at 0."""
        now = (dict(self.level), dict(self.planned))
        if self.path is None or now == self.saved:
            return True
        services = {k: {"level": v, "planned": self.planned.get(k, 0.0)} for k, v in sorted(self.level.items())}
        if not write_json(self.path, {"kind": MARGINS_KIND, "version": 1, "services": services}, "SLO margins",
                          "they start at 0 on restart"):
            return False
        self.saved = now
        return True

    def observe(self, name: str, met: bool, step: float, miss_share: float, max_margin: float,
                weight: float = 1.0) -> None:
        """One steady window's verdict for `name` (the targets met, or not); a miss counts at `weight`, the share
        of the window the plan ran as planned (`Estimator.observe`)."""
        if step <= 0.0:
            self.level.pop(name, None)
            self.planned.pop(name, None)
            return
        now = self.level.get(name, 0.0)
        now += step * weight if not met else -step * miss_share / (1.0 - miss_share)
        self.level[name] = min(max(now, 0.0), max_margin)

    def margin(self, name: str, step: float, max_margin: float) -> float:
        """The margin planned with: the level in whole steps, at most `max_margin` (a reload may lower it), up at
        once and down only half a step late (0 where no window missed yet)."""
        if step <= 0.0:
            return 0.0
        level = min(self.level.get(name, 0.0), max_margin)
        now = self.planned.get(name, 0.0)
        whole = round(step * math.floor(level / step + 1e-9), 9)  # 3 x 0.1 written 0.30000000000000004
        if whole > now or level < now - step / 2 or level <= 0.0:
            now = whole
        now = min(now, max_margin)
        self.planned[name] = now
        return now


def _share(v: object) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and 0.0 <= v <= 1.0


def slo_met(svc: ServiceSettings, ttft_ms: float | None, itl_ms: float | None, ttft_p95_ms: float | None,
            itl_p95_ms: float | None) -> bool | None:
    """Whether a window's statistic met both of the service's targets (a p99 target judged on the p95 a window
    reports: a miss there is a miss); None where the window has no reading of it."""
    ttft, itl = (ttft_ms, itl_ms) if svc.statistic == "mean" else (ttft_p95_ms, itl_p95_ms)
    if ttft is None or itl is None:
        return None
    return ttft <= svc.ttft_ms and itl <= svc.itl_ms
