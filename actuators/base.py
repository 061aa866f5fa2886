"""Actuator protocols per family, the error tree sorted by recovery, and an action record."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, Protocol


class ActuatorError(Exception):
    """An actuation failed."""


class TransientActuatorError(ActuatorError):
    """Worth retrying after `delay_s` (timeouts, conflicts, a server restarting)."""

    def __init__(self, message: str, delay_s: float = 10.0) -> None:
        super().__init__(message)
        self.delay_s = delay_s


class PermanentActuatorError(ActuatorError):
    """Retrying will not help (no permission, unknown target, unsupported)."""


class MissingTargetError(PermanentActuatorError):
    """The target is not there (a deleted Deployment, HTTP 404): whatever it ran is gone with it, where a refusal
    (forbidden) or an unreadable answer leaves what runs running."""


@dataclass(frozen=True)
class Action:
    """One change an actuator made (or, dry-run, would make)."""

    kind: str
    target: str
    value: float


LEAST_RISE_W = 1.0
"""A power limit's rise under this is no set's worth (an NVML call, a node plan's write)."""
LEAST_FALL_W = 0.001
"""A fall of a milliwatt, NVML's unit, or more is set, however small: the governor fits the limits' sum to each line
exactly, and a fall under a watt left unset had the limits in force pass it by up to a watt a GPU (a review)."""


def worth_setting(current_w: float, target_w: float) -> bool:
    """Whether moving a power limit from `current_w` to `target_w` is set: any fall, a rise of a watt or more."""
    return target_w <= current_w - LEAST_FALL_W or target_w >= current_w + LEAST_RISE_W


class PowerLimiter(Protocol):
    """Sets GPU power limits; returns the limit read back from the device. One that only queues a limit for a later
    write (the operator's node plans) is a `LaterLimiter` and says so with a class attribute `applied_later = True`:
    the limit it returns is then none in force yet, and the metrics wait for a reading to say it."""

    name: str

    def set_power_limit(self, gpu_index: int, watts: float) -> float: ...


class LaterLimiter(PowerLimiter, Protocol):
    """A limiter whose limits are applied later, by someone else, each GPU's when it gets round to it."""

    applied_later: bool

    def unapplied(self) -> set[int]:
        """The GPUs still holding a limit above the one written for them: the governor counts them at the limit they
        hold (as a GPU whose limit could not be set) until their readings say the write is in force."""
        ...

    def held_w(self) -> dict[int, float]:
        """The most each GPU may hold, a limit written and not yet reported applied among it: what the governor
        counts it at."""
        ...


class ClockLocker(Protocol):
    """Locks GPU SM clocks (beside the power limit, which still bounds the draw). A lock is snapped to the
    highest supported clock at or below the one asked (the lowest supported where none is); `lock_clock`
    returns the lock now in force, read back from the device; `reset_clock` unlocks."""

    name: str

    def supported_clocks_mhz(self, gpu_index: int) -> tuple[int, ...]: ...

    def lock_clock(self, gpu_index: int, mhz: int) -> int: ...

    def reset_clock(self, gpu_index: int) -> None: ...


def snap_clock_mhz(supported: tuple[int, ...], mhz: float) -> int:
    """The highest supported clock at or below `mhz`, else the lowest supported (`supported` sorted, not empty)."""
    below = [c for c in supported if c <= mhz + 1e-9]
    return below[-1] if below else supported[0]


class BatchInForce(NamedTuple):
    """A service's `--max-num-seqs` as its servers run it, and the value a restart is rolling out, if any."""

    max_batch: int
    rolling_to: int | None = None
    mixed: bool = False
    """Its servers run different values (a change that reached some of them, units a restarted daemon finds
    apart): asked again whatever the plan's value, `max_batch` the least of them."""
    stalled: bool = False
    """A rollout of it that its controller gave up on holds replicas down (mixed too): the change that repairs it
    waits for no replica to come back."""


class BatchSizer(Protocol):
    """Changes a service's `--max-num-seqs` (a restart of its vLLM servers) and reads back what runs."""

    name: str

    def get_max_batch(self, service: str) -> BatchInForce: ...

    def set_max_batch(self, service: str, max_num_seqs: int) -> None: ...


class ReplicaScaler(Protocol):
    """Reads and sets the replica count of one variant of a service (the variant is its accelerator type: a
    service may run on several, each with its own replica target); set returns the count now in place."""

    name: str

    def get_replicas(self, service: str, variant: str) -> int: ...

    def set_replicas(self, service: str, variant: str, replicas: int) -> int: ...
