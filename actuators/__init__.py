"""Pluggable backends that change the world: power limits, vLLM batch limits, replica counts."""

from actuators.base import (
    Action,
    ActuatorError,
    BatchSizer,
    PermanentActuatorError,
    PowerLimiter,
    ReplicaScaler,
    TransientActuatorError,
)

__all__ = [
    "Action",
    "ActuatorError",
    "BatchSizer",
    "PermanentActuatorError",
    "PowerLimiter",
    "ReplicaScaler",
    "TransientActuatorError",
]
