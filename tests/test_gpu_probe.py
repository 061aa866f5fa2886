"""benchmarks/gpu_probe.py against the fake `pynvml`, on a fake clock (a 60 s window in well under a second)."""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
from collections.abc import Callable
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any

import pynvml
import pytest
from conftest import load_benchmark
from fake_pynvml import FakeGpu, FakeNvml
from test_nvml import FIELDS

from actuators.nvml import NvmlDevices
from actuators.nvml_limits import NvmlPowerLimiter
from controller import cli

ROOT = Path(__file__).resolve().parents[1]
gpu_probe = load_benchmark("gpu_probe")


class FakeClock:
    """Wall and CPU time that move only when told: sleeping costs nothing."""

    def __init__(self) -> None:
        self.t = 1000.0
        self.c = 5.0

    def wall(self) -> float:
        return self.t

    def cpu(self) -> float:
        return self.c

    def sleep(self, seconds: float) -> None:
        self.t += seconds


class ProbeNvml(FakeNvml):
    """The fake with supported clocks, where each sample (one device count) costs `read_cpu_s` of CPU and 3 ms."""

    def __init__(self, gpus: list[FakeGpu], clock: FakeClock, read_cpu_s: float = 0.002, **kw: Any) -> None:
        super().__init__(gpus, **kw)
        self.clock, self.read_cpu_s = clock, read_cpu_s

    def nvmlDeviceGetCount(self) -> int:
        self.clock.c += self.read_cpu_s
        self.clock.t += 0.003
        return super().nvmlDeviceGetCount()

    def nvmlDeviceGetSupportedMemoryClocks(self, h: int) -> list[int]:
        self._gpu("clocks", h)
        return [2619, 1593]

    def nvmlDeviceGetSupportedGraphicsClocks(self, h: int, memory_mhz: int) -> list[int]:
        self._gpu("clocks", h)
        return [345, 1980, 1965] if memory_mhz == 2619 else [345]


def in_process_cli(nvml: FakeNvml, monkeypatch: pytest.MonkeyPatch) -> Callable[[], Any]:
    """`wattscale gpus --json` run in this process over `nvml` (its own NVML, as a separate process has)."""

    def run() -> Any:
        monkeypatch.setitem(sys.modules, "pynvml", nvml)
        out, err = io.StringIO(), io.StringIO()
        with redirect_stdout(out), redirect_stderr(err):
            rc = cli.main(["gpus", "--json"])
        return gpu_probe.CliResult(["wattscale", "gpus", "--json"], rc, out.getvalue(), err.getvalue())

    return run


def run_probe(gpus: list[FakeGpu], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
              read_cpu_s: float = 0.002, duration_s: float = 60.0) -> tuple[int, dict[str, Any], ProbeNvml, FakeNvml]:
    clock = FakeClock()
    nvml, cli_nvml = ProbeNvml(gpus, clock, read_cpu_s), FakeNvml(gpus)
    rc = gpu_probe.main(["--json", "--duration-s", str(duration_s)], nvml=nvml, clock=clock,
                        run_cli=in_process_cli(cli_nvml, monkeypatch))
    return rc, json.loads(capsys.readouterr().out), nvml, cli_nvml


def test_probe_reports_every_field_beside_its_target(monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    capped = FakeGpu(limit_mw=400_000, demand_mw=650_000, unsupported={"temperature"})
    rc, report, nvml, cli_nvml = run_probe([FakeGpu(), capped], monkeypatch, capsys)
    assert rc == 0 and report["ok"] is True and all(report["checks"].values())
    assert report["window"] == {"duration_s": 60.003, "interval_s": 1.0, "samples": 61, "failed_samples": 0}
    sampling = report["nvml_sampling"]
    assert sampling["cpu_percent_of_core"] == pytest.approx(100 * 61 * 0.002 / 60.003, abs=1e-4)
    assert sampling["target"] == "< 1.0" and sampling["sample_wall_ms_mean"] == pytest.approx(3.0)
    listing = report["wattscale_gpus"]
    assert listing["returncode"] == 0 and all(set(FIELDS) <= set(g) for g in listing["gpus"])
    assert listing["null_fields"] == {"0": {}, "1": {"temperature_c": "NotSupported on this GPU"}}
    free, biting = report["gpus"]
    assert free["limits_w"] == {"current": 700.0, "min": 200.0, "max": 700.0, "default": 700.0, "enforced": 700.0}
    assert free["supported_clocks_mhz"] == {"2619": [345, 1965, 1980], "1593": [345]}
    assert free["clock_event_reasons"] == {"last": [], "last_bits": 0, "reads_with": {}}
    assert biting["clock_event_reasons"] == {"last": ["SwPowerCap"], "last_bits": 4, "reads_with": {"SwPowerCap": 61}}
    energy = biting["energy"]
    assert energy["monotonic"] is True and energy["rel_err"] == 0.0 and energy["target"] == "<= 0.05"
    assert energy["counter_j"] == pytest.approx(60 * 400.0)
    assert nvml.sets == [] and cli_nvml.sets == [] and capped.limit_mw == 400_000


def test_sampling_over_a_percent_of_a_core_fails_its_check(monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    rc, report, _, _ = run_probe([FakeGpu()], monkeypatch, capsys, read_cpu_s=0.02, duration_s=10)
    assert rc == 1 and report["ok"] is False
    assert report["checks"]["nvml_sampling_under_target"] is False
    assert report["nvml_sampling"]["cpu_percent_of_core"] == pytest.approx(100 * 11 * 0.02 / 10.003, abs=1e-4)


def test_a_lost_gpu_or_a_failing_command_fails_checks_instead_of_crashing(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    clock = FakeClock()
    nvml = ProbeNvml([FakeGpu(), FakeGpu()], clock)
    nvml.fail[("power", 1)] = pynvml.NVMLError_GpuIsLost
    failed = gpu_probe.CliResult(["wattscale", "gpus", "--json"], 2, "", "wattscale: NVML init: boom\n")
    rc = gpu_probe.main(["--json", "--duration-s", "5"], nvml=nvml, clock=clock, run_cli=lambda: failed)
    report = json.loads(capsys.readouterr().out)
    assert rc == 1 and report["wattscale_gpus"]["stderr"] == "wattscale: NVML init: boom"
    assert report["checks"]["cli_lists_the_gpus_the_source_reads"] is False
    assert report["checks"]["every_gpu_read_every_sample"] is False
    assert [g["index"] for g in report["gpus"]] == [0] and nvml.sets == []


def test_the_probes_nvml_exposes_no_setter() -> None:
    """Structural: a limiter handed the probe's NVML cannot set, and no mutating pynvml call is reachable."""
    fake = FakeNvml([FakeGpu()])
    devices = NvmlDevices(gpu_probe.ReadOnlyNvml(fake))
    with pytest.raises(AttributeError, match="not exposed to the read-only GPU probe"):
        NvmlPowerLimiter(devices).set_power_limit(0, 300.0)
    assert fake.sets == [] and fake.gpus[0].limit_mw == 700_000
    assert devices.read(0).power_limit_w == 700.0  # reads still work
    mutating = [n for n in dir(pynvml) if callable(getattr(pynvml, n))
                and re.match(r"nvml(Device|System|Unit|Gpm|Vgpu\w*|GpuInstance|ComputeInstance)?"
                             r"(Set|Reset|Clear|Modify|Freeze|Create|Destroy|Remove|Register)", n)]
    assert len(mutating) > 40
    wrapped = gpu_probe.ReadOnlyNvml(pynvml)
    assert [n for n in mutating if hasattr(wrapped, n)] == []


def test_the_counter_is_read_on_the_daemons_cadence_and_the_power_between_its_reads_integrated(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """Read every second, the counter (4.1 of an H200's 4.4-ms read) made the probe's CPU figure 5 x the daemon's,
    which reads it every ENERGY_EVERY_S: the probe now reads it at ticks 0, 10, 20 and the last, as the daemon
    would, and checks it against the power of every read between."""
    clock = FakeClock()
    nvml = ProbeNvml([FakeGpu(demand_mw=300_000)], clock)
    counted = nvml.nvmlDeviceGetTotalEnergyConsumption
    ticks: list[float] = []
    nvml.nvmlDeviceGetTotalEnergyConsumption = lambda h: ticks.append(clock.t) or counted(h)  # type: ignore[method-assign]
    failed = gpu_probe.CliResult(["wattscale", "gpus", "--json"], 2, "", "no\n")
    assert gpu_probe.main(["--json", "--duration-s", "25"], nvml=nvml, clock=clock, run_cli=lambda: failed) == 1
    energy = json.loads(capsys.readouterr().out)["gpus"][0]["energy"]
    assert [round(t - ticks[1]) for t in ticks[1:]] == [0, 10, 20, 25]  # after the first read, before the window
    assert energy["counter_j"] == pytest.approx(25 * 300.0) and energy["ok"] is True
    sparse = [(float(t), 100.0, 100.0 * t if t % 10 == 0 else None) for t in range(31)]
    assert gpu_probe.energy_check(sparse)["integrated_j"] == pytest.approx(3000.0)


def test_energy_check_flags_a_counter_that_goes_back_or_disagrees() -> None:
    steady = [(float(t), 100.0, 100.0 * t) for t in range(61)]
    assert gpu_probe.energy_check(steady)["ok"] is True
    back = [*steady[:30], (30.0, 100.0, 10.0), *steady[31:]]
    assert gpu_probe.energy_check(back)["monotonic"] is False and gpu_probe.energy_check(back)["ok"] is False
    off = [(t, 110.0, e) for t, _, e in steady]  # power reads 10 % above what the counter accrues
    check = gpu_probe.energy_check(off)
    assert check["rel_err"] == pytest.approx(0.1) and check["ok"] is False
    unsupported = gpu_probe.energy_check([(float(t), 100.0, None) for t in range(5)])
    assert unsupported["ok"] is None and "NotSupported" in unsupported["note"]
    assert gpu_probe.verdict([True, None]) is None and gpu_probe.verdict([None, False]) is False


def test_clock_event_reasons_decode_by_nvml_name() -> None:
    for bit, name in gpu_probe.CLOCK_EVENT_REASONS.items():
        assert getattr(pynvml, f"nvmlClocksThrottleReason{name}") == bit
    assert gpu_probe.decode_reasons(0x1 | 0x4 | 0x1000) == ["GpuIdle", "SwPowerCap", "0x1000"]


def test_supported_clocks_are_none_where_the_gpu_lists_none() -> None:
    nvml = ProbeNvml([FakeGpu(unsupported={"clocks"})], FakeClock())
    assert NvmlDevices(nvml).supported_clocks_mhz(0) is None


def test_without_a_driver_it_exits_2_with_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert gpu_probe.main(["--json"], nvml=FakeNvml([], library=False), clock=FakeClock()) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "install the NVIDIA driver" in err


def test_the_script_runs_as_an_operator_runs_it() -> None:
    """Here (no driver) it exits 2 with one line; on a GPU host it prints the report."""
    run = subprocess.run([sys.executable, "benchmarks/gpu_probe.py", "--json", "--duration-s", "2"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    if run.returncode == 2:
        assert run.stderr.count("\n") == 1 and "NVIDIA driver" in run.stderr
    else:
        assert run.returncode in (0, 1) and json.loads(run.stdout)["window"]["samples"] == 3
