"""Ground truth for benchmarks: run one emulated replica at a steady Poisson load and measure it.

This is what a careful load test on a real server reports: mean and p95 TTFT and ITL from every
request in a window after a warm-up, the arrival rate and token means actually offered, and the mean
GPU draw from the energy counter. Nothing here is visible to the controller in operation.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from simulator.engine import VLLMEngine
from simulator.hardware import SPECS, SimGPU
from simulator.llms import LLMS, StepCost, scaled, step_cost
from simulator.personality import get_personality
from simulator.power_law import get_power_law
from simulator.requests import RequestLog
from simulator.workload import TokenDist, TokenSampler


@dataclass(frozen=True)
class Measured:
    """What one replica did over the measurement window (times in ms)."""

    rate_rps: float
    throughput_rps: float
    in_tokens: float
    out_tokens: float
    in_cv: float
    out_cv: float
    ttft_ms: float
    itl_ms: float
    ttft_p95_ms: float
    itl_p95_ms: float
    power_w: float
    running: float
    waiting: float
    preemptions: int
    requests: int
    queue_ms: float = float("nan")
    """Mean time from arrival to being scheduled, over requests scheduled in the window (what vLLM's
    `vllm:request_queue_time_seconds` sum over count reports): the queueing part of TTFT."""
    tokens_per_step: float = 1.0
    """Tokens generated after each request's first over the ITL samples (one a decoding sequence a step), as
    the daemon reads them from vLLM's counters: 1 unless the engine decodes speculatively."""
    draft_tokens: float = 0.0
    """Tokens drafted a step for a decoding request, over the ITL samples, as the daemon reads it; 0 without drafts."""


@dataclass(frozen=True)
class Replica:
    """A replica to probe: the model, GPU type and the pair seed that draws its hidden costs."""

    model: str
    gpu_type: str
    pair_seed: int = 0
    cost_scale: float = 1.0
    """Multiplies every hidden step time (a drift, e.g. a new vLLM version)."""
    personality: str = "roofline"
    """How the engine turns a step's work into time (`simulator/personality.py`)."""
    power_law: str = "dynamic"
    """How its GPU's draw follows the step and the clock (`simulator/power_law.py`)."""

    def cost(self) -> StepCost:
        return scaled(step_cost(LLMS[self.model], SPECS[self.gpu_type], self.pair_seed), self.cost_scale)

    def engine(self, max_num_seqs: int, power_limit_w: float | None, rng: np.random.Generator,
               locked_clock_mhz: int | None = None, requests: RequestLog | None = None) -> VLLMEngine:
        """A fresh engine on its own GPU, keeping raw samples for exact means and percentiles (and each finished
        request in `requests`, where given)."""
        gpu = SimGPU(0, SPECS[self.gpu_type], get_power_law(self.power_law))
        if power_limit_w is not None:
            gpu.set_power_limit(power_limit_w)
        gpu.lock_clock(locked_clock_mhz)
        return VLLMEngine(self.model, self.cost(), gpu, max_num_seqs, rng, keep_samples=True,
                          personality=get_personality(self.personality), requests=requests)


def measure(
    replica: Replica,
    rate_rps: float,
    tokens_in: TokenSampler,
    tokens_out: TokenSampler,
    max_num_seqs: int,
    power_limit_w: float | None = None,
    requests: int = 2000,
    warmup_fraction: float = 0.15,
    seed: int = 0,
    locked_clock_mhz: int | None = None,
) -> Measured:
    """Offer `requests` Poisson arrivals; measure the window after the first `warmup_fraction` of them."""
    rng = np.random.default_rng(seed)
    engine = replica.engine(max_num_seqs, power_limit_w, rng, locked_clock_mhz)
    gpu = engine.gpu
    times = np.cumsum(rng.exponential(1.0 / rate_rps, requests))
    n_in = tokens_in.draw(rng, requests)
    n_out = tokens_out.draw(rng, requests)
    for t, a, b in zip(times, n_in, n_out, strict=True):
        engine.submit(float(t), int(a), int(b))
    start = float(times[int(warmup_fraction * requests)])
    end = float(times[-1])
    engine.advance_to(start)
    m = engine.metrics
    n_ttft, n_itl, n_queue = len(m.ttft.all_samples()), len(m.itl.all_samples()), len(m.queue_time.all_samples())
    energy0, preempt0, done0, gen0 = gpu.energy_j, m.preemptions_total, m.success_total, m.generation_tokens_total
    drafted0 = m.draft_tokens_total
    running: list[int] = []
    waiting: list[int] = []
    for t in np.linspace(start, end, 200)[1:]:
        engine.advance_to(float(t))
        running.append(engine.num_running)
        waiting.append(sum(1 for w in engine.waiting if w[0] <= engine.now_s))
    ttft = m.ttft.all_samples()[n_ttft:] * 1000.0
    itl = m.itl.all_samples()[n_itl:] * 1000.0
    queue = m.queue_time.all_samples()[n_queue:] * 1000.0
    window = (times >= start) & (times < end)
    span = engine.now_s - start
    return Measured(
        rate_rps=float(window.sum()) / (end - start),
        throughput_rps=(m.success_total - done0) / span,
        in_tokens=float(n_in[window].mean()),
        out_tokens=float(n_out[window].mean()),
        in_cv=float(n_in[window].std() / n_in[window].mean()),
        out_cv=float(n_out[window].std() / n_out[window].mean()),
        ttft_ms=float(ttft.mean()) if ttft.size else float("nan"),
        itl_ms=float(itl.mean()) if itl.size else float("nan"),
        ttft_p95_ms=float(np.percentile(ttft, 95)) if ttft.size else float("nan"),
        itl_p95_ms=float(np.percentile(itl, 95)) if itl.size else float("nan"),
        power_w=(gpu.energy_j - energy0) / span,
        running=float(np.mean(running)),
        waiting=float(np.mean(waiting)),
        preemptions=m.preemptions_total - preempt0,
        requests=int(ttft.size),
        queue_ms=float(queue.mean()) if queue.size else float("nan"),
        tokens_per_step=max(1.0, (m.generation_tokens_total - gen0 - ttft.size) / itl.size) if itl.size else 1.0,
        draft_tokens=(m.draft_tokens_total - drafted0) / itl.size if itl.size else 0.0,  # as the daemon reads it
    )


def saturation_rps(
    replica: Replica,
    tokens_in: TokenDist,
    tokens_out: TokenDist,
    max_num_seqs: int,
    power_limit_w: float | None = None,
    seed: int = 0,
    min_completions: int = 5000,
) -> float:
    """Completions per second with the batch kept full (a backlog at t = 0), from the 2N-th completion
    over at least `min_completions` (and 5N) more, so start-up and the final drain are left out. A load
    stated as a share of this rate needs it to within about 1 %: at 90 % a 1 % error moves the queueing
    delay by 10 %, and 5N completions of N = 8 spread it by 20 %."""
    rng = np.random.default_rng(seed)
    engine = replica.engine(max_num_seqs, power_limit_w, rng)
    first = 2 * max_num_seqs
    last = first + max(5 * max_num_seqs, min_completions)
    n = last + max_num_seqs
    for a, b in zip(tokens_in.draw(rng, n), tokens_out.draw(rng, n), strict=True):
        engine.submit(0.0, int(a), int(b))
    while engine.outstanding:
        engine.advance_to(engine.now_s + 1.0)
    done = np.sort(engine.metrics.e2e.all_samples())
    return float((last - first) / (done[last] - done[first]))
