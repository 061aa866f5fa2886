"""What the tuner learns from: one replica-averaged observation of a service over a control cycle."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from queuemodels import Load, ModelInputError, PowerProfile, ServerShape, ServiceParams
from queuemodels.power import uncapped_peak_w
from queuemodels.types import MAX_TOKENS_PER_STEP

STEADY_RATE_BAND = 0.2
"""Relative gap between served and offered rates beyond which a window is not steady. In a steady window
they differ only by the change in requests in the system (a few, against the hundreds a 30 s window at a
few rps carries: windows of a dozen requests can cross it by chance); the ramps and new replicas of real
traces (completions 30-70 % below the offered rate) fall far outside it."""
LEAST_LATENCY_MS = 1e-3
"""The least TTFT or ITL a served window reads (0 is one without traffic): 1e-308 made the warm-up fit's residuals
infinite."""
MOST = 1e9
"""No figure of a real window reaches this (a rate, tokens, milliseconds, watts, a queue): past it a value is no
reading of a server (a hand-edited state file's rate of 1e308 overflowed the model to NaN at every cycle)."""


@dataclass(frozen=True)
class Observation:
    """Mean load and latencies of one (model, accelerator) server over a window."""

    rate_rps: float
    in_tokens: float
    out_tokens: float
    max_batch: int
    max_queue: int
    ttft_ms: float
    itl_ms: float
    power_cap_w: float | None = None
    power_w: float | None = None
    waiting: float = 0.0
    preemptions: float = 0.0
    in_cv: float = 1.0
    out_cv: float = 1.0
    steady: bool = True
    """The window saw neither a restart nor the backlog of one (see `problem`)."""
    served_rps: float | None = None
    """Completions per second in the window (None: not recorded). Far from `rate_rps` (offered), the window
    was a ramp, a new replica filling, or a backlog draining: not a steady state, whatever marks it."""
    queue_growth: float | None = None
    """Waiting requests at the window's end less those at its start (None: not recorded)."""
    sm_clock_fraction: float | None = None
    """The SM clock its GPUs were locked at, as a share of their maximum (None: unlocked)."""
    kv_tokens: float = 0.0
    """The KV cache (tokens) of the replicas that served it, read, not fitted (0: not known; the pair's prior's
    then): two services of one model on one accelerator may hold caches of different sizes."""
    queue_ms: float | None = None
    """Mean time from arrival to being scheduled (vLLM's `vllm:request_queue_time_seconds`, sum over count;
    None: not recorded). It splits TTFT into the queueing the chain predicts and the prompt's own steps
    (`splits_queue`)."""
    tokens_per_step: float = 1.0
    """Tokens a decoding request gained per engine step (1 without speculative decoding): the window's generated
    tokens, less its first tokens, over its ITL samples (vLLM records one a step)."""
    draft_tokens: float = 0.0
    """Tokens drafted a step for a decoding request, over its steps (vLLM's spec_decode counter over the ITL samples;
    0: none, or not read)."""
    power_held_share: float = 0.0
    """Share of the window's ticks in which the governor held its GPUs down (a cut, or a draw pressed against a
    limit set below the plan's cap). Above 0, `power_w` is a bound: the load would have drawn at least that much
    under `power_cap_w`, the limits' mean (tuner/draw.py reads it so)."""

    @property
    def draw_is_bound(self) -> bool:
        """Whether `power_w` is a bound, not a reading: the governor held the GPUs down in some tick."""
        return self.power_held_share > 0.0

    @property
    def load(self) -> Load:
        return Load(self.rate_rps, self.in_tokens, self.out_tokens, self.in_cv, self.out_cv, self.tokens_per_step,
                    self.draft_tokens)

    @property
    def shape(self) -> ServerShape:
        return ServerShape(self.max_batch, self.max_queue, self.power_cap_w, self.sm_clock_fraction)

    @property
    def splits_queue(self) -> bool:
        """Whether the queueing time is recorded and leaves a positive rest of TTFT (a window whose
        histograms disagree, queue time at or above TTFT, is read whole)."""
        return self.queue_ms is not None and 0.0 <= self.queue_ms < self.ttft_ms

    def at_cache(self, params: ServiceParams) -> ServiceParams:
        """`params` at the KV cache of the replicas that served this window, where it says (else the prior's)."""
        return replace(params, kv_tokens=self.kv_tokens) if self.kv_tokens > 0.0 else params

    def problem(self) -> str | None:
        """Why this observation cannot be used at all (None when it can)."""
        values = (self.rate_rps, self.in_tokens, self.out_tokens, self.ttft_ms, self.itl_ms)
        if any(v is None or not math.isfinite(v) for v in values):
            return "non-finite"
        share = self.power_held_share  # a hand-edited state file's: the fits read it as a number in [0, 1]
        if any(isinstance(v, (int, float)) and abs(v) > MOST for v in vars(self).values()) or (
                0.0 < min(self.ttft_ms, self.itl_ms) < LEAST_LATENCY_MS) or isinstance(share, bool) or not (
                isinstance(share, (int, float)) and 0.0 <= share <= 1.0):
            return "implausible"
        if not (isinstance(self.tokens_per_step, (int, float)) and 1.0 <= self.tokens_per_step <= MAX_TOKENS_PER_STEP):
            return "implausible"
        if not (isinstance(self.draft_tokens, (int, float)) and 0.0 <= self.draft_tokens <= MAX_TOKENS_PER_STEP - 1.0):
            return "implausible"
        try:  # a clock or cap no GPU runs at (a hand-edited state file): no model reads it
            _ = self.shape
        except ModelInputError:
            return "bad-shape"
        if self.steady and self.served_rps is not None and self.served_rps > 0 >= self.rate_rps:
            return "unsteady-rate"  # completions with none offered: a backlog draining
        if self.rate_rps <= 0 or self.ttft_ms <= 0 or self.itl_ms <= 0 or self.in_tokens <= 0 or self.out_tokens < 1:
            return "no-traffic"
        if not self.steady:
            return "transient"
        if self.queue_growth is not None and self.queue_growth > max(2.0, self.max_batch / 4.0):
            return "unsteady-queue"
        # A full batch queued behind the running one: demand above capacity. A client that drops rather than
        # queues (max_queue 0) never shows a queue; its saturation shows as served below offered.
        if self.preemptions > 0 or self.waiting >= max(1, min(self.max_queue, self.max_batch)):
            return "saturated"
        if self.served_rps is not None and abs(self.served_rps / self.rate_rps - 1.0) > STEADY_RATE_BAND:
            # with no queue, served under offered is the requests turned away at a full batch, not a ramp
            return "saturated" if self.max_queue == 0 and self.served_rps < self.rate_rps else "unsteady-rate"
        return None


def binds_cap(obs: Observation, profile: PowerProfile) -> bool:
    """Whether a window ran under a cap below what its shape draws uncapped (its full batch or a prompt): only
    those tell how a cap slows prompts (the prefill sensitivity). A cap above that draw changes nothing."""
    clock = 1.0 if obs.sm_clock_fraction is None else obs.sm_clock_fraction
    return obs.power_cap_w is not None and obs.power_cap_w < uncapped_peak_w(profile, obs.max_batch, clock)
