"""Which file a demand-response endpoint stores its signals in, checked against every file the daemon writes or
reads: a POST by replacement wrote over the config file, the SLO margins or the daemon's lock before this check.
`check-config` (`host=False`: the file's paths only) and `run` (preflight) call it."""

from __future__ import annotations

import stat
from pathlib import Path

from controller.budget.settings import CarbonCsvSettings, DemandResponseSettings
from controller.config_loader import ConfigError, quoted
from controller.settings import NAME_MAX, STATE_FILE, Settings, longest_name_bytes
from controller.slo_margin import MARGINS_FILE
from controller.state_lock import LOCK_FILE
from controller.telemetry.base import shortened

OWN_FILES = {STATE_FILE: "the tuner's state", MARGINS_FILE: "the SLO margins", LOCK_FILE: "the daemon's lock"}
"""What the daemon keeps in its state folder, each with its temporary and set-aside copies (`<name>.<suffix>`)."""


def check_signal_paths(settings: Settings, config: Path | None = None, host: bool = True) -> None:
    """Each file a demand-response endpoint stores its signals in is none of the daemon's own and no other source's
    (one POST wrote over the config file, and the next start read invalid TOML; one into the state folder replaced the
    SLO margins, or the daemon's lock, which a second daemon then took), and, on this `host`, its folder is there:
    every POST was refused (500) where it was not, and nothing said so."""
    if settings.budget is None:
        return
    sources = [(name, src) for name, src in settings.budget.sources
               if isinstance(src, CarbonCsvSettings | DemandResponseSettings)]
    for name, src in sources:  # a name no file system takes: `run` and check-config ended on it naming no field
        if (longest := longest_name_bytes(src.path)) > NAME_MAX:
            raise ConfigError(f"power.budget.sources[{name}].path", f"{quoted(src.path)} holds a name of {longest} "
                              f"bytes, past the {NAME_MAX} a file system takes")
    files = {}
    for name, src in sources:
        try:
            files[name] = _as_written(Path(settings.base_dir) / src.path)
        except (OSError, RuntimeError) as exc:  # a folder on the way not to be looked into; a link loop (3.11)
            raise ConfigError(f"power.budget.sources[{name}].path", f"{quoted(src.path)} cannot be resolved: "
                              f"{getattr(exc, 'strerror', None) or exc}") from None
    for name, source in settings.budget.sources:
        if isinstance(source, DemandResponseSettings) and source.port:
            where, path = f"power.budget.sources[{name}].path", files[name]
            shown = shortened(str(path), 300)  # a 10-kB name was quoted whole
            try:
                if host and not path.parent.is_dir():
                    raise ConfigError(where, f"{shortened(str(path.parent), 300)} is no directory: the endpoint could "
                                      "store no signal there")
                if host and path.is_dir():  # every POST refused (500): a signal replaces no folder
                    raise ConfigError(where, f"{shown} is a directory: the endpoint stores its signals in a file; "
                                      "name one")
                if host and (kind := _special(path)) is not None:  # a POST replaced a FIFO (or /dev/null) with a file
                    raise ConfigError(where, f"{shown} is {kind}: the endpoint replaces its file with each signal; "
                                      "name a regular file")
                whose = _whose(path, settings, config, {p: other for other, p in files.items() if other != name})
            except (OSError, RuntimeError) as exc:  # RuntimeError: a link loop, as Python 3.11's resolve says it
                raise ConfigError(where, f"{shown} cannot be looked at: {getattr(exc, 'strerror', None) or exc}"
                                  ) from None
            if whose is not None:
                raise ConfigError(where, f"{shown} is {whose}: the endpoint would write its signals over it; name a "
                                  "file of its own")


def _special(path: Path) -> str | None:
    """What `path` is where it is there and neither a regular file, a folder nor a link (which a signal replaces
    as it would a file): a FIFO, a device, a socket."""
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return None
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode) or stat.S_ISLNK(mode):
        return None
    return ("a FIFO" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode)
            else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "no regular file")


def _as_written(path: Path) -> Path:
    """The file a write by replacement at `path` replaces: its folder resolved (a link to a folder is followed), its
    own name not (a link there is replaced, not what it points to)."""
    return path.parent.resolve() / path.name


def _whose(path: Path, settings: Settings, config: Path | None, others: dict[Path, str]) -> str | None:
    """Which of the daemon's files, or another source's, `path` is (a copy or a rotation by its name included): each
    as its writer replaces it, and as a link there is read through (a signal into a tuner state's target read as it)."""
    if config is not None and path in _seen_as(config):
        return "the config file"
    if path in others:
        return f"power.budget.sources[{others[path]}]'s file"
    if settings.decision_log_path is not None:
        for log in _seen_as(settings.decision_log_path):
            if path.parent == log.parent and (path == log or path.name.startswith(log.name + ".")):
                return "daemon.decision_log" + ("" if path == log else " (a rotation of it)")
    state = settings.state_path.parent
    if any(path in _seen_as(folder) for folder in (state, *state.parents)):  # the daemon makes them after this check:
        return "daemon.state_dir, or a folder it is in"  # no folder yet, and a signal's file would take its name
    for own, what in OWN_FILES.items():
        for seen in _seen_as(state / own):
            if path.parent == seen.parent and (path.name == seen.name or path.name.startswith(seen.name + ".")):
                return f"{what} (daemon.state_dir)" + ("" if path.name == seen.name else ", a copy")
    return None


def _seen_as(path: Path) -> set[Path]:
    """A file as a write by replacement finds it, and as a read follows a link there to its target."""
    return {_as_written(path), path.resolve()}
