"""The simulated host: power never above the cap, clocks fall under it, rolling restarts, vLLM metrics."""

from __future__ import annotations

import numpy as np
from prometheus_client import CollectorRegistry, generate_latest

from simulator.hardware import SPECS, SimGPU
from simulator.host import SimHost
from simulator.probe import Replica, measure
from simulator.vllm_metrics import VllmCollector
from simulator.workload import TokenDist, Workload, constant


def busy_host(rate_rps: float = 20.0, replicas: int = 2, seed: int = 1) -> SimHost:
    host = SimHost("H100-SXM", 4, seed=seed, start_delay_s=5.0)
    work = Workload(constant(rate_rps), TokenDist(800), TokenDist(150), np.random.default_rng(seed))
    host.add_service("chat", "llama-3.1-8b", work, replicas=replicas, max_num_seqs=64)
    return host


def test_draw_never_exceeds_cap_and_clock_falls_under_it() -> None:
    host = busy_host(rate_rps=40.0)
    host.advance_to(10.0)
    free_clock = host.gpus[0].sm_clock_mhz
    for g in host.gpus[:2]:
        host.set_power_limit(g.index, 250.0)
        g.sample_power_w()  # the window before the change
    for _ in range(20):
        host.advance_to(host.now_s + 0.5)
        for g in host.gpus[:2]:
            assert g.sample_power_w() <= 250.0 + 1e-9
    assert host.gpus[0].sm_clock_mhz < free_clock


def test_power_limit_is_clamped_like_the_driver() -> None:
    gpu = SimGPU(0, SPECS["H100-SXM"])
    assert gpu.set_power_limit(50.0) == SPECS["H100-SXM"].min_limit_w
    assert gpu.set_power_limit(5000.0) == SPECS["H100-SXM"].max_limit_w


def test_energy_counter_is_monotonic_and_idle_gpus_draw_idle_power() -> None:
    host = busy_host(replicas=1)
    last = [g.energy_j for g in host.gpus]
    for _ in range(5):
        host.advance_to(host.now_s + 1.0)
        now = [g.energy_j for g in host.gpus]
        assert all(b >= a for a, b in zip(last, now, strict=True))
        last = now
    idle = host.gpus[3]
    assert abs(idle.sample_power_w() - idle.spec.idle_w) < 1e-6


def test_rolling_restart_keeps_the_service_serving() -> None:
    host = busy_host(rate_rps=10.0, replicas=2)
    host.advance_to(20.0)
    host.restart_with_batch("chat", 32)
    svc = host.services["chat"]
    ready_during = []
    for _ in range(24):
        host.advance_to(host.now_s + 0.5)
        ready_during.append(sum(r.ready_at_s <= host.now_s for r in svc.replicas))
    assert min(ready_during) >= 1
    assert all(r.engine.max_num_seqs == 32 for r in svc.replicas)


def test_engines_render_vllm_v1_metric_names() -> None:
    host = busy_host()
    host.advance_to(15.0)
    registry = CollectorRegistry()
    engines = [r.engine for r in host.services["chat"].replicas]
    registry.register(VllmCollector(lambda: engines))
    text = generate_latest(registry).decode()
    for name in ("vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc",
                 "vllm:time_to_first_token_seconds_bucket", "vllm:inter_token_latency_seconds_sum",
                 "vllm:request_success_total", "vllm:prompt_tokens_total", "vllm:num_preemptions_total"):
        assert name in text, name
    assert 'model_name="llama-3.1-8b"' in text


def test_probe_sees_prefill_slow_down_under_a_low_cap_more_than_decode() -> None:
    rep = Replica("llama-3.1-8b", "H100-SXM")
    kwargs = {"rate_rps": 3.0, "tokens_in": TokenDist(2000), "tokens_out": TokenDist(100), "max_num_seqs": 32,
              "requests": 300}
    free = measure(rep, **kwargs)  # type: ignore[arg-type]
    capped = measure(rep, power_limit_w=220.0, **kwargs)  # type: ignore[arg-type]
    assert capped.power_w <= 220.0 + 1e-6
    ttft_slow = capped.ttft_ms / free.ttft_ms
    itl_slow = capped.itl_ms / free.itl_ms
    assert ttft_slow > itl_slow > 0.99


def test_simulated_envelopes_match_the_public_catalogue() -> None:
    from queuemodels.accelerators import CATALOG

    for name, spec in SPECS.items():
        envelope = CATALOG[name]
        assert (spec.min_limit_w, spec.max_limit_w, spec.idle_w) == (
            envelope.min_power_w, envelope.max_power_w, envelope.idle_power_w)
