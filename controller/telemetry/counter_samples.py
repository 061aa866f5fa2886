"""What the success counters' own samples over a few windows (`counts_query`) say that rate() hides; the prometheus
source refuses a window where either holds:
- two engines behind one scrape target, read by turns: their success counter falls to the other's count and back, and
  rate() reads each fall and each rise as requests (12 rps read as 48-663; `flapped`);
- a hole in Prometheus' samples at the window's start (Prometheus or the exporter down, paused or restarted, or a
  window shorter than two scrapes): rate() divides what the rest of the window saw by the whole of it (4 rps read as
  2, 1.2, and 0 just after a pause; `window_gap`).
"""

from __future__ import annotations

import itertools
import math
import re
import statistics
from collections.abc import Sequence
from typing import Any, NamedTuple

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


class Samples(NamedTuple):
    """One counter series' samples in time order: Unix seconds and counts."""

    times: list[float]
    counts: list[float]


def scrape_interval_s(times: Sequence[float]) -> float | None:
    """The series' usual time between samples (the median: a gap or two leave it), None under three samples."""
    return statistics.median(b - a for a, b in itertools.pairwise(times)) if len(times) >= 3 else None


def flapped(counts: list[float], times: Sequence[float] | None = None) -> bool:
    """Whether a counter's samples are two engines' behind one scrape target, read by turns: a fall it climbs back by
    in one rise (half of it or more), a fall to `FLAP_SHARE` of where it fell from or to more than `FLAP_STEPS` of its
    least rise (what one engine serves between scrapes: a restart falls to what it served since its start, about
    one), or a rise of more than `FLAP_STEPS` of those (or the only one) that is `FLAP_SHARE` of a count past
    `JUMP_FLOOR` (the other engine's count appearing, fall or none: rate() reads it as requests too). Any number of
    restarts is a rate rate() reads right: a crash loop climbs back in many small rises. A rise across a gap in the
    samples (`times`; evenly spaced where None) is read per usual interval between them: an engine that served on
    while Prometheus was paused rose by a fifth of its count across the pause, and its service had no window for
    four windows."""
    pairs = list(itertools.pairwise(counts))
    interval = scrape_interval_s(times) if times is not None else None
    spans = [b - a for a, b in itertools.pairwise(times)] if times is not None else []
    # each rise as it would read over one usual interval (a rise over a shorter one is left as it is)
    shares = [min(1.0, interval / span) if interval and span > 0.0 else 1.0 for span in spans] or [1.0] * len(pairs)
    rises = [(b - a) * k for (a, b), k in zip(pairs, shares, strict=True) if b > a]
    step, most = min(rises, default=math.inf), max(rises, default=0.0)
    for (before, after), k in zip(pairs, shares, strict=True):
        fall = before - after
        if fall > 0 and before >= FLAP_FLOOR and (most >= fall / 2 or after >= FLAP_SHARE * before
                                                  or after > max(FLAP_FLOOR, FLAP_STEPS * step)):
            return True
        rise = -fall * k
        if after >= JUMP_FLOOR and rise >= FLAP_SHARE * after and (rise > FLAP_STEPS * step or len(rises) == 1):
            return True
    return False


GAP_SHARE = 0.1
"""Share of a window its samples may leave unread at its start: rate() reads the requests of that much less."""
EXTRAPOLATED = 1.1
"""Prometheus' rate() stretches a window's first sample back to its start where the gap is under this many of the
samples' mean interval, and by half an interval where it is longer (`extrapolatedRate`)."""


def window_gap(series: Sequence[Samples], end: float, window_s: float, resumed: bool = False) -> str | None:
    """Why the window (`window_s` up to Unix time `end`) of a model's success counters reads short, or None: rate()
    reads the requests of each series over the span its samples cover, stretched back to the window's start only
    where the first is within 1.1 of their interval of it (half an interval past that), so a series scraped before the
    window and on into it must leave no more than `GAP_SHARE` of the window unread at its start; and where none has a
    sample in it while some had before, none is read (rate() has nothing to read; the queue gauges hold their last
    samples for minutes). A series with no sample at or before the window's start is an engine new to it, all of whose
    requests are the window's, unless the window `resumed` a model silent or unread before it (Prometheus or its
    exporter down past the samples looked back over): then every series starts in it, and none covers its start.
    An engine gone before the window is none. Said without figures that change from one window to the next (the
    controller logs a message once while it repeats)."""
    start = end - window_s
    intervals = [i for s in series if (i := scrape_interval_s(s.times)) is not None]
    if intervals and min(intervals) > window_s / 2.0:
        return (f"telemetry.window_s ({window_s:g} s) holds fewer than two of Prometheus' samples, scraped about "
                f"every {min(intervals):.0f} s: rate() reads little or nothing; make it four scrape intervals or more")
    live = [s for s in series if s.times and s.times[-1] > start]
    gap = _unseen("over the start of")
    if not live and any(s.times for s in series):
        return _unseen("in")
    if resumed and live and all(s.times[0] > start for s in live):
        return gap
    for s in live:
        if s.times[0] > start:
            continue
        inside = [t for t in s.times if start < t <= end]
        if len(inside) < 2:  # rate() reads no series of one sample: its requests are none of the window's
            return gap
        mean_interval = (inside[-1] - inside[0]) / (len(inside) - 1)
        late = inside[0] - start
        if late >= EXTRAPOLATED * mean_interval and late - mean_interval / 2.0 > GAP_SHARE * window_s:
            return gap
    return None


def _unseen(where: str) -> str:
    """`window_gap`'s refusal where the success counter has no sample `where` the window."""
    return (f"Prometheus has no sample of its success counter {where} the window, where it had before (Prometheus or "
            "the exporter down, paused or restarted): no window until its samples cover one")


def range_counts(result: list[Any], query: str) -> dict[str, list[Samples]]:
    """A range vector's `result` (`prometheus.answer_result`) as model_name -> each series' samples in time order;
    TelemetryError where a series is none."""
    out: dict[str, list[Samples]] = {}
    for item in result:
        try:
            model = str(item["metric"].get("model_name", ""))
            pairs = [(float(t), float(text)) for t, text in item["values"]]
        except (TypeError, KeyError, ValueError, AttributeError) as exc:
            raise TelemetryError(f"prometheus: a series that is not (labels, [[time, value], ...]) for "
                            f"{shortened(query)!r}") from exc
        out.setdefault(model, []).append(Samples([t for t, _ in pairs], [v for _, v in pairs]))
    return out
