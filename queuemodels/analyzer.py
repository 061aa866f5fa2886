"""The `QueueModel` protocol and the state-dependent M/M/1/K batch model behind it."""

from __future__ import annotations

from typing import Protocol

from queuemodels.operating_point import evaluate
from queuemodels.service_time import capped_law
from queuemodels.sizing import max_rate
from queuemodels.types import Load, ModelInputError, Performance, PowerProfile, ServerShape, ServiceParams, Targets


class QueueModel(Protocol):
    """Predicts one replica's performance, and the largest rate it can take within targets."""

    name: str

    def analyze(
        self, params: ServiceParams, load: Load, shape: ServerShape, profile: PowerProfile | None = None
    ) -> Performance: ...

    def max_rate(
        self,
        params: ServiceParams,
        load: Load,
        shape: ServerShape,
        targets: Targets,
        profile: PowerProfile | None = None,
    ) -> float: ...


class BatchQueueModel:
    """State-dependent M/M/1/K with batching, power-capped step laws and chain-derived tails."""

    name = "mm1k-batch"

    def analyze(
        self, params: ServiceParams, load: Load, shape: ServerShape, profile: PowerProfile | None = None
    ) -> Performance:
        law = capped_law(params, load, profile, shape.power_cap_w)
        return evaluate(law, shape, load.rate_rps, profile)

    def max_rate(
        self,
        params: ServiceParams,
        load: Load,
        shape: ServerShape,
        targets: Targets,
        profile: PowerProfile | None = None,
    ) -> float:
        return max_rate(params, load, shape, targets, profile)


MODELS: dict[str, QueueModel] = {BatchQueueModel.name: BatchQueueModel()}


def get_model(name: str) -> QueueModel:
    """A queue model by name; the message lists the known ones."""
    try:
        return MODELS[name]
    except KeyError:
        raise ModelInputError(f"queue model: unknown {name!r}, expected one of {sorted(MODELS)}") from None
