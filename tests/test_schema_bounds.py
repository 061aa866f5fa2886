"""The bounds the JSON Schemas read off a settings class's check(): only those it makes on every file."""

from __future__ import annotations

import operator
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from functools import reduce
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT

from controller.config_loader import check_positive, check_range
from controller.schema_bounds import field_bounds

MOST_S = 60.0


@dataclass(frozen=True)
class Base:
    timeout_s: float = 5.0
    count: int = 2

    def check(self, where: str) -> None:
        check_range(self, where, ("timeout_s",), 0.0, MOST_S * 2, low_open=True)
        check_range(self, where, ("count",), 1, 100)


@dataclass(frozen=True)
class Child(Base):
    delta_ms: float | None = None
    share: float = 0.5
    rate: float = 1.0
    late: float = 1.0

    def check(self, where: str) -> None:
        check_range(self, where, ("timeout_s",), 1.0, MOST_S)  # tighter than the base's, in both ends
        if self.delta_ms is not None:  # a bound under a condition: the schema must not refuse what this skips
            check_range(self, where, ("delta_ms",), 0.0, 10.0)
        check_range(self, where, ("share",), 0.0, float(len("ab")))  # a call: not a bound the schema can read
        check_positive(self, where, ("rate",))
        if self.rate > 5:
            return
        check_range(self, where, ("late",), 0.0, 1.0)  # past a return: not made on every file


def test_only_unconditional_bounds_are_read_and_the_tighter_of_two_kept() -> None:
    assert field_bounds(Base) == {"timeout_s": {"exclusiveMinimum": 0.0, "maximum": 120.0},
                                  "count": {"minimum": 1.0, "maximum": 100.0}}
    assert field_bounds(Child) == {"timeout_s": {"minimum": 1.0, "maximum": 60.0},
                                   "count": {"minimum": 1.0, "maximum": 100.0},
                                   "rate": {"exclusiveMinimum": 0.0}}


def _checked_apart(s: object, where: str) -> None:
    if not 1 <= s.replicas <= 64:  # type: ignore[attr-defined]
        raise ValueError("replicas")


@dataclass(frozen=True)
class Written:
    share: float = 0.1
    port: int = 80
    low: int = 0
    high: int = 1
    replicas: int = 1

    def check(self, where: str) -> None:
        if not 0 <= self.share < 0.5:  # a check written out: an open high end
            raise ValueError("share")
        if not 0 < self.port <= 65535:
            raise ValueError("port")
        if not 0 <= self.low <= self.high:  # against another field: that end is left out
            raise ValueError("low")
        _checked_apart(self, where)  # a helper handed self is read too
        if self.port > 5:  # not `if not LOW <= x <= HIGH: raise`: no bound
            raise ValueError("port")


def test_bounds_written_as_a_refusing_if_and_in_a_helper_are_read() -> None:
    assert field_bounds(Written) == {"share": {"minimum": 0.0, "exclusiveMaximum": 0.5},
                                     "port": {"exclusiveMinimum": 0.0, "maximum": 65535.0}, "low": {"minimum": 0.0},
                                     "replicas": {"minimum": 1.0, "maximum": 64.0}}


@pytest.mark.parametrize(("path", "value"), [
    (["metrics", "port"], 70000),
    (["power", "headroom"], 0.5),
    (["daemon", "failsafe_after_ticks"], 0),
    (["optimizer", "power_levels", 0], 0.0),
    (["optimizer", "batch_sizes", 1], 5000),
    (["services", 0, "priority"], 1001),
    (["services", 1, "max_replicas"], 0),
])
def test_the_config_schema_refuses_what_check_config_refuses(path: list[Any], value: Any) -> None:
    """`wattscale schema config` had no bound for a port, a headroom, a priority, the optimizer's lists: an editor
    passed `port = 70000` that check-config then refused. The shipped config passes the schema; each edit fails it
    at that field alone (check-config's refusals of the same values are tests/test_config.py's)."""
    from jsonschema import Draft202012Validator

    from controller.schema_catalog import schemas

    validator = Draft202012Validator(schemas()["config"])
    config = tomllib.loads((ROOT / "config" / "sim.toml").read_text())
    assert not list(validator.iter_errors(config))
    *to, last = path
    reduce(operator.getitem, to, config)[last] = value
    assert [list(e.absolute_path) for e in validator.iter_errors(config)] == [path]


@pytest.mark.parametrize(("path", "value", "where"), [
    (["power", "domains"], [{"name": "rack", "limit_w": 900.0}], ["power", "domains", 0]),
    (["power", "domains"], [{"name": "rack", "limit_w": 900.0, "gpus": []}], ["power", "domains", 0, "gpus"]),
    (["power", "domains"], [{"name": "rack", "limit_w": 900.0, "gpus": [-1]}], ["power", "domains", 0, "gpus", 0]),
    (["power", "domains"], [{"name": "rack", "limit_w": 900.0, "gpus": [0, 0]}], ["power", "domains", 0, "gpus"]),
    (["optimizer", "queue_model"], "mm1", ["optimizer", "queue_model"]),
    (["services", 0, "statistic"], "p50", ["services", 0, "statistic"]),
])
def test_the_config_schema_refuses_a_domain_without_gpus_and_names_no_model_or_statistic_unknown(
        path: list[Any], value: Any, where: list[Any]) -> None:
    """The schema listed a domain's `gpus` as optional (default []), its indices unbounded, and any string as a
    queue model or statistic, each of which check-config refuses."""
    from jsonschema import Draft202012Validator

    from controller.schema_catalog import schemas

    config = tomllib.loads((ROOT / "config" / "sim.toml").read_text())
    *to, last = path
    reduce(operator.getitem, to, config)[last] = value
    assert [list(e.absolute_path) for e in Draft202012Validator(schemas()["config"]).iter_errors(config)] == [where]


@pytest.mark.parametrize("edit", [
    {"port = 9464": "port = 65535"},
    {'mode = "predicted"': 'mode = "predicted"\nheadroom = 0.4999\nrelease_below = 0.99999'},
    {'mode = "predicted"': 'mode = "predicted"\nrelease_below = 1e-9'},
    {"priority = 1": "priority = 1000"},
    {"min_replicas = 1": "min_replicas = 0"},
    {"seed = 7": f"seed = {2**63 - 1}"},
    {"delta_ms = 0.06 }": "delta_ms = 0.06, rho = 1000, budget_tokens = 1e6 }"},
    {'slow_interval_s = 15.0': 'slow_interval_s = 15.0\nfailsafe_after_ticks = 3600'},
])
def test_the_config_schema_takes_what_check_config_takes(sim_config: Callable[..., Path], edit: dict[str, str]) -> None:
    """The rule the bounds keep: a schema never refuses what the loader takes, at each bound's very edge (an open
    integer end read as its closed neighbour: a seed of 2**63 - 1)."""
    from jsonschema import Draft202012Validator

    from controller.schema_catalog import schemas
    from controller.settings import load_settings

    path = sim_config(edit)
    load_settings(path)
    errors = Draft202012Validator(schemas()["config"]).iter_errors(tomllib.loads(path.read_text()))
    assert not [e.message for e in errors]


@dataclass(frozen=True)
class Counted:
    ticks: int = 1
    window: int = 5
    share: float = 0.5

    def check(self, where: str) -> None:
        check_positive(self, where, ("ticks",))
        if not 0 <= self.window < 10:
            raise ValueError("window")
        if not 0 < self.share < 1:
            raise ValueError("share")


def test_an_integers_open_end_is_written_closed() -> None:
    """`seed < 2**63` read as exclusiveMaximum 2**63: an editor's validator in doubles rounds 2**63 - 1 up to it and
    flags a seed the loader takes. In a CRD too, where OpenAPI 3.0 flags an open end: an integer's was stepped from
    the flag (True + 1), which refused ticks = 1 and every window."""
    from controller.schema import SchemaWriter
    from controller.schema_catalog import schemas

    seed = schemas()["config"]["properties"]["simulator"]["properties"]["seed"]
    assert (seed["maximum"], "exclusiveMaximum" in seed) == (2**63 - 1, False)
    for crd in (False, True):
        props = SchemaWriter(crd=crd).object(Counted)["properties"]
        assert {k: v for k, v in props["ticks"].items() if "imum" in k} == {"minimum": 1}
        assert {k: v for k, v in props["window"].items() if "imum" in k} == {"minimum": 0, "maximum": 9}
        share = {k: v for k, v in props["share"].items() if "imum" in k}
        assert share == ({"minimum": 0.0, "exclusiveMinimum": True, "maximum": 1.0, "exclusiveMaximum": True} if crd
                         else {"exclusiveMinimum": 0.0, "exclusiveMaximum": 1.0})
