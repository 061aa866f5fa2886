"""A CRD's structural schema as the API server applies it to a custom resource: unknown fields pruned, then
the object validated against the `openAPIV3Schema` (types, enums, minimum/maximum, required, lengths), each
failure a cause naming its field as the server's 422 Invalid does (`spec.variants[0].accelerator`).

The validation is `jsonschema`'s Draft 4 (OpenAPI 3.0's schema is Draft 4's, with a boolean `exclusiveMinimum`),
with the OpenAPI additions the CRDs use: `nullable`, `x-kubernetes-list-type: set` (no item twice), and an integer
being any integral number (as the server's go-openapi validator reads JSON numbers). An update is ratcheted as the
server (Kubernetes 1.30 and later) ratchets it: a field that fails the schema but is unchanged from the stored
object (written under an older schema: stored objects are never re-validated) does not refuse the write, so a status
can still be written on it. CEL rules are not emulated (the CRDs in deploy/ have none).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import jsonschema
from jsonschema import Draft4Validator

TOP = ("apiVersion", "kind", "metadata")
"""Fields every object has that its schema does not describe (the server checks them itself)."""


def _integer(checker: Any, value: Any) -> bool:
    return (isinstance(value, int) and not isinstance(value, bool)) or (
        isinstance(value, float) and value.is_integer())


_OpenApi = jsonschema.validators.extend(
    Draft4Validator, type_checker=Draft4Validator.TYPE_CHECKER.redefine("integer", _integer))


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    """OpenAPI's `nullable: true` as JSON Schema: null is one more type (and one more enum value)."""
    out = {k: v for k, v in schema.items() if k != "nullable"}
    if isinstance(schema.get("properties"), dict):
        out["properties"] = {name: _nullable(s) for name, s in schema["properties"].items()}
    for key in ("items", "additionalProperties"):
        if isinstance(schema.get(key), dict):
            out[key] = _nullable(schema[key])
    if schema.get("x-kubernetes-list-type") == "set":  # the server refuses an item given twice
        out["uniqueItems"] = True
    if schema.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
        if "enum" in out:
            out["enum"] = [*out["enum"], None]
    return out


def prune(value: Any, schema: dict[str, Any]) -> Any:
    """`value` without the fields its structural schema does not name (what the server drops silently, unless
    `x-kubernetes-preserve-unknown-fields`)."""
    if schema.get("x-kubernetes-preserve-unknown-fields"):
        return value
    if isinstance(value, dict):
        props, extra = schema.get("properties"), schema.get("additionalProperties")
        if isinstance(extra, dict):
            return {k: prune(v, extra) for k, v in value.items()}
        props = props or {}
        return {k: prune(v, props[k]) for k, v in value.items() if k in props}
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [prune(v, schema["items"]) for v in value]
    return value


@dataclass(frozen=True)
class Cause:
    """One refused field, as in a 422 Status's `details.causes`."""

    field: str
    reason: str
    message: str


JSON_TYPES = {str: "string", int: "integer", float: "number", bool: "boolean", list: "array", type(None): "null"}


MISSING = object()


def _at(doc: Any, path: list[Any]) -> Any:
    for p in path:
        try:
            doc = doc[p]
        except (KeyError, IndexError, TypeError):
            return MISSING
    return doc


def _path(error: jsonschema.ValidationError) -> list[Any]:
    """The refused field's path (a missing required field's own, not its parent's)."""
    path = list(error.absolute_path)
    return [*path, str(error.message).split("'")[1]] if error.validator == "required" else path


def _field(path: list[Any]) -> str:
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else f".{p}" if out else str(p)
    return out


def _cause(error: jsonschema.ValidationError) -> Cause:
    where = _field(_path(error))
    shown = json.dumps(error.instance)
    if error.validator == "required":
        return Cause(where, "FieldValueRequired", "Required value")
    if error.validator == "enum":
        allowed = ", ".join(json.dumps(v) for v in error.validator_value if v is not None)
        return Cause(where, "FieldValueNotSupported", f"Unsupported value: {shown}: supported values: {allowed}")
    if error.validator == "type":
        want = error.validator_value if isinstance(error.validator_value, str) else error.validator_value[0]
        got = JSON_TYPES.get(type(error.instance), "object")
        return Cause(where, "FieldValueTypeInvalid", f"Invalid value: {shown}: {where} in body must be of type "
                     f"{want}: {json.dumps(got)}")
    if error.validator == "uniqueItems":  # a set list's: the second of two equal items
        again = next(i for i, v in enumerate(error.instance) if v in error.instance[:i])
        return Cause(f"{where}[{again}]", "FieldValueDuplicate",
                     f"Duplicate value: {json.dumps(error.instance[again])}")
    bound = error.schema.get(error.validator)
    exclusive = error.schema.get(f"exclusive{str(error.validator).capitalize()}")
    said = {"minimum": f"should be greater than {'' if exclusive else 'or equal to '}{bound}",
            "maximum": f"should be less than {'' if exclusive else 'or equal to '}{bound}",
            "minItems": f"should have at least {bound} items", "minLength": f"should be at least {bound} chars long"}
    return Cause(where, "FieldValueInvalid", f"Invalid value: {shown}: {where} in body "
                 f"{said.get(str(error.validator), error.message)}")


class CrdSchema:
    """One served version's schema of a CustomResourceDefinition."""

    def __init__(self, open_api_v3: dict[str, Any]) -> None:
        self.schema = open_api_v3
        self.validator = _OpenApi(_nullable(open_api_v3))

    def admit(self, obj: dict[str, Any], old: dict[str, Any] | None = None) -> tuple[dict[str, Any], list[Cause]]:
        """The object as the server would store it (pruned), and why it is refused (empty: admitted); on an
        update (`old`: the stored object), a failing field left as it was is let through (ratcheting)."""
        body = prune({k: v for k, v in obj.items() if k not in TOP}, self.schema)
        errors = [e for e in self.validator.iter_errors(body)
                  if old is None or _at(body, _path(e)) != _at(old, _path(e))]
        errors.sort(key=lambda e: list(map(str, _path(e))))
        return {**{k: obj[k] for k in TOP if k in obj}, **body}, [_cause(e) for e in errors]
