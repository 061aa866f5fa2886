"""The nvml source and actuator against a fake `pynvml` that raises the real error classes."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pynvml
import pytest
from fake_pynvml import FakeGpu, FakeNvml

from actuators import PermanentActuatorError, TransientActuatorError
from actuators.nvml import NvmlDevices
from actuators.nvml_limits import NvmlPowerLimiter
from controller.config_loader import ConfigError
from controller.power_settings import PowerDomainSettings
from controller.telemetry.base import TelemetryError
from controller.telemetry.deadline import SampleDeadline
from controller.telemetry.nvml import NvmlGpuSource

FIELDS = ("index", "name", "uuid", "power_w", "power_instant_w", "energy_j", "power_limit_w", "default_limit_w",
          "min_limit_w", "max_limit_w", "enforced_limit_w", "sm_clock_mhz", "mem_clock_mhz", "clock_event_reasons",
          "power_capped", "gpu_util_pct", "mem_util_pct", "memory_used_bytes", "memory_total_bytes", "temperature_c",
          "capped_s", "capped_at_s")


def devices(n: int = 2, **kw: object) -> tuple[FakeNvml, NvmlDevices]:
    fake = FakeNvml([FakeGpu() for _ in range(n)], **kw)  # type: ignore[arg-type]
    return fake, NvmlDevices(fake)


def test_every_field_is_read_and_unsupported_ones_are_none() -> None:
    fake, dev = devices()
    fake.gpus[1].unsupported = {"fields", "reasons", "temperature"}
    full, partial = dev.read(0), dev.read(1)
    assert full.power_w == 450.0 and full.power_instant_w == 455.0 and full.min_limit_w == 200.0
    assert full.power_capped is False and full.memory_total_bytes == 80 * 2**30 and full.temperature_c == 61.0
    assert partial.power_instant_w is None and partial.power_capped is None and partial.temperature_c is None
    assert partial.power_w == 450.0


def test_cap_biting_shows_in_clock_event_reasons() -> None:
    fake, dev = devices(1)
    fake.gpus[0].demand_mw = 650_000
    NvmlPowerLimiter(dev).set_power_limit(0, 400.0)
    r = dev.read(0)
    assert r.power_capped is True and r.power_w == 400.0 and r.sm_clock_mhz is not None and r.sm_clock_mhz < 1980


def test_limit_is_clamped_and_read_back() -> None:
    fake, dev = devices(1)
    limiter = NvmlPowerLimiter(dev, min_interval_s=0.0)
    assert limiter.set_power_limit(0, 50.0) == 200.0  # below the minimum: clamped, never InvalidArgument
    assert limiter.set_power_limit(0, 5000.0) == 700.0
    assert fake.sets == [(0, 200_000), (0, 700_000)]
    assert limiter.set_power_limit(0, 700.4) == 700.0 and len(fake.sets) == 2  # unchanged: not rewritten
    # a fall under a watt is set, in whole watts rounded down: the governor fits the limits' sum to a line exactly,
    # and one left unset had the limits in force pass it by up to a watt a GPU (a review); a rise under a watt is
    # still no set's worth
    assert limiter.set_power_limit(0, 699.6) == 699.0 and fake.sets[-1] == (0, 699_000)
    assert limiter.set_power_limit(0, 699.9) == 699.0 and len(fake.sets) == 3
    for bad in (float("nan"), float("inf")):  # min/max passed NaN on, and round(nan) raised ValueError
        with pytest.raises(TransientActuatorError, match="no number of watts"):
            limiter.set_power_limit(0, bad)
    assert len(fake.sets) == 3


def test_raises_are_rate_limited_but_cuts_always_go_through() -> None:
    _, dev = devices(1)
    now = [0.0]
    limiter = NvmlPowerLimiter(dev, min_interval_s=5.0, clock=lambda: now[0])
    limiter.set_power_limit(0, 300.0)
    assert limiter.set_power_limit(0, 500.0) == 300.0  # a raise 0 s later waits
    assert limiter.set_power_limit(0, 250.0) == 250.0  # a cut does not
    now[0] = 6.0
    assert limiter.set_power_limit(0, 500.0) == 500.0


def test_no_permission_is_permanent_and_names_the_fix() -> None:
    _, dev = devices(1, privileged=False)
    with pytest.raises(PermanentActuatorError, match="CAP_SYS_ADMIN"):
        NvmlPowerLimiter(dev).set_power_limit(0, 300.0)


def test_a_setter_that_ignores_its_return_code_is_caught_by_the_read_back() -> None:
    fake, dev = devices(1)
    fake.nvmlDeviceSetPowerManagementLimit = lambda h, mw: None  # type: ignore[method-assign]
    with pytest.raises(TransientActuatorError, match="asked 300 W, 700 W in force"):
        NvmlPowerLimiter(dev).set_power_limit(0, 300.0)


def test_a_driver_that_applies_more_than_asked_fails_the_set() -> None:
    """A limit applied up to a watt over the one asked was taken, so the limits fitted to a line exactly passed it by
    that a GPU, and the same set came again every tick (a review). The set fails, and the fast loop counts the GPU at
    what it holds while the others fit around it. A limit is asked in whole watts, rounded down, so a driver that keeps
    whole watts applies it as asked."""
    fake, dev = devices(1)
    setter = fake.nvmlDeviceSetPowerManagementLimit
    fake.nvmlDeviceSetPowerManagementLimit = lambda h, mw: setter(h, -(-mw // 1000) * 1000)  # type: ignore[method-assign]
    assert NvmlPowerLimiter(dev).set_power_limit(0, 299.5) == 299.0  # whole watts: applied as asked
    fake.nvmlDeviceSetPowerManagementLimit = lambda h, mw: setter(h, mw + 500)  # type: ignore[method-assign]
    with pytest.raises(TransientActuatorError, match=r"asked 250 W, 250\.5 W in force"):
        NvmlPowerLimiter(dev).set_power_limit(0, 250.0)


def test_lost_gpu_is_reported_without_a_reading_at_its_last_limits() -> None:
    fake, dev = devices(2)
    source = NvmlGpuSource(dev, {0: ("chat", "H100-SXM"), 1: ("code", "H100-SXM")})
    first = source.sample(0.0)
    assert [s.service for s in first] == ["chat", "code"] and first[1].power_w == 450.0
    fake.fail[("power", 1)] = pynvml.NVMLError_GpuIsLost
    second = source.sample(1.0)
    assert second[0].power_w == 450.0
    assert second[1].power_w is None and second[1].power_limit_w == 700.0  # the governor counts it at its cap


def test_a_gpu_that_stops_reading_is_said_once_counted_every_tick_and_shows_a_gap() -> None:
    """GPU 1 falls off the bus after its first read: counted at its limit, it held the budget, but no line, no
    count and a power gauge frozen at its last 450 W said the daemon was blind to it."""
    from prometheus_client import CollectorRegistry

    from actuators.nvml_limits import NvmlPowerLimiter as Limiter
    from controller.fast_loop import FastLoop
    from controller.own_metrics import OwnMetrics
    from controller.plan import Plan
    from controller.settings import PowerSettings

    fake, dev = devices(2)
    registry = CollectorRegistry()
    errors: list[tuple[str, str]] = []
    owners = {0: ("chat", "H100-SXM"), 1: ("chat", "H100-SXM")}
    loop = FastLoop(PowerSettings(budget_w=2000.0), 3, NvmlGpuSource(dev, owners), Limiter(dev, min_interval_s=0.0),
                    OwnMetrics(registry), lambda kind, message: errors.append((kind, message)))
    loop.plan = Plan.of(1, {"chat": {"H100-SXM": 700.0}}, {"chat": 1})
    loop.tick(0.0)
    fake.fail[("power", 1)] = pynvml.NVMLError_GpuIsLost
    for t in range(1, 11):
        loop.tick(float(t))
    assert len(errors) == 1 and errors[0][0] == "gpu_power" and "fallen off the bus" in errors[0][1], errors
    assert "GPU 1" in errors[0][1] and "700 W" in errors[0][1]
    assert registry.get_sample_value("wattscale_errors_total", {"kind": "gpu_power"}) == 9.0  # each tick after
    assert math.isnan(registry.get_sample_value("wattscale_gpu_power_watts", {"gpu": "1", "service": "chat"}) or 0.0)
    del fake.fail[("power", 1)]
    loop.tick(11.0)
    fake.fail[("power", 1)] = pynvml.NVMLError_GpuIsLost
    loop.tick(12.0)
    assert len(errors) == 2  # a new run is said again
    fake.fail.update({("power", 0): pynvml.NVMLError_GpuIsLost, ("power", 1): pynvml.NVMLError_GpuIsLost})
    loop.tick(13.0)  # none reads: a lost sample, every GPU's gauge a gap (GPU 0's had kept its last 450 W)
    assert math.isnan(registry.get_sample_value("wattscale_gpu_power_watts", {"gpu": "0", "service": "chat"}) or 0.0)


def test_the_energy_counter_is_read_every_ten_seconds_not_every_tick() -> None:
    """On an H200 the counter was 4 ms of a GPU's 4.2-ms read, and only a Prometheus gauge reads it."""
    fake, dev = devices(2)
    counted = fake.nvmlDeviceGetTotalEnergyConsumption
    reads: list[float] = []
    fake.nvmlDeviceGetTotalEnergyConsumption = lambda h: reads.append(now) or counted(h)  # type: ignore[method-assign]
    source = NvmlGpuSource(dev, {})
    energies = []
    for now in (0.0, 1.0, 9.0, 10.0, 11.0, 20.5, 3.0, 4.0):  # then the clock restarts: read again at once
        energies.append([s.energy_j for s in source.sample(now)])
    assert reads == [0.0, 0.0, 10.0, 10.0, 20.5, 20.5, 3.0, 3.0]
    assert [e is not None for e, _ in energies] == [True, False, False, True, False, True, True, False]
    assert all(s.power_w == 450.0 for s in source.sample(21.0))  # the power is read every tick
    assert all(r.energy_j is not None for r in source.readings() if not isinstance(r, Exception))  # probe, `gpus`


def test_a_gpu_never_read_stands_in_of_unknown_limits_until_it_reads(caplog: pytest.LogCaptureFixture) -> None:
    """A GPU lost before its first read failed every sample (the governor, in failsafe with no GPU seen, set no
    limit on the others: 5,600 W under a 4,000-W budget); then, left out, it counted for nothing (two 550-W GPUs
    read as 550 W under a 1,000-W budget). It now stands in with unknown (NaN) limits, which the fast loop counts at
    the most it may draw and never sets (tests/test_nvml_host_budget.py), logged once; once it reads, the stand-in
    is reported departed."""
    fake, dev = devices(3)
    fake.fail[("name", 1)] = pynvml.NVMLError_GpuIsLost
    source = NvmlGpuSource(dev, {1: ("chat", "H100-SXM")})
    for t in (0.0, 1.0):
        listing = source.sample(t)
        assert [(g.index, g.uuid[:8]) for g in listing] == [(0, "GPU-0000"), (2, "GPU-0000"), (1, "unread-1")]
        stand_in = listing[-1]
        assert stand_in.power_w is None and stand_in.service == "chat"
        assert all(math.isnan(w) for w in (stand_in.power_limit_w, stand_in.min_limit_w, stand_in.max_limit_w))
    assert source.departed() == frozenset()
    assert [r.getMessage() for r in caplog.records if "never read" in r.getMessage()] == [
        "GPU 1: the GPU has fallen off the bus: reset it or reboot; never read, so counted as a GPU of unknown "
        "limits until it reads"]
    del fake.fail[("name", 1)]
    assert [s.index for s in source.sample(2.0)] == [0, 1, 2]
    assert source.departed() == frozenset({"unread-1"}) and source.departed() == frozenset()


def test_no_gpu_read_or_no_device_count_fails_the_sample() -> None:
    """Every GPU failing its first read listed none, and the governor read a draw of 0 W: no lost sample, no
    fail-safe. It is a lost sample now, as a failed enumeration is."""
    fake, dev = devices(2)
    fake.fail[("name", 0)] = fake.fail[("name", 1)] = pynvml.NVMLError_Unknown
    with pytest.raises(TelemetryError, match="none of the 2 GPUs has been read"):
        NvmlGpuSource(dev, {}).sample(0.0)
    fake.fail[("count", -1)] = pynvml.NVMLError_Unknown
    with pytest.raises(TelemetryError):
        NvmlGpuSource(dev, {}).sample(0.0)


def test_a_field_an_older_driver_or_this_user_cannot_read_is_none_not_a_lost_gpu() -> None:
    """FunctionNotFound (a driver before the clock-event-reasons call) or NoPermission on a telemetry read, and
    any error of the instant-power field, failed the GPU's whole read: every GPU, every tick, on such a host."""
    fake, dev = devices(1)
    fake.fail[("reasons", 0)] = pynvml.NVMLError_FunctionNotFound
    fake.fail[("memory", 0)] = pynvml.NVMLError_NoPermission
    fake.fail[("fields", 0)] = pynvml.NVMLError_Unknown
    r = dev.read(0)
    assert r.clock_event_reasons is None and r.memory_total_bytes is None and r.power_instant_w is None
    assert r.power_w == 450.0 and r.power_limit_w == 700.0


def test_transient_errors_carry_a_retry_delay() -> None:
    fake, dev = devices(1)
    fake.fail[("set", 0)] = pynvml.NVMLError_Timeout
    with pytest.raises(TransientActuatorError) as info:
        NvmlPowerLimiter(dev).set_power_limit(0, 300.0)
    assert info.value.delay_s > 0


def test_missing_library_names_the_fix() -> None:
    with pytest.raises(PermanentActuatorError, match="install the NVIDIA driver"):
        NvmlDevices(FakeNvml([], library=False))


def test_restore_defaults_puts_every_gpu_back() -> None:
    fake, dev = devices(2)
    limiter = NvmlPowerLimiter(dev, min_interval_s=0.0)
    limiter.set_power_limit(0, 300.0)
    limiter.set_power_limit(1, 350.0)
    fake.fail[("default", 1)] = pynvml.NVMLError_NoPermission
    failed = limiter.restore_defaults()
    assert fake.gpus[0].limit_mw == 700_000 and len(failed) == 1 and "GPU 1" in failed[0]


def test_gpus_command_lists_every_field_or_names_the_missing_driver() -> None:
    """On a GPU host this prints every field; without a driver it exits 2 with the fix."""
    run = subprocess.run([sys.executable, "-m", "controller.cli", "gpus", "--json"], capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parents[1], timeout=60)
    if run.returncode == 0:
        listing = json.loads(run.stdout)
        assert listing and all(set(FIELDS) <= set(gpu) for gpu in listing)
    else:
        assert run.returncode == 2 and run.stderr.count("\n") == 1
        assert "NVIDIA driver" in run.stderr


def test_a_source_tree_never_installed_still_answers(monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """`python -m controller.cli` from a checkout with no package metadata (how gpu_probe first ran on an H200)
    built its parser on `importlib.metadata.version` and died with a traceback before any command ran."""
    from importlib.metadata import PackageNotFoundError

    from controller import cli

    def missing(name: str) -> str:
        raise PackageNotFoundError(name)

    monkeypatch.setattr(cli, "version", missing)
    with pytest.raises(SystemExit) as stop:
        cli.main(["--version"])
    assert stop.value.code == 0 and capsys.readouterr().out == "wattscale (not installed: run from a source tree)\n"


def test_a_host_without_simulated_parts_builds_no_plant(tmp_path: Path) -> None:
    """nvml GPUs, Prometheus, dry-run batch and replicas: no simulated host is built or stepped."""
    from controller.settings import load_settings
    from controller.wiring import build_parts, probe_nvml

    text = (Path(__file__).resolve().parents[1] / "config" / "sim.toml").read_text()
    for old, new in (('gpu_source = "sim"', 'gpu_source = "nvml"'),
                     ('vllm_source = "sim"', 'vllm_source = "prometheus"'), ('power = "sim"', 'power = "nvml"'),
                     ('batch = "sim"', 'batch = "dry-run"'), ('replicas = "sim"', 'replicas = "dry-run"')):
        text = text.replace(old, new)
    path = tmp_path / "host.toml"
    path.write_text(text)
    s = load_settings(path)
    owned = replace(s, services=tuple(replace(svc, gpus=g) for svc, g in zip(s.services, ((0, 1, 2), (3, 4, 5), (6, 7)),
                                                                            strict=True)))
    parts = build_parts(owned, nvml=FakeNvml([FakeGpu() for _ in range(8)]))
    assert parts.host is None
    assert isinstance(parts.gpus, SampleDeadline) and isinstance(parts.gpus.source, NvmlGpuSource)
    assert isinstance(parts.power, NvmlPowerLimiter)
    with pytest.raises(ConfigError, match=r"services.gpus: GPU 6, 7 belong\(s\) to no service"):
        build_parts(replace(owned, services=owned.services[:2]), nvml=FakeNvml([FakeGpu() for _ in range(8)]))
    with pytest.raises(ConfigError, match=r"^services\[batch-summaries\]\.gpus: GPU 7 not on this host \(7 GPUs\)"):
        build_parts(owned, nvml=FakeNvml([FakeGpu() for _ in range(7)]))
    rack = PowerDomainSettings("rack-b", 1500.0, (4, 5, 8))  # a rack's index past the host, named as the rack's
    with pytest.raises(ConfigError, match=r"^power\.domains\[rack-b\]\.gpus: GPU 8 not on this host \(8 GPUs\)"):
        build_parts(replace(owned, power=replace(owned.power, domains=(rack,))), nvml=FakeNvml([FakeGpu()] * 8))
    # check-config's probe refuses what `run` refuses (it had printed "ok" for a host one GPU short), and shuts down
    fake = FakeNvml([FakeGpu() for _ in range(7)])
    with pytest.raises(ConfigError, match=r"^services\[batch-summaries\]\.gpus: GPU 7 not on this host \(7 GPUs\)"):
        probe_nvml(owned, fake)
    assert not fake.initialised
    probe_nvml(owned, fake := FakeNvml([FakeGpu() for _ in range(8)]))
    assert not fake.initialised


@pytest.mark.parametrize("restore", [True, False])
def test_parts_on_exit_restore_default_limits_only_when_asked_and_shut_nvml_down(tmp_path: Path,
                                                                                  restore: bool) -> None:
    from controller.settings import load_settings
    from controller.wiring import build_parts

    text = (Path(__file__).resolve().parents[1] / "config" / "sim.toml").read_text()
    text = text.replace('power = "sim"', f'power = "nvml"\nrestore_power_limits = {str(restore).lower()}')
    path = tmp_path / "host.toml"
    path.write_text(text)
    fake = FakeNvml([FakeGpu() for _ in range(8)])
    parts = build_parts(load_settings(path), nvml=fake)
    parts.start()
    parts.power.set_power_limit(0, 300.0)
    parts.close()
    assert fake.gpus[0].limit_mw == (700_000 if restore else 300_000)
    assert not fake.initialised


def test_restore_defaults_reports_a_failed_device_count_instead_of_raising() -> None:
    fake, dev = devices(2)
    fake.fail[("count", -1)] = pynvml.NVMLError_GpuIsLost
    failed = NvmlPowerLimiter(dev).restore_defaults()
    assert len(failed) == 1 and "fallen off the bus" in failed[0]


class OddDriver(FakeNvml):
    """A driver whose UUIDs are not UTF-8 (pynvml's own decode raises, as it does on such bytes), whose names carry
    a terminal escape, and whose device count may be absurd."""

    count = 2

    def nvmlDeviceGetUUID(self, h: int) -> str:
        return b"GPU-\xff\xfe".decode()

    def nvmlDeviceGetName(self, h: int) -> str:
        return "NVIDIA \x1b[31mH100"

    def nvmlDeviceGetCount(self) -> int:
        return self.count


def test_an_undecodable_uuid_an_escape_or_an_absurd_count_is_no_traceback() -> None:
    """The UUID raised UnicodeDecodeError out of every read (and `gpus`); the escape reached the terminal raw; a
    count of a million was read one device at a time for minutes."""
    fake = OddDriver([FakeGpu(), FakeGpu()])
    dev = NvmlDevices(fake)
    first, second = dev.read(0), dev.read(1)
    assert (first.uuid, second.uuid) == ("GPU-undecodable-0", "GPU-undecodable-1")  # apart, and stable
    assert first.name == "NVIDIA \\x1b[31mH100"
    fake.count = 1_000_000
    with pytest.raises(PermanentActuatorError, match="device count: NVML reports 1000000 GPUs, past the 1024"):
        dev.count()


def test_nvml_shut_down_under_the_daemon_is_initialised_again() -> None:
    """A driver reload shuts NVML down: every call then says Uninitialized. It was taken as transient and retried
    for good with NVML never initialised again, the daemon blind (its limits frozen) until a restart."""
    fake, dev = devices(2)
    source = NvmlGpuSource(dev, {0: ("chat", "H100-SXM"), 1: ("code", "H100-SXM")})
    assert [g.power_w for g in source.sample(0.0)] == [450.0, 450.0]
    fake.nvmlShutdown()
    assert source.sample(1.0)[0].power_w is None  # the read that found it out is lost (at the last limits)
    assert [g.power_w for g in source.sample(2.0)] == [450.0, 450.0]
    fake.nvmlShutdown()  # a host whose GPUs another source reads: the limiter alone finds it out
    limiter = NvmlPowerLimiter(dev, min_interval_s=0.0)
    with pytest.raises(TransientActuatorError, match="NVML not initialised"):
        limiter.set_power_limit(0, 500.0)
    assert limiter.set_power_limit(0, 500.0) == 500.0


def test_a_process_that_may_not_set_gpu_limits_is_warned_of(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A daemon without CAP_SYS_ADMIN (a non-root user, a unit without it) had started, `check-config` saying ok,
    and every write was then refused: the host stayed over its budget. Both now warn, naming the field."""
    from conftest import sim_config_text

    import actuators.nvml as nvml_module
    from controller import preflight
    from controller.settings import load_settings

    cfg = tmp_path / "w.toml"
    cfg.write_text(sim_config_text(tmp_path / "state", {'power = "sim"': 'power = "nvml"'}))
    status = tmp_path / "status"
    monkeypatch.setattr(nvml_module, "PROC_STATUS", status)
    for caps, warned in (("0000000000000000", True), ("0000000000200000", False), ("000001ffffffffff", False)):
        status.write_text(f"Name:\twattscale\nCapInh:\t0000000000000000\nCapEff:\t{caps}\n")
        said = [w for w in preflight.check_backends(load_settings(cfg))[0] if "CAP_SYS_ADMIN" in w]
        assert bool(said) == warned and all(w.startswith("actuators.power: ") for w in said), said
    status.unlink()  # a kernel that does not say: the writes will tell
    assert nvml_module.may_administer()


def test_a_gpu_back_in_the_count_but_unreadable_is_not_taken_for_gone() -> None:
    """GPU 0 leaves the count (the indices move down) and comes back failing every call, still drawing. The index's
    last reading was then another GPU's: that GPU stood in for it twice, and GPU 0's UUID, "not listed" at a full
    count, was retired, the site counted 350 W short (a review). Now a moved count forgets the readings by index,
    and a GPU departs only when every GPU of a full count has read."""
    fake = FakeNvml([FakeGpu(uuid="GPU-a"), FakeGpu(uuid="GPU-b")])
    source = NvmlGpuSource(NvmlDevices(fake), {})
    assert [g.uuid for g in source.sample(0.0)] == ["GPU-a", "GPU-b"]
    gpu_a = fake.gpus.pop(0)
    assert [g.uuid for g in source.sample(1.0)] == ["GPU-b"]
    fake.gpus.insert(0, gpu_a)
    fake.fail[("*", 0)] = pynvml.NVMLError_GpuIsLost
    back = source.sample(2.0)
    assert [g.uuid for g in back] == ["GPU-b", "unread-0"] and source.departed() == frozenset()
    del fake.fail[("*", 0)]
    assert [g.uuid for g in source.sample(3.0)] == ["GPU-a", "GPU-b"] and source.departed() == {"unread-0"}


def test_one_unreadable_gpu_does_not_keep_a_gpu_that_left_counted_for_good() -> None:
    """GPU c stays listed but unreadable while GPU b comes back under a new UUID: "every GPU read" had been asked
    before retiring b, so it was counted at its last limit for good (a review). A GPU whose read fails is known by
    its index's last reading, the count unmoved."""
    fake = FakeNvml([FakeGpu(uuid="GPU-a"), FakeGpu(uuid="GPU-b"), FakeGpu(uuid="GPU-c")])
    source = NvmlGpuSource(NvmlDevices(fake), {})
    source.sample(0.0)
    fake.fail[("*", 2)] = pynvml.NVMLError_Unknown
    source.sample(1.0)
    fake.gpus[1] = FakeGpu(uuid="GPU-d")
    assert [g.uuid for g in source.sample(2.0)] == ["GPU-a", "GPU-d", "GPU-c"] and source.departed() == {"GPU-b"}
