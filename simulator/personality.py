"""Engine personalities: how one engine step's work becomes time, beyond today's roofline law.

A real vLLM is not one law. Each personality below imitates a documented behaviour of a serving engine,
so that the queue models and tuner are tried against more than the law they were first shaped on (the step
family was later shaped on two of these: docs/queue-models.md says what its figures then mean). All of them
start from the pair's hidden `StepCost` (the same weights, FLOPs and bandwidth) and differ in how a
step's work combines; the controller never sees which one runs (`SimHost(personalities=...)` chooses it
per model x GPU, `probe.Replica.personality` per probe). The clock law under a power cap
(`simulator/hardware.py`) applies to every personality's compute alike.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
from numpy.typing import NDArray

from simulator.llms import StepCost


@dataclass(frozen=True)
class Personality:
    """One engine behaviour; the default values reproduce the simulator's original roofline law."""

    name: str
    token_budget: int | None = None
    """`max_num_batched_tokens`: prompt tokens plus decodes per step (None: the engine's 8192)."""
    prefill_step_ms: float = 0.0
    """Fixed host-and-launch cost of any step that carries a prompt, in units of the pair's overhead."""
    serial_prefill: bool = False
    """Prompt compute runs in kernels of its own (added to the step, not hidden under the weights' read)."""
    decode_knee: float | None = None
    """Batch at which a decode sequence's compute has doubled (None: linear in the batch)."""
    kv_read_factor: float = 1.0
    """KV bytes read per context token, relative to the model's grouped-query layout."""
    attention_context: float | None = None
    """Context length at which a prompt token's attention FLOPs equal its weights' (None: ignored)."""
    experts_per_token: float | None = None
    """Mixture of experts: the share of a layer's routed experts one token runs (top-k / experts; None: dense)."""
    expert_share: float = 0.0
    """Share of the weights' bytes in routed experts, read only where some token of the step routes to them."""
    active_share: float = 1.0
    """A token's FLOPs relative to the dense law's (the active parameters' share)."""
    draft_tokens: int = 0
    """Speculative decoding: drafts proposed per decoding sequence a step (vLLM's `num_speculative_tokens`; 0: off)."""
    draft_accept: float = 0.0
    """The chance each draft is accepted, given those before it were: a sequence gains 1 + the run accepted."""
    draft_share: float = 0.0
    """A draft pass's weights and per-token FLOPs relative to the target model's (a small head or model)."""

    def step_parts(self, cost: StepCost, prefill_tokens: int, prefill_seqs: int, attention_pairs: float,
                   decode_seqs: int, context_tokens: int) -> tuple[float, float, float, float]:
        """One step's time parts at full clock, as (compute, memory, overhead, serial) ms, the order
        `SimGPU.run_step` and `hardware.step_length_ms` take: `overhead` is host-side (no GPU draw, no clock),
        `compute` overlaps `memory` (roofline smooth maximum), `serial` is compute in kernels of its own (no
        overlap). `attention_pairs` is the sum over prompt chunks of chunk x (context before it + chunk / 2), the
        query-key pairs prefill attention computes; `context_tokens` the KV-cache tokens decode attention reads."""
        decode_ms = cost.decode_ms_per_seq * decode_seqs * self.active_share * (1 + self.draft_tokens)  # verified
        if self.decode_knee is not None:
            decode_ms *= 1.0 + decode_seqs / self.decode_knee
        prefill_ms = cost.prefill_ms_per_token * prefill_tokens * self.active_share  # the GEMMs; attention is dense
        if self.attention_context is not None:
            prefill_ms += cost.prefill_ms_per_token * attention_pairs / self.attention_context
        overhead = cost.overhead_ms
        if prefill_seqs:
            overhead += self.prefill_step_ms * cost.overhead_ms
        weights_ms = cost.weights_ms
        if self.experts_per_token is not None:  # experts no token of the step routes to are not read
            unread = (1.0 - self.experts_per_token) ** (prefill_tokens + decode_seqs)
            weights_ms *= 1.0 - self.expert_share * unread
        memory_ms = weights_ms + cost.kv_ms_per_token * self.kv_read_factor * float(context_tokens)
        serial = 0.0
        if self.draft_tokens and decode_seqs:  # the drafts, one small pass each before the target verifies them all
            overhead += self.draft_tokens * cost.overhead_ms / 2.0
            serial = self.draft_tokens * self.draft_share * (cost.weights_ms + cost.decode_ms_per_seq * decode_seqs)
        if self.serial_prefill:
            return decode_ms, memory_ms, overhead, prefill_ms + serial
        return prefill_ms + decode_ms, memory_ms, overhead, serial

    def gains(self, rng: np.random.Generator, n: int) -> NDArray[np.int64]:
        """Tokens each of n decoding sequences gains this step: 1, and under speculative decoding the run of drafts
        accepted before the first refused (at most `draft_tokens`)."""
        if not self.draft_tokens:
            return np.ones(n, dtype=np.int64)
        accepted: NDArray[np.int64] = np.minimum(rng.geometric(1.0 - self.draft_accept, n) - 1, self.draft_tokens)
        return accepted + 1


ROOFLINE = Personality("roofline")
"""Today's law: a step's compute (prompt and decode tokens) overlaps its memory time (weights, KV),
as a roofline model of one fused forward pass has it (Williams et al., CACM 2009)."""

PERSONALITIES: dict[str, Personality] = {
    p.name: p
    for p in (
        ROOFLINE,
        # vLLM V1's chunked prefill with a small budget (`--max-num-batched-tokens 512`, the V0 default
        # when chunked prefill was on): decodes go first, a long prompt is cut into chunks over several
        # steps that it shares with them (Agrawal et al., Sarathi-Serve, OSDI 2024).
        Personality("chunked", token_budget=512),
        # vLLM V0 without chunked prefill: a step with prompts runs them in a forward pass of their own
        # (no overlap with the decode's weight read) and pays a fixed cost per prefill step - input
        # preparation, attention metadata, eager kernels outside the decode CUDA graphs. Per step:
        # alpha + beta decoding + (gamma + delta prompt_tokens when it carries prefill), as issue 18 found.
        Personality("prefill-overhead", prefill_step_ms=2.0, serial_prefill=True),
        # Decode turns compute-bound at large batches: the GEMMs leave the memory-bound regime, and the
        # sampler and attention kernels grow with the batch, so a step is convex in the batch (public vLLM
        # runs at batch 384-768 read 7-9 % slower than an affine law fitted at <= 64; Vidur, MLSys 2024,
        # profiles per-operator times that bend the same way).
        Personality("compute-bound-decode", decode_knee=256.0),
        # Attention grows with context: decode reads every live sequence's KV (a model with fewer shared KV
        # heads reads 4x more per token, as multi-head Llama-2 against grouped-query Llama-3), and a prompt's
        # attention is quadratic in its length: 4 x layers x width FLOPs per token of context, which for an
        # 8B model match its weights' 2 x 8e9 at about 30k tokens; run at a quarter of the GEMMs' efficiency
        # (FlashAttention at small head counts), at 8k.
        Personality("long-context", kv_read_factor=4.0, attention_context=8000.0),
        # A mixture of experts (OLMoE-1B-7B: 64 routed experts, 8 per token, a fifth of its 7B weights active;
        # Mixtral, Qwen3-MoE and DeepSeek route the same way): a token runs only its experts' GEMMs, and a step
        # reads only the experts some token of it routes to, 1 - (1 - 8/64)^T of them for T tokens. Small batches
        # read part of the weights, so the decode step is concave in the batch up to some 32 sequences and flat
        # past it, where the dense laws are affine or convex (Muennighoff et al., OLMoE, ICLR 2025).
        Personality("mixture-of-experts", experts_per_token=8.0 / 64.0, expert_share=0.85, active_share=0.2),
        # Speculative decoding with a draft head (EAGLE, Li et al., ICML 2024; vLLM `--speculative-config
        # '{"method": "eagle", "num_speculative_tokens": 3}'`): each step a head of some 1/30 of the weights
        # proposes 3 tokens a sequence in 3 small serial passes, and one target pass verifies the 4 positions (4 x
        # the decode FLOPs, the weights and KV read once); a sequence keeps the drafts up to the first refused
        # (0.7 each: 2.5 tokens a step on average, as EAGLE's chains read on chat). vLLM's scheduler gives each
        # decoding sequence its token and its drafts within the step's token budget, records one ITL sample a
        # request a step however many tokens it gave, and counts every token in vllm:generation_tokens_total.
        Personality("spec-decode", draft_tokens=3, draft_accept=0.7, draft_share=1.0 / 32.0),
    )
}


def get_personality(name: str) -> Personality:
    """A personality by name; the message lists the known ones."""
    try:
        return PERSONALITIES[name]
    except KeyError:
        raise ValueError(f"personality: unknown {name!r}, expected one of {sorted(PERSONALITIES)}") from None


Chosen = TypeVar("Chosen")


def chosen_for(choices: Mapping[str, Chosen], model: str, gpu_type: str) -> Chosen | None:
    """What `choices` (`[simulator] personalities`: "model|gpu_type" or "model" keys) give `model` on `gpu_type`
    GPUs, the "model|gpu_type" entry first; None where neither is there (the roofline)."""
    return choices.get(f"{model}|{gpu_type}") or choices.get(model)
