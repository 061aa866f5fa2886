"""The step family's roofline (queuemodels.roofline) over arrays: one row per operating point.

A fleet's plan builds tens of thousands of laws a cycle; built one by one through the interpreter, the step
family's cost ~100 us each (four settling steps of the prompt's cost, each a Poisson sum), ten times a cycle's
whole budget at 100 services. Here every row's terms are arrays and the Poisson sums are laid end to end, so
the laws of a cycle cost a few array passes. Operation for operation Roofline's, so the figures are its own to
rounding (np.cbrt where the scalar path takes a cube root by `** (1/3)`).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numpy.typing import NDArray
from scipy.special import gammaln

from queuemodels.roofline import SETTLE_STEPS, Floats, Roofline, bend_ms, chunks, skipped_ms

TERMS = ("memory_ms", "memory_per_seq_ms", "compute_per_seq_ms", "prompt_compute_ms", "prompt_overhead_ms",
         "prompt_tokens", "budget_tokens", "expert_read_ms", "expert_miss")
"""Roofline's fields, in the order `Terms` holds them."""


class Terms(NamedTuple):
    """Roofline's fields, one row per point."""

    memory_ms: Floats
    memory_per_seq_ms: Floats
    compute_per_seq_ms: Floats
    prompt_compute_ms: Floats
    prompt_overhead_ms: Floats
    prompt_tokens: Floats
    budget_tokens: Floats
    expert_read_ms: Floats
    expert_miss: Floats

    @classmethod
    def of(cls, rooflines: list[Roofline]) -> Terms:
        rows = np.array([[getattr(r, n) for n in TERMS] for r in rooflines], dtype=float)
        return cls._make(rows.reshape(len(rooflines), len(TERMS)).T)

    def take(self, idx: NDArray[np.intp]) -> Terms:
        return Terms._make(f[idx] for f in self)

    def chunks(self, batch: Floats) -> Floats:
        return chunks(self.prompt_tokens, self.budget_tokens, batch)

    def bend_ms(self, batch: Floats) -> Floats:
        return bend_ms(self.memory_ms, self.memory_per_seq_ms, self.compute_per_seq_ms, batch, self.expert_read_ms,
                       self.expert_miss)

    def skipped_ms(self, batch: Floats) -> Floats:
        return skipped_ms(self.expert_read_ms, self.expert_miss, batch)

    def _memory(self, batch: Floats) -> Floats:
        out: Floats = self.memory_ms + self.memory_per_seq_ms * batch
        return out

    def _decode_memory(self, batch: Floats) -> Floats:
        """Roofline._decode_memory per row."""
        if not (self.expert_read_ms > 0.0).any():
            return self._memory(batch)
        return self._memory(batch) - self.skipped_ms(batch)

    def prompt_ms(self, batch: Floats) -> Floats:
        """Roofline.prompt_ms per row."""
        memory = self._memory(batch)
        decode = self.compute_per_seq_ms * batch
        k = self.chunks(batch)
        with_chunk = np.cbrt(memory**3 + (decode + self.prompt_compute_ms / k) ** 3)
        out: Floats = k * (self.prompt_overhead_ms + with_chunk - np.cbrt(self._decode_memory(batch) ** 3 + decode**3))
        return out

    def prompt_gpu_ms(self, batch: Floats, per_step: Floats) -> Floats:
        """Roofline.prompt_gpu_ms per row: each row's Poisson riders (within 6 sigma of x + 3) end to end, log K!
        from a table of the counts they reach."""
        k = self.chunks(batch)
        x = per_step / k
        alone = x <= 1e-9
        x_ = np.where(alone, 1.0, x)
        spread = 6.0 * np.sqrt(x_)
        first = np.maximum(1.0, np.floor(x_ - spread))
        sizes = (np.floor(x_ + spread) + 4.0 - first).astype(np.int64)
        starts = np.cumsum(sizes) - sizes

        def per_rider(v: Floats) -> Floats:
            out: Floats = np.repeat(v, sizes)
            return out

        riders = np.arange(int(sizes.sum())) + per_rider(first - starts)
        log_factorial = gammaln(np.arange(riders.max() + 2.0))
        memory = self._memory(batch)
        decode = self.compute_per_seq_ms * batch
        m3 = memory * memory * memory
        read = self._decode_memory(batch)
        base = np.cbrt(read * read * read + decode * decode * decode)
        weight = np.exp(riders * per_rider(np.log(x_)) - per_rider(x_) - log_factorial[riders.astype(np.intp) + 1])
        riding = per_rider(decode) + riders * per_rider(self.prompt_compute_ms / k)
        added = np.add.reduceat(weight * (np.cbrt(per_rider(m3) + riding * riding * riding) - per_rider(base)), starts)
        out: Floats = k * (-np.expm1(-x_) * self.prompt_overhead_ms + added) / x_
        return np.where(alone, self.prompt_ms(batch), out) if alone.any() else out

    def prompt_at_load(self, rate_rps: Floats, outputs: Floats, d0: Floats, d1: Floats,
                       max_batch: Floats) -> tuple[Floats, Floats, Floats]:
        """Roofline.prompt_at_load per row: (cost to the prompt, cost to the GPU per prompt, batch)."""
        batch = np.ones_like(rate_rps)
        c_gpu = self.prompt_ms(batch)
        for _ in range(SETTLE_STEPS):
            phi = np.minimum(0.9, rate_rps * c_gpu / 1000.0)
            step = (d0 + d1 * batch + self.bend_ms(batch) - self.skipped_ms(batch)) / (1.0 - phi)
            batch = np.minimum(max_batch, np.maximum(1.0, rate_rps * outputs * step / 1000.0))
            c_gpu = self.prompt_gpu_ms(batch, rate_rps * step / 1000.0)
        return self.prompt_ms(batch), c_gpu, batch

    def budget_wait_ms(self, rate_rps: Floats, in_cv: Floats, batch: Floats,
                       step_ms: Floats) -> tuple[Floats, Floats, Floats]:
        """Roofline.budget_wait_ms per row, and the share of the budget's room prompts use (no steady state from
        0.99: the scalar law raises there)."""
        budget = self.budget_tokens
        limited = budget > 0.0
        room = np.maximum(budget - batch, budget / 8.0)
        use = np.where(limited, rate_rps * self.prompt_tokens * step_ms / (1000.0 * np.where(limited, room, 1.0)),
                       0.0)
        held = np.minimum(use, 0.99)  # past it the row has no law: its figures are not read
        wait = held * self.chunks(batch) * step_ms * (1.0 + in_cv**2) / (2.0 * (1.0 - held))
        positive = held > 0.0
        var = np.where(positive, wait * (2.0 * wait / np.where(positive, held, 1.0) - wait), 0.0)
        return wait, var, use
