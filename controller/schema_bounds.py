"""The numeric bounds a settings class checks in code, read off its `check` method for the JSON Schemas: each
`check_range(self, where, (names...), low, high[, low_open=...])`, `check_positive(self, where, (names...)
[, allow_zero=...])` and `if not LOW <= self.name < HIGH: raise ...` it makes unconditionally (at the method's top
level, before any statement that may return), and those of a helper it hands `self` to (`check_service_bounds`).
The loader stays the authority; a schema carrying the same bounds lets an editor flag 1e308 or -1 as it is typed,
where a schema without them passed a spec the loader then refused.

A bound made under a condition (`if self.kind == "x": ...`), or against another field, is left out: a
schema must never refuse what the loader takes."""

from __future__ import annotations

import ast
import inspect
import sys
import textwrap
from typing import Any

Bound = dict[str, float | bool]
"""JSON Schema keywords of one field: minimum or exclusiveMinimum, maximum or exclusiveMaximum."""

SAFE = (ast.Expression, ast.Constant, ast.Name, ast.Load, ast.Attribute, ast.UnaryOp, ast.USub, ast.BinOp, ast.Mult,
        ast.Div, ast.Add, ast.Sub, ast.Pow)
"""The expressions a bound may be written as (a number, a module constant, arithmetic on them)."""


def field_bounds(cls: type) -> dict[str, Bound]:
    """Per field, the bounds `cls.check` (or a base's) makes on it unconditionally; a field bounded twice keeps
    the tighter low and high."""
    out: dict[str, Bound] = {}
    for klass in reversed(cls.__mro__):
        check = klass.__dict__.get("check")
        if check is not None:
            _read(check, out)
    return out


def _read(func: Any, out: dict[str, Bound], depth: int = 0) -> None:
    """The bounds `func` makes on the fields of its first parameter (a method's `self`, a helper's object) at its
    top level, before any statement that may return; a helper it hands that object to is read too."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(func)))
    except (OSError, TypeError, SyntaxError):
        return
    fn = tree.body[0] if tree.body and isinstance(tree.body[0], ast.FunctionDef) else None
    if fn is None or not fn.args.args:
        return
    me, scope = fn.args.args[0].arg, vars(sys.modules[func.__module__])
    for stmt in fn.body:
        if any(isinstance(n, ast.Return) for n in ast.walk(stmt)):
            break  # what follows a return, even one under a condition, is not made on every file
        found: list[tuple[list[str], Bound]] = []
        if isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Call):
            call = stmt.value
            found = [one] if (one := _call_bounds(call, me, scope)) is not None else []
            helper = scope.get(call.func.id) if isinstance(call.func, ast.Name) else None
            if one is None and depth < 2 and inspect.isfunction(helper) and _is(call.args[:1], me):
                _read(helper, out, depth + 1)
        elif isinstance(stmt, ast.If) and not stmt.orelse and all(isinstance(n, ast.Raise) for n in stmt.body):
            found = _refused_bounds(stmt.test, me, scope)
        for names, bound in found:
            for name in names:
                out[name] = _tighter(out.get(name, {}), bound)


def _is(args: list[ast.expr], me: str) -> bool:
    return bool(args) and isinstance(args[0], ast.Name) and args[0].id == me


def _call_bounds(call: ast.Call, me: str, scope: dict[str, Any]) -> tuple[list[str], Bound] | None:
    """The names and bounds of one check_range or check_positive call on `me`; None for any other call."""
    func = call.func.id if isinstance(call.func, ast.Name) else ""
    if func not in ("check_range", "check_positive") or len(call.args) < 3:
        return None
    if not (_is(call.args, me) and isinstance(call.args[2], ast.Tuple)):
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


def _refused_bounds(test: ast.expr, me: str, scope: dict[str, Any]) -> list[tuple[list[str], Bound]]:
    """The bounds of `if not LOW <= me.field < HIGH: raise ...` on each field of `me` in the chain (an end that is
    missing, or another field, is left out); none for any other test."""
    if not (isinstance(test, ast.UnaryOp) and isinstance(test.op, ast.Not) and isinstance(test.operand, ast.Compare)):
        return []
    chain, ops = [test.operand.left, *test.operand.comparators], test.operand.ops
    if not all(isinstance(op, (ast.Lt, ast.LtE)) for op in ops):
        return []
    out = []
    for i, node in enumerate(chain):
        if not (isinstance(node, ast.Attribute) and _is([node.value], me)):
            continue
        low = _value(chain[i - 1], scope) if i > 0 else None
        high = _value(chain[i + 1], scope) if i + 1 < len(chain) else None
        bound: Bound = {}
        if isinstance(low, (int, float)):
            bound["exclusiveMinimum" if isinstance(ops[i - 1], ast.Lt) else "minimum"] = float(low)
        if isinstance(high, (int, float)):
            bound["exclusiveMaximum" if isinstance(ops[i], ast.Lt) else "maximum"] = float(high)
        if bound:
            out.append(([node.attr], bound))
    return out


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
    """Both bounds at once: the higher low (an open one where the two are equal) and the lower high (likewise)."""
    lows = [(float(v), k == "exclusiveMinimum") for k, v in (*a.items(), *b.items()) if "inimum" in k]
    highs = [(float(v), k != "exclusiveMaximum") for k, v in (*a.items(), *b.items()) if "aximum" in k]
    out: Bound = {}
    if lows:
        low, open_ = max(lows)
        out["exclusiveMinimum" if open_ else "minimum"] = low
    if highs:
        high, closed = min(highs)
        out["maximum" if closed else "exclusiveMaximum"] = high
    return out
