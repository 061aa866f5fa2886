"""Performance and power models of one vLLM replica (pure: numpy and scipy only)."""

from queuemodels.analyzer import MODELS, BatchQueueModel, QueueModel, get_model
from queuemodels.sizing import BatchChoice, best_batch_for_power, best_batch_for_rate, max_rate
from queuemodels.types import (
    FAMILIES,
    STATISTICS,
    Load,
    ModelInputError,
    Performance,
    PowerProfile,
    ServerShape,
    ServiceParams,
    Targets,
)

__all__ = [
    "FAMILIES",
    "MODELS",
    "STATISTICS",
    "BatchChoice",
    "BatchQueueModel",
    "Load",
    "ModelInputError",
    "Performance",
    "PowerProfile",
    "QueueModel",
    "ServerShape",
    "ServiceParams",
    "Targets",
    "best_batch_for_power",
    "best_batch_for_rate",
    "get_model",
    "max_rate",
]
