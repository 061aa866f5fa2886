"""What the tuner learns from: one replica-averaged observation of a service over a control cycle."""

from __future__ import annotations

import math
from dataclasses import dataclass

from queuemodels import Load, ServerShape


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

    @property
    def load(self) -> Load:
        return Load(self.rate_rps, self.in_tokens, self.out_tokens, self.in_cv, self.out_cv)

    @property
    def shape(self) -> ServerShape:
        return ServerShape(self.max_batch, self.max_queue, self.power_cap_w)

    def problem(self) -> str | None:
        """Why this observation cannot be used at all (None when it can)."""
        values = (self.rate_rps, self.in_tokens, self.out_tokens, self.ttft_ms, self.itl_ms)
        if any(v is None or not math.isfinite(v) for v in values):
            return "non-finite"
        if self.rate_rps <= 0 or self.ttft_ms <= 0 or self.itl_ms <= 0 or self.in_tokens <= 0 or self.out_tokens < 1:
            return "no-traffic"
        if not self.steady:
            return "transient"
        if self.preemptions > 0 or self.waiting >= min(self.max_queue, self.max_batch):
            return "saturated"  # a full batch queued behind the running one: demand above capacity
        return None
