"""Reading a TOML file the commands take (a daemon config, a scenario, a plan or optimize spec): one error line
naming the file where it cannot be read, is no TOML, holds nothing, or is another kind of file than the command
reads (each kind told by top-level keys only it holds)."""

from __future__ import annotations

import codecs
import errno
import os
import tomllib
from pathlib import Path
from typing import Any

from controller.config_loader import ConfigError
from controller.telemetry.base import shortened
from tuner.own_files import open_plain

MAX_TOML_BYTES = 2 << 20
"""Largest TOML file read (a config of a thousand services is some 500 KB). The parser takes up to 2 s a MB of the
slowest shape (long arrays of numbers), and a reload parses in the thread that answers SIGTERM and pings systemd's
watchdog: 16 MB had held it 34 s, past the unit's 30-s watchdog."""


USES = {
    "daemon config": "run it with `wattscale run --config FILE`, check it with `wattscale check-config FILE` (a "
                     "scenario names one in `config`)",
    "scenario": "run it with `wattscale simulate FILE --report DIR` (docs/simulate.md)",
    "plan spec": "run it with `wattscale plan FILE` (docs/plan.md)",
    "optimize spec": "run it with `wattscale optimize FILE` (docs/optimize-spec.md)",
}
"""What each kind of TOML file the commands read is, and how it is used."""


SIGNS = {
    "plan spec": {"kind"},
    "scenario": {"workload", "events", "config", "start_utc", "grid_time_scale", "personalities", "power_laws",
                 "energy_targets", "duration_s", "description"},
    "daemon config": {"daemon", "metrics", "telemetry", "actuators", "simulator", "stability", "optimizer"},
    "optimize spec": {"objective", "mode", "batch_sizes", "power_levels", "clock_levels", "transition_penalty"},
}
"""Top-level keys only one kind of file holds (`budget_w` is a spec's and a scenario's, and a daemon config's
misplaced one; `[power]` a daemon config's and a scenario's overrides: no sign)."""


def file_kind(doc: dict[str, Any]) -> str | None:
    """Which of USES a TOML document is, where its top-level keys say so of one kind alone (None where they say
    nothing, or point at two: a daemon config with a stray `kind`, a scenario without its `config`); a file given
    to the wrong command is named as what it is, not by its first key the command does not know, and a mistake
    within a file is left to that file's loader to name."""
    found = {kind for kind, signs in SIGNS.items() if doc.keys() & signs}
    services = doc.get("services")
    if isinstance(services, list) and all(isinstance(svc, dict) for svc in services):
        # a daemon's service names its model, a spec's its parameters
        found |= {"daemon config"} if any("model" in svc for svc in services) else set()
        found |= {"optimize spec"} if any("params" in svc for svc in services) else set()
    return found.pop() if len(found) == 1 else None


def read_toml(path: Path, expect: str | None = None) -> dict[str, Any]:
    """A TOML file's tables, refused as one error line where it cannot be read, holds nothing, or is another kind
    of file (USES) than `expect`."""
    doc = _parsed(path)
    if expect:
        check_kind(path, doc, expect)
    return doc


def check_kind(path: Path, doc: dict[str, Any], expect: str) -> None:
    """Refuse `doc` (read from `path`) where it is another kind of file (USES) than `expect`."""
    found = file_kind(doc)
    if found and found != expect:
        raise ConfigError(str(path), f"is {_an(found)}, not {_an(expect)}: {USES[found]}")


def _missing(path: Path) -> str:
    """Why `path` is not there: no such file, or a link that points nowhere or loops."""
    try:
        os.stat(path)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "a link that loops (too many levels of links)"
    return "a link to no such file" if path.is_symlink() else "no such file"


def _an(kind: str) -> str:
    return ("an " if kind[0] in "aeiou" else "a ") + kind


def read_bounded(path: Path, what: str) -> bytes:
    """A config-like file's bytes, at most MAX_TOML_BYTES, refused as one error line where it is missing, not a
    regular file, unreadable or too large (`what` says what no file that large is)."""
    if not path.exists():  # exists() is False for a link that loops or points nowhere too
        raise ConfigError(str(path), _missing(path))
    if not path.is_file():
        raise ConfigError(str(path), "not a regular file")
    if not os.access(path, os.R_OK):
        raise ConfigError(str(path), "not readable (permission denied)")
    try:
        with open_plain(path) as f:  # a FIFO put in its place after the checks above had blocked the reload for good
            data: bytes = f.read(MAX_TOML_BYTES + 1)
    except PermissionError:
        raise ConfigError(str(path), "not readable (permission denied)") from None
    except OSError as exc:  # /proc/self/mem is a regular file whose read fails
        raise ConfigError(str(path), f"cannot be read ({exc.strerror or exc})") from None
    if len(data) > MAX_TOML_BYTES:
        raise ConfigError(str(path), f"larger than {MAX_TOML_BYTES} bytes: {what}")
    return data


def _parsed(path: Path) -> dict[str, Any]:
    data = read_bounded(path, "no config, scenario or spec is")
    skip = len(codecs.BOM_UTF8) if data.startswith(codecs.BOM_UTF8) else 0  # as some editors save it
    try:
        doc = tomllib.loads(data[skip:].decode())
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(str(path), f"invalid TOML: {exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(str(path), f"not UTF-8 text (byte {exc.start + skip})") from None
    except ValueError as exc:  # an integer past Python's 4,300 digits
        raise ConfigError(str(path), f"invalid TOML: {shortened(str(exc), 200)}") from None
    except RecursionError:
        raise ConfigError(str(path), "invalid TOML: nested too deeply") from None
    if not doc:  # a file cut short by an editor reads better so than as its first missing key
        raise ConfigError(str(path), "holds no settings (empty, or only comments)")
    return doc
