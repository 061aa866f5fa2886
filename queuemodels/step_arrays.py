"""Step laws of many operating points as arrays, a row per point: what the stacked solve reads.

StepLaw's fields, with the step family's roofline terms, and its tau, prefill, decode and batch_at over rows, so
the chains of a fleet's candidates are solved together whatever their family (queuemodels.stacked).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import numpy as np
from numpy.typing import NDArray

from queuemodels.roofline import Floats as Floats  # re-exported: the stacked modules read it here
from queuemodels.roofline import bend_ms, chunks, skipped_ms
from queuemodels.service_time import NEWTON_STEPS, StepLaw

Bools = NDArray[np.bool_]
Ints = NDArray[np.intp]
FIELDS = ("p0", "p1", "d0", "d1", "decode_steps", "prompt_ms", "residual_share", "residual_ms", "wait_scale",
          "prompt_cv", "prompt_share")
Spread = Callable[[NDArray[np.float64]], NDArray[np.float64]]
"""Takes a value per row to each element a row's law is read at (a gather by row, or a repeat)."""
ROOFLINE_FIELDS = ("memory_ms", "memory_per_seq_ms", "compute_per_seq_ms", "prompt_tokens", "budget_tokens",
                   "expert_read_ms", "expert_miss")
"""A roofline law's terms, as queuemodels.roofline.Roofline names them."""




class LawArrays(NamedTuple):
    """StepLaw's fields, one row per point (NaN where a point has no law); `affine`: no roofline bend. A roofline
    law's terms (ROOFLINE_FIELDS) are 0 where it has none (bend_scale 1), so the same sums read every row."""

    p0: Floats
    p1: Floats
    d0: Floats
    d1: Floats
    decode_steps: Floats
    prompt_ms: Floats
    residual_share: Floats
    residual_ms: Floats
    wait_scale: Floats
    prompt_cv: Floats
    prompt_share: Floats
    memory_ms: Floats
    memory_per_seq_ms: Floats
    compute_per_seq_ms: Floats
    prompt_tokens: Floats
    budget_tokens: Floats
    expert_read_ms: Floats
    expert_miss: Floats
    bend_scale: Floats
    skip_scale: Floats
    budget_wait_ms: Floats
    budget_wait_var: Floats
    affine: Bools

    @classmethod
    def empty(cls, n: int) -> LawArrays:
        return cls._make([*(np.full(n, np.nan) for _ in FIELDS), *(np.zeros(n) for _ in ROOFLINE_FIELDS),
                          np.ones(n), np.ones(n), np.zeros(n), np.zeros(n), np.ones(n, dtype=bool)])

    def put(self, i: int, law: StepLaw) -> None:
        """Row i from a law built by the scalar path."""
        for name in FIELDS:
            getattr(self, name)[i] = getattr(law, name)
        roofline = law.roofline
        for name in ROOFLINE_FIELDS:
            getattr(self, name)[i] = 0.0 if roofline is None else getattr(roofline, name)
        self.bend_scale[i], self.skip_scale[i], self.budget_wait_ms[i], self.budget_wait_var[i] = (
            law.bend_scale, law.skip_scale, law.budget_wait_ms, law.budget_wait_var)
        self.affine[i] = roofline is None

    @property
    def t0(self) -> Floats:
        out: Floats = self.p0 + self.decode_steps * self.d0
        return out

    @property
    def t1(self) -> Floats:
        out: Floats = self.p1 + self.decode_steps * self.d1
        return out

    def rows(self, at: Ints | None) -> LawArrays:
        """The laws of the rows `at` (one per element, repeats allowed; None or every row in order: these)."""
        if at is None or (len(at) == len(self.p0) and bool((at == np.arange(len(at))).all())):
            return self
        return LawArrays._make(f[at] for f in self)

    def _of(self, name: str, spread: Spread | None) -> Floats:
        """A field spread to the elements it is read at (None: one per row), spread only when read."""
        field: Floats = getattr(self, name)
        return field if spread is None else spread(field)

    def bend(self, b: Floats, spread: Spread | None = None) -> Floats:
        """StepLaw.bend per row at its batch `b` (0 on affine rows); `spread` takes a row's value to each element of
        `b` that is its (`at` or a repeat)."""
        if self.affine.all():
            return np.zeros_like(b)
        out: Floats = self._of("bend_scale", spread) * self._raw_bend(b, spread)
        if self.routed:
            out -= self._of("skip_scale", spread) * self._skipped(b, spread)
        return out

    @property
    def routed(self) -> bool:
        """Whether any row is a mixture of experts (whose small batches skip part of the weights' read)."""
        return bool((self.expert_read_ms > 0.0).any())

    def _skipped(self, b: Floats, spread: Spread | None) -> Floats:
        """The experts' read a decode step at `b` skips, per row, at its scale 1."""
        return skipped_ms(self._of("expert_read_ms", spread), self._of("expert_miss", spread), b)

    def chunks(self, b: Floats, spread: Spread | None = None) -> Floats:
        """Roofline.chunks per row at its batch `b` (1 without a token budget)."""
        if self.affine.all():
            return np.ones_like(b)
        return chunks(self._of("prompt_tokens", spread), self._of("budget_tokens", spread), b)

    def decode(self, b: Floats, spread: Spread | None = None) -> Floats:
        out: Floats = self._of("d0", spread) + self._of("d1", spread) * b + self.bend(b, spread)
        return out

    def prefill(self, b: Floats, spread: Spread | None = None) -> Floats:
        """StepLaw.prefill per row: a prompt in several chunks also waits for each one's decodes."""
        bend = self.bend(b, spread)
        d0, d1 = self._of("d0", spread), self._of("d1", spread)
        out: Floats = (self._of("p0", spread) + self._of("p1", spread) * b + bend
                       + (self.chunks(b, spread) - 1.0) * (d0 + d1 * b + bend))
        return out

    def tau(self, b: Floats, spread: Spread | None = None) -> Floats:
        """One request's service time per row at its batch `b` (StepLaw.tau)."""
        if self.affine.all():
            return self._tau(b, spread, 0.0, 0.0)
        skipped = self._skipped(b, spread) if self.routed else 0.0
        return self._tau(b, spread, self._raw_bend(b, spread), self.chunks(b, spread) - 1.0, skipped)

    def _raw_bend(self, b: Floats, spread: Spread | None) -> Floats:
        """The bend per row at its batch `b`, at its scale 1."""
        memory, per_seq, compute = (self._of(name, spread) for name in (
            "memory_ms", "memory_per_seq_ms", "compute_per_seq_ms"))
        if not self.routed:
            return bend_ms(memory, per_seq, compute, b)
        return bend_ms(memory, per_seq, compute, b, self._of("expert_read_ms", spread), self._of("expert_miss", spread))

    def chain_taus(self, b: Floats, sizes: NDArray[np.int64], groups: Ints) -> Floats:
        """tau at every state of the rows' chains laid end to end (states 1..sizes[i] of row i, at `b`), where rows
        of one group (a base: the candidates of one service on one accelerator) share their roofline terms but the
        decode compute a lock slows. A state's bend and chunks depend only on those and its batch, so they are worked
        out once per group, compute term and batch, up to its longest chain, and read off that table: a fleet's
        chains hold millions of states."""
        if self.affine.all():
            return self._tau(b, lambda x: np.repeat(x, sizes), 0.0, 0.0)
        # a lock slows a row's decode compute (its roofline's compute term): a base's rows at different clocks apart
        order = np.lexsort((self.compute_per_seq_ms, groups))
        grouped, compute = groups[order], self.compute_per_seq_ms[order]
        starts = np.concatenate([[True], (grouped[1:] != grouped[:-1]) | (compute[1:] != compute[:-1])])
        inverse = np.empty(len(order), dtype=np.intp)
        inverse[order] = np.cumsum(starts) - 1
        n_groups = int(inverse.max()) + 1
        longest = np.zeros(n_groups, dtype=np.int64)
        np.maximum.at(longest, inverse, sizes)
        first = np.zeros(n_groups, dtype=np.intp)  # a row of each group
        first[inverse[::-1]] = np.arange(len(inverse))[::-1]
        offsets = np.cumsum(longest) - longest
        batches = np.arange(float(longest.sum())) - np.repeat(offsets - 1.0, longest)

        def per_batch(x: Floats) -> Floats:
            out: Floats = np.repeat(x[first], longest)
            return out

        read, miss = (per_batch(self.expert_read_ms), per_batch(self.expert_miss)) if self.routed else (0.0, 0.0)
        raw = bend_ms(per_batch(self.memory_ms), per_batch(self.memory_per_seq_ms), per_batch(self.compute_per_seq_ms),
                      batches, read, miss)
        further = chunks(per_batch(self.prompt_tokens), per_batch(self.budget_tokens), batches) - 1.0
        at = np.repeat(offsets[inverse] - 1, sizes) + b.astype(np.int64)
        skipped = skipped_ms(read, miss, batches)[at] if self.routed else 0.0
        return self._tau(b, lambda x: np.repeat(x, sizes), raw[at], further[at], skipped)

    def _tau(self, b: Floats, spread: Spread | None, raw: Floats | float, further: Floats | float,
             skipped: Floats | float = 0.0) -> Floats:
        """tau from the bend at its scale 1 (`raw`), the chunks beyond the first (`further`) and the experts' read
        skipped (`skipped`, at its scale 1) at `b`: t0 + t1 b, what the bend adds to the prefill and every decode,
        and the further chunks' steps."""
        t0, t1 = (self.t0, self.t1) if spread is None else (spread(self.t0), spread(self.t1))
        if self.affine.all():
            out: Floats = t0 + t1 * b
            return out
        scale = self._of("bend_scale", spread)
        step = self._of("d0", spread) + self._of("d1", spread) * b + scale * raw
        whole = self.bend_scale * (1.0 + self.decode_steps)
        out = t0 + t1 * b + (whole if spread is None else spread(whole)) * raw
        if self.routed:
            skip = self._of("skip_scale", spread) * skipped
            step -= skip
            out -= (1.0 + self._of("decode_steps", spread)) * skip
        out += further * step
        return out

    def batch_at(self, service_ms: Floats, top: Floats) -> Floats:
        """StepLaw.batch_at per row: exact on affine rows; on the others Newton's steps from the affine law's
        batch, kept within the bracket they narrow, until they settle, as the scalar law takes them."""
        t1 = self.t1
        out: Floats = np.where(t1 > 0.0, np.clip((service_ms - self.t0) / np.where(t1 > 0.0, t1, 1.0), 0.0, top),
                               1.0)
        bent = np.flatnonzero(~self.affine)
        if bent.size:
            out[bent] = _invert(self.rows(bent), service_ms[bent], top[bent], out[bent])
        return out


def _invert(laws: LawArrays, service_ms: Floats, top: Floats, start: Floats) -> Floats:
    """The batch n in [0, top] whose tau is `service_ms`, per row, from `start`: StepLaw.batch_at's safeguarded
    Newton steps, each on the rows not yet settled (most settle in three)."""
    n = start.copy()
    low, high = np.zeros_like(top), top.copy()
    open_ = np.arange(len(top))
    for _ in range(NEWTON_STEPS):
        rows, x, target = laws.rows(open_), n[open_], service_ms[open_]
        miss = rows.tau(x) - target
        lo, hi = np.where(miss < 0.0, x, low[open_]), np.where(miss > 0.0, x, high[open_])
        h = 1e-4 * np.maximum(x, 1.0)
        slope = (rows.tau(x + h) - target - miss) / h
        after = np.where(slope > 0.0, x - miss / np.where(slope > 0.0, slope, 1.0), (lo + hi) / 2.0)
        after = np.where((after < lo) | (after > hi), (lo + hi) / 2.0, after)
        settled = np.abs(after - x) <= 1e-13 * np.maximum(after, 1.0)
        n[open_], low[open_], high[open_] = after, lo, hi
        open_ = open_[~settled]
        if not open_.size:
            break
    return n
