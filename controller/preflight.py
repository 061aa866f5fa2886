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
from controller.budget.settings import CarbonCsvSettings, DemandResponseSettings
from controller.config_loader import ConfigError, check_listen, quoted
from controller.config_warnings import fallback_w, file_warnings
from controller.settings import Settings
from controller.signal_paths import check_signal_paths
from controller.state_lock import check_free
from controller.telemetry.base import shortened

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
                                    f"{fallback_w(settings):g} W (safe_budget_w, at most budget_w) until it gives one")
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


