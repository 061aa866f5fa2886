"""JSON Schemas generated from the settings' own dataclasses: their type hints give the types, their field
docstrings the descriptions, their defaults the defaults. The TOML config, the optimize spec, the plan specs
and the custom resources (controller/cluster/resources.py) are all described from the classes the loaders
build, so a schema cannot drift from what `run`, `optimize`, `plan` and the operator accept. The numeric bounds a
class's `check()` makes unconditionally are read off its code (controller/schema_bounds.py); the rest of what it
checks is the loader's alone. `extra` adds what a schema should refuse at once (an accelerator outside the
catalogue)."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import itertools
import textwrap
import types
import typing
from collections.abc import Mapping
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

from controller.schema_bounds import Bound, field_bounds

SCALARS: dict[Any, str] = {float: "number", int: "integer", str: "string", bool: "boolean"}


def field_docs(cls: type) -> dict[str, str]:
    """Each field's docstring (the string right under it), by field name, through the class and its bases."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError):
            continue
        body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
        for node, nxt in itertools.pairwise(body):
            if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and isinstance(nxt, ast.Expr)
                    and isinstance(nxt.value, ast.Constant) and isinstance(nxt.value.value, str)):
                docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


def _default(f: dataclasses.Field[Any]) -> Any:
    value = f.default if f.default is not dataclasses.MISSING else (
        f.default_factory() if f.default_factory is not dataclasses.MISSING else dataclasses.MISSING)
    if isinstance(value, tuple):
        value = list(value)
    if isinstance(value, (bool, int, float, str)) or (isinstance(value, list) and all(
            isinstance(v, (bool, int, float, str)) for v in value)):
        return value
    if isinstance(value, dict) and not value:
        return value
    return dataclasses.MISSING


class SchemaWriter:
    """One schema dialect: plain JSON Schema (closed objects, null as a type) or a CRD's structural OpenAPI v3
    (no additionalProperties beside properties, `nullable`), with fields left out per class."""

    def __init__(self, crd: bool = False, exclude: Mapping[type, set[str]] | None = None,
                 extra: Mapping[str, dict[str, Any]] | None = None) -> None:
        self.crd = crd
        self.exclude = exclude or {}
        self.extra = extra or {}

    def of(self, tp: Any) -> dict[str, Any]:
        origin = get_origin(tp)
        if origin in (Union, types.UnionType):
            args = [a for a in get_args(tp) if a is not type(None)]
            inner = self.of(args[0])
            return {**inner, "nullable": True} if self.crd else {"anyOf": [inner, {"type": "null"}]}
        if origin is Literal:
            choices = list(get_args(tp))
            return {"type": SCALARS[type(choices[0])], "enum": choices}
        if origin in (list, tuple):
            return {"type": "array", "items": self.of(get_args(tp)[0])}
        if origin is dict:
            return {"type": "object", "additionalProperties": self.of(get_args(tp)[1])}
        if dataclasses.is_dataclass(tp):
            return self.object(typing.cast(type, tp))
        if tp in SCALARS:
            return {"type": SCALARS[tp]}
        if tp is Any:  # a free-form table the loader reads itself
            return {"x-kubernetes-preserve-unknown-fields": True} if self.crd else {}
        raise TypeError(f"no schema for {tp!r}")

    def object(self, cls: type) -> dict[str, Any]:
        hints = get_type_hints(cls)
        docs = field_docs(cls)
        bounds = field_bounds(cls)
        skip = self.exclude.get(cls, set())
        props: dict[str, Any] = {}
        required = []
        for f in dataclasses.fields(cls):
            if f.name in skip or not f.metadata.get("key", True):  # the loader's own fields are no keys
                continue
            prop = {**self.of(hints[f.name]), **self.extra.get(f"{cls.__name__}.{f.name}", {})}
            if f.name in bounds:
                self._bound(prop, bounds[f.name])
            for key, value in f.metadata.get("schema", {}).items():  # what no type says: choices, items' bounds
                prop[key] = {**prop[key], **value} if isinstance(value, dict) and key in prop else value
            if f.metadata.get("unique"):
                prop.update({"x-kubernetes-list-type": "set"} if self.crd else {"uniqueItems": True})
            if f.name in docs:
                prop["description"] = docs[f.name]
            default = _default(f)
            if default is dataclasses.MISSING:
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                    required.append(f.name)
            elif not self.crd:  # a CRD's defaults would be written into every object; the loader applies them
                prop["default"] = default
            props[f.name] = prop
        out: dict[str, Any] = {"type": "object", "properties": props}
        if cls.__doc__ and not cls.__doc__.startswith(f"{cls.__name__}("):
            out["description"] = " ".join(cls.__doc__.split())
        if required:
            out["required"] = required
        if not self.crd:
            out["additionalProperties"] = False
        return out


    def _bound(self, prop: dict[str, Any], bound: Bound) -> None:
        """A number's bounds onto its schema (a nullable one's number); a CRD's OpenAPI v3.0 writes an open end
        as a flag beside `minimum` or `maximum`."""
        number = prop["anyOf"][0] if "anyOf" in prop else prop
        if number.get("type") not in ("number", "integer") or {"minimum", "maximum"} & number.keys():
            return  # `extra` bounds what no check of the class says (a class with none, a range unpacked): those stand
        if number["type"] == "integer":  # 1 for a whole count, not 1.0; a whole count's open end is a closed one
            bound = {k: int(v) if isinstance(v, float) and v.is_integer() else v for k, v in bound.items()}
            for key, plain, step in (("exclusiveMinimum", "minimum", 1), ("exclusiveMaximum", "maximum", -1)):
                if type(bound.get(key)) is int:
                    bound = {**{k: v for k, v in bound.items() if k != key}, plain: int(bound[key]) + step}
        if self.crd:  # (after: OpenAPI's flag is no bound to step)
            for key, plain in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
                if key in bound:
                    bound = {**{k: v for k, v in bound.items() if k != key}, plain: bound[key], key: True}
        number.update(bound)


def document(cls: type, title: str, **kwargs: Any) -> dict[str, Any]:
    """A standalone JSON Schema (2020-12) of a settings class."""
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "title": title,
            **SchemaWriter(**kwargs).object(cls)}
