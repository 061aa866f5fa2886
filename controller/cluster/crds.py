"""The CustomResourceDefinitions, rendered from the resources' spec classes (controller/cluster/resources.py)
by the schema writer: deploy/kubernetes/base/crds.yaml is this output, and a test keeps it so."""

from __future__ import annotations

from typing import Any

from actuators.vllm_servers import MAX_BATCH
from controller.cluster.resources import (
    GROUP,
    PLAN_TTL_RANGE_S,
    PLANS,
    POLICIES,
    SERVICES,
    VERSION,
    LlmServiceSpec,
    PowerPolicySpec,
)
from controller.schema import SchemaWriter
from controller.service_settings import MAX_PRIORITY, MAX_SLO_MS, MAX_TOKENS
from controller.settings import DaemonSettings, PowerSettings, TelemetrySettings
from controller.settings_checks import MAX_REPLICAS
from queuemodels import FAMILIES, STATISTICS
from queuemodels.accelerators import CATALOG

POSITIVE = {"minimum": 0, "exclusiveMinimum": True}
"""OpenAPI 3.0's "> 0" (its exclusiveMinimum is a flag on minimum)."""
CLUSTER_ONLY = SchemaWriter(crd=True, exclude={
    DaemonSettings: {"state_dir", "log_level", "decision_log"},
    TelemetrySettings: {"gpu_source", "vllm_source"},
    PowerSettings: {"domains"},  # by GPU index on a host; by node_selector in the policy's `domains`
}, extra={"LlmServiceVariant.accelerator": {"enum": sorted(CATALOG)},
          "AcceleratorSettings.name": {"enum": sorted(CATALOG)},
          "LlmServiceSpec.statistic": {"enum": list(STATISTICS)},
          "LlmServiceSpec.variants": {"minItems": 1},
          # the single-field bounds the schema cannot read off a check (LlmServiceSpec has none of its own; plan_ttl_s
          # is checked against a range unpacked), so the API server refuses them at once; what fields say together
          # (min <= max) stays the loader's
          "LlmServiceSpec.ttft_ms": {**POSITIVE, "maximum": MAX_SLO_MS},
          "LlmServiceSpec.itl_ms": {**POSITIVE, "maximum": MAX_SLO_MS},
          "LlmServiceSpec.priority": {"minimum": 1, "maximum": MAX_PRIORITY},
          "LlmServiceSpec.min_replicas": {"minimum": 0, "maximum": MAX_REPLICAS},
          "LlmServiceSpec.max_replicas": {"minimum": 1, "maximum": MAX_REPLICAS},
          "LlmServiceSpec.in_tokens": {"minimum": 1, "maximum": MAX_TOKENS},
          "LlmServiceSpec.out_tokens": {"minimum": 1, "maximum": MAX_TOKENS},
          "LlmServiceSpec.in_tokens_cv": {"minimum": 0, "maximum": 10},
          "LlmServiceSpec.out_tokens_cv": {"minimum": 0, "maximum": 10},
          "LlmServiceSpec.model": {"pattern": r"\S"},  # a character not blank: "" matched no vLLM series
          "LlmServiceSpec.initial_max_batch": {"minimum": 1, "maximum": MAX_BATCH},
          "PowerPolicySpec.plan_ttl_s": {"minimum": PLAN_TTL_RANGE_S[0], "maximum": PLAN_TTL_RANGE_S[1]},
          "PriorSettings.family": {"enum": list(FAMILIES)}})


def _decision() -> dict[str, Any]:
    num = {"type": "number"}
    return {"type": "object", "properties": {"accelerator": {"type": "string"}, "replicas": {"type": "integer"},
                                             "max_batch": {"type": "integer"}, "power_cap_w": num}}


def _conditions() -> dict[str, Any]:
    s = {"type": "string"}
    return {"type": "array", "items": {"type": "object", "required": ["type", "status"], "properties": {
        "type": s, "status": s, "reason": s, "message": s, "lastTransitionTime": s}}}


def _latency() -> dict[str, Any]:
    num = {"type": "number", "nullable": True}
    return {"type": "object", "properties": {k: num for k in (
        "rate_rps", "ttft_ms", "itl_ms", "ttft_p95_ms", "itl_p95_ms")}}


SERVICE_STATUS: dict[str, Any] = {"type": "object", "properties": {
    "observedGeneration": {"type": "integer"}, "conditions": _conditions(),
    "decision": _decision(), "in_force": _decision(),
    "running": {"type": "object", "additionalProperties": {"type": "integer"},
                "description": "Replicas each variant runs (read back)."},
    "predicted": _latency(), "observed": _latency(),
    "short_rps": {"type": "number", "description": "Load the plan cannot serve."},
    "reason": {"type": "string", "description": "Why it is short: slo, budget or inventory (empty: not short)."},
    "held": {"type": "array", "items": {"type": "string"},
             "description": "What the stability gate or an actuator held back this cycle."}}}
POLICY_STATUS: dict[str, Any] = {"type": "object", "properties": {
    "leader": {"type": "string"}, "services": {"type": "integer"}, "budget_w": {"type": "number"},
    "predicted_w": {"type": "number", "nullable": True},
    "draw_w": {"type": "number", "nullable": True, "description": "The GPUs' draw at the last plan (null: not read)."},
    "conditions": _conditions(),
    "unowned_gpus": {"type": "array", "items": {"type": "string"},
                     "description": "GPUs (node/index) on the selected nodes no LLMService's pod holds: held at "
                     "their minimum limit."}}}
_GPU = {"type": "object", "required": ["index", "uuid", "limit_w", "min_w", "max_w"], "properties": {
    **{k: {"type": "number", "nullable": True} for k in ("power_w", "energy_j", "default_w", "sm_clock_mhz")},
    **{k: {"type": "number"} for k in ("limit_w", "min_w", "max_w")},
    "index": {"type": "integer", "minimum": 0}, "uuid": {"type": "string", "minLength": 1},
    "name": {"type": "string"},
    "memory_share": {"type": "number", "nullable": True, "minimum": 0.0, "maximum": 1.0,
                     "description": "Share of its memory in use: which GPUs a pod holds."},
    "capped_share": {"type": "number", "nullable": True, "minimum": 0.0, "maximum": 1.0,
                     "description": "Share of the time since the last report that its power limit held its clock "
                                    "down (NVML's power violation time)."}}}
PLAN_SPEC: dict[str, Any] = {"type": "object", "properties": {
    "sequence": {"type": "integer", "description": "Moved by the operator at every renewal; the agent fails "
                 "closed when it has not moved for ttl_s."},
    "ttl_s": {"type": "number", "description": "How long the plan holds without a renewal (s)."},
    "release": {"type": "boolean", "description": "The policy is gone: restore every GPU's default limit."},
    "limits_w": {"type": "object", "additionalProperties": {"type": "number"},
                 "description": "Power limit per GPU (NVML index) in W."},
    "safe_caps_w": {"type": "object", "additionalProperties": {"type": "number"},
                    "description": "Per GPU, the limit set when the plan goes stale (never a rise)."},
    "safe_cap_share": {"type": "number", "minimum": 0.0, "maximum": 1.0,
                       "description": "The PowerPolicy's: for a GPU without a safe cap, this share of its "
                       "maximum limit (the agent's --safe-cap-share where absent)."}}}
PLAN_STATUS: dict[str, Any] = {"type": "object", "properties": {
    "beat": {"type": "integer"}, "mode": {"type": "string", "enum": ["starting", "following", "failsafe",
                                                                       "released"]},
    "plan_sequence": {"type": "integer", "nullable": True}, "gpus": {"type": "array", "items": _GPU}}}


def crd(kind: str, plural: str, scope: str, spec: dict[str, Any], status: dict[str, Any],
        columns: list[tuple[str, str, str]], short: list[str]) -> dict[str, Any]:
    return {"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
            "metadata": {"name": f"{plural}.{GROUP}"},
            "spec": {"group": GROUP, "scope": scope,
                     "names": {"kind": kind, "plural": plural, "singular": kind.lower(), "shortNames": short},
                     "versions": [{"name": VERSION, "served": True, "storage": True,
                                   "subresources": {"status": {}},
                                   "additionalPrinterColumns": [{"name": n, "type": t, "jsonPath": p}
                                                                for n, t, p in columns],
                                   "schema": {"openAPIV3Schema": {"type": "object", "properties": {
                                       "spec": spec, "status": status}, "required": ["spec"]}}}]}}


def crds() -> list[dict[str, Any]]:
    w = CLUSTER_ONLY
    return [
        crd("PowerPolicy", POLICIES, "Cluster", w.object(PowerPolicySpec), POLICY_STATUS,
            [("Budget", "number", ".spec.power.budget_w"), ("In force", "number", ".status.budget_w"),
             ("Draw", "number", ".status.draw_w"), ("Predicted", "number", ".status.predicted_w"),
             ("Leader", "string", ".status.leader"), ("Ready", "string", ".status.conditions[0].status"),
             ("Why", "string", ".status.conditions[0].message")],
            ["pp"]),
        crd("LLMService", SERVICES, "Namespaced", w.object(LlmServiceSpec), SERVICE_STATUS,
            [("Accelerator", "string", ".status.decision.accelerator"),
             ("Replicas", "integer", ".status.decision.replicas"), ("Batch", "integer", ".status.decision.max_batch"),
             ("Cap", "number", ".status.decision.power_cap_w"), ("Short", "number", ".status.short_rps"),
             ("Ready", "string", ".status.conditions[0].status"), ("Why", "string", ".status.conditions[0].message")],
            ["llms"]),
        crd("NodePowerPlan", PLANS, "Cluster", PLAN_SPEC, PLAN_STATUS,
            [("Sequence", "integer", ".spec.sequence"), ("Mode", "string", ".status.mode"),
             ("Release", "boolean", ".spec.release")], ["npp"]),
    ]
