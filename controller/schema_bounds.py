"""The numeric bounds a settings class checks in code, read off its `check` method for the JSON Schemas: each
`check_range(self, where, (names...), low, high[, low_open=...])` and `check_positive(self, where, (names...)
[, allow_zero=...])` it makes unconditionally (at the method's top level, before any statement that may return).
The loader stays the authority; a schema carrying the same bounds lets an editor flag 1e308 or -1 as it is typed,
where a schema without them passed a spec the loader then refused.

A bound made under a condition (`if self.delta_ms is not None: ...`), or through a helper, is left out: a schema
must never refuse what the loader takes."""

from __future__ import annotations

import ast
import inspect
import sys
import textwrap
from typing import Any

Bound = dict[str, float | bool]
"""JSON Schema keywords of one field: minimum or exclusiveMinimum, maximum."""

SAFE = (ast.Expression, ast.Constant, ast.Name, ast.Load, ast.Attribute, ast.UnaryOp, ast.USub, ast.BinOp, ast.Mult,
        ast.Div, ast.Add, ast.Sub, ast.Pow)
"""The expressions a bound may be written as (a number, a module constant, arithmetic on them)."""


def field_bounds(cls: type) -> dict[str, Bound]:
    """Per field, the bounds `cls.check` (or a base's) makes on it unconditionally; a field bounded twice keeps
    the tighter low and high."""
    out: dict[str, Bound] = {}
    for klass in reversed(cls.__mro__):
        check = klass.__dict__.get("check")
        if check is None:
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(check)))
        except (OSError, TypeError, SyntaxError):
            continue
        scope = vars(sys.modules[klass.__module__])
        for stmt in tree.body[0].body if tree.body and isinstance(tree.body[0], ast.FunctionDef) else []:
            if any(isinstance(n, ast.Return) for n in ast.walk(stmt)):
                break  # what follows a return, even one under a condition, is not made on every file
            call = stmt.value if isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Call) else None
            found = _call_bounds(call, scope) if call is not None else None
            if found is not None:
                for name in found[0]:
                    out[name] = _tighter(out.get(name, {}), found[1])
    return out


def _call_bounds(call: ast.Call, scope: dict[str, Any]) -> tuple[list[str], Bound] | None:
    """The names and bounds of one check_range or check_positive call on `self`; None for any other call."""
    func = call.func.id if isinstance(call.func, ast.Name) else ""
    if func not in ("check_range", "check_positive") or len(call.args) < 3:
        return None
    if not (isinstance(call.args[0], ast.Name) and call.args[0].id == "self" and isinstance(call.args[2], ast.Tuple)):
        return None
    names = [e.value for e in call.args[2].elts if isinstance(e, ast.Constant) and isinstance(e.value, str)]
    keywords = {k.arg: _value(k.value, scope) for k in call.keywords}
    if func == "check_positive":
        return names, ({"minimum": 0.0} if keywords.get("allow_zero") else {"exclusiveMinimum": 0.0})
    if len(call.args) != 5:
        return None
    low, high = _value(call.args[3], scope), _value(call.args[4], scope)
    if not isinstance(low, (int, float)) or not isinstance(high, (int, float)):
        return None
    return names, {"exclusiveMinimum" if keywords.get("low_open") else "minimum": float(low), "maximum": float(high)}


def _value(node: ast.expr, scope: dict[str, Any]) -> Any:
    """A bound's value, where it is a number or a module constant (None for anything else)."""
    tree = ast.Expression(node)
    if not all(isinstance(n, SAFE) for n in ast.walk(tree)):
        return None
    try:
        return eval(compile(tree, "<bound>", "eval"), {"__builtins__": {}}, scope)  # the nodes checked above
    except Exception:  # a name the module does not hold: no bound
        return None


def _tighter(a: Bound, b: Bound) -> Bound:
    """Both bounds at once: the higher low (an open one where the two are equal) and the lower high."""
    lows = [(float(v), k == "exclusiveMinimum") for k, v in (*a.items(), *b.items()) if "inimum" in k]
    highs = [float(v) for k, v in (*a.items(), *b.items()) if k == "maximum"]
    out: Bound = {}
    if lows:
        low, open_ = max(lows)
        out["exclusiveMinimum" if open_ else "minimum"] = low
    if highs:
        out["maximum"] = min(highs)
    return out
