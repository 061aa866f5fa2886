"""What `run` needs of the host beyond the file, probed without side effects: the metrics address can be
bound (and is free), the backends' programs and packages are there, and the directories it writes can be
written (a warning: the daemon runs on without them). `check-config` and `run` call the same probe."""

from __future__ import annotations

import errno
import importlib.util
import math
import os
import shutil
import socket
import stat
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from actuators.nvml import may_administer
from actuators.vllm_servers import startable
from controller.bounded_server import address_family
from controller.budget.api_http import http_get
from controller.budget.assemble import combiner
from controller.budget.assemble import source as budget_source
from controller.budget.base import BudgetError
from controller.budget.carbon import CarbonBudgetSource, IntensityPoint
from controller.budget.endpoint import signal_token
from controller.budget.settings import CarbonCsvSettings, CarbonSettings, DemandResponseSettings
from controller.config_loader import ConfigError, check_listen, quoted
from controller.idle_floor import floor_w, lowest_limits_w
from controller.settings import Settings
from controller.settings_checks import domain_lowest_limits_w
from controller.signal_paths import check_signal_paths
from controller.state_lock import check_free
from controller.telemetry.base import shortened
from queuemodels.accelerators import CATALOG

STATE_DIR_WARNING = "daemon.state_dir:"
"""How preflight's warning of a state directory it cannot write begins (`run` then logs no state path)."""


def check_metrics_bind(listen: str, port: int, fields: tuple[str, str] = ("metrics.listen", "metrics.port")) -> None:
    """Bind and close a socket as the metrics server would (SO_REUSEADDR, so a closing predecessor's
    TIME_WAIT is no conflict); raises ConfigError naming the field (`fields`: the address's and the port's, a
    config's or a command line's). Port 0 disables the endpoint."""
    if port == 0:
        return
    check_listen(listen, fields[0])
    with socket.socket(address_family(listen), socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((listen, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise ConfigError(fields[1], f"{port} is already in use on {listen} (by a running wattscale? a "
                                  "reload, SIGHUP, checks an edited file itself and keeps the running config if it "
                                  "is bad)") from None
            if exc.errno == errno.EADDRNOTAVAIL or isinstance(exc, socket.gaierror):
                raise ConfigError(fields[0], f"{listen} is not an address of this host") from None
            raise ConfigError(fields[1], f"cannot bind {listen}:{port} ({exc.strerror})") from None


@dataclass(frozen=True)
class NotAFolder:
    """Where a directory's path meets a file: it can never be a folder, whatever its permissions."""

    file: Path

    def __str__(self) -> str:
        return f"{self.file} is not a directory"


def unwritable(directory: Path) -> str | NotAFolder | None:
    """Why files could not be created in `directory` (or the parents it would be made in): a reason, or the file in
    its way; None if they can."""
    probe = directory
    try:
        while not probe.exists() and probe.parent != probe:
            probe = probe.parent
    except OSError as exc:  # a name past the file system's (ENAMETOOLONG): exists() raises it
        return f"{shortened(str(directory), 80)} cannot be a directory ({exc.strerror or exc})"
    if not probe.is_dir():
        return NotAFolder(probe)
    try:  # a file made and dropped: os.access says yes to root on a read-only or virtual file system
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as exc:
        return f"no file can be created in {probe} ({exc.strerror or exc})"
    return None


def unreadable(folder: Path) -> str | None:
    """Why the vLLM units' own users could not read their batch files in `folder`: it, or the folder it is in (the
    daemon's StateDirectory, whose mode an operator may set), others may not enter, or a file they may not read.
    They fell back to their own max batch, said only in their own logs."""
    for p in (folder.parent, folder):
        try:
            mode = p.stat().st_mode
        except OSError:  # not there yet: made enterable at the first change
            return None
        if stat.S_ISDIR(mode) and mode & 0o001 == 0:
            return f"{p} cannot be entered by the vLLM units' users (mode {mode & 0o777:o})"
    for f in folder.glob("*.batch"):
        try:
            mode = f.stat().st_mode
        except OSError:  # gone meanwhile
            continue
        if mode & 0o004 == 0:
            return f"{f} cannot be read by the vLLM unit's user (mode {mode & 0o777:o})"
    return None


def check_backends(settings: Settings) -> tuple[list[str], Any]:
    """The programs and packages the named backends start or import; warnings for directories they write, and the
    kubernetes backend's client where it is named (None else: `run` builds on it, so a credential plugin runs
    once)."""
    a, warnings = settings.actuators, []
    kube = kube_client(settings) if a.replicas == "kubernetes" else None
    if a.batch == "vllm" and a.vllm_runner == "child":
        for svc in settings.services:
            program = svc.vllm_command[0]
            found = shutil.which(program)
            if found is None:
                raise ConfigError(f"services[{svc.name}].vllm_command", f"{quoted(program)} is not an "
                                  "executable program")
            if not startable(Path(found)):  # `run` failed on it with ENOEXEC
                raise ConfigError(f"services[{svc.name}].vllm_command", f"{quoted(found)} is no program the kernel "
                                  "starts: a script needs a #! line (a shell runs one without it, Python does not), a "
                                  "binary to be ELF, either a regular file")
    setting = [f"actuators.{name}" for name in ("power", "clocks") if getattr(a, name) == "nvml"]
    if setting and not may_administer():
        warnings.append(f"{setting[0]}: this process lacks CAP_SYS_ADMIN, which NVML asks of a power limit or a clock "
                        "lock: every write will be refused and the budget not held (run as root, or as "
                        "systemd/wattscale.service grants it)")
    if a.writes_unit_batches:
        folder = Path(settings.base_dir) / a.systemd_batch_dir
        problem = unwritable(folder) or unreadable(folder)
        if problem is not None:
            warnings.append(f"actuators.systemd_batch_dir: {problem}; changes of max batch will fail")
    return warnings, kube


def kube_client(settings: Settings) -> Any:
    """The kubernetes backend's API client, from the credentials the config names (a kubeconfig relative to the
    config file; none: in-cluster, else ~/.kube/config), read as `run` reads them: no API call is made, but a
    kubeconfig's credential plugin (exec, auth-provider) runs as it would at start. A ConfigError naming the field
    where they cannot be read (check-config said ok to a missing or broken file)."""
    a = settings.actuators
    if importlib.util.find_spec("kubernetes") is None:
        raise ConfigError("actuators.replicas", "the kubernetes backend needs: pip install 'wattscale[kubernetes]'")
    from actuators import ActuatorError
    from actuators.kubernetes import api_client

    kubeconfig = Path(settings.base_dir) / a.kubeconfig
    if a.kubeconfig and not (kubeconfig.is_file() and os.access(kubeconfig, os.R_OK)):
        raise ConfigError("actuators.kubeconfig", f"{kubeconfig} is not a readable file")
    try:
        return api_client(str(kubeconfig) if a.kubeconfig else "")
    except ImportError as exc:  # installed, but its import broken
        raise ConfigError("actuators.replicas", f"the kubernetes backend cannot import its client: {exc}") from None
    except ActuatorError as exc:
        raise ConfigError("actuators.kubeconfig", str(exc)) from None
    except (TypeError, AttributeError, KeyError, ValueError) as exc:  # YAML, but no kubeconfig's structure
        raise ConfigError("actuators.kubeconfig", f"kubernetes: {kubeconfig if a.kubeconfig else '~/.kube/config'} "
                          f"is not a kubeconfig ({type(exc).__name__}: {quoted(str(exc))})") from None
    except OSError as exc:  # the default ~/.kube/config unreadable
        raise ConfigError("actuators.kubeconfig", f"kubernetes: credentials cannot be read ({exc.strerror or exc})") \
            from None


def check_free_port(where: str, port: int) -> None:
    """Bind and close 127.0.0.1:`port` as a loopback endpoint would; ConfigError naming `where` if taken."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError as exc:
            raise ConfigError(where, f"cannot listen on 127.0.0.1:{port} ({exc.strerror})") from None


def file_warnings(settings: Settings) -> list[str]:
    """What the file alone says `run` would warn of (no host probed)."""
    return config_warnings(settings) + budget_warnings(settings, settings.power.budget_w)


def config_warnings(settings: Settings) -> list[str]:
    """`file_warnings` but the budget's own."""
    return (_floor_levels(settings) + _domain_floors(settings) + _safe_above_curves(settings) + _restored(settings)
            + _dry_run_replicas(settings))


def _dry_run_replicas(settings: Settings) -> list[str]:
    """Services a dry-run replica backend may plan more or fewer replicas for than run: it counts the replicas it
    would have started (a trial's status read two where one ran, and the caps flipped with it)."""
    if settings.actuators.replicas != "dry-run":
        return []
    return [f"services[{s.name}].min_replicas: {s.min_replicas} < max_replicas {s.max_replicas} under actuators."
            "replicas = \"dry-run\": the plan counts replicas it does not start; set both to the replicas the "
            "service runs" for s in settings.services if s.min_replicas != s.max_replicas]


def budget_warnings(settings: Settings, budget_w: float, where: str = "power.budget_w") -> list[str]:
    """What a site budget of `budget_w` (stated by `where`: the config's, or a scenario's event) would be warned of:
    under the GPUs' lowest limits, or under what the services' min_replicas draw busy. A warning, not a refusal:
    budget sources and reloads may bring it too, and the daemon sheds replicas."""
    threshold_w, floor = settings.power.line_w(budget_w), floor_w(settings)
    lowest = lowest_limits_w(settings)
    if floor <= threshold_w < lowest:  # the governor's limits cannot fit it: it holds each at its lowest
        return [f"{where}: {budget_w:g} W ({threshold_w:.0f} W less headroom) is below the GPUs' lowest limits, "
                f"{lowest:.0f} W: every GPU is held at its lowest limit, so a cap planned above it does not apply and "
                "the plan serves less than it predicts"]
    if threshold_w >= floor:
        return []
    return [f"{where}: {budget_w:g} W ({threshold_w:.0f} W less headroom) is below what the services' min_replicas "
            f"draw busy at their GPUs' lowest limits with every other GPU idle, {floor:.0f} W: under load no cap holds "
            "it, and the plan cannot go below min_replicas"]


def _flat_curve(name: str, source: CarbonCsvSettings, points: list[IntensityPoint]) -> list[str]:
    """A curve every intensity of the file (its `points`) lies past, one end: its budget is that end's all the time
    (a curve in kgCO2eq/kWh against an export in grams pinned the budget at 2,400 W all day, and check-config said
    ok)."""
    low, high = min(g for g, _ in source.curve), max(g for g, _ in source.curve)
    seen = [p.g_per_kwh for p in points]
    if not seen or (low <= max(seen) and min(seen) <= high):
        return []
    end_g, end_w = min(source.curve) if max(seen) < low else max(source.curve)
    return [f"power.budget.sources[{name}].curve: every intensity of {quoted(source.path)} ({min(seen):g}-"
            f"{max(seen):g} gCO2eq/kWh) lies past the curve's points ({low:g}-{high:g}): its budget is {end_w:g} W "
            f"(the point at {end_g:g}) all the time; is the curve in other units than the file's grams a kWh?"]


def _restored(settings: Settings) -> list[str]:
    """Default limits restored on exit where the servers outlive the daemon: each stop (a restart, an upgrade) lifted
    the budget for as long as the daemon was down (a host example did so: 8 x 700 W of limits on 4,000 W)."""
    a = settings.actuators
    if not a.restore_power_limits or a.power != "nvml" or (a.batch == "vllm" and a.vllm_runner == "child"):
        return []
    return ["actuators.restore_power_limits: true puts every GPU back at its default limit when the daemon stops, "
            "while the servers it does not run as its children serve on: the budget is not held until it is back "
            "(false keeps the limits it set)"]


def _fallback_w(settings: Settings) -> float:
    """What a failed budget source counts as: the safe budget, held to budget_w (controller/handoff.py)."""
    return min(settings.budget.safe_budget_w if settings.budget else math.inf, settings.power.budget_w)


def _safe_above_curves(settings: Settings) -> list[str]:
    """Carbon sources that can set a budget under the safe one: failed, once its last reading ends, such a source
    counts as the safe budget, which lifts the cut it had set (a trial's 2,560 W went to 3,000 W)."""
    if settings.budget is None:
        return []
    safe_w = _fallback_w(settings)
    held = f" (held to budget_w, {safe_w:g} W)" if safe_w < settings.budget.safe_budget_w else ""
    return [f"power.budget.safe_budget_w: {settings.budget.safe_budget_w:g} W{held} is above the {low_w:g} W that "
            f"sources[{name}] can set: failed, once its last reading ends, it counts as the safe budget, and the "
            "budget rises"
            for name, src in settings.budget.sources if isinstance(src, CarbonSettings)
            and (low_w := min(w for _, w in src.curve)) < safe_w]


class Preflight(NamedTuple):
    warnings: list[str]
    kube: Any
    """The kubernetes backend's API client, where the config names that backend (None else)."""


def preflight(settings: Settings, config: Path | None = None) -> Preflight:
    """The host checks `run` relies on (`config`: the settings' file): raises ConfigError for what stops the daemon,
    returns warnings and what `run` builds on."""
    check_metrics_bind(settings.metrics.listen, settings.metrics.port)
    warnings: list[str] = []
    if settings.budget is not None:
        combiner(settings.budget, os.environ, base_dir=settings.base_dir)  # a missing secret is named here
        for name, source in settings.budget.sources:
            if isinstance(source, DemandResponseSettings) and source.port:
                signal_token(os.environ, source.token_env, f"power.budget.sources[{name}].token_env")
                check_free_port(f"power.budget.sources[{name}].port", source.port)
        check_signal_paths(settings, config)
        for name, source in settings.budget.sources:
            if isinstance(source, CarbonCsvSettings | DemandResponseSettings):  # a file, read as the daemon will:
                built = budget_source(source, f"power.budget.sources[{name}]", os.environ, http_get,
                                      settings.base_dir, math.inf)
                try:  # missing, unreadable, malformed, no file (a FIFO), or a CSV with no row in force now
                    built.step(time.time())
                except BudgetError as exc:
                    warnings.append(f"power.budget.sources[{name}].path: {exc}; it counts as "
                                    f"{_fallback_w(settings):g} W (safe_budget_w, at most budget_w) until it gives one")
                    continue
                if isinstance(source, CarbonCsvSettings) and isinstance(built, CarbonBudgetSource):
                    warnings += _flat_curve(name, source, built.points)  # the points just read: no second read
    backends, kube = check_backends(settings)
    warnings += backends + file_warnings(settings)
    for field, path in (("daemon.state_dir", settings.state_path), ("daemon.decision_log", settings.decision_log_path)):
        if path is None:
            continue
        try:
            mode = path.stat().st_mode
        except OSError as exc:  # missing: written at the first cycle; a folder that is none: warned of below
            if exc.errno == errno.ELOOP:  # a link loop: the daemon could never write it
                raise ConfigError(field, f"{path} cannot be opened ({exc.strerror})") from None
            continue
        if not stat.S_ISREG(mode):  # a FIFO would block its reader or writer
            raise ConfigError(field, f"{path} is not a regular file")
    check_free(settings.state_path.parent)  # another daemon's: `run` stops there
    problem = unwritable(settings.state_path.parent)
    if isinstance(problem, NotAFolder):  # refused, as a tuner state or decision log that is a folder is (it ran with
        # no lock, no state and no log, each said wrong)
        raise ConfigError("daemon.state_dir", f"{problem}: the daemon keeps its lock, tuner state and decision log "
                          "in this folder")
    if problem is not None:
        warnings.append(f"{STATE_DIR_WARNING} {problem}; tuner state will not be saved")
    return Preflight(warnings, kube)


def _domain_floors(settings: Settings) -> list[str]:
    """Domains whose line, less headroom, is under their GPUs' lowest limits: busy, they draw over it whatever the
    governor does (a rack of four H100s under 500 W drew 800 W a whole run, and nothing said why)."""
    out = []
    for d in settings.power.domains:
        floor = domain_lowest_limits_w(settings, d.gpus)
        if (line := settings.power.line_w(d.limit_w)) < floor:
            out.append(f"power.domains[{d.name}].limit_w: {d.limit_w:g} W ({line:.0f} W less headroom) is below its "
                       f"GPUs' lowest limits, {floor:.0f} W: busy, they draw over it whatever the governor sets")
    return out


def _floor_levels(settings: Settings) -> list[str]:
    """The power levels under an accelerator's lowest limit: planned at that floor (the driver takes no less), so
    more than one of them is one cap offered twice ([0.01] read as a cap of 7 W)."""
    out = []
    for a in settings.accelerators:
        p = CATALOG[a.name]
        below = [f"{x:g}" for x in settings.optimizer.power_levels if x * p.max_power_w < p.min_power_w]
        if below:
            out.append(f"optimizer.power_levels: {', '.join(below)} of {a.name}'s {p.max_power_w:g} W is below its "
                       f"lowest limit, {p.min_power_w:g} W: planned at that limit")
    return out
