"""Pluggable backends that change the world: power limits, vLLM batch limits, replica counts."""

from actuators.base import (
    Action,
    ActuatorError,
    BatchInForce,
    BatchSizer,
    PermanentActuatorError,
    PowerLimiter,
    ReplicaScaler,
    TransientActuatorError,
)

__all__ = [
    "Action",
    "ActuatorError",
    "BatchInForce",
    "BatchSizer",
    "PermanentActuatorError",
    "PowerLimiter",
    "ReplicaScaler",
    "TransientActuatorError",
]
