"""JSON as every reader parses it: a figure that is NaN or infinite (nothing measured yet, a rate not known) is
written as null, not as the bare NaN Python's json module writes by default, which jq, JavaScript and Go refuse."""

from __future__ import annotations

import json
import math
from typing import Any


def finite(obj: Any) -> Any:
    """`obj` with every float that is not finite, however deep in dicts, lists and tuples, made None."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    return obj


def rounded(x: float, digits: int) -> float | None:
    """`x` to `digits` decimals for a report, None (null) where it is not finite."""
    return round(x, digits) if math.isfinite(x) else None


def dumps(obj: Any, **kwargs: Any) -> str:
    """json.dumps of `obj` with non-finite floats as null (and refused, should any other path hold one)."""
    return json.dumps(finite(obj), allow_nan=False, **kwargs)
