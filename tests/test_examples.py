"""The shipped examples: the real-host config passes check-config and wires to NVML, vLLM units and
Prometheus on a (fake) 8-GPU host; the observations CSV tunes; the systemd README names files that exist."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
from conftest import free_port

from controller.cli import main
from controller.telemetry.deadline import SampleDeadline

ROOT = Path(__file__).resolve().parents[1]
HOST = ROOT / "config" / "examples" / "host.toml"


def host_copy(tmp_path: Path) -> Path:
    """The example as shipped, on a free port and with its state beside it (the probes are the host's)."""
    text = HOST.read_text().replace("port = 9464", f"port = {free_port()}")
    path = tmp_path / "host.toml"
    path.write_text(text.replace('state_dir = "/var/lib/wattscale"', 'state_dir = "state"'))
    return path


def test_host_example_passes_check_config(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """On a GPU host it passes; without the driver check-config fails as `run` would, naming the field (NVML is
    started and shut down, as `run` starts it)."""
    from fake_pynvml import FakeGpu, FakeNvml

    fake = FakeNvml([FakeGpu() for _ in range(8)])
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    assert main(["check-config", str(host_copy(tmp_path))]) == 0
    out = capsys.readouterr()
    assert "ok (3 services, budget 4000 W)" in out.out and out.err == ""
    assert not fake.initialised  # shut down again
    monkeypatch.setitem(sys.modules, "pynvml", FakeNvml([], library=False))
    assert main(["check-config", str(host_copy(tmp_path))]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("wattscale: telemetry.gpu_source: NVML init: libnvidia-ml.so.1 not found") and "\n" not in err


def test_host_example_wires_nvml_vllm_units_and_prometheus(tmp_path: Path) -> None:
    from fake_pynvml import FakeGpu, FakeNvml

    from actuators.nvml_limits import NvmlPowerLimiter
    from actuators.vllm import VllmBatchSizer
    from controller.settings import load_settings
    from controller.telemetry.nvml import NvmlGpuSource
    from controller.telemetry.prometheus import PrometheusVllmSource
    from controller.wiring import build_parts

    parts = build_parts(load_settings(host_copy(tmp_path)), nvml=FakeNvml([FakeGpu() for _ in range(8)]))
    assert parts.host is None
    assert isinstance(parts.gpus, SampleDeadline) and isinstance(parts.gpus.source, NvmlGpuSource)
    assert isinstance(parts.power, NvmlPowerLimiter)
    assert isinstance(parts.batch, VllmBatchSizer) and isinstance(parts.vllm, PrometheusVllmSource)


def test_observations_example_tunes(capsys: pytest.CaptureFixture[str]) -> None:
    csv = ROOT / "config" / "examples" / "observations.csv"
    assert main(["tune", str(csv), "--accelerator", "H100-SXM", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["observations"] == 18 and report["verdicts"].get("accepted", 0) >= 10
    assert report["error_in_sample"]["median_ttft"] < 0.1 and report["draw"]["windows"] == 18


def test_systemd_readme_names_files_that_exist() -> None:
    text = (ROOT / "systemd" / "README.md").read_text()
    named = set(re.findall(r"\b((?:config|systemd)/[\w./-]+\.(?:toml|service|csv))", text))
    assert named, "the README names no repository file"
    assert [p for p in sorted(named) if not (ROOT / p).is_file()] == []


def test_tune_says_how_far_it_is_while_it_runs(capsys: pytest.CaptureFixture[str],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """200 rows far from the prior ran minutes without a word: each refitted, near a second a row."""
    monkeypatch.setattr("controller.cli_tune.PROGRESS_S", 0.0)  # every row, here
    csv = ROOT / "config" / "examples" / "observations.csv"
    rows = len(csv.read_text().splitlines()) - 1
    assert main(["tune", str(csv), "--accelerator", "H100-SXM"]) == 0
    said = [line for line in capsys.readouterr().err.splitlines() if line.startswith("wattscale: tune: ")]
    assert said[0].startswith(f"wattscale: tune: 1 of {rows} rows fitted in ") and len(said) == rows - 1
