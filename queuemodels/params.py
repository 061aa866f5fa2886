"""A model's service-time parameters on one accelerator (`ServiceParams`), the families that read them, and the
priors and starting values a fit begins from. Times are milliseconds (`_ms`)."""

from __future__ import annotations

from dataclasses import dataclass, replace

from queuemodels.types import Load, ModelInputError, PowerProfile, ServerShape, check_number

FAMILIES = ("gen1", "gen2", "step")
NAMES = {"gen1": ("alpha_ms", "beta_ms", "gamma_ms", "delta_ms"), "gen2": ("alpha_ms", "beta_ms", "gamma_ms"),
         "step": ("alpha_ms", "beta_ms", "gamma_ms", "delta_ms", "kappa_ms", "epsilon_ms", "rho",
                  "budget_tokens")}
"""Each family's free parameters, in filter order."""
LEAST_TERM = 1e-9
"""The smallest positive value a parameter may take (0 leaves its term out): the tuner's floor, and far below any
engine's step times, so a smaller one is a typo, which would leave the tuner no room between its bounds."""
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
MOST_WEIGHT_SHARE = 0.99
"""The largest share of a model's weights in routed experts (DeepSeek-V3's is 0.97): some are always shared."""
LEAST_TOKEN_SHARE = 1.0 / 4096.0
"""The smallest share of routed experts one token runs (top-1 of 4,096; DeepSeek-V3 runs 8 of 256)."""



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


Point = tuple[ServiceParams, Load, ServerShape, PowerProfile | None]
"""One replica's operating point: its parameters, its load (the rate included), shape and power profile."""
