"""The bounds the JSON Schemas read off a settings class's check(): only those it makes on every file."""

from __future__ import annotations

from dataclasses import dataclass

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
