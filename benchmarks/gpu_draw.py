"""Read-only: a real GPU's draw by batch size under a decode-like load, and the draw law fitted to it.

    python benchmarks/gpu_draw.py [--load gemm|decode] [--context 1024] [--seconds 6] [--batches 0,1,8,...]
    (needs PyTorch with CUDA)

Two loads, each a proxy, not vLLM. `gemm`: a decode step reads every weight once for the whole batch, and one
bf16 product of a (batch x 8192) activation with an 8192 x 32768 weight matrix (512 MiB, far above the L2 cache)
has that arithmetic intensity (about `batch` FLOP a byte), so a sweep from batch 1 to 16,384 walks from
memory-bound decode to compute-bound prefill. `decode`: a Llama-3-8B-shaped decode step in eager PyTorch,
attention over a KV cache included (`DecodeLoad`). Per batch (0: the GPU idle, a CUDA context held) it runs steps
back to back for --seconds after a one-second warm-up, reads the GPU through gpu_probe's `ReadOnlyNvml` (no
setter reachable), and prints one JSON object: per phase the step time, TFLOP/s, mean draw from the energy
counter, joules per token, SM and memory clocks and clock-event reasons; then the catalogue's decode draw law
(`queuemodels.power.natural_draw_w`) fitted to the points the cap did not hold (`capped`: SwPowerCap on half
the reads or more), relative to the idle phase's draw: its `busy_share` and `batch_half` against the defaults.
Nothing is set.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import fields, replace
from types import ModuleType
from typing import Any, Protocol

import numpy as np
from gpu_probe import ReadOnlyNvml, decode_reasons
from scipy.optimize import least_squares

from actuators import ActuatorError
from actuators.nvml import GpuReading, NvmlDevices
from queuemodels.power import natural_draw_w
from queuemodels.types import PowerProfile

BATCHES = {"gemm": (0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096, 16384),
           "decode": (0, 1, 4, 16, 32, 64, 128, 256)}  # decode: a batch of 1,024 needs 137 GB of KV cache
K, N = 8192, 32768  # the gemm load's weight matrix: 512 MiB of bf16
# The decode load: Llama-3-8B's shape (hidden 4096, 32 layers, 32 query and 8 KV heads of 128, MLP 14336).
HIDDEN, LAYERS, HEADS, KV_HEADS, HEAD_DIM, MLP = 4096, 32, 32, 8, 128, 14336
WARMUP_S = 1.0
CHUNK_S = 0.05  # steps launched between two synchronisations (and an NVML read, the energy counter left out)


class Load(Protocol):
    def shape(self) -> dict[str, Any]:
        """What one step is, for the report."""
        ...

    def flops(self, batch: int) -> float:
        """Floating-point operations of one step at `batch`."""
        ...

    def run(self, batch: int, seconds: float, tick: Callable[[], None]) -> tuple[int, float]:
        """Steps at `batch` (0: none, the GPU idle) for about `seconds`, `tick()` after each chunk;
        returns (steps done, wall seconds taken)."""
        ...


def timed(torch: Any, step: Callable[[], object] | None, seconds: float, tick: Callable[[], None]) -> tuple[int, float]:
    """`step` back to back (None: sleep) in chunks of about CHUNK_S, synchronised and ticked after each."""
    start, done, chunk = time.perf_counter(), 0, 1
    while (elapsed := time.perf_counter() - start) < seconds:
        t0 = time.perf_counter()
        if step is None:
            time.sleep(CHUNK_S)
        else:
            for _ in range(chunk):
                step()
            torch.cuda.synchronize()
            done += chunk
        tick()
        chunk = max(1, min(4 * chunk, round(chunk * CHUNK_S / max(time.perf_counter() - t0, 1e-6))))
    return done, elapsed


class GemmLoad:
    """One (batch x K) @ (K x N) bf16 product a step: weight streaming at a chosen arithmetic intensity."""

    def __init__(self) -> None:
        import torch  # only the loads need it

        self.torch = torch
        self.weight = torch.randn(K, N, device="cuda", dtype=torch.bfloat16)

    def shape(self) -> dict[str, Any]:
        return {"load": "gemm", "k": K, "n": N, "dtype": "bfloat16"}

    def flops(self, batch: int) -> float:
        return 2.0 * batch * K * N

    def run(self, batch: int, seconds: float, tick: Callable[[], None]) -> tuple[int, float]:
        if batch == 0:
            return timed(self.torch, None, seconds, tick)
        x = self.torch.randn(batch, K, device="cuda", dtype=self.torch.bfloat16)
        return timed(self.torch, lambda: self.torch.matmul(x, self.weight), seconds, tick)


class DecodeLoad:
    """One decode step of a Llama-3-8B-shaped model in eager PyTorch: per layer the QKV, output and MLP
    products and attention of one new token per sequence over a KV cache of `context` tokens (grouped-query
    SDPA). No norms, no LM head (1 GB more a step), no sampling, no CUDA graphs, the cache not grown: a proxy
    for vLLM's decode, not vLLM."""

    def __init__(self, context: int) -> None:
        import torch

        self.torch, self.context = torch, context
        kw = {"device": "cuda", "dtype": torch.bfloat16}
        self.layers = [(torch.randn(HIDDEN, (HEADS + 2 * KV_HEADS) * HEAD_DIM, **kw) * 0.01,
                        torch.randn(HEADS * HEAD_DIM, HIDDEN, **kw) * 0.01,
                        torch.randn(HIDDEN, 2 * MLP, **kw) * 0.01,
                        torch.randn(MLP, HIDDEN, **kw) * 0.01) for _ in range(LAYERS)]

    def shape(self) -> dict[str, Any]:
        return {"load": "decode", "hidden": HIDDEN, "layers": LAYERS, "heads": HEADS, "kv_heads": KV_HEADS,
                "head_dim": HEAD_DIM, "mlp": MLP, "context": self.context, "dtype": "bfloat16"}

    def flops(self, batch: int) -> float:
        weights = HIDDEN * ((HEADS + 2 * KV_HEADS) * HEAD_DIM + HEADS * HEAD_DIM + 2 * MLP) + MLP * HIDDEN
        return LAYERS * batch * (2.0 * weights + 4.0 * HEADS * HEAD_DIM * self.context)

    def run(self, batch: int, seconds: float, tick: Callable[[], None]) -> tuple[int, float]:
        torch = self.torch
        if batch == 0:
            return timed(torch, None, seconds, tick)
        kw = {"device": "cuda", "dtype": torch.bfloat16}
        x = torch.randn(batch, HIDDEN, **kw)
        caches = [(torch.randn(batch, KV_HEADS, self.context, HEAD_DIM, **kw),
                   torch.randn(batch, KV_HEADS, self.context, HEAD_DIM, **kw)) for _ in range(LAYERS)]
        sdpa = torch.nn.functional.scaled_dot_product_attention

        def step() -> object:
            h = x
            for (wqkv, wo, wup, wdown), (k, v) in zip(self.layers, caches, strict=True):
                q = (h @ wqkv)[:, : HEADS * HEAD_DIM].view(batch, HEADS, 1, HEAD_DIM)
                a = sdpa(q, k, v, enable_gqa=True).reshape(batch, HEADS * HEAD_DIM)
                h = h + a @ wo
                gate, up = (h @ wup).chunk(2, dim=-1)
                h = h + (torch.nn.functional.silu(gate) * up) @ wdown
            return h

        return timed(torch, step, seconds, tick)


def phase(devices: NvmlDevices, index: int, load: Load, batch: int, seconds: float) -> dict[str, Any]:
    """One batch: a warm-up, then the measured run with the GPU read after every chunk."""
    load.run(batch, WARMUP_S, lambda: None)
    reads: list[GpuReading] = [devices.read(index)]  # the energy counter (4 ms on an H200) first and last only
    steps, elapsed = load.run(batch, seconds, lambda: reads.append(devices.read(index, energy=False)))
    reads.append(devices.read(index))
    first, last = reads[0], reads[-1]
    energy_w = None
    if first.energy_j is not None and last.energy_j is not None and elapsed > 0:
        energy_w = (last.energy_j - first.energy_j) / elapsed
    reasons: Counter[str] = Counter()
    for r in reads:
        reasons.update(decode_reasons(r.clock_event_reasons) if r.clock_event_reasons is not None else [])

    def median(values: Sequence[float | None]) -> float | None:
        known = [v for v in values if v is not None]
        return round(statistics.median(known), 1) if known else None

    tokens_per_s = batch * steps / elapsed if elapsed > 0 else 0.0
    return {
        "batch": batch, "seconds": round(elapsed, 3), "steps": steps,
        "step_ms": round(1000 * elapsed / steps, 4) if steps else None,
        "tflops": round(load.flops(batch) * steps / elapsed / 1e12, 2) if elapsed > 0 else None,
        "energy_power_w": None if energy_w is None else round(energy_w, 1),
        "joules_per_token": round(energy_w / tokens_per_s, 5) if energy_w and tokens_per_s else None,
        "power_w_median": median([r.power_w for r in reads]),
        "sm_clock_mhz_median": median([r.sm_clock_mhz for r in reads]),
        "mem_clock_mhz_median": median([r.mem_clock_mhz for r in reads]),
        "temperature_c_max": max((r.temperature_c for r in reads if r.temperature_c is not None), default=None),
        "reads": len(reads), "reasons_seen": dict(sorted(reasons.items())),
        "capped": 2 * reasons["SwPowerCap"] >= len(reads),
    }


def fit_law(idle_w: float, peak_w: float, points: Sequence[tuple[int, float]]) -> dict[str, float]:
    """`busy_share` and `batch_half` of the decode draw law fitted (least squares, relative) to (batch, W)."""
    batch = np.array([b for b, _ in points], dtype=float)
    watts = np.array([w for _, w in points])
    base = PowerProfile("measured", max_power_w=peak_w, min_power_w=min(idle_w, peak_w), idle_power_w=idle_w)

    def residual(x: np.ndarray) -> np.ndarray:
        law = replace(base, busy_share=float(x[0]), batch_half=float(np.exp(x[1])))
        return np.asarray(natural_draw_w(law, batch), dtype=float) / watts - 1.0

    fit = least_squares(residual, x0=[0.2, np.log(96.0)], bounds=([0.0, np.log(0.1)], [0.99, np.log(1e6)]))
    return {"busy_share": round(float(fit.x[0]), 4), "batch_half": round(float(np.exp(fit.x[1])), 2),
            "rms_rel_err": round(float(np.sqrt(np.mean(fit.fun ** 2))), 4)}


def measure(nvml: ModuleType | Any, load: Load, batches: Sequence[int], seconds: float,
            index: int = 0) -> dict[str, Any]:
    """The sweep and the fit; NVML is wrapped read-only before anything sees it."""
    devices = NvmlDevices(ReadOnlyNvml(nvml))
    try:
        gpu = devices.read(index)
        phases = [phase(devices, index, load, b, seconds) for b in batches]
    finally:
        devices.close()
    idle = next((p["energy_power_w"] for p in phases if p["batch"] == 0), None)
    busy = [(p["batch"], p["energy_power_w"]) for p in phases
            if p["batch"] > 0 and p["energy_power_w"] and not p["capped"]]  # at the cap: not the natural draw
    peak = gpu.default_limit_w or gpu.max_limit_w
    law = fit_law(idle, peak, busy) if idle and len(busy) >= 2 else None
    defaults = {f.name: f.default for f in fields(PowerProfile) if f.name in ("busy_share", "batch_half")}
    return {
        "gpu": {"name": gpu.name, "limits_w": {"current": gpu.power_limit_w, "min": gpu.min_limit_w,
                                               "max": gpu.max_limit_w, "default": gpu.default_limit_w}},
        "shape": load.shape(), "phases": phases,
        "law": {"peak_w": peak, "idle_w": idle, "fitted": law,
                "catalogue_defaults": defaults},
    }


def main(argv: list[str] | None = None, nvml: ModuleType | Any = None, load: Load | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--load", choices=("gemm", "decode"), default="gemm", help="what a step is (default gemm)")
    ap.add_argument("--context", type=int, default=1024, help="decode: KV-cache tokens per sequence (default 1024)")
    ap.add_argument("--seconds", type=float, default=6.0, help="measured seconds per batch (default 6)")
    ap.add_argument("--batches", default=None, help="comma-separated, 0 the GPU idle (default: the load's own)")
    args = ap.parse_args(argv)
    try:
        batches = list(BATCHES[args.load]) if args.batches is None else [int(b) for b in args.batches.split(",")]
    except ValueError:
        ap.error(f"--batches: comma-separated integers, got {args.batches!r}")
    if args.seconds <= 0 or args.context <= 0 or any(b < 0 for b in batches):
        ap.error(f"--seconds and --context must be > 0 and --batches >= 0, got {args.seconds}, {args.context} "
                 f"and {args.batches}")
    if nvml is None:
        import pynvml

        nvml = pynvml
    try:  # one line for each failure, as gpu_probe.py says its own
        if load is None:
            load = GemmLoad() if args.load == "gemm" else DecodeLoad(args.context)
    except (ImportError, RuntimeError, AssertionError) as exc:  # no torch; torch without CUDA, or no GPU
        print(f"gpu_draw: the loads need PyTorch with CUDA and a GPU ({exc})", file=sys.stderr)
        return 2
    try:
        print(json.dumps(measure(nvml, load, batches, args.seconds)))
    except ActuatorError as exc:  # NVML's errors, translated by NvmlDevices
        print(f"gpu_draw: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
