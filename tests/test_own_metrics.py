"""wattscale's own metrics as an alert reads them: the counters a failure moves exist at 0 from the start."""

from __future__ import annotations

import math
import re
import threading
from pathlib import Path
from types import SimpleNamespace

from prometheus_client import CollectorRegistry

from controller.own_metrics import ERROR_KINDS, OwnMetrics

ROOT = Path(__file__).resolve().parents[1]


def test_error_kinds_and_reload_results_start_at_zero() -> None:
    """`increase()` reads a series' first sample as no increase: a kind first counted at 1 was never alerted on."""
    registry = CollectorRegistry()
    OwnMetrics(registry)
    for kind in ERROR_KINDS:
        assert registry.get_sample_value("wattscale_errors_total", {"kind": kind}) == 0.0, kind
    for result in ("ok", "refused"):
        assert registry.get_sample_value("wattscale_config_reloads_total", {"result": result}) == 0.0


def test_every_kind_the_daemon_or_operator_counts_starts_at_zero() -> None:
    """Each kind named where a failure is counted (a literal first argument of the counting calls) is in the list,
    and the list holds no other: a kind misspelt there would be a series at 0 for ever beside the real one."""
    counted: set[str] = set()
    for path in (ROOT / "controller").rglob("*.py"):
        text = path.read_text()
        counted |= set(re.findall(r'(?:errors\.labels|\.error|\.report|\b_error|on_error)\(\s*"([a-z_]+)"', text))
        counted |= set(re.findall(r'_count\([^()]*"error", "([a-z_]+)"\)', text))
        counted |= {f"{loop}_{what}" for loop in re.findall(r'Ticker\("([a-z]+)"', text) for what in ("late", "error")}
    assert counted == set(ERROR_KINDS), (counted - set(ERROR_KINDS), set(ERROR_KINDS) - counted)


def test_a_standby_says_nothing_a_leader_would() -> None:
    """An operator that lost its Lease kept exporting its last draw, budget and replicas beside the new leader's:
    standing down removes its labelled gauges and leaves the rest NaN; counters keep their counts."""
    registry = CollectorRegistry()
    m = OwnMetrics(registry)
    m.budget.set(4000.0)
    m.draw.set(2500.0)
    m.show_applied("chat", 3, 64, 450.0, None)
    m.show_short("chat", "budget", 1.5)
    m.errors.labels("slow_tick").inc()
    m.stand_down()
    assert math.isnan(registry.get_sample_value("wattscale_power_budget_watts") or 0.0)
    assert math.isnan(registry.get_sample_value("wattscale_power_draw_watts") or 0.0)
    assert registry.get_sample_value("wattscale_service_replicas", {"service": "chat"}) is None
    assert registry.get_sample_value("wattscale_service_shortfall_rps", {"service": "chat", "reason": "budget"}) is None
    assert registry.get_sample_value("wattscale_errors_total", {"kind": "slow_tick"}) == 1.0
    m.show_short("chat", "none", 0.0)  # leading again: series as before
    assert registry.get_sample_value("wattscale_service_shortfall_rps", {"service": "chat", "reason": "none"}) == 0.0


def test_a_gone_policys_gauges_are_cleared_once_its_threads_end_unless_another_loop_holds_the_lease() -> None:
    """A policy deleted while its slow tick ran: the tick set gauges after the stand-down, and no step of its loop
    came to clear them. Cleared once its threads end; not where another policy's loop holds the Lease (leading, or
    starting to: the gauges are its own)."""
    from controller.cluster.handlers import _quiet_when_ended
    from controller.cluster.operator import ClusterLoop

    for held, cleared in ((False, True), (True, False)):
        m = OwnMetrics(CollectorRegistry())
        done = threading.Event()
        tick = threading.Thread(target=_late_tick, args=(done, m), daemon=True)
        tick.start()
        loop = SimpleNamespace(ending=[tick], metrics=m)
        loop.quiet = lambda loop=loop: ClusterLoop.quiet(loop)  # the loop's own clearing, on these threads
        memo = SimpleNamespace(loops={"other": SimpleNamespace(lease=SimpleNamespace(held=held))})
        quiet = threading.Thread(target=_quiet_when_ended, args=(loop, memo), daemon=True)
        quiet.start()
        done.set()
        quiet.join(5.0)
        assert math.isnan(m.budget._value.get()) == cleared


def _late_tick(done: threading.Event, m: OwnMetrics) -> None:
    """A slow tick that sets a gauge once let go, after its loop stood down."""
    done.wait(5.0)
    m.budget.set(3000.0)
