"""wattscale's own metrics as an alert reads them: the counters a failure moves exist at 0 from the start."""

from __future__ import annotations

import math
import re
from pathlib import Path

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


def test_every_kind_a_hosts_daemon_counts_starts_at_zero() -> None:
    """Each kind the host's daemon names where it counts a failure (outside the cluster's own code) is in the list,
    and each in the list is one it counts: a kind misspelt there would be a series at 0 for ever beside the real one."""
    counted: set[str] = set()
    for path in (ROOT / "controller").rglob("*.py"):
        if "cluster" not in path.parts:
            text = path.read_text()
            counted |= set(re.findall(r'(?:errors\.labels|\.error|\.report|\b_error|on_error)\(\s*"([a-z_]+)"', text))
            counted |= set(re.findall(r'_count\([^()]*"error", "([a-z_]+)"\)', text))
    assert counted - set(ERROR_KINDS) == set(), counted - set(ERROR_KINDS)
    source = "\n".join(p.read_text() for p in (ROOT / "controller").rglob("*.py") if p.name != "own_metrics.py")
    said = set(re.findall(r'"([a-z_]+)"', source))
    said |= {f"{loop}_{what}" for loop in re.findall(r'Ticker\("([a-z]+)"', source) for what in ("late", "error")}
    assert set(ERROR_KINDS) <= said, set(ERROR_KINDS) - said


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
