"""The loops by ownership: reloads that keep the governor's state, errors sorted by recovery, read-back,
safe caps when GPU readings are lost, and a watchdog that stays silent while the fast loop stalls."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from actuators import ActuatorError, BatchInForce, PermanentActuatorError, TransientActuatorError
from actuators.dryrun import HISTORY, DryRunBatchSizer, DryRunPowerLimiter, DryRunReplicaScaler
from actuators.vllm import VllmBatchSizer
from actuators.vllm_servers import Replica
from controller.config_loader import ConfigError
from controller.control import Controller
from controller.daemon import Daemon
from controller.decision_log import DecisionLog
from controller.enforce import Enforcer, InForce
from controller.failures import SAID_ONE_BY_ONE
from controller.limit_pressure import accounted_w
from controller.optimizer import Assignment
from controller.own_metrics import OwnMetrics
from controller.reload import check_reload
from controller.retry import RetryBook
from controller.settings import Settings, load_settings
from controller.telemetry.base import GpuSample, TelemetryError
from controller.wiring import build_parts
from tuner import Tuner


class Kept(DecisionLog):
    """A decision log that keeps its records in a list instead of a file."""

    def __init__(self, records: list[dict[str, Any]]) -> None:
        super().__init__(None)
        self.records = records

    def write(self, record: dict[str, Any]) -> bool:
        self.records.append(record)
        return True


def sim_controller(settings: Settings) -> tuple[Controller, Callable[[float], None], CollectorRegistry]:
    """A controller on the simulated host; returns it, a function that advances the plant, and its metrics."""
    parts = build_parts(settings)
    registry = CollectorRegistry()
    ctl = Controller(settings, parts.gpus, parts.vllm, parts.power, parts.batch, parts.replicas,
                     Tuner(settings.state_path), OwnMetrics(registry))
    assert parts.host is not None
    return ctl, parts.host.advance_to, registry


def limits(ctl: Controller) -> list[float]:
    return [g.power_limit_w for g in ctl.fast.samples]


def test_reloading_the_same_file_while_a_cut_is_held_changes_nothing(sim_config: Callable[..., Path]) -> None:
    """Two identical plants; at 40 s both budgets step down, so the governors cut below the draw; at 61 s one
    controller is reloaded with the same file: every limit, cut, streak and cooldown stays as in the twin."""
    s = load_settings(sim_config({"budget_w = 4000": "budget_w = 2400"}))
    path = sim_config({"budget_w = 4000": "budget_w = 1300"}, name="lower.toml")
    twins = [sim_controller(s), sim_controller(s)]
    for t in range(1, 121):
        for k, (ctl, advance, _) in enumerate(twins):
            if t == 40:
                ctl.reconfigure(load_settings(path))
            if k == 0 and t == 61:
                assert ctl.governor.cut_w  # held as the reload comes
                new = load_settings(path)
                check_reload(ctl.settings, new)
                ctl.reconfigure(new)
            advance(float(t))
            ctl.tick_fast(float(t))
            if t % 15 == 0:
                ctl.tick_slow(float(t))
        if t >= 61:
            assert limits(twins[0][0]) == limits(twins[1][0]), t
    (a, _, _), (b, _, _) = twins
    assert a.governor.cut_w == b.governor.cut_w
    assert a.gate._asked == b.gate._asked and a.gate.last_change_s == b.gate.last_change_s


@pytest.mark.parametrize(("old", "new", "field"), [
    ("seed = 7", "seed = 8", "simulator.seed"),
    ("slow_interval_s = 15.0", "slow_interval_s = 5.0", "daemon.slow_interval_s"),
    ('name = "chat"\nmodel = "llama-3.1-8b"', 'name = "chat"\nmodel = "llama-3.1-8b"\ngpus = [0, 1]',
     "services[chat].gpus"),
    ('name = "code"', 'name = "coder"', "services"),
    ('name = "H100-SXM"', 'name = "H100-SXM"\ngpus_per_replica = 2', "accelerators[H100-SXM].gpus_per_replica"),
    ('name = "chat"\nmodel = "llama-3.1-8b"', 'name = "chat"\nmodel = "llama-3.1-8b"\n'
     'variants = [{ accelerator = "H100-SXM", gpus = [0, 1] }]', "services[chat].variants"),
])
def test_a_reload_that_needs_a_restart_is_refused_by_name(sim_config: Callable[..., Path], old: str, new: str,
                                                          field: str) -> None:
    before = load_settings(sim_config())
    after = load_settings(sim_config({old: new}, name="new.toml"))
    with pytest.raises(ConfigError) as err:
        check_reload(before, after)
    assert str(err.value).startswith(field + ":"), err.value


def test_a_refused_reload_says_what_runs_and_what_the_file_asks(sim_config: Callable[..., Path]) -> None:
    """It read "daemon.slow_interval_s: changes need a restart; reload refused" after the daemon's own "reload
    refused, keeping the running config:", and named neither value."""
    before = load_settings(sim_config())
    after = load_settings(sim_config({"slow_interval_s = 15.0": "slow_interval_s = 5.0"}, name="new.toml"))
    with pytest.raises(ConfigError) as err:
        check_reload(before, after)
    assert str(err.value) == "daemon.slow_interval_s: changes need a restart: 15.0 runs, the file asks 5.0"
    after = load_settings(sim_config({"cycle_period_s = 900 }": "cycle_period_s = 900, out_cv = 2.0 }"},
                                     name="table.toml"))
    with pytest.raises(ConfigError) as err:  # a table's field, not two reprs of the table cut alike
        check_reload(before, after)
    assert str(err.value).startswith("services[chat].sim.out_cv: changes need a restart: "), err.value


def test_a_reload_of_live_fields_is_taken(sim_config: Callable[..., Path]) -> None:
    before = load_settings(sim_config())
    after = load_settings(sim_config({"budget_w = 4000": "budget_w = 3000", "cooldown_s = 60": "cooldown_s = 30"},
                                     name="new.toml"))
    check_reload(before, after)
    ctl, _, _ = sim_controller(before)
    ctl.reconfigure(after)
    assert ctl.governor.settings.budget_w == 3000.0  # at once
    ctl.tick_slow(15.0)
    assert ctl.gate.settings.cooldown_s == 30.0 and ctl.settings is after  # from the next slow tick


H100 = "H100-SXM"


class FlakyScaler(DryRunReplicaScaler):
    """A dry-run scaler whose sets fail with the error a test gives it, counting the tries."""

    def __init__(self, error: ActuatorError) -> None:
        super().__init__({("chat", H100): 1})
        self.error, self.tries = error, 0

    def set_replicas(self, service: str, variant: str, replicas: int) -> int:
        self.tries += 1
        raise self.error


def enforcer(scaler: DryRunReplicaScaler) -> Enforcer:
    return Enforcer(scaler, DryRunBatchSizer({"chat": 64}), OwnMetrics(CollectorRegistry()))


ONE = InForce(Assignment(H100, 1, 64, 700.0), {H100: 1}, True)
TWO = Assignment(H100, 2, 64, 700.0)


def test_a_transient_error_waits_its_delay_doubling_on_each_failure() -> None:
    scaler = FlakyScaler(TransientActuatorError("conflict", delay_s=30.0))
    e = enforcer(scaler)
    for t in (0.0, 15.0, 29.0, 30.0, 60.0, 89.0, 90.0):
        e.apply(t, "chat", ONE, TWO)
    assert scaler.tries == 3  # at 0, at 30 (30 s later), at 90 (60 s later)


def test_a_permanent_error_is_tried_once_until_the_services_config_changes() -> None:
    scaler = FlakyScaler(PermanentActuatorError("forbidden"))
    e = enforcer(scaler)
    _, first = e.apply(0.0, "chat", ONE, TWO)
    for t in range(1, 50):
        _, done = e.apply(float(t * 15), "chat", ONE, TWO)
    assert scaler.tries == 1 and done.held == (f"replicas on {H100}: forbidden",) and first.held == done.held
    assert e.retry.blocked() == [f"replicas:chat/{H100}"]
    e.retry.forget("replicas:chat")  # what a reload with a changed service does
    e.apply(1000.0, "chat", ONE, TWO)
    assert scaler.tries == 2


def test_a_failed_rollout_is_read_back_as_the_old_batch_and_not_asked_again() -> None:
    class Runner:
        supervises = False

        def __init__(self) -> None:
            self.restarts: list[int] = []

        def restart(self, replica: Replica, max_num_seqs: int) -> None:
            self.restarts.append(max_num_seqs)

        def exited(self, name: str) -> int | None:
            return None

        def close(self) -> None:
            pass

    runner = Runner()
    reps = (Replica("chat-0", "http://127.0.0.1:9/health", ()),)
    sizer = VllmBatchSizer(runner, {"chat": reps}, {"chat": 32}, health_timeout_s=0.3, poll_s=0.05,
                           probe=lambda url, timeout_s: runner.restarts[-1] == 32)  # 64 never comes up healthy
    e = Enforcer(DryRunReplicaScaler({("chat", H100): 1}), sizer, OwnMetrics(CollectorRegistry()))
    believed = Assignment(H100, 1, 32, 700.0)
    got = e.read_back("chat", (H100,), believed)
    _, done = e.apply(0.0, "chat", got, dataclasses.replace(believed, max_batch=64))
    assert done.asked == ("max batch 32 -> 64",)
    got = e.read_back("chat", (H100,), believed)
    assert got.assignment.max_batch == 32 and not got.still  # rolling out: not a window to learn from
    sizer.wait(5.0)
    got = e.read_back("chat", (H100,), believed)
    assert got.assignment.max_batch == 32 and runner.restarts == [64, 32]  # rolled back
    for t in (30.0, 60.0, 90.0):
        e.apply(t, "chat", got, dataclasses.replace(got.assignment, max_batch=64))
    assert runner.restarts == [64, 32] and e.retry.blocked() == ["max_batch:chat"]


def test_dry_run_keeps_a_bounded_history_and_logs_only_changes() -> None:
    limiter = DryRunPowerLimiter(200.0, 700.0)
    for k in range(10 * HISTORY):
        limiter.set_power_limit(0, 400.0)
        limiter.set_power_limit(1, 300.0 + k % 2)
    assert len(limiter.actions) == HISTORY
    assert sum(a.target == "0" for a in limiter.actions) == 0  # long gone: asked once, then the same value


class LosingGpus:
    """The simulated host's GPU source, failing from tick `lose_at` to tick `back_at`: raising, or listing every GPU
    with a NaN reading (`nan`)."""

    def __init__(self, inner: object, lose_at: float, back_at: float, nan: bool = False) -> None:
        self.inner, self.lose_at, self.back_at, self.nan = inner, lose_at, back_at, nan

    def sample(self, now: float) -> list[GpuSample]:
        losing = self.lose_at <= now < self.back_at
        if losing and not self.nan:
            raise OSError("DCGM exporter unreachable")
        listing: list[GpuSample] = self.inner.sample(now)  # type: ignore[attr-defined]
        return [dataclasses.replace(g, power_w=math.nan) for g in listing] if losing else listing


def _losing(sim_config: Callable[..., Path], budget_w: float, start_s: float, end_s: float, nan: bool = False,
            upto_s: int = 0) -> tuple[Settings, Controller, Callable[[float], None], CollectorRegistry, Any]:
    """A controller on the simulated host at `budget_w`, its GPU readings lost from `start_s` to `end_s`, stepped
    through `upto_s`; also the host's own GPU source (what is in force)."""
    s = load_settings(sim_config({"budget_w = 4000": f"budget_w = {budget_w:g}"}))
    ctl, advance, registry = sim_controller(s)
    host_gpus = ctl.fast.gpus
    ctl.fast.gpus = LosingGpus(host_gpus, start_s, end_s, nan)
    for t in range(1, upto_s + 1):
        advance(float(t))
        ctl.tick_fast(float(t))
    return s, ctl, advance, registry, host_gpus


@pytest.mark.parametrize("nan", [False, True], ids=["source-down", "nan-readings"])
def test_lost_gpu_readings_bring_safe_caps_that_fit_the_budget(sim_config: Callable[..., Path], nan: bool) -> None:
    s, ctl, advance, registry, host_gpus = _losing(sim_config, 2000.0, 20.0, 30.0, nan)
    for t in range(1, 40):
        advance(float(t))
        ctl.tick_fast(float(t))
        in_force = [g.power_limit_w for g in host_gpus.sample(float(t))]  # type: ignore[attr-defined]
        failsafe = registry.get_sample_value("wattscale_power_failsafe")
        if 20 + s.daemon.failsafe_after_ticks - 1 <= t < 30:
            assert failsafe == 1.0 and sum(in_force) <= s.power.budget_w * (1 - s.power.headroom)
        else:
            assert failsafe == 0.0
    assert registry.get_sample_value("wattscale_errors_total", {"kind": "gpu_source"}) == 10.0


class DroppingGpu(LosingGpus):
    """LosingGpus with GPU 0 gone from the listing from tick `gone` on (off the bus, its exporter's series gone)."""

    def __init__(self, inner: object, gone: float, start: float, end: float) -> None:
        super().__init__(inner, start, end, False)
        self.gone = gone

    def sample(self, now: float) -> list[GpuSample]:
        return [g for g in super().sample(now) if not (g.index == 0 and now >= self.gone)]


def test_safe_caps_count_a_gpu_missing_from_the_listing_at_its_last_limit_and_never_set_it(
        sim_config: Callable[..., Path], caplog: pytest.LogCaptureFixture) -> None:
    """The failsafe capped a GPU gone from the listing like the others (`safe caps GPU 0 200 W`, a set that cannot
    reach it), and counted it at that cap where the rest of the governor counts it at its last limit: the others'
    caps summed with its limit passed the threshold."""
    s = load_settings(sim_config({"budget_w = 4000": "budget_w = 2000"}))
    ctl, advance, registry = sim_controller(s)
    host_gpus = ctl.fast.gpus
    ctl.fast.gpus = DroppingGpu(host_gpus, 10.0, 20.0, 30.0)
    threshold = s.power.budget_w * (1 - s.power.headroom)
    last_w = 0.0
    for t in range(1, 30):
        advance(float(t))
        ctl.tick_fast(float(t))
        in_force = {g.index: g.power_limit_w for g in host_gpus.sample(float(t))}  # type: ignore[attr-defined]
        if t == 19:
            last_w = in_force[0]
        if t >= 20 + s.daemon.failsafe_after_ticks - 1:
            assert registry.get_sample_value("wattscale_power_failsafe") == 1.0
            assert in_force[0] == last_w  # not set
            assert sum(w for i, w in in_force.items() if i != 0) + last_w <= threshold + 1e-6
    assert last_w > 0.0
    (said,) = [r.getMessage() for r in caplog.records if "safe caps" in r.getMessage()]
    assert "GPU 0 counted at" in said and "GPU 0 2" not in said, said


@pytest.mark.parametrize(("budget_w", "fails", "lowered"), [(2400.0, False, False), (2000.0, False, True),
                                                             (2000.0, True, False)])
def test_safe_caps_count_a_gpu_in_backoff_at_its_limit_and_try_it_only_where_they_do_not_fit_without_it(
        sim_config: Callable[..., Path], caplog: pytest.LogCaptureFixture, budget_w: float, fails: bool,
        lowered: bool) -> None:
    """GPU 0's limit sets fail (backoff) at 700 W as the readings go. Counted at 700 W, the other seven share what
    it leaves at 2,400 W, and it is not tried; at 2,000 W seven floors and its 700 W pass the threshold, so it is
    tried anyway (as the governor tries a GPU in backoff that a line needs), and the caps fit. Where that try fails
    again, the others are held to their floors around its 700 W (set with caps that assumed it lowered, they had
    held 2,398 W of limits for two ticks), and the log says the caps do not fit, and why."""
    s, ctl, advance, registry, host_gpus = _losing(sim_config, budget_w, 20.0, 40.0, upto_s=19)
    host_power = ctl.fast.power
    threshold = s.power.budget_w * (1 - s.power.headroom)
    g0 = ctl.fast.samples[0]
    host_power.set_power_limit(0, 700.0)  # as in force when its sets began to fail
    ctl.fast.samples = [dataclasses.replace(g0, power_limit_w=700.0), *ctl.fast.samples[1:]]
    ctl.fast.retry.failed(f"power_limit:{g0.uuid}", 19.0, TransientActuatorError("busy", delay_s=600.0))
    if fails:
        ctl.fast.power = RecordingGpu0(host_power, "fail")  # type: ignore[assignment]
    for t in range(20, 20 + s.daemon.failsafe_after_ticks):
        advance(float(t))
        ctl.tick_fast(float(t))
        in_force = [g.power_limit_w for g in host_gpus.sample(float(t))]  # type: ignore[attr-defined]
        if registry.get_sample_value("wattscale_power_failsafe") == 1.0:
            break
    assert registry.get_sample_value("wattscale_power_failsafe") == 1.0
    assert (in_force[0] < 700.0) == lowered
    assert sum(in_force) <= (threshold + 1e-6 if not fails else 700.0 + 7 * 200.0)
    (said,) = [r.getMessage() for r in caplog.records if "GPU readings lost for" in r.getMessage()]
    assert ("GPU 0 counted at 700 W (cannot be set)" in said) != lowered, said
    unfit = [r.getMessage() for r in caplog.records if "do not fit" in r.getMessage()]
    assert unfit == (["the safe caps do not fit the budget: the GPUs that cannot be set hold 700 W of it"] if fails
                     else [])


class RecordingGpu0:
    """The simulated host's power limits, GPU 0's sets failing ("fail") or applied at 500 W at least ("clamp": a
    driver's own floor), every set recorded."""

    name = "sim"

    def __init__(self, inner: Any, mode: str) -> None:
        self.inner, self.mode, self.sets = inner, mode, []  # type: list[tuple[int, float]]

    def set_power_limit(self, gpu_index: int, watts: float) -> float:
        self.sets.append((gpu_index, watts))
        if gpu_index == 0 and self.mode == "fail":
            raise TransientActuatorError("busy", delay_s=600.0)
        clamped = gpu_index == 0 and self.mode == "clamp"
        return float(self.inner.set_power_limit(gpu_index, max(watts, 500.0) if clamped else watts))


@pytest.mark.parametrize(("mode", "retry_at_s"), [("clamp", 619.0), ("fail", 11.0), ("ok", 619.0)])
def test_safe_caps_hold_the_threshold_on_every_lost_tick_whatever_a_shaky_gpu_does(
        sim_config: Callable[..., Path], mode: str, retry_at_s: float) -> None:
    """GPU 0 at 700 W, its sets lately failing; the others at 300 W; a lost tick brings safe caps at once. A driver
    that applied 500 W where 242.5 W was asked was read as at 242.5 W (2,197.5 W of limits on every lost tick); a
    GPU whose backoff had just run out was set after the others, whose caps assumed it lowered, and failed (2,397.5
    W); one forced and lowered was written twice."""
    s, ctl, advance, _, host_gpus = _losing(sim_config, 2000.0, 20.0, 40.0, upto_s=19)
    host_power = ctl.fast.power
    threshold = s.power.budget_w * (1 - s.power.headroom)
    for g in ctl.fast.samples:
        host_power.set_power_limit(g.index, 700.0 if g.index == 0 else 300.0)
    ctl.fast.samples = [dataclasses.replace(g, power_limit_w=700.0 if g.index == 0 else 300.0)
                        for g in ctl.fast.samples]
    ctl.fast.blind.failsafe_after_ticks = 1
    ctl.fast.retry.failed(f"power_limit:{ctl.fast.samples[0].uuid}", retry_at_s - 600.0 if retry_at_s < 600 else 19.0,
                          TransientActuatorError("busy", delay_s=1.0 if retry_at_s < 600 else 600.0))
    recording = RecordingGpu0(host_power, mode)
    ctl.fast.power = recording  # type: ignore[assignment]
    for t in range(20, 26):
        advance(float(t))
        ctl.tick_fast(float(t))
        in_force = [g.power_limit_w for g in host_gpus.sample(float(t))]  # type: ignore[attr-defined]
        assert sum(in_force) <= max(threshold, in_force[0] + 7 * 200.0) + 1e-6, (t, in_force)
        assert [g.power_limit_w for g in ctl.fast.samples] == pytest.approx(in_force), t  # as the driver applied
    if mode == "ok":
        assert [w for i, w in recording.sets if i == 0] == [242.5]  # forced once, lowered, not written again


class GlitchingGpu:
    """The simulated host's GPU source with GPU 0 reading `reading` W from tick `at` on: a DCGM exporter's sentinel."""

    def __init__(self, inner: object, at: float, reading: float) -> None:
        self.inner, self.at, self.reading = inner, at, reading

    def sample(self, now: float) -> list[GpuSample]:
        listing: list[GpuSample] = self.inner.sample(now)  # type: ignore[attr-defined]
        return [dataclasses.replace(g, power_w=self.reading) if g.index == 0 and now >= self.at else g for g in listing]


@pytest.mark.parametrize("reading", [-500.0, math.nan])
def test_a_reading_that_is_no_draw_counts_at_the_limit_and_is_said_once(sim_config: Callable[..., Path],
                                                                       caplog: pytest.LogCaptureFixture,
                                                                       reading: float) -> None:
    """-500 W per GPU from a DCGM exporter read as a site draw of -4,000 W and ended a power emergency, unsaid."""
    s = load_settings(sim_config())
    ctl, advance, registry = sim_controller(s)
    host_gpus = ctl.fast.gpus
    ctl.fast.gpus = GlitchingGpu(host_gpus, 5.0, reading)
    for t in range(1, 12):
        advance(float(t))
        ctl.tick_fast(float(t))
        draws = [accounted_w(g) for g in ctl.fast.samples]
        assert ctl.fast.draw_w is not None and ctl.fast.draw_w >= sum(draws[1:])
        if t >= 5:
            assert draws[0] == ctl.fast.samples[0].power_limit_w  # none read: counted at its limit
    said = [r for r in caplog.records if "gpu_power" in r.getMessage()]
    assert len(said) == 1 and "GPU 0 (" in said[0].getMessage() and "which is no draw" in said[0].getMessage()
    assert registry.get_sample_value("wattscale_errors_total", {"kind": "gpu_power"}) == 7.0  # ticks 5-11


@pytest.mark.parametrize("reading", [5000.0, 0.0, 704.0])
def test_a_draw_far_past_what_the_gpu_can_draw_or_of_nothing_is_no_reading_the_draw_curve_learns(
        sim_config: Callable[..., Path], reading: float) -> None:
    """One 5,000-W reading a window took a service's mean draw from 400 to 553 W, every window kept, and the draw
    curve's busy share from 0.39 to 0.71; 0-W readings pulled it low. A few watts over the top, as a GPU at its cap
    reads, counts at the top (dropped, the readings of GPUs at their cap were lost)."""
    s = load_settings(sim_config({"min_replicas = 1": "min_replicas = 2"}))
    ctl, advance, _ = sim_controller(s)
    for t in (1.0, 2.0):
        advance(t)
        ctl.tick_fast(t)
        ctl.tick_slow(t)  # a plan: the GPUs' services
    by_service: dict[str, list[int]] = {}
    for g in ctl.fast.samples:
        if g.service is not None:
            by_service.setdefault(g.service, []).append(g.index)
    service, gpus = next((n, i) for n, i in by_service.items() if len(i) >= 2)
    glitched = gpus[0]

    class Glitching:
        def sample(self, now: float) -> list[GpuSample]:
            return [dataclasses.replace(g, power_w=reading) if g.index == glitched else g
                    for g in inner.sample(now)]

    inner = ctl.fast.gpus
    ctl.fast.gpus = Glitching()  # type: ignore[assignment]
    ctl.fast.ledger.take(service)
    for t in range(3, 12):
        advance(float(t))
        ctl.tick_fast(float(t))
    taken = ctl.fast.ledger.take(service)
    counted = [g.power_w or 0.0 for g in ctl.fast.samples if g.service == service and g.index != glitched]
    top = next(g.max_limit_w for g in ctl.fast.samples if g.index == glitched)
    counted += [top] if reading == 704.0 else []  # over the top by a hair: at the top; a glitch: left out
    assert len(taken) == 9 and taken[-1].draw_w == pytest.approx(sum(counted) / len(counted))


def test_safe_caps_never_raise_a_limit(sim_config: Callable[..., Path]) -> None:
    """The failsafe set every GPU to one level that fits the budget: GPUs the plan held at 200 W (none of the
    services' own) and serving ones at 420 W went to 582 W while only their readings were lost."""
    s = load_settings(sim_config({"budget_w = 4000": "budget_w = 6000"}))
    ctl, advance, _ = sim_controller(s)
    host_gpus = ctl.fast.gpus
    for t in range(1, 10):
        advance(float(t))
        ctl.tick_fast(float(t))
    ctl.fast.gpus = LosingGpus(host_gpus, 10.0, 30.0)
    before = {g.index: g.power_limit_w for g in host_gpus.sample(9.5)}  # type: ignore[attr-defined]
    assert min(before.values()) < 700.0  # (those of no service at their minimum) under the budget's level, 700 W
    for t in range(10, 20):
        advance(float(t))
        ctl.tick_fast(float(t))
    after = {g.index: g.power_limit_w for g in host_gpus.sample(20.0)}  # type: ignore[attr-defined]
    assert all(after[i] <= before[i] for i in before), (before, after)


def test_the_watchdog_is_silent_while_the_fast_loop_stalls(sim_config: Callable[..., Path], tmp_path: Path) -> None:
    """The daemon, in this process, with systemd's notify socket played by the test: while a GPU read hangs
    for 4 s no WATCHDOG=1 arrives after the first 2 s of it; once it returns, pings resume."""
    path = sim_config()
    daemon = Daemon(path, load_settings(path))
    address = str(tmp_path / "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    sock.settimeout(0.2)
    daemon.notifier.address = address
    pings: list[float] = []
    stall = threading.Event()

    class Stalling:
        def sample(self, now: float) -> list[GpuSample]:
            if stall.is_set():
                stall.clear()
                time.sleep(4.0)
            return inner.sample(now)  # type: ignore[no-any-return]

    inner = daemon.controller.fast.gpus
    daemon.controller.fast.gpus = Stalling()

    def listen() -> None:
        deadline = time.monotonic() + 10.0
        while time.monotonic() < deadline:
            try:
                if b"WATCHDOG=1" in sock.recv(4096):
                    pings.append(time.monotonic())
            except TimeoutError:
                pass

    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    timer = threading.Timer(2.0, stall.set)
    timer.start()
    started = time.monotonic()
    daemon.run(duration_s=9.0)
    listener.join()
    sock.close()
    silent = [t for t in pings if started + 5.0 <= t <= started + 6.0]
    assert not silent, [round(t - started, 1) for t in pings]
    assert any(t < started + 2.0 for t in pings) and any(t > started + 7.0 for t in pings)  # before and after


def test_the_decision_log_rotates_and_survives_a_path_it_cannot_write(tmp_path: Path,
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    log = DecisionLog(tmp_path / "d" / "decisions.jsonl", max_bytes=400)
    for t in range(20):
        assert log.write({"t": t, "services": {"chat": {"planned": {"replicas": 2}}}})
    lines = (tmp_path / "d" / "decisions.jsonl").read_text().splitlines()
    older = (tmp_path / "d" / "decisions.jsonl.1").read_text().splitlines()
    assert json.loads(lines[-1])["t"] == 19 and len(lines) + len(older) < 20  # one old file kept
    (tmp_path / "file").write_text("")
    blocked = DecisionLog(tmp_path / "file" / "decisions.jsonl")  # its directory is a file
    assert not blocked.write({"t": 1}) and not blocked.write({"t": 2})
    assert sum("cannot be written" in r.message for r in caplog.records) == 1


def test_a_metrics_port_taken_after_the_probe_is_one_config_error(sim_config: Callable[..., Path]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        path = sim_config({"port = 9464": f"port = {taken.getsockname()[1]}"})
        daemon = Daemon(path, load_settings(path))
        with pytest.raises(ConfigError, match=r"^metrics\.port: cannot listen on 127\.0\.0\.1"):
            daemon.run(duration_s=1.0)


@pytest.mark.parametrize("tz", ["UTC0", "JST-9", "CET-1CEST,M3.5.0,M10.5.0/3", "Nowhere/Land"])
def test_a_posix_or_unknown_tz_does_not_stop_the_daemon(sim_config: Callable[..., Path],
                                                        monkeypatch: pytest.MonkeyPatch, tz: str) -> None:
    """The scheduler asked tzlocal for the local zone, which refuses a POSIX TZ (and an unknown one): run ended
    with a ZoneInfoNotFoundError traceback. Its jobs are intervals: no zone is needed."""
    monkeypatch.setenv("TZ", tz)
    path = sim_config()
    assert Daemon(path, load_settings(path)).run(duration_s=0.5) == 0


def test_a_gpus_power_is_one_series_whoever_owns_it(sim_config: Callable[..., Path]) -> None:
    """GPU 3 is idle, then serves chat: its power is exported once, under its present owner only."""
    s = load_settings(sim_config())
    ctl, _, registry = sim_controller(s)
    owners = iter([None, "chat"])

    class Owned:
        def sample(self, now: float) -> list[GpuSample]:
            return [GpuSample(3, "GPU-3", "H100-SXM", 300.0, None, 700.0, 200.0, 700.0, service=next(owners))]

    ctl.fast.gpus = Owned()
    for t in (1.0, 2.0):
        ctl.tick_fast(t)
    series = [s.labels for m in registry.collect() if m.name == "wattscale_gpu_power_watts" for s in m.samples]
    assert series == [{"gpu": "3", "service": "chat"}]


def test_a_state_dir_that_cannot_be_written_is_counted_not_fatal(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    s = load_settings(Path(__file__).resolve().parents[1] / "config" / "sim.toml")
    s = dataclasses.replace(s, base_dir=str(tmp_path), daemon=dataclasses.replace(s.daemon, state_dir="file"))
    ctl, advance, registry = sim_controller(s)
    for t in range(1, 61):
        advance(float(t))
        ctl.tick_fast(float(t))
        if t % 15 == 0:
            ctl.tick_slow(float(t))
    assert (registry.get_sample_value("wattscale_errors_total", {"kind": "tuner_state"}) or 0.0) >= 1.0
    assert registry.get_sample_value("wattscale_plan_version") == 4.0  # every cycle planned regardless


def test_a_target_failing_for_days_keeps_a_bounded_delay() -> None:
    book = RetryBook(base_delay_s=5.0, max_delay_s=300.0)
    for k in range(2000):
        book.failed("power_limit:GPU-0", float(k), TransientActuatorError("busy", delay_s=5.0))
    assert book.failing["power_limit:GPU-0"].retry_at == 1999.0 + 300.0


def test_a_failed_batch_read_is_no_still_window() -> None:
    class Unreadable(DryRunBatchSizer):
        def get_max_batch(self, service: str) -> BatchInForce:
            raise TransientActuatorError("vLLM restarting")

    e = Enforcer(DryRunReplicaScaler({("chat", H100): 1}), Unreadable({"chat": 64}), OwnMetrics(CollectorRegistry()))
    believed = Assignment(H100, 1, 64, 700.0)
    assert [e.read_back("chat", (H100,), believed).still for _ in range(3)] == [False, False, False]


def test_the_degradation_ladder_shows_in_metrics_and_the_decision_log(sim_config: Callable[..., Path],
                                                                      tmp_path: Path) -> None:
    """Under a budget too tight for the fleet's load, the governor holds GPUs below the plan's caps within
    seconds and the plan leaves services short for budget; both read in the metric and the decision log."""
    s = load_settings(sim_config({"budget_w = 4000": "budget_w = 1400"}))
    ctl, advance, registry = sim_controller(s)
    ctl.decisions = DecisionLog(tmp_path / "decisions.jsonl")
    for t in range(1, 91):
        advance(float(t))
        ctl.tick_fast(float(t))
        if t % 15 == 0:
            ctl.tick_slow(float(t))
    held = registry.get_sample_value("wattscale_power_degradation", {"step": "caps"})
    shed = registry.get_sample_value("wattscale_power_degradation", {"step": "shed"})
    records = [json.loads(line) for line in (tmp_path / "decisions.jsonl").read_text().splitlines()]
    record = records[-1]
    assert held is not None and held >= 1 and shed is not None and shed >= 1, (held, shed)
    assert record["degradation"]["shed_for_budget"] and record["degradation"]["gpus_held_below_plan"] >= 0
    shaped = registry.get_sample_value("wattscale_power_degradation", {"step": "shape"})
    assert shaped == len(record["degradation"]["shrunk_for_budget"])  # the metric counts what the log names
    steps = [r["degradation"]["step"] for r in records]
    assert steps[-1] == "shed" and all(step in ("none", "caps", "shape", "shed") for step in steps), steps


def test_a_budget_drop_goes_down_the_ladder_caps_first(sim_config: Callable[..., Path], tmp_path: Path) -> None:
    """The budget drops from 4,000 W to 1,900 W at 120 s: the governor holds GPUs below their caps at once (at the
    next fast tick, before any slow cycle), and the slow loop then shrinks services' replicas or max batch for
    budget."""
    ctl, advance, registry = sim_controller(load_settings(sim_config()))
    ctl.decisions = DecisionLog(tmp_path / "decisions.jsonl")
    shaped, held = [], {}
    for t in range(1, 181):
        if t == 120:
            ctl.set_budget(1900.0, "test drop", float(t))
        advance(float(t))
        ctl.tick_fast(float(t))
        held[t] = registry.get_sample_value("wattscale_power_degradation", {"step": "caps"})
        if t % 15 == 0:
            ctl.tick_slow(float(t))
            shaped.append(registry.get_sample_value("wattscale_power_degradation", {"step": "shape"}))
    assert held[119] == 0 and (held[121] or 0) >= 1, held
    records = [json.loads(line) for line in (tmp_path / "decisions.jsonl").read_text().splitlines()]
    steps = [r["degradation"]["step"] for r in records if r["t"] > 120]
    assert steps[0] != "shed", steps  # the ladder's last step is not the first
    assert "shape" in steps, steps  # the middle step itself, between the caps and shedding
    shrunk = [r["degradation"]["shrunk_for_budget"] for r in records if r["degradation"]["step"] == "shape"]
    assert all(shrunk) and max(v or 0.0 for v in shaped) >= 1


def test_a_source_down_for_cycles_is_logged_once_a_run_and_counted_every_cycle(
        sim_config: Callable[..., Path], caplog: pytest.LogCaptureFixture) -> None:
    """A Prometheus outage wrote the same warning every slow cycle (every 3 s on a short period): now the first of
    a run is logged, and each is counted and in its cycle's record."""
    settings = load_settings(sim_config())
    ctl, advance, registry = sim_controller(settings)
    real = ctl.vllm

    class Outage:
        down = True

        def observe(self, now: float, services: list[str]) -> Any:
            if self.down:
                raise ConnectionError("prometheus at 127.0.0.1:9 unreachable")
            return real.observe(now, services)

    outage = Outage()
    ctl.vllm = outage  # type: ignore[assignment]
    t = 0.0
    with caplog.at_level("INFO", logger="wattscale.controller"):
        for down in (True, True, True, False, True, True):
            outage.down = down
            t += 30.0
            advance(t)
            ctl.tick_fast(t)
            ctl.tick_slow(t)
    warned = [r for r in caplog.records if r.getMessage().startswith("vllm_source: prometheus")]
    assert len(warned) == 2, [r.getMessage() for r in caplog.records]  # the run of three, then the run of two
    assert registry.get_sample_value("wattscale_errors_total", {"kind": "vllm_source"}) == 5
    records: list[dict[str, Any]] = []

    ctl.decisions = Kept(records)
    ctl.error("budget_source", "grid: token missing")  # between two cycles (another thread): in the next record
    ctl.tick_slow(t + 30.0)
    assert records[-1]["errors"] == ["budget_source: grid: token missing",
                                     "vllm_source: prometheus at 127.0.0.1:9 unreachable"]
    assert len([r for r in caplog.records if r.getMessage().startswith("vllm_source: prometheus")]) == 2



@pytest.mark.parametrize(("edit", "verdict"), [
    ({"rate_rps": -1.0}, "window refused: rate -1 rps outside [0, 100000]"),
    ({"rate_rps": 1e8}, "window refused: rate 1e+08 rps outside [0, 100000]"),
    ({"waiting": -1000.0}, "window refused: waiting -1000 outside [0, 1e+07]"),
    ({"waiting": 1e11}, "window refused: waiting 1e+11 outside [0, 1e+07]"),  # a backlog of 7.5e9 rps: 38 s, 7 GB
    ({"in_tokens": 1e12}, "window refused: in_tokens 1e+12 outside [0, 1e+06]"),
    ({"running": math.inf}, "window refused: running inf outside [0, 1e+07]"),  # arrivals read inf rps from it
    ({"waiting_before": -1.0}, "window refused: waiting_before -1 outside [0, 1e+07]"),
    ({"preemptions": math.nan}, "window refused: preemptions nan outside [0, 1e+07]"),  # read as not saturated
    ({"window_s": 0.0}, "window refused: window_s 0.0 outside [0.1, 604800]"),  # the growth divided by zero
    ({"window_s": 5e-324}, "window refused: window_s 5e-324 outside [0.1, 604800]"),  # every growth infinite
    ({"running": 9.9e6}, "window refused: running 9.9e+06 past 4096 a replica (1 replicas)"),  # demand at its cap
    ({"replicas": 10**5000}, "window refused: replicas past 1e15 outside [0, 100000]"),  # overflowed every rate
    ({"out_tokens": 0.5}, None),  # a mean under one token: read as one, the cycle plans
    ({"replicas": 3001}, "window refused: 3001 engines report its model, past twice the replicas it may run or runs "
                         "(8 in all): another deployment's engines under its model name, or labels that multiply its "
                         "series"),  # each engine read at 1/3,001 of the load, the fit learnt from it
    ({"replicas": 8}, None),  # a rollout's surge beside pods still draining: a window
])
def test_a_window_with_an_absurd_figure_is_refused_and_the_cycle_plans(
        sim_config: Callable[..., Path], edit: dict[str, float], verdict: str | None) -> None:
    """A negative rate or backlog, or a mean under one token, raised out of every slow tick (ModelInputError:
    nothing planned, no record); a rate of 1e8 held one tick for minutes and gigabytes."""
    settings = load_settings(sim_config())
    ctl, advance, registry = sim_controller(settings)
    real = ctl.vllm
    records: list[dict[str, Any]] = []

    class Hostile:
        def observe(self, now: float, services: list[str]) -> Any:
            windows = real.observe(now, services)
            return {name: dataclasses.replace(w, **edit) if name == "chat" else w for name, w in windows.items()}

    ctl.vllm, ctl.decisions = Hostile(), Kept(records)  # type: ignore[assignment]
    for t in (30.0, 60.0, 90.0):
        advance(t)
        ctl.tick_fast(t)
        assert ctl.tick_slow(t) is not None  # planned
    chat = records[-1]["services"]["chat"]
    assert (chat["tuner"] == verdict) if verdict else not chat["tuner"].startswith("window refused"), chat
    refused = registry.get_sample_value("wattscale_errors_total", {"kind": "bad_window"})
    assert (refused or 0) >= 1 if verdict else refused == 0.0  # (the first cycle has no window: a rate takes two)
    # said in the decision's errors too, in words that stay the same while it repeats: it had been counted alone
    what = "" if verdict is None else verdict.split()[2]
    said = f"bad_window: chat: its window is refused for its {'engine count' if what[:1].isdigit() else what}, its " \
           "last load estimate held (the value: the decision log's services.chat.tuner, or the DEBUG log)"
    assert (said in records[-1]["errors"]) if verdict else not records[-1]["errors"]


def test_a_slow_loop_past_its_period_is_said_once_a_run_and_each_overrun_counted(
        sim_config: Callable[..., Path], caplog: pytest.LogCaptureFixture) -> None:
    """A slow cycle stuck on endpoints that never answered was counted (slow_overrun) and never logged; then it
    was counted and said only two periods after it began (the first period found the cycle due, not running)."""
    caplog.set_level(logging.INFO, logger="wattscale")
    path = sim_config()
    daemon = Daemon(path, load_settings(path))
    daemon.wake_slow()  # due: a worker takes it
    assert daemon.metrics.errors.labels("slow_overrun")._value.get() == 0.0
    daemon.slow_due.clear()  # ... as it does when it begins the cycle, and is stuck in it
    daemon.slow_running, daemon.slow_started = True, time.monotonic()
    daemon.wake_slow()  # a cycle the floor alarm began just before the period is no overrun
    assert daemon.metrics.errors.labels("slow_overrun")._value.get() == 0.0
    daemon.slow_due.clear()
    daemon.slow_started -= 15.0  # a period on, it still runs
    for _ in range(2):  # the next period finds it running, and the one after
        daemon.wake_slow()
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("slow loop")]
    assert len(said) == 1 and "its 15-s period came round with a cycle still running" in said[0], said
    assert daemon.metrics.errors.labels("slow_overrun")._value.get() == 2.0
    worker = threading.Thread(target=daemon.slow_worker)
    worker.start()
    deadline = time.monotonic() + 60.0
    while daemon.overrunning and time.monotonic() < deadline:
        time.sleep(0.01)
    daemon.stop_event.set()
    daemon.slow_due.set()
    worker.join(timeout=60.0)
    assert not worker.is_alive() and not daemon.overrunning
    assert [r.getMessage() for r in caplog.records if r.getMessage().startswith("slow loop")][1].startswith(
        "slow loop: caught up (that cycle took")


def test_a_fast_tick_that_fails_is_said_once_a_run_counted_each_time_and_stops_the_watchdog(
        sim_config: Callable[..., Path], caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """A bug in a tick had logged its traceback every second (and APScheduler's beside it)."""
    path = sim_config()
    daemon = Daemon(path, load_settings(path))
    daemon.fast()
    ticked = daemon.last_fast

    def broken(now: float) -> bool:
        raise RuntimeError("a bug")

    monkeypatch.setattr(daemon.controller, "tick_fast", broken)
    for _ in range(3):
        daemon.fast()
    said = [r for r in caplog.records if r.getMessage().startswith("fast tick failed")]
    assert len(said) == 1 and said[0].exc_info is not None
    assert daemon.metrics.errors.labels("fast_tick")._value.get() == 3.0 and daemon.last_fast == ticked
    monkeypatch.undo()
    daemon.fast()
    assert daemon.last_fast > ticked and not daemon.fast_failing


def test_many_gpus_gone_from_the_listing_at_once_are_named_a_few_and_counted(sim_config: Callable[..., Path],
                                                                            caplog: pytest.LogCaptureFixture) -> None:
    s = load_settings(sim_config())
    ctl, advance, _ = sim_controller(s)
    for t in range(1, 3):
        advance(float(t))
        ctl.tick_fast(float(t))
    one = ctl.fast.samples[:1]
    ctl.fast.gpus = type("Gone", (), {"sample": lambda self, now: one})()  # every GPU but one off the listing at once
    ctl.tick_fast(3.0)
    said = [r.getMessage() for r in caplog.records if "missing from the listing" in r.getMessage()]
    assert len(said) == SAID_ONE_BY_ONE + 1 and said[-1] == (f"{7 - SAID_ONE_BY_ONE} more GPUs missing from the "
                                                             "listing, each at its last limit")


def test_an_empty_listing_after_gpus_were_seen_is_a_lost_sample(sim_config: Callable[..., Path]) -> None:
    """A source that lists no GPU at all (an exporter's series gone, NVML counting 0) had every GPU counted as
    missing and left unset, the governor 'at its floors' over none: under a budget cut it never cut, nor failed
    safe. Now it is a lost sample, and safe caps follow."""
    s = load_settings(sim_config())
    ctl, advance, registry = sim_controller(s)
    for t in range(1, 3):
        advance(float(t))
        ctl.tick_fast(float(t))
    ctl.fast.gpus = type("Gone", (), {"sample": lambda self, now: []})()
    for t in range(3, 3 + s.daemon.failsafe_after_ticks):
        ctl.tick_fast(float(t))
    assert ctl.fast.blind.lost == s.daemon.failsafe_after_ticks and not ctl.fast.governor.exhausted
    assert registry.get_sample_value("wattscale_power_failsafe") == 1.0
    assert sum(g.power_limit_w for g in ctl.fast.samples) <= s.power.budget_w * (1 - s.power.headroom)
    # the metrics say what is known: no draw (the last one had been held as if measured), the caps in force
    assert math.isnan(registry.get_sample_value("wattscale_power_draw_watts") or 0.0)
    assert [registry.get_sample_value("wattscale_gpu_power_limit_watts", {"gpu": str(g.index)})
            for g in ctl.fast.samples] == [g.power_limit_w for g in ctl.fast.samples]


def test_a_refused_budget_reload_names_what_changed(sim_config: Callable[..., Path]) -> None:
    """A source added, or a schedule's rule changed, printed both source lists cut to 80 characters alike."""
    table = ('\n[power.budget]\nsafe_budget_w = 3000\n[[power.budget.sources]]\nkind = "schedule"\nname = "tou"\n'
             'time_zone = "UTC"\ndefault_budget_w = 3500\nrules = [{ days = ["mon"], start = "08:00", end = "18:00", '
             'budget_w = 2000 }]\n')
    with_table = {'mode = "predicted"\n': 'mode = "predicted"\n' + table}
    before = load_settings(sim_config(with_table))
    cases = [
        (table + '[[power.budget.sources]]\nkind = "fixed"\nname = "contract"\nbudget_w = 3800\n',
         "power.budget.sources: added ['contract']: budget sources change with a restart"),
        (table.replace("budget_w = 2000 }", "budget_w = 2500 }"),
         "power.budget.sources[tou].rules[0].budget_w: changes need a restart (budget sources hold tokens and "
         "readings): 2000.0 runs, the file asks 2500.0"),
    ]
    for k, (edited, said) in enumerate(cases):
        after = load_settings(sim_config({'mode = "predicted"\n': 'mode = "predicted"\n' + edited}, name=f"{k}.toml"))
        with pytest.raises(ConfigError) as err:
            check_reload(before, after)
        assert str(err.value).startswith(said), err.value


def test_a_reload_and_a_period_plan_no_closer_than_half_a_period(sim_config: Callable[..., Path],
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A reload plans at once; the period's cycle 0.2 s later read windows of 0.2 s (chat at 88 rps where 15 arrived,
    `steady`) and scaled on them, and a reload 0.2 s after the period's cycle did the same (a review). The period's
    wake within half a period of a reload's cycle is skipped, and a reload within half a period of the last cycle
    leaves the plan to the next period; the floor alarm's cycles are neither."""
    path = sim_config()
    daemon = Daemon(path, load_settings(path))
    half = 0.5 * daemon.settings.daemon.slow_interval_s
    edited = load_settings(path)
    monkeypatch.setattr("controller.daemon.load_settings", lambda _: dataclasses.replace(
        edited, power=dataclasses.replace(edited.power, budget_w=3900.0)))
    daemon.slow_started = time.monotonic() - 0.2  # the period's cycle, just now
    daemon.reload()
    assert daemon.settings.power.budget_w == 3900.0 and not daemon.slow_due.is_set()
    daemon.slow_started -= half
    monkeypatch.setattr("controller.daemon.load_settings", lambda _: edited)  # back to 4,000 W: a change
    daemon.reload()
    assert daemon.slow_due.is_set()
    daemon.slow_due.clear()
    daemon.wake_slow()  # the period, 0.2 s on in the test's terms: skipped
    assert not daemon.slow_due.is_set()
    daemon.reload_planned -= half
    daemon.wake_slow()
    assert daemon.slow_due.is_set()


def test_a_gpu_source_failing_every_other_tick_is_logged_once_while_it_repeats(
        sim_config: Callable[..., Path], caplog: pytest.LogCaptureFixture) -> None:
    """Each of its failures starts a run of lost ticks, which the fast loop reports as the run's first: a source
    that failed every other tick logged 300 warnings in ten minutes. Counted each, recorded once a cycle, logged
    once while it repeats."""
    ctl, advance, registry = sim_controller(load_settings(sim_config()))
    source = ctl.fast.gpus
    real = source.sample

    def flaky(now: float) -> list[GpuSample]:
        if int(now) % 2:
            raise TelemetryError("the exporter timed out")
        return real(now)

    source.sample = flaky  # type: ignore[method-assign]
    errors = []
    for t in range(1, 181):
        advance(float(t))
        ctl.tick_fast(float(t))
        if t % 30 == 0:
            errors.append(ctl.failures.take())
    assert all(e == ["gpu_source: the exporter timed out"] for e in errors), errors
    assert registry.get_sample_value("wattscale_errors_total", {"kind": "gpu_source"}) == 90.0
    assert sum("the exporter timed out" in r.getMessage() for r in caplog.records) == 1


def test_a_slow_tick_failing_alike_every_cycle_logs_its_traceback_once_a_run(
        sim_config: Callable[..., Path], caplog: pytest.LogCaptureFixture) -> None:
    """A bug that fails every slow cycle printed its traceback every 30 s for ever (the operator's logged once a
    run already): counted each cycle, logged once while it repeats, and again once a cycle went through."""
    path = sim_config()
    daemon = Daemon(path, load_settings(path))
    real = daemon.controller.tick_slow
    failure: list[Exception | None] = [KeyError("a service the plan lost")]

    def broken(now: float) -> None:
        if failure[0] is not None:
            raise failure[0]
        real(now)

    daemon.controller.tick_slow = broken  # type: ignore[method-assign]
    for _ in range(5):
        daemon.slow()
    failure[0] = None
    daemon.slow()
    failure[0] = KeyError("a service the plan lost")
    daemon.slow()
    logged = [r for r in caplog.records if r.getMessage().startswith("slow tick failed")]
    assert len(logged) == 2 and all(r.exc_info for r in logged)
    assert daemon.metrics.errors.labels("slow_tick")._value.get() == 6.0


def test_the_metrics_url_logged_for_an_ipv6_address_can_be_used_as_printed(
        sim_config: Callable[..., Path], caplog: pytest.LogCaptureFixture) -> None:
    """`listen = "::1"` logged http://::1:19722/metrics, which no client reads as a host and a port."""
    with socket.socket(socket.AF_INET6) as s:
        try:
            s.bind(("::1", 0))
        except OSError:
            pytest.skip("no IPv6 loopback here")
        port = int(s.getsockname()[1])
    path = sim_config({'listen = "127.0.0.1"': 'listen = "::1"', "port = 9464": f"port = {port}"})
    caplog.set_level(logging.INFO, logger="wattscale")
    assert Daemon(path, load_settings(path)).run(duration_s=0.3) == 0
    assert any(f"metrics on http://[::1]:{port}/metrics" in r.getMessage() for r in caplog.records)


def test_a_decisions_log_line_names_ten_changed_services_and_counts_the_rest(
        sim_config: Callable[..., Path], caplog: pytest.LogCaptureFixture) -> None:
    """A first cycle of 100 services wrote one 20-KB line, past what a journal keeps whole: the line names ten, and
    the decision log holds every one."""
    extra = "".join(f'\n[[services]]\nname = "s{i}"\nmodel = "llama-3.1-8b"\nttft_ms = 300\nitl_ms = 30\n'
                    'initial_max_batch = 64\nsim = { rate_rps = 1.0 }\nprior = { family = "step", alpha_ms = 20.0, '
                    'beta_ms = 0.2, gamma_ms = 20.0, delta_ms = 0.06 }\n' for i in range(10))  # chat's: one model
    path = sim_config({"num_gpus = 8": "num_gpus = 16", "count = 8": "count = 16",
                       "budget_w = 4000": "budget_w = 9000"})
    path.write_text(path.read_text() + extra)
    ctl, advance, _ = sim_controller(load_settings(path))
    records: list[dict[str, Any]] = []
    ctl.decisions = Kept(records)
    caplog.set_level(logging.INFO, logger="wattscale.controller")
    for t in range(1, 46):
        advance(float(t))
        ctl.tick_fast(float(t))
        if t % 15 == 0:
            ctl.tick_slow(float(t))
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("decision: ")]
    said = [s for s in records if "applied" in next(iter(s["services"].values()))]
    changed = [sum(1 for v in r["services"].values() if v["planned"] != v["in_force"]) for r in said]
    assert max(changed) > 10 and all(line.count(" -> planned ") <= 10 for line in lines), (changed, lines)
    assert any(f"; {n - 10} more services changed (the decision log has each)" in line
               for line in lines for n in changed if n > 10), lines


def test_a_reload_that_lowers_max_replicas_below_what_runs_is_obeyed_at_the_next_cycle(
        sim_config: Callable[..., Path]) -> None:
    """chat on two replicas, a reload lowers its max_replicas to 1: the stability gate held the second replica for
    `confirm_cycles` more slow cycles, as it holds a shrink the load asks for (a new user's trial). The operator's bound
    is no load's guess: back within it at the next cycle."""
    ctl, advance, _ = sim_controller(load_settings(sim_config()))
    lowered = load_settings(sim_config({"max_replicas = 4\nin_tokens = 400": "max_replicas = 1\nin_tokens = 400"},
                                       name="lower.toml"))
    for t in range(1, 256):
        advance(float(t))
        ctl.tick_fast(float(t))
        if t % 15 == 0:
            ctl.tick_slow(float(t))
            if t == 240:
                assert ctl.assignments["chat"].replicas == 2
                check_reload(ctl.settings, lowered)
                ctl.reconfigure(lowered)
    assert ctl.assignments["chat"].replicas == 1
