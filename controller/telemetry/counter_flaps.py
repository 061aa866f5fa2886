"""Two engines behind one scrape target, read by turns: their success counter falls to the other's count and back,
and rate() reads each fall and each rise as requests (12 rps read as 48-663). Read from the counter's own samples
over a few windows (`counts_query`, `flapped`); the prometheus source refuses such a window."""

from __future__ import annotations

import itertools
import math
import re
from typing import Any

from controller.telemetry.base import TelemetryError, shortened

FLAP_SHARE = 0.1
"""A counter that falls to this share of where it was, or more, fell to another engine's count, not to a restart's."""
FLAP_FLOOR = 20.0
"""Counts under this are left to fall as they may: a few requests read twice move no plan."""
LOOKBACK = 4
"""Windows of samples a flap is looked for in: a window whose counter flapped in any of the last four is none."""
FLAP_STEPS = 10.0
"""A fall to, or a rise of, more than this many of the counter's least rise in the window is another engine's count."""
JUMP_FLOOR = 1000.0
"""A rise to a count under this is left as it is (a young engine's counts rise by a tenth or more a scrape, in
bursts, until it has served some ten scrapes' worth); over it, a rise of a tenth of the count is another engine's,
against the window's other rises, or alone where it has none."""


def selector(models: list[str]) -> str:
    """The label selector of `models`' series (each name matched whole, as written)."""
    pattern = "|".join(re.escape(m) for m in sorted(models)).replace("\\", "\\\\").replace('"', '\\"')
    return f'{{model_name=~"{pattern}"}}'


def counts_query(models: list[str], window_s: float) -> str:
    """The success counters' own samples over `LOOKBACK` windows (a range vector: `flapped` reads how they moved; a
    window of 60 s holds two or three of a 30-s scrape, too few to tell a flap from a restart)."""
    return f"vllm:request_success_total{selector(models)}[{round(LOOKBACK * window_s)}s]"


def flapped(counts: list[float]) -> bool:
    """Whether a counter's samples are two engines' behind one scrape target, read by turns: a fall it climbs back by
    in one rise (half of it or more), a fall to `FLAP_SHARE` of where it fell from or to more than `FLAP_STEPS` of its
    least rise (what one engine serves between scrapes: a restart falls to what it served since its start, about
    one), or a rise of more than `FLAP_STEPS` of those (or the only one) that is `FLAP_SHARE` of a count past
    `JUMP_FLOOR` (the other engine's count appearing, fall or none: rate() reads it as requests too). Any number of
    restarts is a rate rate() reads right: a crash loop climbs back in many small rises."""
    steps = list(itertools.pairwise(counts))
    rises = [b - a for a, b in steps if b > a]
    step, most = min(rises, default=math.inf), max(rises, default=0.0)
    for before, after in steps:
        fall = before - after
        if fall > 0 and before >= FLAP_FLOOR and (most >= fall / 2 or after >= FLAP_SHARE * before
                                                  or after > max(FLAP_FLOOR, FLAP_STEPS * step)):
            return True
        rise = -fall
        if after >= JUMP_FLOOR and rise >= FLAP_SHARE * after and (rise > FLAP_STEPS * step or len(rises) == 1):
            return True
    return False


def range_counts(result: list[Any], query: str) -> dict[str, list[list[float]]]:
    """A range vector's `result` (`prometheus.answer_result`) as model_name -> each series' values in time order;
    TelemetryError where a series is none."""
    out: dict[str, list[list[float]]] = {}
    for item in result:
        try:
            model = str(item["metric"].get("model_name", ""))
            values = [float(text) for _, text in item["values"]]
        except (TypeError, KeyError, ValueError, AttributeError) as exc:
            raise TelemetryError(f"prometheus: a series that is not (labels, [[time, value], ...]) for "
                            f"{shortened(query)!r}") from exc
        out.setdefault(model, []).append(values)
    return out
