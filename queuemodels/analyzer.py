"""The `QueueModel` protocol and the state-dependent M/M/1/K batch models behind it, by name."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from queuemodels.operating_point import evaluate, occupancy, solve_chain
from queuemodels.power import Occupancy
from queuemodels.service_time import LawFn, capped_law, continuous_law
from queuemodels.sizing import max_rate
from queuemodels.types import Load, ModelInputError, Performance, PowerProfile, ServerShape, ServiceParams, Targets


class QueueModel(Protocol):
    """Predicts one replica's performance, the largest rate it can take within targets, and where its time
    goes (batch sizes and prompts: what its power draw follows)."""

    @property
    def name(self) -> str: ...

    def analyze(
        self,
        params: ServiceParams,
        load: Load,
        shape: ServerShape,
        profile: PowerProfile | None = None,
        tails: bool = True,
    ) -> Performance: ...

    def max_rate(
        self,
        params: ServiceParams,
        load: Load,
        shape: ServerShape,
        targets: Targets,
        profile: PowerProfile | None = None,
    ) -> float: ...

    def occupancy(
        self, params: ServiceParams, load: Load, shape: ServerShape, profile: PowerProfile | None = None
    ) -> Occupancy: ...


@dataclass(frozen=True)
class ChainModel:
    """State-dependent M/M/1/K with batching and chain-derived tails; `law` says how the parameters
    become per-step times (batched prefill as llm-inferno, or vLLM's continuous batching)."""

    name: str
    law: LawFn

    def analyze(
        self,
        params: ServiceParams,
        load: Load,
        shape: ServerShape,
        profile: PowerProfile | None = None,
        tails: bool = True,
    ) -> Performance:
        """All figures at one operating point; `tails=False` leaves the percentiles NaN (faster)."""
        return evaluate(self.law(params, load, profile, shape), shape, load.rate_rps, profile, tails)

    def max_rate(
        self,
        params: ServiceParams,
        load: Load,
        shape: ServerShape,
        targets: Targets,
        profile: PowerProfile | None = None,
    ) -> float:
        return max_rate(params, load, shape, targets, profile, law_fn=self.law)

    def occupancy(
        self, params: ServiceParams, load: Load, shape: ServerShape, profile: PowerProfile | None = None
    ) -> Occupancy:
        """Where the replica's time goes at this load: what its mean draw is computed from (and fitted on)."""
        law = self.law(params, load, profile, shape)
        return occupancy(law, solve_chain(law, shape, load.rate_rps), load.rate_rps)


DEFAULT_MODEL = "mm1k-cb"
MODELS: dict[str, QueueModel] = {
    m.name: m for m in (ChainModel("mm1k-cb", continuous_law), ChainModel("mm1k-batch", capped_law))
}


def get_model(name: str) -> QueueModel:
    """A queue model by name; the message lists the known ones."""
    try:
        return MODELS[name]
    except KeyError:
        raise ModelInputError(f"queue model: unknown {name!r}, expected one of {sorted(MODELS)}") from None
