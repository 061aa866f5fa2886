"""Every input wattscale reads, as a JSON Schema generated from the class its loader builds (`wattscale
schema`): the TOML config, the optimize spec, the plan specs and the custom resources."""

from __future__ import annotations

from typing import Any

from controller.budget.settings import KINDS, BudgetSettings
from controller.optimize_spec import REQUIRED_PARAMS, Spec
from controller.optimizer_settings import ITEM_BOUNDS
from controller.planner.allocation_spec import AllocationSpec
from controller.planner.packing_spec import PackingSpec
from controller.schema import SchemaWriter, document
from controller.settings import Settings
from controller.settings_checks import MAX_CHOICES, MAX_SERVICES


def _bound_choices(props: dict[str, Any]) -> None:
    """The optimizer's lists as `check_choices` takes them: 1..MAX_CHOICES items, each within its bounds."""
    for name, bound in ITEM_BOUNDS.items():
        if name in props:
            props[name].update({"minItems": 1, "maxItems": MAX_CHOICES})
            props[name]["items"].update(bound)


def config_schema() -> dict[str, Any]:
    """The TOML config: the Settings classes, with `[power.budget]` inside `[power]` as the loader reads it
    (its sources each selected by `kind`)."""
    doc = document(Settings, "wattscale config (TOML)")
    w = SchemaWriter()
    sources = []
    for kind, cls in KINDS.items():
        one = w.object(cls)
        one["properties"] = {"kind": {"const": kind}, **one["properties"]}
        one["required"] = ["kind", *one.get("required", [])]
        sources.append(one)
    budget = w.object(BudgetSettings)
    budget["properties"]["sources"] = {"type": "array", "items": {"oneOf": sources}}
    doc["properties"]["power"]["properties"]["budget"] = budget
    doc["properties"]["services"]["maxItems"] = MAX_SERVICES
    _bound_choices(doc["properties"]["optimizer"]["properties"])
    return doc


def optimize_spec_schema() -> dict[str, Any]:
    """The optimize spec: its `params` tables are the config's prior, whose defaults a spec does not take (it
    describes a fitted system: REQUIRED_PARAMS are required, as the loader says)."""
    doc = document(Spec, "wattscale optimize spec (TOML)")
    prior = doc["properties"]["services"]["items"]["properties"]["params"]["additionalProperties"]
    for name in REQUIRED_PARAMS:
        prior["properties"][name].pop("default", None)
    prior["required"] = list(REQUIRED_PARAMS)
    doc["properties"]["services"]["maxItems"] = MAX_SERVICES
    _bound_choices(doc["properties"])
    return doc


def schemas() -> dict[str, dict[str, Any]]:
    """Name -> schema; the CRDs' are their openAPIV3Schema."""
    from controller.cluster.crds import crds

    out = {"config": config_schema(), "optimize-spec": optimize_spec_schema(),
           "plan-packing": document(PackingSpec, "wattscale plan: packing spec (TOML)"),
           "plan-allocation": document(AllocationSpec, "wattscale plan: allocation spec (TOML)")}
    for c in crds():
        out[f"crd-{c['spec']['names']['singular']}"] = c["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return out
