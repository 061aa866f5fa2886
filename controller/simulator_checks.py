"""The simulated host's hidden laws checked against the config they run under: each entry names what is there.

A personality or power law keyed by a model no service runs, or a GPU type the host lacks, would be accepted and do
nothing; the daemon's config and a scenario's both refuse it by name.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

from controller.config_loader import ConfigError, quoted
from simulator.hardware import SPECS
from simulator.llms import LLMS, MEMORY_UTILIZATION, kv_capacity_tokens, weights_gb
from simulator.personality import PERSONALITIES
from simulator.power_law import POWER_LAWS


def check_law_names(where: str, personalities: Mapping[str, str], power_laws: Mapping[str, str]) -> None:
    """Each personality and power law is one the simulator has (`where`: the tables' prefix, "" in a scenario)."""
    for table, names, known in (("personalities", personalities, PERSONALITIES), ("power_laws", power_laws,
                                                                                   POWER_LAWS)):
        for key, name in names.items():
            if name not in known:
                raise ConfigError(f"{where}{table}.{key}", f"unknown {quoted(name)}, expected one of {sorted(known)}")


def check_weights_fit(where: str, model: str, gpu_types: Iterable[str]) -> None:
    """A simulated model whose weights no GPU of a type it runs on holds, where vLLM would not start (the simulator
    had run it on a 2-GB KV cache of its own, every request missing)."""
    need = weights_gb(LLMS[model])
    for gpu in gpu_types:
        usable = MEMORY_UTILIZATION * SPECS[gpu].memory_gb if gpu in SPECS else math.inf
        if need > usable:
            raise ConfigError(where, f"{quoted(model)}'s weights take {need:g} GB, more than the {usable:g} GB vLLM "
                              f"may use of one {gpu} ({MEMORY_UTILIZATION:g} of its memory): it would not start")


def check_service_fits(where: str, model: str, gpu_types: list[str], in_tokens: float, out_tokens: float) -> None:
    """A service's model on each GPU type it runs on: its weights, and its mean request in one replica's KV cache
    (named by the longer of its two lengths)."""
    check_weights_fit(f"{where}.model", model, gpu_types)
    check_kv_fits(f"{where}.{'in_tokens' if in_tokens >= out_tokens else 'out_tokens'}", model, gpu_types,
                  in_tokens + out_tokens, "in_tokens + out_tokens, the mean request,")


def check_kv_fits(where: str, model: str, gpu_types: Iterable[str], tokens: float, what: str) -> None:
    """A request of `tokens` (`what` says which) that one replica's KV cache cannot hold on a GPU type the model runs
    on: vLLM refuses to start where its longest request passes the cache; the simulator ran each such request alone,
    every one a miss (2 of 45 finished in a trial's run)."""
    for gpu in gpu_types:
        if gpu in SPECS and tokens > (kv := kv_capacity_tokens(LLMS[model], SPECS[gpu])):
            raise ConfigError(where, f"{what} is {tokens:g} tokens, more than the KV cache of one {quoted(model)} "
                              f"replica on one {gpu} holds ({kv} tokens): vLLM would not start with a context that "
                              "long")


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
