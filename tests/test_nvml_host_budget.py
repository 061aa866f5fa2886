"""The budget on an NVML host when the driver fails: a GPU's limit write failing at the tick the budget falls,
and a GPU that has never been read. Two fake H100s (tests/fake_pynvml.py, the real pynvml error classes) drawing
550 W each, wired as `wattscale run` wires an nvml host, the fast loop stepped by hand."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pynvml
import pytest
from conftest import sim_config_text
from fake_pynvml import FakeGpu, FakeNvml
from prometheus_client import CollectorRegistry

from controller.control import Controller
from controller.decision_log import gpus
from controller.own_metrics import OwnMetrics
from controller.plan import Plan
from controller.power_settings import PowerDomainSettings
from controller.settings import load_settings
from controller.wiring import build_parts
from tuner import Tuner

HOST = {'gpu_source = "sim"': 'gpu_source = "nvml"', 'vllm_source = "sim"': 'vllm_source = "prometheus"',
        'power = "sim"': 'power = "nvml"', 'batch = "sim"': 'batch = "dry-run"',
        'replicas = "sim"': 'replicas = "dry-run"'}


def host(tmp_path: Path, chat: tuple[int, ...] = (0,), code: tuple[int, ...] = (1,),
         more: dict[str, str] | None = None,
         registry: CollectorRegistry | None = None) -> tuple[FakeNvml, Controller]:
    """chat (priority 1) on GPUs `chat`, code (priority 2) on `code`, both planned at 700 W, under a 4,000-W
    budget; `more`: other replacements in config/sim.toml; `registry`: where its metrics go."""
    cfg = tmp_path / "w.toml"
    cfg.write_text(sim_config_text(tmp_path / "state", HOST | {
        'name = "chat"\nmodel = "llama-3.1-8b"': f'name = "chat"\nmodel = "llama-3.1-8b"\ngpus = {list(chat)}',
        'name = "code"\nmodel = "qwen2.5-14b"': f'name = "code"\nmodel = "qwen2.5-14b"\ngpus = {list(code)}'}
        | (more or {})))
    fake = FakeNvml([FakeGpu(demand_mw=550_000) for _ in range(len(chat) + len(code))])
    s = load_settings(cfg)
    parts = build_parts(s, nvml=fake)
    control = Controller(s, parts.gpus, parts.vllm, parts.power, parts.batch, parts.replicas, Tuner(None),
                         OwnMetrics(registry or CollectorRegistry()), clocks=parts.clocks)
    control.fast.plan = Plan.of(1, {"chat": {"H100-SXM": 700.0}, "code": {"H100-SXM": 700.0}}, {"chat": 1, "code": 2})
    clock = [0.0]
    parts.power.gate.clock = lambda: clock[0]  # type: ignore[attr-defined]
    control.clock = clock  # type: ignore[attr-defined]
    return fake, control


UUID_1 = "GPU-00000001-fake-4000-8000-000000000000"


def draw_w(fake: FakeNvml) -> float:
    return sum(min(g.demand_mw, g.limit_mw) for g in fake.gpus) / 1000


def run(fake: FakeNvml, control: Controller, ticks: range, at_5: dict[str, Any],
        fail_at_5: tuple[int, ...]) -> list[float]:
    """Step the fast loop at each second of `ticks`; at 5 the power settings change by `at_5` (a budget drop, a
    domain) and each GPU of `fail_at_5` answers its limit write with NVML's Unknown error (a transient one: a
    backoff of 5 s) at that tick only. The draw after each tick."""
    loose, draws = control.fast.governor.settings, []
    for t in ticks:
        control.clock[0] = float(t)  # type: ignore[attr-defined]
        if t == 5:
            control.fast.governor.settings = replace(loose, **at_5)
            for i in fail_at_5:
                fake.fail[("set", i)] = pynvml.NVMLError_Unknown
        if t == 6:
            fake.fail.clear()
        control.tick_fast(float(t))
        draws.append(draw_w(fake))
    return draws


def stepped(fake: FakeNvml, control: Controller, ticks: range, at: dict[int, Callable[[], object]],
            over_from: int | None = None) -> None:
    """Step the fast loop at each second of `ticks`, doing `at[t]` before tick t; from tick `over_from` on, the draw
    must be within the threshold after each tick."""
    for t in ticks:
        control.clock[0] = float(t)  # type: ignore[attr-defined]
        if t in at:
            at[t]()
        control.tick_fast(float(t))
        if over_from is not None and t >= over_from:
            assert draw_w(fake) <= control.fast.governor.threshold_w() + 1.0, (t, draw_w(fake))


def budget(control: Controller, budget_w: float) -> None:
    control.fast.governor.settings = replace(control.fast.governor.settings, budget_w=budget_w)


def failing(fake: FakeNvml, error: type[Exception], *keys: tuple[str, int]) -> Callable[[], None]:
    """An action that makes each call of `keys` fail with `error`."""
    return lambda: fake.fail.update(dict.fromkeys(keys, error))


@pytest.mark.parametrize("failing", [(1,), (0, 1)])
def test_a_failed_limit_write_at_a_budget_drop_is_over_one_tick_at_most(tmp_path: Path,
                                                                         failing: tuple[int, ...]) -> None:
    """The budget falls 4,000 -> 1,000 W (threshold 970 W) at the tick the write fails. Before: the failing GPU was
    pinned for its 5-s backoff and kept taking the cut it could not apply, so the site was over 5 s (one GPU
    failing: 3 s, the other cut only once the pinned one's room ran out), then every GPU slammed to its floor.
    Now the others carry its cut from the next tick, and where no other GPU has room (both failed) the failed
    decreases are tried again at once: over at the failing tick only."""
    fake, control = host(tmp_path)
    draws = run(fake, control, range(1, 13), {"budget_w": 1000.0}, failing)
    threshold = control.fast.governor.threshold_w()
    over = [t for t, w in zip(range(1, 13), draws, strict=True) if t >= 5 and w > threshold + 1.0]
    assert over == [5], (over, draws)
    assert min(draws[5:]) >= 0.6 * threshold, draws  # no slam to the floors


def test_a_failed_write_in_a_domain_over_its_line_is_tried_again_at_once(tmp_path: Path) -> None:
    """The same on a rack's line: a 1,000-W rack over GPUs 0 and 1 comes into force as both writes fail. GPUs 2 and
    3, outside it, had room to cut, which lowers nothing inside the rack: it was over 5 s."""
    fake, control = host(tmp_path, (0, 1), (2, 3))
    draws = run(fake, control, range(1, 13), {"domains": (PowerDomainSettings("rack", 1000.0, (0, 1)),)}, (0, 1))
    rack = [min(g.demand_mw, g.limit_mw) / 1000 for g in fake.gpus[:2]]
    assert sum(rack) <= 970.0 + 1.0, (rack, draws)
    over = [t for t, w in zip(range(1, 13), draws, strict=True) if t > 5 and w > 2200.0 - 1.0]
    assert not over, draws  # the rack (two of the four 550-W GPUs) held from t=6


def test_a_gpu_never_read_is_counted_and_the_others_cut_for_it(tmp_path: Path) -> None:
    """GPU 1's limits cannot be read until t=8: it stood out of the sample and the governor read 550 W for the
    1,100 the two draw under a 1,000-W budget. It now counts at 700 W (the others' largest maximum), never set and
    GPU 0 is cut to hold the site; once it reads, both are steered."""
    fake, control = host(tmp_path)
    control.fast.governor.settings = replace(control.fast.governor.settings, budget_w=1000.0)
    fake.fail[("constraints", 1)] = pynvml.NVMLError_Unknown
    for t in range(1, 8):
        control.clock[0] = float(t)  # type: ignore[attr-defined]
        control.tick_fast(float(t))
    gpu0_w = min(fake.gpus[0].demand_mw, fake.gpus[0].limit_mw) / 1000
    assert control.fast.draw_w == pytest.approx(gpu0_w + 700.0)  # GPU 1 counted at 700 W, unread
    assert fake.gpus[0].limit_mw / 1000 == pytest.approx(270.0, abs=2.0)  # 970 W less GPU 1's 700 (and 1 W a GPU)

    del fake.fail[("constraints", 1)]
    for t in range(20, 26):
        control.clock[0] = float(t)  # type: ignore[attr-defined]
        control.tick_fast(float(t))
    assert draw_w(fake) <= control.fast.governor.threshold_w() + 1.0
    assert "unread-1" not in control.fast.listing.seen and fake.gpus[1].limit_mw < 700_000


def test_a_gpu_never_read_is_neither_clocked_nor_given_a_safe_cap(tmp_path: Path) -> None:
    """GPU 1 lost for good (every NVML call: GpuIsLost). Its stand-in's clock was steered, and the permanent error
    turned the clock lever off for the whole host. Then GPU 0's readings fail: the blind fail-safe wrote the
    stand-in's cap, 700 W, onto GPU 1, whose real limit is 300 W (its writes working, its reads not)."""
    fake, control = host(tmp_path, more={'replicas = "dry-run"': 'replicas = "dry-run"\nclocks = "nvml"'})
    for call in ("name", "uuid", "constraints", "limit", "power", "fields", "supported", "lock", "clock", "set"):
        fake.fail[(call, 1)] = pynvml.NVMLError_GpuIsLost
    for t in range(1, 4):
        control.clock[0] = float(t)  # type: ignore[attr-defined]
        control.tick_fast(float(t))
    assert control.fast.clocks is not None and control.fast.clocks.off is None  # the lever still steers GPU 0
    fake.fail.clear()
    fake.fail[("uuid", 1)] = pynvml.NVMLError_Unknown  # still never read; its writes work
    fake.gpus[1].limit_mw = 300_000
    fake.fail[("power", 0)] = pynvml.NVMLError_Unknown  # no reading at all: blind, then safe caps
    for t in range(4, 6 + control.fast.blind.failsafe_after_ticks):
        control.clock[0] = float(t)  # type: ignore[attr-defined]
        control.tick_fast(float(t))
    assert control.fast.blind.failsafe_on and fake.gpus[1].limit_mw == 300_000


def test_a_stand_in_read_at_last_on_a_lost_tick_stays_in_the_blind_cut(tmp_path: Path) -> None:
    """GPU 1, never read, reads at last on a tick that is lost (no power reading from either GPU), and the budget
    falls while blind: its stand-in was retired and the GPU itself never listed, so the blind cut and the safe caps
    left its 700 W out (limits 970 W over a 582-W threshold). It is kept at its number until a good tick; never read,
    it was neither reported as bad limits every tick nor exported at a limit nothing read."""
    fake, control = host(tmp_path)
    loose = control.fast.governor.settings
    control.fast.governor.settings = replace(loose, budget_w=1000.0)
    fake.fail[("constraints", 1)] = pynvml.NVMLError_Unknown
    for t in range(1, 5):
        control.clock[0] = float(t)  # type: ignore[attr-defined]
        control.tick_fast(float(t))
    metrics = control.fast.metrics
    assert metrics.errors.labels("gpu_limits")._value.get() == 0
    assert math.isnan(metrics.gpu_limit.labels("1")._value.get())
    del fake.fail[("constraints", 1)]
    fake.fail[("power", 0)] = pynvml.NVMLError_Unknown
    fake.fail[("power", 1)] = pynvml.NVMLError_NotSupported
    control.fast.governor.settings = replace(loose, budget_w=600.0)
    for t in range(5, 12):
        control.clock[0] = float(t)  # type: ignore[attr-defined]
        control.tick_fast(float(t))
    assert control.fast.blind.failsafe_on
    assert sum(g.limit_mw for g in fake.gpus) / 1000 <= control.fast.governor.threshold_w() + 1.0


@pytest.mark.parametrize("error", [pynvml.NVMLError_Unknown, pynvml.NVMLError_NoPermission])
def test_a_write_that_keeps_failing_is_forced_twice_a_run_at_most(tmp_path: Path, error: type[Exception]) -> None:
    """Both GPUs' writes fail from the budget drop on: forced at every tick, a write that fails slowly held tick
    after tick, and one refused for good ("no more tries until its config changes") was tried every second. Now a
    transient failure is forced twice a run at most, a permanent one never."""
    fake, control = host(tmp_path)
    loose = control.fast.governor.settings
    for t in range(1, 15):
        control.clock[0] = float(t)  # type: ignore[attr-defined]
        if t == 5:
            control.fast.governor.settings = replace(loose, budget_w=1000.0)
            fake.fail[("set", 0)] = fake.fail[("set", 1)] = error
        control.tick_fast(float(t))
    tries = control.fast.metrics.actuations.labels("nvml", "power_limit", "error")._value.get()
    assert tries == (2 * 3 if error is pynvml.NVMLError_Unknown else 2), tries  # each GPU: the write, two forced


def test_a_limit_that_clips_bursts_under_a_lower_mean_draw_is_exported_and_logged(tmp_path: Path) -> None:
    """Chat's GPU draws 300 W and wants 650 W a fifth of each second (its prompts) under a 500-W limit: its mean
    reads 340 W, 160 W under the limit, and the share of the second the limit held its clock is the fifth."""
    registry = CollectorRegistry()
    fake, control = host(tmp_path, registry=registry)
    fake.gpus[0].demand_mw, fake.gpus[0].burst_mw, fake.gpus[0].burst_share = 300_000, 650_000, 0.2
    control.fast.plan = Plan.of(2, {"chat": {"H100-SXM": 500.0}, "code": {"H100-SXM": 700.0}}, {"chat": 1, "code": 2})
    for t in range(4):
        control.clock[0] = float(t)  # type: ignore[attr-defined]
        control.tick_fast(float(t))
    capped = [registry.get_sample_value("wattscale_gpu_power_capped_ratio", {"gpu": g}) for g in "01"]
    assert capped == [pytest.approx(0.2), 0.0]  # code's 550 W is under its 700
    readings = control.fast.ledger.take("chat")
    assert [r.capped_share for r in readings][-2:] == [pytest.approx(0.2)] * 2 and readings[-1].draw_w == 340.0
    assert gpus(readings[-2:]) == {"draw_w": 340.0, "limit_w": 500.0, "capped_share": 0.2}


def test_the_capped_gauge_is_a_gap_where_the_share_is_unknown(tmp_path: Path) -> None:
    """Created at 0, the gauge had read "never held" for a driver without the counter and kept a GPU's last share
    while its reads failed or it was missing from the listing."""
    registry = CollectorRegistry()
    fake, control = host(tmp_path, registry=registry)
    fake.gpus[0].unsupported = {"violation"}
    fake.gpus[1].demand_mw, fake.gpus[1].burst_mw, fake.gpus[1].burst_share = 300_000, 800_000, 0.5

    def gauges(t: int) -> list[float | None]:
        control.clock[0] = float(t)  # type: ignore[attr-defined]
        control.tick_fast(float(t))
        return [registry.get_sample_value("wattscale_gpu_power_capped_ratio", {"gpu": g}) for g in "01"]

    first = gauges(0)
    assert all(math.isnan(v or 0.0) for v in first)  # nothing to compare the counter with yet
    no_counter, held = gauges(1)
    assert no_counter is not None and math.isnan(no_counter) and held == pytest.approx(0.5)
    fake.fail[("power", 1)] = fake.fail[("constraints", 1)] = pynvml.NVMLError_Unknown
    assert math.isnan(gauges(2)[1] or 0.0)  # a failed read: its share unknown, not the last one kept
    fake.fail.clear()
    gauges(3)
    fake.gpus = fake.gpus[:1]  # GPU 1 falls off the listing: its stand-in is unread
    assert math.isnan(gauges(4)[1] or 0.0)


@pytest.mark.parametrize("error", [pynvml.NVMLError_GpuIsLost, pynvml.NVMLError_NotSupported,
                                   pynvml.NVMLError_DriverNotLoaded])
def test_writes_a_driver_refused_for_good_while_no_gpu_read_are_tried_again_once_they_read(
        tmp_path: Path, error: type[Exception], caplog: pytest.LogCaptureFixture) -> None:
    """Every call on both GPUs fails for three ticks ("GPU lost", as through a driver's brief outage): the
    fail-safe's writes then fail too, and were recorded as refused for good. A trial: readings came back at once,
    the budget fell to 1,000 W, and no limit was set again until a restart; the site drew 1,100 W for good. Now GPU
    lost and driver not loaded are outages, tried again; a refusal (not supported) met during the outage is
    forgotten as the readings return. (The fail-safe's line had also named the caps it failed to write as set.)"""
    fake, control = host(tmp_path)
    caplog.set_level(logging.ERROR)
    stepped(fake, control, range(1, 14), {3: failing(fake, error, ("*", 0), ("*", 1)), 7: fake.fail.clear,
                                          9: lambda: budget(control, 1000.0)}, over_from=10)
    assert control.fast.retry.blocked() == []
    (said,) = [r.getMessage() for r in caplog.records if "GPU readings lost for" in r.getMessage()]
    assert "safe caps (none set)" in said, said
    assert "GPU 0 not set to" in said and "GPU 1 not set to" in said, said


def test_a_write_refused_for_good_is_tried_again_after_a_while(tmp_path: Path) -> None:
    """A GPU's write refused as not supported is not tried tick after tick, nor given up on until a reload: it is
    tried again PERMANENT_RETRY_S later (the driver may have been wrong, or fixed)."""
    from controller.retry import PERMANENT_RETRY_S

    fake, control = host(tmp_path)
    loose = control.fast.governor.settings
    for t in [*range(1, 12), int(PERMANENT_RETRY_S) + 6, int(PERMANENT_RETRY_S) + 7]:
        control.clock[0] = float(t)  # type: ignore[attr-defined]
        if t == 5:
            control.fast.governor.settings = replace(loose, budget_w=1000.0)
            fake.fail[("set", 1)] = pynvml.NVMLError_NotSupported
        if t == 6:
            fake.fail.clear()
        control.tick_fast(float(t))
        if t == 11:  # neither tried again nor forced meanwhile
            assert fake.gpus[1].limit_mw == 700_000 and control.fast.retry.blocked() == [f"power_limit:{UUID_1}"]
    assert control.fast.retry.blocked() == []  # tried again, and it took
    assert fake.gpus[1].limit_mw < 700_000 and draw_w(fake) <= control.fast.governor.threshold_w() + 1.0


def test_gpus_that_never_give_a_power_reading_get_safe_caps(tmp_path: Path) -> None:
    """No GPU supports the power reading, from the start, while their limits read and set: a trial's host drew
    2,200 W against 1,500 for the whole run, its limits left at their maximum ("safe caps (no GPU ever seen)")."""
    fake, control = host(tmp_path)
    for g in fake.gpus:
        g.unsupported = {"power"}
    control.fast.governor.settings = replace(control.fast.governor.settings, budget_w=1000.0)
    for t in range(1, 6):
        control.clock[0] = float(t)  # type: ignore[attr-defined]
        control.tick_fast(float(t))
    assert control.fast.blind.failsafe_on
    assert sum(g.limit_mw for g in fake.gpus) / 1000 <= control.fast.governor.threshold_w() + 1.0


@pytest.mark.parametrize("reads_mw", [0, 2**32 - 1])
def test_a_reading_no_powered_gpu_gives_counts_the_gpu_at_its_limit_and_is_said(
        tmp_path: Path, reads_mw: int, caplog: pytest.LogCaptureFixture) -> None:
    """A driver's 0 mW, or an unsigned -1 (4.29 MW), from chat's GPU under a 500-W limit: taken as read, 0 W lent its
    limit down to nothing unsaid (a loaded GPU cut to its floor), and 4.29 MW counted at the GPU's 700-W top and
    exported as 4.29e6 W (every GPU to its floor where all read so). Now it is no reading: counted at its limit, its
    power series a gap, said once."""
    registry = CollectorRegistry()
    fake, control = host(tmp_path, registry=registry)
    fake.gpus[0].limit_mw, fake.gpus[0].reads_mw = 500_000, reads_mw
    with caplog.at_level(logging.WARNING):
        for t in range(1, 4):
            control.clock[0] = float(t)  # type: ignore[attr-defined]
            control.tick_fast(float(t))
    assert registry.get_sample_value("wattscale_power_draw_watts") == fake.gpus[0].limit_mw / 1000 + 550.0
    assert math.isnan(registry.get_sample_value("wattscale_gpu_power_watts", {"gpu": "0", "service": "chat"}) or 0.0)
    said = [r.getMessage() for r in caplog.records if "which is no draw" in r.getMessage()]
    assert len(said) == 1 and "GPU 0" in said[0], said
    assert registry.get_sample_value("wattscale_errors_total", {"kind": "gpu_power"}) == 3.0


def test_a_gpu_back_under_another_uuid_is_not_counted_twice(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """GPU 1 is listed under a new UUID (as a MIG layout made again gives): its old UUID had stayed "missing",
    counted at its last limit on top of the GPU itself, and under a budget both fit every GPU went to its floor
    for good ("over the threshold with every limit at its floor")."""
    registry = CollectorRegistry()
    fake, control = host(tmp_path, registry=registry)
    control.fast.governor.settings = replace(control.fast.governor.settings, budget_w=1300.0)
    with caplog.at_level(logging.INFO):
        for t in range(1, 12):
            control.clock[0] = float(t)  # type: ignore[attr-defined]
            if t == 4:
                fake.gpus[1].uuid = "GPU-11111111-fake-4000-8000-000000000000"
            control.tick_fast(float(t))
    assert registry.get_sample_value("wattscale_power_draw_watts") == 1100.0
    assert all(g.limit_mw >= 550_000 for g in fake.gpus), [g.limit_mw for g in fake.gpus]
    assert any(f"GPU {UUID_1} left the site" in r.getMessage() for r in caplog.records)
    assert not control.governor.exhausted


def test_gpus_whose_limits_cannot_be_known_are_not_said_held_at_their_floors(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Every GPU reports a lowest limit above its highest: none can be set, and each is said so. The log had also
    said every GPU was held at its lowest limit, which nothing had written."""
    fake, control = host(tmp_path)
    for g in fake.gpus:
        g.min_mw, g.max_mw = 700_000, 200_000
    control.fast.governor.settings = replace(control.fast.governor.settings, budget_w=1000.0)
    with caplog.at_level(logging.INFO):
        for t in range(1, 4):
            control.clock[0] = float(t)  # type: ignore[attr-defined]
            control.tick_fast(float(t))
    said = [r.getMessage() for r in caplog.records]
    assert not [m for m in said if "lowest limits" in m], said
    assert len([m for m in said if m.startswith("gpu_limits:")]) == 2 and fake.sets == []


@pytest.mark.parametrize("lose", [("count", -1), ("power", 1)])
def test_a_refusal_from_before_an_outage_is_not_tried_again_when_readings_return(
        tmp_path: Path, lose: tuple[str, int]) -> None:
    """GPU 1's write is refused for good (no permission) while every GPU reads; then every other tick is lost (the
    count fails) or GPU 1 gives no reading. Readings returning forgot every retry record: GPU 1 was written 26 times
    in 60 s (a review). Only what failed during the outage, or while that GPU was unread, is tried again."""
    fake, control = host(tmp_path)
    control.fast.governor.settings = replace(control.fast.governor.settings, budget_w=1000.0)
    fake.fail[("set", 1)] = pynvml.NVMLError_NoPermission
    for t in range(1, 61):
        control.clock[0] = float(t)  # type: ignore[attr-defined]
        if t > 5 and t % 2:
            fake.fail[lose] = pynvml.NVMLError_Unknown
        else:
            fake.fail.pop(lose, None)
        control.tick_fast(float(t))
    tries = control.fast.metrics.actuations.labels("nvml", "power_limit", "error")._value.get()
    assert tries <= 2, tries


def test_a_gpu_never_read_beside_gpus_without_power_readings_counts_in_the_safe_caps(tmp_path: Path) -> None:
    """GPU 0 gives no power reading, GPU 1 has never been read at all: the fail-safe had capped GPU 0 alone, as
    if GPU 1 drew nothing, and the host drew 1,100 W on a 970-W threshold (a review). GPU 1 counts at the most it
    may draw, and GPU 0 takes the rest."""
    fake, control = host(tmp_path)
    fake.gpus[0].unsupported = {"power"}
    fake.fail[("*", 1)] = pynvml.NVMLError_Unknown
    control.fast.governor.settings = replace(control.fast.governor.settings, budget_w=1000.0)
    for t in range(1, 6):
        control.clock[0] = float(t)  # type: ignore[attr-defined]
        control.tick_fast(float(t))
    assert control.fast.blind.failsafe_on
    assert fake.gpus[0].limit_mw / 1000 + 700.0 <= control.fast.governor.threshold_w() + 1.0, fake.gpus[0].limit_mw


def test_writes_that_met_the_outage_in_the_tick_before_it_are_tried_again_once_readings_return(
        tmp_path: Path) -> None:
    """The driver goes between a tick's read and its writes: those writes said "GPU lost" a tick before the first
    lost sample, were taken as refusals from before the outage, and held both GPUs at 700 W for 300 s on a
    1,000-W budget once the readings came back (a review). A GPU lost is an outage, tried again after a delay."""
    fake, control = host(tmp_path)
    lost = pynvml.NVMLError_GpuIsLost
    stepped(fake, control, range(1, 14), {3: lambda: (budget(control, 1000.0),
                                                      failing(fake, lost, ("set", 0), ("set", 1))()),
                                          4: failing(fake, lost, ("*", 0), ("*", 1)), 7: fake.fail.clear}, over_from=9)
    assert control.fast.retry.blocked() == []
