"""The simulated host of a scenario for one seed: the same GPUs, hidden costs and arrivals whatever policy
drives it (each service's arrivals come from their own generator, seeded by the seed and the service's
place, and are drawn the same way whatever the engines do)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from controller.simulate.scenario import Scenario
from controller.simulate.workload_settings import WorkloadSettings
from controller.telemetry.base import GpuSample, GpuSource
from simulator.host import SimHost
from simulator.traffic import Burst, HeavyTail, with_bursts
from simulator.workload import RateFn, TokenDist, TokenSampler, Workload, daily_cycle

Fleet = Mapping[str, Mapping[str, int]]
"""Replicas per service per GPU type."""


def rate_of(w: WorkloadSettings) -> RateFn:
    return with_bursts(daily_cycle(w.rate_rps, w.cycle_amplitude, w.cycle_period_s, w.phase_s),
                       [Burst(b.start_s, b.duration_s, b.factor) for b in w.bursts])


def peak_rps(w: WorkloadSettings, duration_s: float) -> float:
    """The highest rate of the run, read every second and at every burst's start."""
    rate = rate_of(w)
    times = [*np.arange(0.0, duration_s + 1.0, 1.0).tolist(), *(b.start_s for b in w.bursts)]
    return max(rate(float(t)) for t in times)


def token_mix(w: WorkloadSettings, in_tokens: float, out_tokens: float) -> tuple[TokenSampler, TokenDist]:
    """Prompt and output length distributions of a workload (its own means, else the service's)."""
    body = TokenDist(w.in_tokens or in_tokens, w.in_cv)
    tail = w.prompt_tail
    prompts: TokenSampler = body if tail is None else HeavyTail(body, tail.share, tail.min_tokens, tail.alpha)
    return prompts, TokenDist(w.out_tokens or out_tokens, w.out_cv)


def build_host(scn: Scenario, seed: int, fleet: Fleet) -> SimHost:
    """The scenario's host with `fleet` running from the start (no model load: the run starts in steady
    state)."""
    cfg = scn.config
    host = SimHost(cfg.simulator.gpu_type, cfg.simulator.num_gpus, seed=seed, start_delay_s=cfg.simulator.start_delay_s,
                   personalities=cfg.simulator.personalities, gpu_types=cfg.simulator.gpu_types, log_requests=True,
                   shutdown_timeout_s=cfg.simulator.shutdown_timeout_s, power_laws=cfg.simulator.power_laws)
    for k, svc in enumerate(cfg.services):
        w = scn.workload(svc.name)
        prompts, outputs = token_mix(w, svc.in_tokens, svc.out_tokens)
        workload = Workload(rate_of(w), prompts, outputs, np.random.default_rng([seed, k]))
        variants = [v.accelerator for v in cfg.variants_of(svc)]
        host.add_service(svc.name, svc.model, workload, 0, svc.initial_max_batch, accelerator=variants[0])
        for gpu_type, n in fleet.get(svc.name, {}).items():
            host.scale(svc.name, n, delay_s=0.0, gpu_type=gpu_type)
    return host


class Outages:
    """When GPU readings fail (telemetry_lost events): the spans every policy is blind in."""

    def __init__(self, scn: Scenario) -> None:
        self.spans = [(e.at_s, e.at_s + e.duration_s) for e in scn.settings.events if e.kind == "telemetry_lost"]

    def blind(self, now: float) -> bool:
        return any(start < now <= end for start, end in self.spans)


class OutageGpuSource:
    """A GPU source that fails as an exporter or NVML does while an outage lasts."""

    def __init__(self, inner: GpuSource, outages: Outages) -> None:
        self.inner, self.outages = inner, outages

    def sample(self, now: float) -> list[GpuSample]:
        if self.outages.blind(now):
            raise ConnectionError("GPU telemetry lost (scenario event)")
        return self.inner.sample(now)
