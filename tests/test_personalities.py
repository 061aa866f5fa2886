"""Engine personalities: each one's step law does what it imitates, and the host picks one per pair."""

from __future__ import annotations

import numpy as np
import pytest

from simulator.engine import VLLMEngine
from simulator.hardware import SPECS, SimGPU, step_core_ms, step_length_ms
from simulator.host import SimHost
from simulator.llms import LLMS, step_cost
from simulator.personality import PERSONALITIES, get_personality
from simulator.requests import RequestLog
from simulator.workload import TokenDist, Workload, constant

COST = step_cost(LLMS["llama-3.1-8b"], SPECS["H100-SXM"])


def step_ms(name: str, prefill: int = 0, decode: int = 0, context: int = 0, pairs: float = 0.0) -> float:
    return step_length_ms(1.0, *get_personality(name).step_parts(COST, prefill, 1 if prefill else 0, pairs, decode,
                                                                 context))


def test_roofline_is_the_original_law() -> None:
    c = COST
    compute = c.prefill_ms_per_token * 300 + c.decode_ms_per_seq * 40
    memory = c.weights_ms + c.kv_ms_per_token * 50_000.0
    assert step_ms("roofline", prefill=300, decode=40, context=50_000) == c.overhead_ms + step_core_ms(memory, compute)


def test_chunked_prefill_spreads_a_long_prompt_over_steps_shared_with_decodes() -> None:
    engine = VLLMEngine("llama-3.1-8b", COST, SimGPU(0, SPECS["H100-SXM"]), 8, np.random.default_rng(0),
                        keep_samples=True, personality=get_personality("chunked"))
    engine.submit(0.0, 16, 400)
    engine.advance_to(0.05)  # the first request decodes
    start = engine.now_s
    engine.submit(start, 2048, 4)
    tokens, gaps = engine.metrics.iteration_tokens, engine.metrics.itl
    gaps_before = gaps.count
    per_step = []
    while len(engine.metrics.ttft.all_samples()) < 2:
        before = tokens.sum
        engine.advance_to(engine.now_s + 1e-9)  # exactly one step
        per_step.append(tokens.sum - before)
    assert max(per_step) <= 512
    assert len(per_step) >= 2048 // 511  # the prompt took at least its chunks' worth of steps
    assert gaps.count - gaps_before >= len(per_step) - 1  # the first request decoded in the prompt's steps


def test_prefill_overhead_adds_a_fixed_cost_and_a_serial_per_token_cost() -> None:
    fixed = step_ms("prefill-overhead", prefill=1, decode=16) - step_ms("prefill-overhead", decode=16)
    assert fixed == pytest.approx(2.0 * COST.overhead_ms + COST.prefill_ms_per_token, rel=1e-9)
    per_token = (step_ms("prefill-overhead", prefill=2001, decode=16)
                 - step_ms("prefill-overhead", prefill=1001, decode=16))
    assert per_token == pytest.approx(1000 * COST.prefill_ms_per_token, rel=1e-9)
    # under the roofline law a short prompt hides under the weights' read
    assert step_ms("roofline", prefill=20, decode=16) - step_ms("roofline", decode=16) < 0.1 * fixed


def test_compute_bound_decode_is_convex_in_the_batch() -> None:
    times = [step_ms("compute-bound-decode", decode=b) for b in (64, 128, 256, 512)]
    slopes = np.diff(times) / np.diff([64, 128, 256, 512])
    assert np.all(np.diff(slopes) > 0)
    assert times[-1] > 1.3 * step_ms("roofline", decode=512)


def test_long_context_attention_grows_with_context() -> None:
    extra = step_ms("long-context", decode=32, context=32 * 4000) - step_ms("long-context", decode=32)
    base_extra = step_ms("roofline", decode=32, context=32 * 4000) - step_ms("roofline", decode=32)
    assert extra > 2.0 * base_extra
    short = step_ms("long-context", prefill=512, pairs=512 * 256.0) - step_ms("long-context")
    long = step_ms("long-context", prefill=8192, pairs=8192 * 4096.0) - step_ms("long-context")
    assert long / 8192 > 1.3 * short / 512  # a prompt token costs more the longer its prompt


def test_host_picks_a_personality_per_model_and_gpu() -> None:
    host = SimHost("H100-SXM", 2, seed=0, start_delay_s=0.0,
                   personalities={"llama-3.1-8b|H100-SXM": "compute-bound-decode", "mistral-7b|L4": "chunked"})
    for name, model in (("a", "llama-3.1-8b"), ("b", "mistral-7b")):
        host.add_service(name, model, Workload(constant(1.0), TokenDist(100), TokenDist(10),
                                               np.random.default_rng(0)), replicas=1, max_num_seqs=8)
    assert host.services["a"].replicas[0].engine.personality.name == "compute-bound-decode"
    assert host.services["b"].replicas[0].engine.personality.name == "roofline"
    with pytest.raises(ValueError, match="personality"):
        SimHost("H100-SXM", 1, personalities={"llama-3.1-8b": "nonesuch"})
    assert "roofline" in PERSONALITIES


def test_a_mixture_of_experts_reads_the_experts_its_tokens_route_to() -> None:
    """A step reads the experts some token routes to: a small batch reads part of the weights, so the decode step
    is concave in the batch and flat once every expert is read; a token runs a fifth of the dense GEMMs."""
    times = [step_ms("mixture-of-experts", decode=b) for b in (1, 4, 16, 64, 256)]
    slopes = np.diff(times) / np.diff([1, 4, 16, 64, 256])
    assert np.all(np.diff(slopes) < 0) and times[0] < 0.7 * times[3]  # a quarter of the weights, and the overhead
    # by 64 tokens every expert is read: the dense model's memory-bound step, and flat past it
    assert times[3] == pytest.approx(step_ms("roofline", decode=1), rel=0.02) == times[4]
    prompt = step_ms("mixture-of-experts", prefill=8000) - step_ms("mixture-of-experts", prefill=1)
    assert prompt == pytest.approx(0.2 * (step_ms("roofline", prefill=8000) - step_ms("roofline", prefill=1)),
                                   rel=0.05)


def test_speculative_decoding_verifies_drafts_and_gives_several_tokens_a_step() -> None:
    """A step drafts 3 tokens a sequence in small serial passes and verifies 4 in one target pass: longer than a
    plain step, shorter than the 2.5 plain steps whose tokens it gives on average. Each sequence gains 1-4 tokens
    and one ITL sample a step; the generation counter counts every token."""
    spec, plain = step_ms("spec-decode", decode=16, context=16 * 600), step_ms("roofline", decode=16, context=16 * 600)
    assert plain < spec < 2.0 * plain
    engine = VLLMEngine("llama-3.1-8b", COST, SimGPU(0, SPECS["H100-SXM"]), 16, np.random.default_rng(4),
                        keep_samples=True, personality=get_personality("spec-decode"))
    for i in range(8):
        engine.submit(0.0, 200, 400 + i)
    engine.advance_to(60.0)
    m = engine.metrics
    assert m.success_total == 8 and m.generation_tokens_total == sum(400 + i for i in range(8))
    per_step = (m.generation_tokens_total - m.ttft.count) / m.itl.count
    assert 2.3 < per_step < 2.6  # 1 + 0.7 + 0.7^2 + 0.7^3 = 2.53, less where an answer ends mid-draft
    again = VLLMEngine("llama-3.1-8b", COST, SimGPU(0, SPECS["H100-SXM"]), 16, np.random.default_rng(4),
                       keep_samples=True, personality=get_personality("spec-decode"))
    for i in range(8):
        again.submit(0.0, 200, 400 + i)
    again.advance_to(60.0)
    assert np.array_equal(again.metrics.e2e.all_samples(), m.e2e.all_samples())  # the same seed, the same run


def test_a_speculative_requests_itl_is_the_gap_between_its_outputs() -> None:
    """The request log's ITL is what vLLM's histogram has of the request, one gap a step: under speculative decoding
    a step gives several tokens, and the gap between tokens read the ITL 2.5 x short of what the daemon plans for."""
    log = RequestLog()
    engine = VLLMEngine("llama-3.1-8b", COST, SimGPU(0, SPECS["H100-SXM"]), 16, np.random.default_rng(4),
                        keep_samples=True, personality=get_personality("spec-decode"), requests=log)
    for i in range(8):
        engine.submit(0.0, 200, 400 + i)
    engine.advance_to(60.0)
    done = log.finished()
    steps = engine.metrics.itl.all_samples()
    assert len(done.itl_s) == 8
    assert float(np.mean(done.itl_s)) == pytest.approx(float(np.mean(steps)), rel=0.05)
    assert float(np.mean((done.e2e_s - done.ttft_s) / (done.out_tokens - 1))) < 0.5 * float(np.mean(done.itl_s))
