"""What a reload may change while the daemon runs, and what it refuses by name.

Live: the budget and power policy, the optimizer's and the stability gate's settings, each service's
objectives, priority, bounds, token mix, prior, and the inventory's counts and costs. Everything the
wiring fixes at start (sources, backends, the simulated host, the metrics endpoint, the loops' periods and
state, the queue model, which services exist and what serves them) needs a restart: a reload that changes
it is refused, naming the first such field, and the running config is kept.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import fields, is_dataclass, replace
from pathlib import Path

from controller.config_loader import ConfigError, quoted
from controller.settings import ServiceSettings, Settings

FIXED_SECTIONS = ("daemon", "telemetry", "actuators", "simulator", "metrics")
FIXED_SERVICE_FIELDS = ("model", "initial_max_batch", "gpus", "metrics_urls", "vllm_command", "vllm_ports",
                        "systemd_units", "deployment", "variants", "sim")
FIXED_ACCELERATOR_FIELDS = ("name", "gpus_per_replica")


def in_running_order(old: Settings, new: Settings) -> Settings:
    """`new` with its services in the running config's order where it lists the same ones: their order in the file
    means nothing (`priority` ranks them), and a reload that only moved a `[[services]]` block was refused."""
    order = {svc.name: i for i, svc in enumerate(old.services)}
    if len(new.services) != len(order) or {svc.name for svc in new.services} != set(order):
        return new
    return replace(new, services=tuple(sorted(new.services, key=lambda svc: order[svc.name])))


def check_reload(old: Settings, new: Settings) -> None:
    """Raise ConfigError naming the first field whose change needs a restart (the daemon logs it after "reload
    refused, keeping the running config: ")."""
    for section in FIXED_SECTIONS:
        a, b = getattr(old, section), getattr(new, section)
        for f in fields(a):
            if getattr(a, f.name) != getattr(b, f.name):
                raise _restart(f"{section}.{f.name}", getattr(a, f.name), getattr(b, f.name))
    running, asked = _anchored(old), _anchored(new)
    for where, (text, path) in running.items():  # the same relative path under a file now a link into another folder
        # (a ConfigMap's update flips such a link every time: absolute paths, as the shipped ones, stay where they were)
        if where in asked and asked[where][0] == text and asked[where][1] != path:
            raise ConfigError(where, f"resolves to {str(asked[where][1])!r} now (the config file's folder, through "
                              f"a link), the running daemon's to {str(path)!r}: changes need a restart")  # whole: the
            # end of a path is what differs
    if new.budget != old.budget:  # named by its field, as every other such refusal is
        if old.budget is None or new.budget is None:
            raise ConfigError("power.budget", f"{'added' if old.budget is None else 'removed'}: budget sources change "
                              "with a restart (they hold tokens and readings)")
        why = " (budget sources hold tokens and readings)"
        names = [n for n, _ in old.budget.sources], [n for n, _ in new.budget.sources]
        if names[0] != names[1]:
            raise ConfigError("power.budget.sources", f"{_listed(*names)}: budget sources change with a restart "
                              "(they hold tokens and readings)")
        for (name, a), (_, b) in zip(old.budget.sources, new.budget.sources, strict=True):
            if a != b:  # named by the source and the field changed
                raise _restart(f"power.budget.sources[{name}]", a, b, why)
        raise _restart("power.budget", old.budget, new.budget, why)
    if new.optimizer.queue_model != old.optimizer.queue_model:
        raise _restart("optimizer.queue_model", old.optimizer.queue_model, new.optimizer.queue_model,
                       " (the tuner's state is the model's)")
    if [s.name for s in new.services] != [s.name for s in old.services]:
        raise ConfigError("services", f"{_listed([s.name for s in old.services], [s.name for s in new.services])}: "
                          "services change with a restart")
    for a, b in zip(old.services, new.services, strict=True):
        _fixed(f"services[{a.name}]", a, b)
    if len(new.accelerators) != len(old.accelerators):
        raise ConfigError("accelerators", "accelerator types change with a restart")
    for x, y in zip(old.accelerators, new.accelerators, strict=True):
        for name in FIXED_ACCELERATOR_FIELDS:
            if getattr(x, name) != getattr(y, name):  # by the running type's name, as the file's checks name it
                raise _restart(f"accelerators[{x.name}].{name}", getattr(x, name), getattr(y, name))


def _anchored(s: Settings) -> dict[str, tuple[str, Path]]:
    """The paths fixed at start that the config file's folder anchors and the wiring reads, as written and resolved:
    the state, the units' batch folder and the kubeconfig where their backends run, the budget sources' files (a
    source reads the file it was built with). Resolved without raising: a link that loops stays as written."""
    a = s.actuators
    paths = {"daemon.state_dir": s.daemon.state_dir}
    if a.writes_unit_batches:
        paths["actuators.systemd_batch_dir"] = a.systemd_batch_dir
    if a.replicas == "kubernetes":
        paths["actuators.kubeconfig"] = a.kubeconfig
    for name, source in s.budget.sources if s.budget is not None else ():
        if isinstance(path := getattr(source, "path", None), str):  # the kinds that read a file
            paths[f"power.budget.sources[{name}].path"] = path
    return {where: (p, Path(os.path.realpath(Path(s.base_dir) / p))) for where, p in paths.items() if p}


def _listed(old: list[str], new: list[str]) -> str:
    """What changed between two lists of names: those added, those removed, or the order."""
    added, removed = sorted(set(new) - set(old)), sorted(set(old) - set(new))
    return (f"added {added}" if added else "") + (" " if added and removed else "") + \
        (f"removed {removed}" if removed else "") or "reordered"


def _fixed(where: str, a: ServiceSettings, b: ServiceSettings) -> None:
    for name in FIXED_SERVICE_FIELDS:
        if getattr(a, name) != getattr(b, name):
            raise _restart(f"{where}.{name}", getattr(a, name), getattr(b, name))


def _restart(where: str, running: object, asked: object, why: str = "") -> ConfigError:
    """The refusal, at the first field that differs within a table (`services[chat].sim.out_cv`, not two reprs of
    the whole table cut alike), a list quoted as the file writes it."""
    where, running, asked = next(_differences(where, running, asked))
    return ConfigError(where, f"changes need a restart{why}: {_shown(running)} runs, the file asks {_shown(asked)}")


def changes(old: Settings, new: Settings, most: int = 5) -> str:
    """What a reload changed, as its log line says it: each field that differs, by its path, from what ran to what
    the file asks (`most` of them, then a count); "nothing" for a file edited to the same settings."""
    found = [f"{where} {_shown(a)} -> {_shown(b)}" for where, a, b in _differences("", old, new)]
    if not found:
        return "nothing"
    return ", ".join(found[:most]) + (f" and {len(found) - most} more" if len(found) > most else "")


def _differences(where: str, a: object, b: object) -> Iterator[tuple[str, object, object]]:
    """Each field that differs between `a` and `b`, by its path from `where`, down through tables and lists of
    named tables (services and accelerator types, by name)."""
    if a == b:
        return
    if is_dataclass(a) and type(a) is type(b):
        for f in fields(a):
            yield from _differences(f"{where}.{f.name}" if where else f.name, getattr(a, f.name), getattr(b, f.name))
        return
    if isinstance(a, tuple) and isinstance(b, tuple) and all(is_dataclass(x) for x in (*a, *b)):
        if all(hasattr(x, "name") for x in (*a, *b)):  # named tables by name: one added or removed is one change
            old, new = {x.name: x for x in a}, {x.name: x for x in b}
            for name in dict.fromkeys([*old, *new]):
                yield from _differences(f"{where}[{name}]", old.get(name), new.get(name))
            if set(old) == set(new) and list(old) != list(new):
                yield f"{where} order", list(old), list(new)
            return
        if len(a) == len(b):  # by their place
            for k, (x, y) in enumerate(zip(a, b, strict=True)):
                yield from _differences(f"{where}[{k}]", x, y)
            return
    yield where, a, b


def _shown(v: object) -> str:
    """A value as the log line says it: a table as TOML writes one inline (not a dataclass's repr), none as such."""
    if v is None:
        return "(none)"
    if is_dataclass(v) and not isinstance(v, type):
        return "{" + ", ".join(f"{f.name} = {_shown(getattr(v, f.name))}" for f in fields(v)) + "}"
    if isinstance(v, tuple | list):
        return "[" + ", ".join(_shown(x) for x in v) + "]"
    return quoted(v)
