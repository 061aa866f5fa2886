"""LLM specs and the hidden step-cost law of a model on a GPU.

The controller never sees this: it only observes latencies and power, and must learn its own model.
Costs follow the roofline of one engine step: weights and KV reads are memory time, prompt and decode
tokens are compute time; efficiencies and overheads are hidden per (model, GPU) and jittered by seed.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, replace

import numpy as np

from simulator.hardware import GpuSpec


@dataclass(frozen=True)
class LlmSpec:
    """A served model: size in billions of parameters and KV-cache bytes per token."""

    name: str
    params_b: float
    kv_kb_per_token: float


LLMS: dict[str, LlmSpec] = {
    m.name: m
    for m in (
        LlmSpec("llama-3.1-8b", 8.0, 128.0),
        LlmSpec("granite-13b", 13.0, 200.0),
        LlmSpec("mistral-7b", 7.2, 128.0),
        LlmSpec("qwen2.5-14b", 14.7, 192.0),
        LlmSpec("llama-3.1-70b-fp8", 35.0, 160.0),
    )
}


MEMORY_UTILIZATION = 0.9
"""vLLM's `--gpu-memory-utilization` default: the share of a GPU's memory it takes for the weights and KV cache."""


def weights_gb(llm: LlmSpec) -> float:
    """The model's weights in GB (two bytes a parameter; the fp8 model's size is given in those units)."""
    return 2.0 * llm.params_b


@dataclass(frozen=True)
class StepCost:
    """Hidden per-step costs (ms) of one model on one GPU at full clock."""

    overhead_ms: float
    weights_ms: float
    kv_ms_per_token: float
    prefill_ms_per_token: float
    decode_ms_per_seq: float
    noise_sigma: float
    hiccup_prob: float
    hiccup_ms: float
    kv_capacity_tokens: int


def kv_capacity_tokens(llm: LlmSpec, gpu: GpuSpec) -> int:
    """Tokens one replica's KV cache holds: the memory vLLM may use less the weights (2 GB at least, where vLLM would
    not start: simulator_checks refuses that config)."""
    free_gb = max(2.0, MEMORY_UTILIZATION * gpu.memory_gb - weights_gb(llm))
    return int(free_gb * 1e6 / llm.kv_kb_per_token)


def step_cost(llm: LlmSpec, gpu: GpuSpec, seed: int = 0) -> StepCost:
    """The true step law for a pair, with efficiencies drawn once from the pair's own seed."""
    key = zlib.crc32(f"{llm.name}|{gpu.name}|{seed}".encode())
    rng = np.random.default_rng(key)
    mem_eff = rng.uniform(0.70, 0.85)
    mfu = rng.uniform(0.40, 0.60)
    weights = weights_gb(llm)
    bandwidth_gb_ms = gpu.memory_tb_s  # TB/s == GB/ms
    flops_per_token = 2.0 * llm.params_b * 1e9
    compute_tflop_ms = gpu.dense_tflops * 1e12 * mfu / 1e3
    return StepCost(
        overhead_ms=rng.uniform(3.0, 6.0),
        weights_ms=weights / (bandwidth_gb_ms * mem_eff),
        kv_ms_per_token=llm.kv_kb_per_token / 1e6 / (bandwidth_gb_ms * mem_eff),
        prefill_ms_per_token=flops_per_token / compute_tflop_ms,
        decode_ms_per_seq=1.6 * flops_per_token / compute_tflop_ms,
        noise_sigma=rng.uniform(0.03, 0.06),
        hiccup_prob=0.002,
        hiccup_ms=rng.uniform(20.0, 40.0),
        kv_capacity_tokens=kv_capacity_tokens(llm, gpu),
    )


def scaled(cost: StepCost, factor: float) -> StepCost:
    """Every step time multiplied by `factor` (a drift: a new engine version, a slower kernel); noise and
    the KV cache stay."""
    return replace(cost, overhead_ms=cost.overhead_ms * factor, weights_ms=cost.weights_ms * factor,
                   kv_ms_per_token=cost.kv_ms_per_token * factor,
                   prefill_ms_per_token=cost.prefill_ms_per_token * factor,
                   decode_ms_per_seq=cost.decode_ms_per_seq * factor)
