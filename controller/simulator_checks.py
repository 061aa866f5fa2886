"""The simulated host's hidden laws checked against the config they run under: each entry names what is there.

A personality or power law keyed by a model no service runs, or a GPU type the host lacks, would be accepted and do
nothing; the daemon's config and a scenario's both refuse it by name.
"""

from __future__ import annotations

from collections.abc import Mapping

from controller.config_loader import ConfigError, quoted


def check_personalities(where: str, personalities: Mapping[str, str], models: set[str], gpu_types: set[str],
                        config: str = "") -> None:
    """Each engine personality ("model" or "model|gpu_type") names a model a service runs, on a GPU type the host
    has: one that names neither would be accepted and do nothing."""
    for key in personalities:
        model, bar, gpu = key.partition("|")
        if model not in models:
            raise ConfigError(f"{where}.{key}", f"no service{f' of {config}' if config else ''} runs model "
                                                f"{quoted(model)}")
        if bar and gpu not in gpu_types:
            raise ConfigError(f"{where}.{key}", f"the simulated host has no GPU type {quoted(gpu)} (it has "
                              f"{sorted(gpu_types)})")


def check_power_laws(where: str, power_laws: Mapping[str, str], gpu_types: set[str]) -> None:
    """Each power law names a GPU type the simulated host has: one that names none would be accepted and do
    nothing."""
    for key in power_laws:
        if key not in gpu_types:
            raise ConfigError(f"{where}.{key}", f"the simulated host has no GPU type {quoted(key)} (it has "
                              f"{sorted(gpu_types)})")
