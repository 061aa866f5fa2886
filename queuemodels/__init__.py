"""Performance and power models of one vLLM replica (pure: numpy and scipy only)."""

from queuemodels.analyzer import DEFAULT_MODEL, MODELS, ChainModel, QueueModel, get_model
from queuemodels.batch_choice import BatchChoice, best_batch_for_power, best_batch_for_rate
from queuemodels.params import FAMILIES, MOST_WEIGHT_SHARE, ServiceParams, default_delta_ms, default_prior_ms
from queuemodels.power import Occupancy, mean_draw_w
from queuemodels.sizing import max_rate
from queuemodels.targets import Performance, Targets
from queuemodels.types import DEFAULT_MAX_QUEUE, STATISTICS, Load, ModelInputError, PowerProfile, ServerShape, Unstable

__all__ = [
    "DEFAULT_MAX_QUEUE",
    "DEFAULT_MODEL",
    "FAMILIES",
    "MODELS",
    "MOST_WEIGHT_SHARE",
    "STATISTICS",
    "BatchChoice",
    "ChainModel",
    "Load",
    "ModelInputError",
    "Occupancy",
    "Performance",
    "PowerProfile",
    "QueueModel",
    "ServerShape",
    "ServiceParams",
    "Targets",
    "Unstable",
    "best_batch_for_power",
    "best_batch_for_rate",
    "default_delta_ms",
    "default_prior_ms",
    "get_model",
    "max_rate",
    "mean_draw_w",
]
