"""TOML -> frozen settings dataclasses, with one clear error naming the field and the reason.

The loader walks the dataclasses' type hints: unknown keys, wrong types and bad choices are refused here;
range checks live in each settings class's `check()`.
"""

from __future__ import annotations

import dataclasses
import datetime
import ipaddress
import math
import re
import types
import typing
import urllib.parse
from collections.abc import Sequence
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

from controller.telemetry.base import shortened

T = TypeVar("T")


class ConfigError(ValueError):
    """A bad configuration; str() is one line naming the field (or file) and the reason."""

    def __init__(self, where: str, reason: str) -> None:
        super().__init__(f"{where}: {reason}")
        self.where = where
        self.reason = reason


UNIQUE = {"unique": True}
"""A list field's metadata where its class's check refuses an entry given twice: the schemas say so (uniqueItems; a
CRD's `x-kubernetes-list-type: set`, as the API server takes no uniqueItems)."""


def check_positive(obj: object, where: str, names: tuple[str, ...], allow_zero: bool = False) -> None:
    """Refuse the first of `names` on `obj` that is not finite and > 0 (>= 0 with allow_zero)."""
    for name in names:
        v = getattr(obj, name)
        if not math.isfinite(v) or v < 0 or (v == 0 and not allow_zero):
            bound = ">= 0" if allow_zero else "> 0"
            raise ConfigError(f"{where}.{name}" if where else name, f"must be a finite number {bound}, got {v}")


def check_listen(listen: str, field: str) -> None:
    """Refuse a listen address no client reaches: a broadcast or multicast one binds, and nothing answers on it
    (a name is left to the bind that resolves it)."""
    try:
        ip = ipaddress.ip_address(listen)
    except ValueError:
        return
    ip = getattr(ip, "ipv4_mapped", None) or ip  # ::ffff:224.0.0.1 binds as 224.0.0.1 does
    if ip.is_multicast or ip == ipaddress.IPv4Address("255.255.255.255"):
        raise ConfigError(field, f"must be an address of this host, not a broadcast or multicast one, got "
                          f"{quoted(listen)}")


def check_http_url(url: str, field: str, query: bool = False) -> None:
    """Refuse what is no http(s) URL of a host, as the request would read it: a host and a port in range, no
    whitespace or control characters (a newline reached the log as a line of its own), no fragment, a query only
    where `query` (a base URL has its API's path added), and no credentials: urllib sends none from a URL (it looked
    `user:password@host` up as a host name), and the URL is quoted in logs and the decision log, which they would be
    in; quoted here without them."""
    shown = re.sub(r"//.*@", "//***@", url)  # up to the last @: a password may hold /, @ or :
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port  # a port past 65535, or no number, raises here
    except ValueError:
        parts, port = None, None
    if any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in url):
        why: str | None = "whitespace or a control character in it"
    elif "@" in url:  # userinfo, or a password holding "/" that reads as a host and port
        why = "credentials in it, which are not sent (and would be logged)"
    elif parts is None:
        why = "a bracket left open, or a port that is no number in 1..65535"
    elif parts.scheme not in ("http", "https") or not parts.hostname or port == 0:
        why = "no http(s) URL with a host"
    elif "#" in url or ("?" in url and not query):  # an empty one too: a path added after it is lost
        why = "a fragment in it" if query else "a query or a fragment in it"
    else:
        why = None
    if why is not None:
        raise ConfigError(field, f"must be an http(s) URL with a host, got {quoted(shown)}: {why}")


def check_range(obj: object, where: str, names: tuple[str, ...], low: float, high: float,
                low_open: bool = False) -> None:
    """Refuse the first of `names` on `obj` that is not a finite number in [low, high] ((low, high] with
    `low_open`), or unset (None: an optional field left to its default): every bound a loop's work or a model's
    input depends on is checked when the file is read, not found out by a hung cycle."""
    for name in names:
        v = getattr(obj, name)
        if v is None:
            continue
        if not (math.isfinite(v) and (low < v if low_open else low <= v) and v <= high):
            raise ConfigError(f"{where}.{name}" if where else name,
                              f"must be in {'(' if low_open else '['}{low:g}, {high:g}], got {v}")


_PART = r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,251}[A-Za-z0-9])?"
NAME = re.compile(f"(?:{_PART}/)?{_PART}")
"""A name the daemon puts in log lines, Prometheus labels and Kubernetes objects: 1-253 letters, digits, '.', '_'
and '-', a letter or digit at each end (no control character or space; a Kubernetes object's name rule, which a
cluster's LLMService, named `namespace/name`, keeps on each side)."""


def check_name(name: str, where: str) -> None:
    """Refuse a name outside NAME, naming the field and (its start, quoted) the value."""
    if not name.strip():
        raise ConfigError(f"{where}.name", "must not be empty")
    if not NAME.fullmatch(name):
        raise ConfigError(f"{where}.name", f"{RULE} (it names log lines, metrics and Kubernetes objects), got "
                          f"{_start(name)}")


KEY = re.compile(_PART)
"""A spec table's key: NAME's part alone (a '/' made a plot's file name a folder that does not exist)."""


def check_keys(table: dict[str, Any], where: str) -> None:
    """Refuse a table's key outside KEY (a spec's GPU, model or trace names: "" printed a blank row, "A10:int8" a
    tier label another GPU and precision also make)."""
    for key in table:
        if not KEY.fullmatch(key):
            raise ConfigError(where, f"name {_start(key)} {RULE}")


RULE = "must be 1-253 letters, digits, '.', '_' or '-', a letter or digit at each end"
"""What NAME and KEY take, as an error line says it."""


def _start(name: str) -> str:
    return repr(name[:40]) + ("..." if len(name) > 40 else "")


def item_path(where: str, index: int, value: object) -> str:
    """A list entry's path: by its `name` where it has a valid one (`services[chat]`), else by its index."""
    if isinstance(value, dict):
        name = value.get("name")
        if isinstance(name, str) and NAME.fullmatch(name):
            return f"{where}[{name}]"
    return f"{where}[{index}]"


def shown(values: Sequence[object], first: int = 8) -> str:
    """A list as a message quotes it: whole where it is short, else its first values and how many it holds."""
    head = list(values)[:first]
    return str(head) if len(values) <= first else f"{str(head)[:-1]}, ...] ({len(values)} values)"


def svc_path(name: str) -> str:
    """A service's field path in an error line, as a config's `[[services]]` names it."""
    return f"services[{name}]"


def quoted(value: object) -> str:
    """A value as an error line quotes it: its repr, cut with its length past 80 characters (10**400 printed 401
    digits); a boolean as TOML, JSON and YAML spell it (`true`, where Python's repr read `True`)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime.date | datetime.time):  # as TOML writes it, not datetime.time(7, 0)
        return value.isoformat()
    return shortened(repr(value), 80)


def unchecked(where: str, exc: Exception) -> ConfigError:
    """A failure past every check (a reload's, a policy's) as one error line: the running config goes on."""
    return ConfigError(where, f"{type(exc).__name__}: {quoted(str(exc))} (a value no check caught: please report it)")


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def convert(tp: Any, value: Any, where: str) -> Any:
    """Check and convert one TOML value against a type hint."""
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return convert(args[0], value, where)
    if origin is Literal:
        choices = get_args(tp)
        if value not in choices:
            raise ConfigError(where, f"must be one of {list(choices)}, got {quoted(value)}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, list):
            raise ConfigError(where, f"must be a list, got {quoted(value)}")
        (item,) = get_args(tp)[:1]
        return tuple(convert(item, v, item_path(where, i, v)) for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(where, f"must be a table, got {quoted(value)}")
        _, vt = get_args(tp)
        return {str(k): convert(vt, v, f"{where}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(where, f"must be a table, got {quoted(value)}")
        return build(typing.cast(type, tp), value, where)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            shown = quoted(value) if isinstance(value, (str, bool)) else f"{type(value).__name__} {quoted(value)}"
            raise ConfigError(where, f"must be a number, got {shown}")
        if value != value:
            raise ConfigError(where, "must be a number, got nan")
        if isinstance(value, int) and abs(value) >= 2**63:
            raise ConfigError(where, f"must be a number of at most 64 bits, got {quoted(value)}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(where, f"must be an integer, got {quoted(value)}")
        if abs(value) >= 2**63:
            raise ConfigError(where, f"must be an integer of at most 64 bits, got {quoted(value)}")
        return value
    if tp in (str, bool):
        if tp is str and isinstance(value, datetime.date | datetime.time):  # e.g. start = 07:00:00, unquoted
            shown = value.isoformat(timespec="minutes") if isinstance(value, datetime.time) and not (
                value.second or value.microsecond) else value.isoformat()
            raise ConfigError(where, f"must be a string, got the TOML {type(value).__name__} {quoted(value)}: write "
                              f"it in quotes, \"{shown}\"")
        if not isinstance(value, tp):
            raise ConfigError(where, f"must be {'a string' if tp is str else 'true or false'}, got {quoted(value)}")
        if tp is str and "\x00" in value:  # no name, path or URL holds one (a path with it raised ValueError)
            raise ConfigError(where, f"must not contain a NUL character, got {quoted(value)}")
        return value
    raise ConfigError(where, f"unsupported type {_type_name(tp)}")


def build(cls: type[T], data: dict[str, Any], where: str = "", taken: tuple[str, ...] = ()) -> T:
    """Build a settings dataclass from a TOML table, refusing unknown keys (`taken`: keys the caller read from the
    table itself, named among those expected)."""
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        path = f"{where}.{key}" if where else key
        if key not in fields:
            keys = sorted([*(n for n, f in fields.items() if f.metadata.get("key", True)), *taken])  # not the loader's
            raise ConfigError(path, f"unknown key (expected one of {keys})")
        kwargs[key] = convert(hints[key], value, path)
    missing = [
        n for n, f in fields.items()
        if n not in kwargs and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise ConfigError(f"{where}.{missing[0]}" if where else missing[0], "required key is missing")
    obj = cls(**kwargs)
    check = getattr(obj, "check", None)
    if check is not None:
        check(where)
    return obj
