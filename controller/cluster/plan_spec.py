"""A NodePowerPlan's spec, read where it crosses a process boundary: the operator adopts plans a former leader
or a person with kubectl may have written, and the agent applies what it is served. The CRD's schema lets
through a key that is no GPU index, a string where a number belongs (a schema-less write) or a number past a
float's range; read here, such a spec is refused whole with a ValueError naming the field, never half-applied,
and nothing past here converts a value."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from controller.telemetry.plausible import MAX_GPU_LIMIT_W

MAX_SEQUENCE = 2**53
"""Largest renewal sequence (JSON's exact integers)."""
MAX_TTL_S = 86_400.0
"""Longest plan TTL a spec may state (a day): the policy's own bound is far below."""
MAX_GPU_INDEX = 9999
"""Largest NVML index a spec's key may name (four digits)."""
LIMIT_FIELDS = ("limits_w", "safe_caps_w")


@dataclass(frozen=True)
class PlanSpec:
    sequence: int = 0
    """Renewal count: the agent calls a plan fresh while this moves within its TTL."""
    ttl_s: float | None = None
    """How long a plan holds unrenewed (None: the agent's default)."""
    safe_cap_share: float | None = None
    """Share of a GPU's maximum limit an agent falls back to where the plan names no safe cap (None: its own)."""
    limits_w: dict[int, float] = field(default_factory=dict)
    """NVML index -> the power limit to hold while the plan is fresh."""
    safe_caps_w: dict[int, float] = field(default_factory=dict)
    """NVML index -> the limit to fall back to once the plan is stale."""
    release: bool = False
    """The policy is gone: the GPUs go back to their default limits."""


def _number(value: Any, where: str, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"spec.{where}: must be a number, got {value!r:.60}")
    try:
        number = float(value)
    except OverflowError:
        raise ValueError(f"spec.{where}: out of a float's range") from None
    if not (math.isfinite(number) and low <= number <= high):
        raise ValueError(f"spec.{where}: must be in [{low:g}, {high:g}], got {number:g}")
    return number


def _limits(value: Any, where: str) -> dict[int, float]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValueError(f"spec.{where}: must be a map of GPU index to watts, got {value!r:.60}")
    out = {}
    for key, watts in value.items():
        if not (isinstance(key, str) and key.isdecimal() and key.isascii() and len(key) <= 4  # <= MAX_GPU_INDEX
                and str(int(key)) == key):  # "0001" and "1" had named one GPU, the later silently winning
            raise ValueError(f"spec.{where}: {key!r:.40} is not a GPU's NVML index")
        out[int(key)] = _number(watts, f"{where}.{key}", 0.0, MAX_GPU_LIMIT_W)
    return out


def read_spec(spec: Any) -> PlanSpec:
    """The spec as a PlanSpec; ValueError naming the first field that is not what a plan holds."""
    if spec is None:
        return PlanSpec()
    if not isinstance(spec, dict):
        raise ValueError(f"spec: must be an object, got {spec!r:.60}")
    sequence = spec.get("sequence", 0)
    if isinstance(sequence, bool) or not isinstance(sequence, int) or not 0 <= sequence <= MAX_SEQUENCE:
        raise ValueError(f"spec.sequence: must be a whole number in 0..2^53, got {sequence!r:.60}")
    ttl, share, release = spec.get("ttl_s"), spec.get("safe_cap_share"), spec.get("release", False)
    if not isinstance(release, bool):
        raise ValueError(f"spec.release: must be true or false, got {release!r:.60}")
    return PlanSpec(sequence, None if ttl is None else _number(ttl, "ttl_s", 1e-3, MAX_TTL_S),
                    None if share is None else _number(share, "safe_cap_share", 0.0, 1.0),
                    _limits(spec.get("limits_w"), "limits_w"), _limits(spec.get("safe_caps_w"), "safe_caps_w"),
                    release)


def stored_keys(spec: Any) -> dict[str, set[str]]:
    """The keys a stored spec's limit maps hold, whatever they are: a write that replaces a spec it could not
    read names each with null (a merge patch keeps the keys it does not name)."""
    raw = spec if isinstance(spec, dict) else {}
    return {f: {k for k in raw[f] if isinstance(k, str)} if isinstance(raw.get(f), dict) else set()
            for f in LIMIT_FIELDS}


def renew_s(plan_ttl_s: float) -> float:
    """How often a plan is rewritten however little changed, and the longest a failing node waits to be tried
    again: a quarter of its TTL, so an agent sees a fresh plan well before its own runs out."""
    return plan_ttl_s / 4
