"""Value types shared by every queue model: load, server shape, power profile (parameters: queuemodels/params.py;
targets and predictions: queuemodels/targets.py). Times are milliseconds (`_ms`), rates per second (`_rps`), power
in watts (`_w`)."""

from __future__ import annotations

import math
from dataclasses import dataclass

LEAST_CLOCK = 0.01
"""The lowest locked SM clock a shape may hold, as a share of the maximum: no GPU's lowest supported clock is
below it (an H100's is 0.11), and a smaller share would overflow the clock's slow-down."""
STATISTICS = ("mean", "p95", "p99")
QUANTILE_OF = {"p95": 0.95, "p99": 0.99}
"""The quantile a percentile statistic names."""


DEFAULT_MAX_QUEUE = 1024
"""Requests a replica queues beyond its batch when nothing says otherwise (settings, CSVs, the optimizer)."""


class ModelInputError(ValueError):
    """An input to a queue model is out of its domain; the message names the field."""


class Unstable(ModelInputError):
    """The offered rate exceeds what the shape can serve and nothing (no bounded queue) turns the excess away."""


def check_number(name: str, value: float, *, positive: bool = False, allow_zero: bool = True) -> None:
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ModelInputError(f"{name}: must be a finite number, got {value!r}")
    if positive and value <= 0:
        raise ModelInputError(f"{name}: must be > 0, got {value!r}")
    if (not allow_zero and value == 0) or value < 0:
        raise ModelInputError(f"{name}: must be >= 0, got {value!r}")


MAX_TOKENS_PER_STEP = 64.0
"""Most tokens a decoding request is taken to gain per step (speculative decoding proposes a handful)."""


def kept_past_drafts(tokens_per_step: float, draft_tokens: float) -> str | None:
    """Why a user's tokens a step and drafts a step cannot both hold (None where they can): no step keeps more than
    its drafts and the token it verifies, so no mean over steps does. The model computes the larger of the two
    (`Load.positions`), so a daemon's window askew at its edges is read, not refused."""
    if draft_tokens > 0.0 and tokens_per_step > (1.0 + draft_tokens) * (1.0 + 1e-9):
        return (f"must be at most 1 + draft_tokens ({1.0 + draft_tokens:g}) where drafts are given: a step keeps no "
                f"more than it drafts and verifies, got {tokens_per_step:g}")
    return None


@dataclass(frozen=True)
class Load:
    """Offered load on one replica."""

    rate_rps: float
    in_tokens: float
    out_tokens: float
    in_cv: float = 1.0
    """Coefficient of variation of prompt lengths: spreads TTFT around its mean (1 = exponential)."""
    out_cv: float = 1.0
    """Coefficient of variation of output lengths, hence of service times: scales queueing delay by
    (1 + cv^2) / 2 (Allen-Cunneen); 1 keeps the M/M/1 chain's own delay."""
    tokens_per_step: float = 1.0
    """Tokens a decoding request gains per engine step: 1, or under speculative decoding 1 + the drafts it accepts
    (vLLM reads 2-3 with an EAGLE head). A step is one output: ITL is the gap between outputs, as vLLM's histogram
    records it, and an answer of `out_tokens` takes (out_tokens - 1) / tokens_per_step decode steps."""
    draft_tokens: float = 0.0
    """Tokens drafted for a decoding request a step under speculative decoding, on average over its steps (vLLM's
    num_speculative_tokens for a draft head or model; less for an n-gram drafter, which proposes on some steps only),
    read off its spec_decode counters: the verifying pass computes 1 + draft_tokens positions for it, kept or not, and
    the step's token budget charges it as many. 0: none drafted, or not read (a step then computes the tokens it
    keeps and charges the budget one)."""

    def __post_init__(self) -> None:
        check_number("rate_rps", self.rate_rps)
        check_number("in_tokens", self.in_tokens, positive=True)
        check_number("in_cv", self.in_cv)
        check_number("out_cv", self.out_cv)
        if self.out_tokens < 1 or math.isnan(self.out_tokens) or math.isinf(self.out_tokens):
            raise ModelInputError(f"out_tokens: must be >= 1, got {self.out_tokens!r}")
        if not (isinstance(self.tokens_per_step, (int, float))
                and 1.0 <= self.tokens_per_step <= MAX_TOKENS_PER_STEP):  # NaN fails both
            raise ModelInputError(f"tokens_per_step: must be in [1, {MAX_TOKENS_PER_STEP:g}], got "
                                  f"{self.tokens_per_step!r}")
        if not (isinstance(self.draft_tokens, (int, float)) and 0.0 <= self.draft_tokens <= MAX_TOKENS_PER_STEP - 1.0):
            raise ModelInputError(f"draft_tokens: must be in [0, {MAX_TOKENS_PER_STEP - 1.0:g}], got "
                                  f"{self.draft_tokens!r}")

    @property
    def decode_steps(self) -> float:
        """Decode steps an answer takes after its first token."""
        return (self.out_tokens - 1.0) / self.tokens_per_step

    @property
    def outputs(self) -> float:
        """About the outputs (steps that give it tokens) an answer takes, as Little's law counts a request's time in
        the batch: its tokens over those a step gives (exactly its tokens where each step gives one)."""
        return self.out_tokens / self.tokens_per_step

    def at_rate(self, rate_rps: float) -> Load:
        """The same mix at another rate (what sizing asks of a load many times a cycle: `replace` costs more)."""
        return Load(rate_rps, self.in_tokens, self.out_tokens, self.in_cv, self.out_cv, self.tokens_per_step,
                    self.draft_tokens)

    @property
    def positions(self) -> float:
        """Positions the verifying pass computes for a decoding request a step: 1 + its drafts, or where none are
        read the tokens it keeps (1 without speculative decoding)."""
        return max(1.0 + self.draft_tokens, self.tokens_per_step)


@dataclass(frozen=True)
class PowerProfile:
    """How an accelerator's speed and draw depend on its power cap, for one model on it.

    A phase slows only once the cap falls below its natural draw (the knee):
    time factor = 1 + sensitivity * max(0, knee_w / cap_w - 1).
    Prompts keep the GPU compute-bound: they draw knee_fraction of the peak, their knee. A decode step with
    batch B draws idle + (peak - idle) * [busy_share + (1 - busy_share) * B / (B + batch_half)]: a small
    batch is memory-bound and draws well below the peak, so a cap may never bite it (decode on an H200 draws
    137-300 W of 700 W, arXiv 2605.11999); under continuous batching that draw is its knee, and what slows is its
    compute share. The draw parameters are catalogue defaults until the tuner fits them to a pair's observed power.
    """

    name: str
    max_power_w: float
    min_power_w: float
    idle_power_w: float
    prefill_sensitivity: float = 1.0
    """Slow-down of compute per unit of relative squeeze below its knee: a prompt's compute (under continuous
    batching, inside the step's smooth maximum: what the weights' read hides barely slows, nor does the
    host-side overhead; the batched reading, mm1k-batch, slows its whole prefill), and under continuous batching the
    compute share of a decode step, B / (B + batch_half)."""
    decode_sensitivity: float = 0.1
    """Slow-down of decode steps per unit of squeeze in the batched reading (mm1k-batch, one knee)."""
    knee_fraction: float = 0.9
    """Draw of prompt work, as a share of the peak: the cap below which prompts slow."""
    busy_share: float = 0.2
    """Share of the dynamic range (peak - idle) a busy GPU draws before its batch adds compute."""
    batch_half: float = 96.0
    """Batch at which a decode step's draw is half-way from the busy base to the peak."""
    clock_time_sensitivity: float = 1.0
    """Share of a compute phase whose time follows 1 / the locked SM clock (queuemodels/clock.py)."""
    clock_draw_exponent: float = 2.0
    """The compute part of the dynamic draw falls as the locked clock's share to this power."""
    clock_step_share: float = 0.0
    """Share of a roofline decode step's fixed per-step time (alpha: small kernels and launches, and the host's
    scheduling, which no clock slows) that follows 1 / the locked clock: 0 in the catalogue, fitted by the tuner."""
    empty_power_w: float | None = None
    """Draw of a GPU with no process on it, below `idle_power_w` (a replica's idle: a loaded model's CUDA context
    keeps the GPU out of its deepest idle state); None: not known, taken as `idle_power_w`."""

    @property
    def empty_draw_w(self) -> float:
        """What a GPU no replica holds draws: the floor a plan pays for it."""
        return self.idle_power_w if self.empty_power_w is None else self.empty_power_w

    def __post_init__(self) -> None:
        check_number("max_power_w", self.max_power_w, positive=True)
        check_number("min_power_w", self.min_power_w, positive=True)
        check_number("idle_power_w", self.idle_power_w)
        if self.empty_power_w is not None:
            check_number("empty_power_w", self.empty_power_w)
            if self.empty_power_w > self.idle_power_w:
                raise ModelInputError(f"empty_power_w: must not exceed idle_power_w, got {self.empty_power_w!r}")
        if not self.min_power_w <= self.max_power_w:
            raise ModelInputError("min_power_w: must not exceed max_power_w")
        if not self.idle_power_w < self.max_power_w:
            raise ModelInputError("idle_power_w: must be below max_power_w")
        check_number("prefill_sensitivity", self.prefill_sensitivity)
        check_number("decode_sensitivity", self.decode_sensitivity)
        check_number("knee_fraction", self.knee_fraction, positive=True)
        check_number("busy_share", self.busy_share)
        if self.busy_share >= 1.0:
            raise ModelInputError(f"busy_share: must be below 1, got {self.busy_share!r}")
        check_number("batch_half", self.batch_half, positive=True)
        check_number("clock_time_sensitivity", self.clock_time_sensitivity)
        check_number("clock_draw_exponent", self.clock_draw_exponent)
        check_number("clock_step_share", self.clock_step_share)


@dataclass(frozen=True)
class ServerShape:
    """One replica's configuration: vLLM `--max-num-seqs`, queue bound (None = unbounded),
    power cap (None = uncapped) and locked SM clock as a share of the GPU's maximum (None = unlocked)."""

    max_batch: int
    max_queue: int | None
    power_cap_w: float | None = None
    sm_clock_fraction: float | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.max_batch, int) or self.max_batch < 1:
            raise ModelInputError(f"max_batch: must be an integer >= 1, got {self.max_batch!r}")
        if self.max_queue is not None and (not isinstance(self.max_queue, int) or self.max_queue < 0):
            raise ModelInputError(f"max_queue: must be an integer >= 0, got {self.max_queue!r}")
        if self.power_cap_w is not None:
            check_number("power_cap_w", self.power_cap_w, positive=True)
        if self.sm_clock_fraction is not None:
            check_number("sm_clock_fraction", self.sm_clock_fraction, positive=True)
            if not LEAST_CLOCK <= self.sm_clock_fraction <= 1.0:
                raise ModelInputError(f"sm_clock_fraction: must be in [{LEAST_CLOCK:g}, 1], got "
                                      f"{self.sm_clock_fraction!r}")
