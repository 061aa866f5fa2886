"""benchmarks/gpu_draw.py and nvml_calls.py against the fake `pynvml` (gpu_draw with a load that draws by a known
law): the sweep reads, the fit recovers the law, every call is timed, and nothing is set."""

from __future__ import annotations

import io
import json
import sys
from collections.abc import Callable
from contextlib import redirect_stdout
from dataclasses import replace
from itertools import pairwise

import pytest
from conftest import load_benchmark
from fake_pynvml import FakeGpu, FakeNvml

from queuemodels.accelerators import profile
from queuemodels.power import natural_draw_w

load_benchmark("gpu_probe")  # gpu_draw imports it as a sibling script
gpu_draw = load_benchmark("gpu_draw")
LAW = replace(profile("H100-SXM"), idle_power_w=80.0, busy_share=0.45, batch_half=300.0)


class LawLoad:
    """Sets the fake GPU's demand to the law's draw at each batch. The fake accrues one second of its draw on
    every power read, so a phase lasts as many seconds as it reads the GPU."""

    def __init__(self, gpu: FakeGpu) -> None:
        self.gpu = gpu
        self.batches: list[int] = []

    def shape(self) -> dict[str, str]:
        return {"load": "law"}

    def flops(self, batch: int) -> float:
        return 1e12 * batch

    def run(self, batch: int, seconds: float, tick: Callable[[], None]) -> tuple[int, float]:
        self.batches.append(batch)
        watts = LAW.idle_power_w if batch == 0 else float(natural_draw_w(LAW, float(batch)))
        self.gpu.demand_mw = round(watts * 1000)
        for _ in range(int(seconds)):
            tick()
        return int(seconds), float(int(seconds) + 1)  # a step a tick


def test_sweep_recovers_the_draw_law_and_sets_nothing() -> None:
    gpu = FakeGpu(limit_mw=650_000)  # batch 4096 would draw 677 W: held at the cap, left out of the fit
    nvml, load = FakeNvml([gpu]), LawLoad(gpu)
    out = io.StringIO()
    with redirect_stdout(out):
        assert gpu_draw.main(["--seconds", "4", "--batches", "0,1,8,64,512,4096"], nvml=nvml, load=load) == 0
    report = json.loads(out.getvalue())
    assert [p["batch"] for p in report["phases"]] == [0, 1, 8, 64, 512, 4096]
    assert load.batches == [0, 0, 1, 1, 8, 8, 64, 64, 512, 512, 4096, 4096]  # a warm-up before each phase
    by_batch = {p["batch"]: p for p in report["phases"]}
    assert by_batch[0]["energy_power_w"] == pytest.approx(80.0)
    assert by_batch[512]["energy_power_w"] == pytest.approx(float(natural_draw_w(LAW, 512.0)), rel=1e-3)
    assert by_batch[64]["reads"] == 6  # before, one per tick, after
    assert by_batch[64]["step_ms"] == 1000 * 5 / 4 and by_batch[64]["tflops"] == 64 * 4 / 5
    per_token = float(natural_draw_w(LAW, 512.0)) * 5 / (512 * 4)  # 5 s at the draw for 4 steps of 512
    assert by_batch[512]["joules_per_token"] == pytest.approx(per_token, rel=1e-4)
    assert report["shape"] == {"load": "law"}
    assert [p["capped"] for p in report["phases"]] == [False] * 5 + [True]
    assert by_batch[4096]["energy_power_w"] == pytest.approx(650.0)
    law = report["law"]
    assert law["peak_w"] == 700 and law["idle_w"] == pytest.approx(80.0)
    assert law["fitted"]["busy_share"] == pytest.approx(0.45, abs=0.01)
    assert law["fitted"]["batch_half"] == pytest.approx(300.0, rel=0.03)
    assert law["catalogue_defaults"] == {"busy_share": 0.2, "batch_half": 96.0}
    assert nvml.sets == [] and nvml.locks == []


def test_bad_batches_are_one_clear_error() -> None:
    with pytest.raises(SystemExit) as stop:
        gpu_draw.main(["--batches", "1,x"], nvml=FakeNvml([FakeGpu()]), load=LawLoad(FakeGpu()))
    assert stop.value.code == 2


def test_nvml_calls_times_every_call_of_a_read_and_sets_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    nvml_calls = load_benchmark("nvml_calls")
    nvml = FakeNvml([FakeGpu()])
    assert nvml_calls.main(["--repeat", "5"], nvml=nvml) == 0
    report = json.loads(capsys.readouterr().out)
    assert len(report["calls"]) == 16 and report["repeat"] == 5 and not nvml.initialised
    assert report["read_us"] == pytest.approx(sum(c["mean_us"] for c in report["calls"].values()), abs=0.1)
    assert nvml.sets == [] and nvml.locks == []


def test_timed_synchronises_and_ticks_after_every_chunk_and_counts_every_step() -> None:
    """The loop both loads run: what it returns is what ran, and the GPU is read only between chunks."""
    events: list[str] = []

    class Cuda:
        @staticmethod
        def synchronize() -> None:
            events.append("sync")

    class Torch:
        cuda = Cuda

    steps, elapsed = gpu_draw.timed(Torch, lambda: events.append("step"), 0.12, lambda: events.append("tick"))
    assert events.count("step") == steps > 0 and elapsed >= 0.12
    assert events.count("sync") == events.count("tick") >= 2
    assert all(b == "tick" for a, b in pairwise(events) if a == "sync")  # a read after each chunk's end
    assert events[-1] == "tick"
    idle_events = len(events)
    assert gpu_draw.timed(Torch, None, 0.06, lambda: events.append("tick"))[0] == 0
    assert "step" not in events[idle_events:] and "sync" not in events[idle_events:]


def test_without_a_driver_each_gpu_benchmark_says_so_in_one_line(capsys: pytest.CaptureFixture[str],
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """nvml_calls.py ended in pynvml's traceback off a GPU host, and gpu_draw.py without PyTorch in an ImportError's,
    where gpu_probe.py says one line and exits 2."""
    nvml = FakeNvml([FakeGpu()])
    nvml.library = False
    assert load_benchmark("nvml_calls").main(["--repeat", "5"], nvml=nvml) == 2
    assert capsys.readouterr().err == "nvml_calls: NVML: NVML Shared Library Not Found\n"
    monkeypatch.setitem(sys.modules, "torch", None)  # not installed
    assert gpu_draw.main(["--seconds", "1"], nvml=FakeNvml([FakeGpu()])) == 2
    assert capsys.readouterr().err.startswith("gpu_draw: the loads need PyTorch with CUDA and a GPU (")
    assert gpu_draw.main(["--seconds", "1"], nvml=nvml, load=LawLoad(FakeGpu())) == 2
    assert capsys.readouterr().err.startswith("gpu_draw: NVML init: libnvidia-ml.so.1 not found")
