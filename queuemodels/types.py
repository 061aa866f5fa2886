"""Value types shared by every queue model: parameters, load, server shape, power profile (targets and predictions:
queuemodels/targets.py). Times are milliseconds (`_ms`), rates per second (`_rps`), power in watts (`_w`)."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

FAMILIES = ("gen1", "gen2", "step")
NAMES = {"gen1": ("alpha_ms", "beta_ms", "gamma_ms", "delta_ms"), "gen2": ("alpha_ms", "beta_ms", "gamma_ms"),
         "step": ("alpha_ms", "beta_ms", "gamma_ms", "delta_ms", "kappa_ms", "epsilon_ms", "rho",
                  "budget_tokens")}
"""Each family's free parameters, in filter order."""
LEAST_TERM = 1e-9
"""The smallest positive value a parameter may take (0 leaves its term out): the tuner's floor, and far below any
engine's step times, so a smaller one is a typo, which would leave the tuner no room between its bounds."""
LEAST_CLOCK = 0.01
"""The lowest locked SM clock a shape may hold, as a share of the maximum: no GPU's lowest supported clock is
below it (an H100's is 0.11), and a smaller share would overflow the clock's slow-down."""
PRIOR_DELTA_MS = 0.05
"""A prior's per-token prefill time where none is given (ms): an 8B model's on an H100 within a few times."""


def default_delta_ms(family: str) -> float:
    """The prior's delta where none is given: PRIOR_DELTA_MS, none for gen2 (which has no such term)."""
    return 0.0 if family == "gen2" else PRIOR_DELTA_MS


PRIOR_MS = {"alpha_ms": 15.0, "beta_ms": 0.1, "gamma_ms": 10.0}
"""A prior's alpha, beta and gamma where none are given (a config's and `tune`'s alike): a decode step's base, its
per-sequence time and a prefill's base."""
GEN2_PRIOR_MS = {"alpha_ms": 15.0, "beta_ms": 0.01, "gamma_ms": 1e-4}
"""gen2's: its beta is a token's compute and its gamma a context token's read, per sequence of the batch (an 8B
model's on an H100 within a few times); gen1's values, read as those, put its step five orders of magnitude off
and every term of a fit at its bound."""


def default_prior_ms(family: str, name: str) -> float:
    """The prior's alpha_ms, beta_ms or gamma_ms where none is given, in the family's own units."""
    return (GEN2_PRIOR_MS if family == "gen2" else PRIOR_MS)[name]


STEP_DEFAULTS = {"kappa_ms": 1e-4, "epsilon_ms": 2.0, "rho": 1.0, "budget_tokens": 2048.0}
"""Starting values of the step family's four terms where a prior leaves them at 0: the tuner moves each
within [1/10, 10x] of them. The KV read per context token of an 8B model on an H100 is about 4e-5 ms and a
prefill step's host and launch cost 1-10 ms; the values were set so the bounds also hold the simulator's
long-context and prefill-overhead engines (docs/queue-models.md says what that means for its figures). rho
starts at 1, the physics: a decode token runs the same weight GEMMs as a prompt token (2 FLOPs per weight).
budget_tokens starts at 2048, the geometric middle of vLLM's defaults for `max_num_batched_tokens` (512 under
V0's chunked prefill, 8192 under V1 on large GPUs), so the bounds hold both."""
STATISTICS = ("mean", "p95", "p99")
QUANTILE_OF = {"p95": 0.95, "p99": 0.99}
"""The quantile a percentile statistic names."""


MOST_WEIGHT_SHARE = 0.99
"""The largest share of a model's weights in routed experts (DeepSeek-V3's is 0.97): some are always shared."""
LEAST_TOKEN_SHARE = 1.0 / 4096.0
"""The smallest share of routed experts one token runs (top-1 of 4,096; DeepSeek-V3 runs 8 of 256)."""


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


@dataclass(frozen=True)
class ServiceParams:
    """Service-time parameters of one model on one accelerator at full power (ms).

    gen1: decode(n) = alpha + beta n, prefill(n) = gamma + delta L_in n.
    gen2: T_iter(B) = alpha + B [beta (L_in+m)/(m+1) + gamma (L_in+m/2)] (delta unused).
    step: gen1 in the scheduler's terms: a decode step reads every sequence's KV cache, so each sequence
    costs beta + kappa (L_in + m/2); a step that carries a prompt pays epsilon (host-side preparation,
    kernel launches outside the decode graphs) on top of the prompt's compute (delta L_in, of which up to
    gamma hides under the step's memory time). A decode step's own compute, rho delta per sequence, hides
    under the same memory time until the batch outgrows it (the roofline crossover): decode(B) is convex.
    A step schedules at most budget_tokens, decodes first: a longer prompt spans steps, and prompts queue.
    """

    family: str
    alpha_ms: float
    beta_ms: float
    gamma_ms: float
    delta_ms: float = 0.0
    kappa_ms: float = 0.0
    """Decode time per sequence per token of context (step family)."""
    epsilon_ms: float = 0.0
    """Fixed time of a step that carries a prompt (step family)."""
    rho: float = 0.0
    """Decode compute per sequence relative to a prompt token's, delta (step family; 0: affine decode)."""
    budget_tokens: float = 0.0
    """Tokens one step schedules, decodes first (vLLM's `max_num_batched_tokens`; step family; 0: no limit)."""
    kv_tokens: float = 0.0
    """KV-cache tokens of one replica, read not fitted (vLLM's `cache_config_info`: num_gpu_blocks x block_size;
    any family; 0: unbounded): it bounds the batch a load's sequences fit in (`queuemodels/kv_cache.py`)."""
    expert_weight_share: float = 0.0
    """A mixture of experts: the share of the weights' bytes in routed experts (their parameters over all; step
    family; read off the model card, not fitted; 0: a dense model). A decode step reads only the experts some token
    of it routes to, so a small batch skips part of the weights' read (gamma)."""
    expert_token_share: float = 0.0
    """The share of a layer's routed experts one token runs (experts per token over routed experts: 8 / 64 for
    OLMoE, 2 / 8 for Mixtral); with `expert_weight_share`, read not fitted."""

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ModelInputError(f"family: unknown {self.family!r}, expected one of {FAMILIES}")
        check_number("alpha_ms", self.alpha_ms, positive=True)
        check_number("beta_ms", self.beta_ms)
        check_number("gamma_ms", self.gamma_ms)
        check_number("delta_ms", self.delta_ms)
        check_number("kappa_ms", self.kappa_ms)
        check_number("epsilon_ms", self.epsilon_ms)
        check_number("rho", self.rho)
        check_number("budget_tokens", self.budget_tokens)
        check_number("kv_tokens", self.kv_tokens)
        self._check_experts()
        for name in NAMES["step"]:
            value = getattr(self, name)
            if 0.0 < value < LEAST_TERM:  # alpha may not be 0 (check_number above): not offered it
                raise ModelInputError(f"{name}: must be {'0 or ' * (name != 'alpha_ms')}at least {LEAST_TERM:g}, "
                                      f"got {value!r}")
            if value and name not in NAMES[self.family]:  # a term the family never reads: silently dropped
                raise ModelInputError(f"{name}: the {self.family} family has no such term, got {value!r}")

    def _check_experts(self) -> None:
        """The routing's shares: the weights' in experts below 1 (attention and embeddings are shared), a token's at
        least LEAST_TOKEN_SHARE (else a step of any batch would skip the experts' whole read), both or neither."""
        weights, tokens = self.expert_weight_share, self.expert_token_share
        check_number("expert_weight_share", weights)
        check_number("expert_token_share", tokens)
        if weights > MOST_WEIGHT_SHARE:
            raise ModelInputError(f"expert_weight_share: must be at most {MOST_WEIGHT_SHARE:g} (attention and "
                                  f"embeddings are in no expert), got {weights!r}")
        if weights and self.family != "step":
            raise ModelInputError(f"expert_weight_share: the {self.family} family has no such term, got {weights!r}")
        if tokens and not weights:
            raise ModelInputError(f"expert_token_share: needs expert_weight_share (a dense model routes nothing), got "
                                  f"{tokens!r}")
        if weights and not tokens:
            raise ModelInputError(f"expert_token_share: needed with expert_weight_share {weights!r}: the experts a "
                                  "token runs over the routed experts, from the model card (8 of 64: 0.125)")
        if weights and not LEAST_TOKEN_SHARE <= tokens <= 1.0:
            raise ModelInputError(f"expert_token_share: must be in [1/{round(1 / LEAST_TOKEN_SHARE)}, 1] where "
                                  f"expert_weight_share is set (a token runs some experts), got {tokens!r}")

    @property
    def expert_miss(self) -> float:
        """The share of routed experts one token leaves unread: a step of B tokens skips expert_miss^B of them."""
        return 1.0 - self.expert_token_share if self.expert_weight_share > 0.0 else 0.0

    def as_vector(self) -> tuple[float, ...]:
        """The free parameters of the family, in filter order."""
        return tuple(float(getattr(self, n)) for n in NAMES[self.family])

    @classmethod
    def from_vector(cls, family: str, values: tuple[float, ...] | list[float]) -> ServiceParams:
        return cls(family, **{n: float(v) for n, v in zip(NAMES[family], values, strict=True)})

    def with_vector(self, values: tuple[float, ...] | list[float]) -> ServiceParams:
        """These parameters with the free ones (`as_vector`'s) set to `values`, the read ones (the KV cache, the
        experts' routing) kept."""
        return replace(self.from_vector(self.family, values), kv_tokens=self.kv_tokens,
                       expert_weight_share=self.expert_weight_share, expert_token_share=self.expert_token_share)

    def with_step_defaults(self) -> ServiceParams:
        """The step family's terms a prior left at 0 set to their starting values (what the tuner can move)."""
        if self.family != "step":
            return self
        return replace(self, kappa_ms=self.kappa_ms or STEP_DEFAULTS["kappa_ms"],
                       epsilon_ms=self.epsilon_ms or STEP_DEFAULTS["epsilon_ms"], rho=self.rho or STEP_DEFAULTS["rho"],
                       budget_tokens=self.budget_tokens or STEP_DEFAULTS["budget_tokens"])


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


Point = tuple[ServiceParams, Load, ServerShape, PowerProfile | None]
"""One replica's operating point: its parameters, its load (the rate included), shape and power profile."""
