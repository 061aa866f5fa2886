"""Pluggable backends that change the world: power limits, locked SM clocks, vLLM batch limits, replica counts."""

from actuators.base import (
    LEAST_RISE_W,
    Action,
    ActuatorError,
    BatchInForce,
    BatchSizer,
    ClockLocker,
    LaterLimiter,
    MissingTargetError,
    PermanentActuatorError,
    PowerLimiter,
    ReplicaScaler,
    TransientActuatorError,
    snap_clock_mhz,
    worth_setting,
)

__all__ = [
    "LEAST_RISE_W",
    "Action",
    "ActuatorError",
    "BatchInForce",
    "BatchSizer",
    "ClockLocker",
    "LaterLimiter",
    "MissingTargetError",
    "PermanentActuatorError",
    "PowerLimiter",
    "ReplicaScaler",
    "TransientActuatorError",
    "snap_clock_mhz",
    "worth_setting",
]
