"""Offline capacity planning (`wattscale plan`): config packing (seed 002) and workload allocation (seed 001)."""

from __future__ import annotations

from pathlib import Path

from controller.config_loader import ConfigError, build, quoted
from controller.planner.allocation_spec import AllocationSpec
from controller.planner.packing_spec import PackingSpec
from controller.toml_file import read_toml


def load_plan_spec(path: Path) -> PackingSpec | AllocationSpec:
    data = read_toml(path, "plan spec")
    kind = data.get("kind")
    if kind == "packing":
        return build(PackingSpec, data)
    if kind == "allocation":
        return build(AllocationSpec, data)
    if kind is None:
        raise ConfigError("kind", "is missing: a plan spec says which it is, 'packing' or 'allocation'")
    raise ConfigError("kind", f"must be 'packing' or 'allocation', got {quoted(kind)}")
