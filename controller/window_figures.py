"""What a service's window says, read apart from the estimator that plans and tunes on it: whether its figures can
be a load at all (`window_problem`), the arrivals its completions and queue imply (`offered_rps`), and the limits,
draw, clock and held share of its GPUs' readings over it."""

from __future__ import annotations

import math

from actuators.vllm_servers import MAX_BATCH
from controller.plan import DrawReading
from controller.telemetry.base import ServiceWindow

MAX_WINDOW_RPS = 100_000.0
"""Most requests a second one service's window may report: past it a figure is a unit or counter mistake (the
queue model's sizing of it took minutes and gigabytes)."""
MAX_WINDOW_TOKENS = 1_000_000.0
"""Longest mean prompt or output a window may report."""
MAX_WINDOW_WAITING = 10_000_000.0
"""Most requests one service's window may report waiting or running, or preempted (a thousand replicas' worth of
vLLM's deepest queues): a gauge of 1e11 sized 7.5e9 rps of backlog, a slow cycle of 38 s and 7 GB."""
MAX_WINDOW_S = 7 * 86_400.0
"""Longest window a source may report (a week: a day's slow cycle, held for a few windows)."""
MIN_WINDOW_S = 0.1
"""Shortest window a source may report (a fast tick's least): a length of 0 divided the growth by zero, and one of
5e-324 read every growth as infinite demand."""
MAX_WINDOW_REPLICAS = 100_000
"""Most replicas a window may report: a count of 10**400 overflowed every rate per replica."""


def window_problem(w: ServiceWindow, most_replicas: int) -> tuple[str, str] | None:
    """The figure for which a window cannot be a load, and why (a negative or absurd figure from a source, or more
    engines than the service may run: `most_replicas`); None where it can."""
    if not (math.isfinite(w.rate_rps) and 0.0 <= w.rate_rps <= MAX_WINDOW_RPS):
        return "rate", f"rate {w.rate_rps:g} rps outside [0, {MAX_WINDOW_RPS:g}]"
    for name in ("in_tokens", "out_tokens"):
        v = getattr(w, name)
        if v is not None and not (math.isfinite(v) and 0.0 <= v <= MAX_WINDOW_TOKENS):
            return name, f"{name} {v:g} outside [0, {MAX_WINDOW_TOKENS:g}]"
    for name in ("waiting", "running", "waiting_before", "running_before", "preemptions"):
        v = getattr(w, name)
        if v is not None and not (math.isfinite(v) and 0.0 <= v <= MAX_WINDOW_WAITING):
            return name, f"{name} {v:g} outside [0, {MAX_WINDOW_WAITING:g}]"
    if not (math.isfinite(w.window_s) and MIN_WINDOW_S <= w.window_s <= MAX_WINDOW_S):
        return "window_s", f"window_s {w.window_s!r} outside [{MIN_WINDOW_S:g}, {MAX_WINDOW_S:g}]"
    if not 0 <= w.replicas <= MAX_WINDOW_REPLICAS:
        shown = w.replicas if abs(w.replicas) < 10**15 else "past 1e15"
        return "replicas", f"replicas {shown} outside [0, {MAX_WINDOW_REPLICAS}]"
    if w.replicas > most_replicas:  # 3,001 series of one model read as 3,001 engines: each at 1/3,001 of the load
        return "engine count", (f"{w.replicas} engines report its model, past twice the replicas it may run or runs "
                                f"({most_replicas} in all): another deployment's engines under its model name, or "
                                "labels that multiply its series")
    for name in ("running", "running_before"):  # a replica runs at most vLLM's largest batch (one glitch of 9.9e6
        v = getattr(w, name)  # running sized the plan at the 100,000-rps cap)
        if v is not None and v > max(1, w.replicas) * MAX_BATCH:
            return name, f"{name} {v:g} past {MAX_BATCH} a replica ({w.replicas} replicas)"
    return None


def offered_rps(served_rps: float, before: float, after: float, span_s: float) -> float:
    """Requests offered a second: completions plus the growth of the requests in the system (`before` and `after`
    the window, waiting and running), where that growth is past its own noise; within it, the completions are the
    steadier figure. In a steady state the count's change over a window swings by the square root of twice the
    arrivals the requests in the system hold over it (M/G/inf: 2 x rate x E[min(lifetime, window)]), so by at most
    the root of twice the count, or of twice the window's completions where requests outlive the window."""
    growth = after - before
    if abs(growth) <= 3.0 * math.sqrt(2.0 * max(1.0, min(max(before, after), served_rps * span_s))):
        return served_rps
    return max(0.0, served_rps + growth / span_s)


def window_cap_w(draws: list[DrawReading], planned_w: float) -> float:
    """The mean limit the window's GPUs ran under (the plan's cap where none was read)."""
    return sum(r.limit_w for r in draws) / len(draws) if draws else planned_w


def window_draw_w(draws: list[DrawReading]) -> float | None:
    """The window's mean draw; None where there is none. Where the governor held its GPUs down in some tick, a
    bound (`held_share`): a draw held down is no steady state of any cap, and read as one taught the curve too low."""
    if not draws:
        return None
    return sum(r.draw_w for r in draws) / len(draws)


def held_share(draws: list[DrawReading]) -> float:
    """Share of the window's ticks in which the governor held the service's GPUs down (a cut, or pressed against a
    limit below the plan's cap)."""
    return sum(r.cut for r in draws) / len(draws) if draws else 0.0


def window_clock(draws: list[DrawReading]) -> float | None:
    """The window's mean locked clock share; None where no reading ran locked."""
    if not any(r.clock_share is not None for r in draws):
        return None
    return sum(r.clock_share or 1.0 for r in draws) / len(draws)
