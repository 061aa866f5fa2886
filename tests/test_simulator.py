"""The simulated host: power never above the cap, clocks fall under it, rolling restarts, vLLM metrics."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from simulator.hardware import SPECS, SimGPU
from simulator.host import SimHost
from simulator.probe import Replica, measure
from simulator.requests import RequestLog
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
    """A GPU with no process draws its empty power; one a loaded replica holds idle, more (its context): an H200
    read 80 and 124-128 W."""
    host = busy_host(replicas=1)
    last = [g.energy_j for g in host.gpus]
    for _ in range(5):
        host.advance_to(host.now_s + 1.0)
        now = [g.energy_j for g in host.gpus]
        assert all(b >= a for a, b in zip(last, now, strict=True))
        last = now
    empty = host.gpus[3]
    assert abs(empty.sample_power_w() - empty.spec.empty_w) < 1e-6 and empty.spec.empty_w < empty.spec.idle_w
    host = busy_host(rate_rps=0.0, replicas=1)
    host.advance_to(10.0)
    assert abs(host.gpus[0].sample_power_w() - host.gpus[0].spec.idle_w) < 1e-6


@pytest.mark.parametrize("stop", ["scale", "restart", "lose"])
def test_a_replica_stopped_mid_step_draws_no_more_of_that_step(stop: str) -> None:
    """A step is accounted whole as it begins: a replica stopped in it (scaled away, restarted, its GPU lost) kept
    the rest of the step's joules, and its GPU drew idle over them: 2,336 W read in a second off a 700 W GPU at 20 x
    slower steps."""
    host = busy_host(rate_rps=40.0, replicas=1)
    host.advance_to(10.0)
    host.slow_down("chat", 20.0)
    gpu = host.gpus[0]
    host.advance_to(20.0)
    assert gpu.accounted_to_s > host.now_s + 0.5  # stopped in a step
    {"scale": lambda: host.scale("chat", 0), "restart": lambda: host.restart_with_batch("chat", 32),
     "lose": lambda: host.lose_gpu(0)}[stop]()
    before = stopped = gpu.energy_at_j(host.now_s)
    for t in np.arange(21.0, 31.0):
        host.advance_to(float(t))
        now = gpu.energy_at_j(host.now_s)
        assert now - before <= gpu.spec.max_limit_w + 1e-6 and now >= before
        before = now
    if stop == "lose":  # off the bus: it draws nothing more, the rest of its step included
        assert before == stopped


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


def test_windows_stay_true_across_scaling_and_restarts() -> None:
    """Each engine life is its own series, so a window spanning a scale-down, a restart or a scale-up
    still counts only what was served in it (no counter of one engine read against another's)."""
    from controller.telemetry.sim import SimVllmSource

    host = busy_host(rate_rps=20.0, replicas=3)
    source = SimVllmSource(host)
    steps = [lambda: None, lambda: host.restart_with_batch("chat", 32), lambda: None, lambda: None,
             lambda: host.scale("chat", 1), lambda: host.scale("chat", 3), lambda: None, lambda: None]
    source.observe(0.0, ["chat"])
    for k, change in enumerate(steps):
        change()
        host.advance_to(4.0 * (k + 1))
        w = source.observe(host.now_s, ["chat"])["chat"]
        assert w is not None and w.in_tokens is not None and w.out_tokens is not None, k
        assert 0.0 <= w.rate_rps < 40.0
        assert 600 < w.in_tokens < 1000 and 100 < w.out_tokens < 200, (k, w.in_tokens, w.out_tokens)


def test_each_engine_life_keeps_its_own_series() -> None:
    """A sibling's restart must not shift another engine's `engine` label (its counters would then be
    read against a different engine's, and a window's means come out as garbage)."""
    host = busy_host(rate_rps=20.0, replicas=3)

    def rendered() -> list[str]:
        ready = host.ready_engines("chat")
        fam = next(f for f in VllmCollector(lambda: ready).collect() if f.name == "vllm:num_requests_running")
        return [s.labels["engine"] for s in fam.samples]

    host.advance_to(6.0)
    before = rendered()
    host.restart_with_batch("chat", 32)  # replica 0 restarts now (not ready for 5 s), the others later
    host.advance_to(6.5)
    after = rendered()
    assert after == before[1:]  # the survivors keep their series; the restarted engine's is gone
    host.advance_to(12.0)
    now = rendered()
    assert before[0] not in now and any(label not in before for label in now)  # back as a new series


def test_a_window_that_spans_a_restart_is_not_steady() -> None:
    from controller.telemetry.sim import SimVllmSource

    host = busy_host(rate_rps=20.0, replicas=2)
    source = SimVllmSource(host)
    source.observe(0.0, ["chat"])

    def steady_at(t: float) -> bool:
        host.advance_to(t)
        w = source.observe(t, ["chat"])["chat"]
        assert w is not None
        return w.steady

    assert steady_at(4.0)
    host.restart_with_batch("chat", 32)  # replica 0 now (back at 9 s), replica 1 at 9 s (back at 14 s)
    assert not steady_at(8.0)
    assert not steady_at(20.0)
    assert steady_at(24.0)


def test_arrivals_follow_the_rate_whatever_the_slices() -> None:
    """Arrivals are drawn a block ahead and handed out per slice: every slicing sees the Poisson count,
    in time order within [t0, t1), and a rate that steps up inside a block is followed (not clipped at
    the bound drawn from the block's ends)."""

    def step_rate(t: float) -> float:
        return 50.0 if 10.3 <= t < 10.7 else 5.0  # a burst the block's end and mid points do not see

    for slice_s in (0.05, 0.37, 3.0):
        work = Workload(step_rate, TokenDist(100), TokenDist(50), np.random.default_rng(4), block_s=2.0)
        t, times = 0.0, []
        while t < 400.0:
            got = work.take(t, t + slice_s)
            assert all(t <= a < t + slice_s for a, _, _ in got)
            times += [a for a, _, _ in got]
            t += slice_s
        arr = np.array(times)
        assert np.all(np.diff(arr) >= 0)
        base = np.count_nonzero(arr < 10.0) + np.count_nonzero(arr >= 20.0)
        assert abs(base - 5.0 * (min(t, 400.0) - 10.0)) < 4 * np.sqrt(5.0 * 390.0)
        burst = np.count_nonzero((arr >= 10.3) & (arr < 10.7))
        assert 8 <= burst <= 35  # 20 expected at 50 rps over 0.4 s


def test_the_daemons_host_keeps_no_request_log() -> None:
    """A long-running daemon on the simulated host must not hold every request it served."""
    for log in (False, True):
        host = SimHost("H100-SXM", 1, seed=1, start_delay_s=0.0, log_requests=log)
        host.add_service("chat", "llama-3.1-8b", Workload(constant(5.0), TokenDist(100, 0.5), TokenDist(20, 0.5),
                                                          np.random.default_rng(0)), 1, 16)
        host.advance_to(20.0)
        served = host.services["chat"].requests
        assert (len(served.arrivals()) > 50 and len(served.finished().arrival_s) > 50) if log else \
            (len(served.arrivals()) == 0 and len(served.finished().arrival_s) == 0)


def test_an_engine_owing_decode_steps_catches_up_to_what_it_counted() -> None:
    """Decode-only steps touch no slot array (they are owed, and paid before anything reads them): paid at any
    moment - through admissions, finishes, preemptions in a small KV cache and a restart's drain - the arrays
    hold what the running totals counted, and no running sequence is past its last token."""
    from dataclasses import replace

    from simulator.engine import VLLMEngine
    from simulator.llms import LLMS, step_cost

    rng = np.random.default_rng(3)
    cost = replace(step_cost(LLMS["llama-3.1-8b"], SPECS["H100-SXM"], 3), kv_capacity_tokens=12_000)
    engine = VLLMEngine("m", cost, SimGPU(0, SPECS["H100-SXM"]), 64, rng)
    times = np.cumsum(rng.exponential(1 / 15.0, 600))
    for t, a, b in zip(times, TokenDist(600).draw(rng, 600), TokenDist(150).draw(rng, 600), strict=True):
        engine.submit(float(t), int(a), int(b))
    steps = 0
    for k in range(1, 121):
        engine.advance_to(0.25 * k)
        if k == 60:
            for request in engine.drain():  # a restart: everything requeued
                engine.submit(*request)
        steps, owed = engine._steps, engine._steps - engine._synced
        engine._sync()
        act = engine.active
        assert engine.ctx_sum == int(engine.ctx[act].sum()) and engine.n_active == int(act.sum())
        assert engine.n_prefill == int((act & (engine.prompt_left > 0)).sum())
        assert engine.prompt_left_sum == int(engine.prompt_left[act].sum())
        assert (engine.out_left[act & (engine.prompt_left == 0)] >= 1).all(), (k, owed)
    assert engine.metrics.preemptions_total > 0 and engine.metrics.success_total > 200 and steps > 1000


def test_the_request_log_holds_a_request_in_machine_words() -> None:
    """A request held as a tuple of Python numbers took some 230 bytes: 25 MB a simulated hour a policy, 21 GB
    for a week's `simulate` of five policies. Its figures come back as they went in."""
    log = RequestLog()
    tracemalloc.start()
    for k in range(20_000):
        log.arrive([float(k)])
        log.finish(float(k), k + 0.25, k + 2.0, 512, 9, 8)
    held, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert held / 20_000 < 72  # seven doubles a request, and the arrays' spare room
    done = log.finished()
    assert len(log.arrivals()) == 20_000 and done.ttft_s[7] == 0.25 and done.itl_s[7] == 1.75 / 8
    assert done.in_tokens[7] == 512 and done.out_tokens.dtype == np.int64


def draining_host(shutdown_timeout_s: float) -> SimHost:
    host = SimHost("H100-SXM", 4, seed=1, start_delay_s=5.0, log_requests=True, shutdown_timeout_s=shutdown_timeout_s)
    work = Workload(constant(20.0), TokenDist(800), TokenDist(150), np.random.default_rng(1))
    host.add_service("chat", "llama-3.1-8b", work, replicas=2, max_num_seqs=64)
    host.advance_to(10.0)
    return host


def test_a_replica_scaled_away_finishes_what_it_holds_within_its_shutdown_timeout() -> None:
    """vLLM's `--shutdown-timeout`: the stopped replica takes nothing new, serves its 20 requests to the end
    and keeps its GPU till then; without it they go back to the router and start again on the other replica."""
    ttft_max = {}
    for timeout_s in (0.0, 60.0):
        host = draining_host(timeout_s)
        svc = host.services["chat"]
        assert svc.replicas[1].engine.outstanding == 20
        assert host.scale("chat", 1) == 1 and svc.count() == 1
        assert len(host.free_gpus()) == (3 if timeout_s == 0 else 2)
        host.advance_to(30.0)
        assert len(host.free_gpus()) == 3 and not svc.leaving
        ttft_max[timeout_s] = float(np.max(svc.requests.finished().ttft_s))
    assert ttft_max[60.0] < 1.0 < ttft_max[0.0]


def test_a_replica_scaled_back_while_one_drains_starts_on_a_free_gpu() -> None:
    """As a scheduler places a new pod while the old one still terminates: scaled down and back up, the new replica
    starts on a free GPU at once; only with none free does it wait for the draining one's."""
    host = draining_host(60.0)
    svc = host.services["chat"]
    draining_gpu = svc.replicas[1].gpu.index
    assert host.scale("chat", 1) == 1 and host.scale("chat", 2) == 2
    assert [g.replica.gpu.index for g in svc.leaving] == [draining_gpu] and not svc.restarting()
    assert draining_gpu not in {r.gpu.index for r in svc.replicas} and len(host.free_gpus()) == 1
    assert sorted(r.ready_at_s for r in svc.replicas)[-1] == 15.0  # its start delay, not the drain's end
    host = draining_host(60.0)
    svc = host.services["chat"]
    host.add_service("code", "llama-3.1-8b", Workload(constant(1.0), TokenDist(800), TokenDist(150),
                                                       np.random.default_rng(2)), replicas=2, max_num_seqs=64)
    assert not host.free_gpus()
    assert host.scale("chat", 1) == 1 and host.scale("chat", 2) == 2
    assert [g.replica.gpu.index for g in svc.restarting()] == [draining_gpu]
    host.advance_to(40.0)
    assert draining_gpu in {r.gpu.index for r in svc.replicas} and not svc.leaving


def test_a_drained_replica_out_of_time_hands_the_rest_back() -> None:
    host = draining_host(0.5)
    svc = host.services["chat"]
    host.scale("chat", 1)
    host.advance_to(10.6)
    assert not svc.leaving and len(host.free_gpus()) == 3
    host.advance_to(40.0)
    assert len(svc.requests.finished().ttft_s) == len(svc.requests.arrivals()) - svc.replicas[0].engine.outstanding


def test_a_rolling_restart_drains_one_replica_at_a_time_and_keeps_the_count() -> None:
    host = draining_host(60.0)
    svc = host.services["chat"]
    host.restart_with_batch("chat", 32)
    assert len(svc.replicas) == 1 and svc.count() == 2 and host.scale("chat", 2) == 2  # the drained one is owed
    for k in range(120):
        host.advance_to(10.0 + 0.25 * (k + 1))
        assert any(r.ready_at_s <= host.now_s for r in svc.replicas)  # never dark
        assert len(svc.restarting()) <= 1
    assert [r.engine.max_num_seqs for r in svc.replicas] == [32, 32] and not svc.leaving


def test_a_lone_replica_draining_to_restart_loses_no_request() -> None:
    """The router holds what comes while the only replica drains, for the one that starts after it; the draining
    GPU stays its service's (the governor keeps its limit) and its engine, out of the router, is still scraped."""
    from controller.telemetry.sim import SimGpuSource

    host = SimHost("H100-SXM", 2, seed=1, start_delay_s=5.0, log_requests=True, shutdown_timeout_s=30.0)
    work = Workload(constant(10.0), TokenDist(800), TokenDist(150), np.random.default_rng(1))
    host.add_service("chat", "llama-3.1-8b", work, replicas=1, max_num_seqs=64)
    host.advance_to(10.0)
    svc = host.services["chat"]
    host.restart_with_batch("chat", 32)
    host.advance_to(10.5)
    assert not svc.replicas and svc.count() == 1 and not host.ready_engines("chat")
    assert host.scraped_engines("chat") == [svc.leaving[0].replica.engine]
    assert [g.service for g in SimGpuSource(host).sample(10.5)] == ["chat", None]
    host.advance_to(60.0)
    assert [r.engine.max_num_seqs for r in svc.replicas] == [32] and not svc.held
    left = svc.replicas[0].engine.outstanding
    assert len(svc.requests.finished().ttft_s) == len(svc.requests.arrivals()) - left


def lone_replica_restarting(gpus: int) -> SimHost:
    host = SimHost("H100-SXM", gpus, seed=1, start_delay_s=5.0, log_requests=True, shutdown_timeout_s=30.0)
    work = Workload(constant(10.0), TokenDist(800), TokenDist(150), np.random.default_rng(1))
    host.add_service("chat", "llama-3.1-8b", work, replicas=1, max_num_seqs=64)
    host.advance_to(10.0)
    host.restart_with_batch("chat", 32)
    host.advance_to(11.0)
    assert host.services["chat"].held
    return host


def test_what_a_lone_draining_replica_held_is_neither_stranded_nor_lost() -> None:
    """Its GPU lost: what was held goes back to the router (here, to the replicas scaled up after). Scaled up while
    it drains: the replica on a free GPU takes what was held. Scaled to 0 and back with no GPU free: the new one
    waits for its GPU, then serves all of it."""
    host = lone_replica_restarting(3)
    svc = host.services["chat"]
    host.lose_gpu(svc.leaving[0].replica.gpu.index)
    assert not svc.held
    host.scale("chat", 2)
    host.advance_to(60.0)
    assert not svc.held and float(np.max(svc.requests.finished().ttft_s)) < 10.0
    host = lone_replica_restarting(3)
    svc = host.services["chat"]
    host.scale("chat", 2)  # a free GPU takes what the router held, not the drain's end 30 s on
    assert not svc.held and svc.leaving
    host.advance_to(60.0)
    assert float(np.max(svc.requests.finished().ttft_s)) < 10.0
    host = lone_replica_restarting(1)
    svc = host.services["chat"]
    assert host.scale("chat", 0) == 0 and host.scale("chat", 1) == 1
    host.advance_to(60.0)
    assert [r.engine.max_num_seqs for r in svc.replicas] == [32] and not svc.held
    served = len(svc.requests.finished().ttft_s) + svc.replicas[0].engine.outstanding
    assert served == len(svc.requests.arrivals())


def test_a_window_a_replica_drains_in_is_not_steady_and_counts_those_serving() -> None:
    from controller.telemetry.sim import SimVllmSource

    host = draining_host(60.0)
    source = SimVllmSource(host)
    source.observe(10.0, ["chat"])
    host.scale("chat", 1)
    host.advance_to(10.2)
    w = source.observe(10.2, ["chat"])["chat"]
    assert w is not None and not w.steady and w.replicas == 1 and host.services["chat"].leaving
    host.advance_to(30.0)
    w = source.observe(30.0, ["chat"])["chat"]  # the drain ended within it
    assert w is not None and not w.steady and not host.services["chat"].leaving
    host.advance_to(45.0)
    w = source.observe(45.0, ["chat"])["chat"]
    assert w is not None and w.steady and w.replicas == 1
