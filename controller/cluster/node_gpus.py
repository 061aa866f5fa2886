"""What the operator reads about a node's GPUs: an agent's reported entries, checked one by one, and which
service holds each GPU, from the pods. The device plugin's choice of GPUs is not visible to the API; what is, is
which GPUs hold memory (a vLLM engine takes most of its GPU's at start, an idle GPU holds its driver's few MiB,
reported by the agent as `memory_share`). A node's running pods (sorted by name) hold its GPUs in use in index
order, then its pending ones the others: exact on a node of one service, two services on one node may see each
other's GPUs swapped (docs/cluster.md)."""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from typing import Any

from controller.cluster.plan_spec import MAX_GPU_INDEX
from controller.telemetry.base import finite
from controller.telemetry.plausible import MAX_GPU_LIMIT_W

GPU_RESOURCE = "nvidia.com/gpu"
MAX_POD_GPUS = 64
"""Most GPUs one container's limit is read as; past it (a quantity like "1k") no node could run the pod."""
IN_USE_SHARE = 0.05
"""Share of its memory above which a GPU is in use by some process (an idle one holds well under 1 %)."""


def _number(value: Any, field: str, required: bool, high: float = math.inf) -> float | None:
    if value is None and not required:
        return None
    if finite(value) is None:  # a 400-digit integer too (math.isfinite raised OverflowError, no ValueError)
        raise ValueError(f"{field} must be a finite number, got {value!r:.60}")
    if not 0.0 <= value <= high:
        raise ValueError(f"{field} must be in [0, {high:g}], got {value!r}")
    return float(value)


def reading(g: Any) -> tuple[Any, ...]:
    """(index, uuid, name, power_w, energy_j, limit_w, min_w, max_w, sm_clock_mhz) of one GPU entry an agent
    reported; KeyError, TypeError or ValueError where it is malformed."""
    index, uuid = g["index"], g["uuid"]
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index <= MAX_GPU_INDEX:
        raise ValueError(f"index must be a GPU's NVML index, got {index!r}")
    if not isinstance(uuid, str) or not uuid:
        raise ValueError(f"uuid must be a string, got {uuid!r}")
    # watts within what one GPU's limit may be (telemetry/plausible.py), as a plan's limits are (plan_spec.py)
    return (index, uuid, str(g.get("name") or ""),
            *(_number(g.get(f), f, f in ("limit_w", "min_w", "max_w"),
                      MAX_GPU_LIMIT_W if f.endswith("_w") else math.inf)
              for f in ("power_w", "energy_j", "limit_w", "min_w", "max_w", "sm_clock_mhz")))


def _gpus_of(pod: Mapping[str, Any]) -> int:
    total = 0
    for c in pod.get("spec", {}).get("containers", []):
        limits = (c.get("resources") or {}).get("limits") or {}
        total += _count(limits.get(GPU_RESOURCE, 0) or 0)
    return total


def _count(quantity: Any) -> int:
    """A container's GPU limit, a Kubernetes quantity ("2", "1k", "2e0"); 0 where it is no whole number of GPUs a
    node could hold (the device plugin would not start such a pod)."""
    from kubernetes.utils import parse_quantity

    try:
        n = parse_quantity(quantity)
    except (ValueError, TypeError, ArithmeticError):
        return 0
    return int(n) if n == int(n) and 0 <= n <= MAX_POD_GPUS else 0


def owners_of(pods_by_variant: Mapping[tuple[str, str], Sequence[Mapping[str, Any]]],
              in_use: Mapping[tuple[str, int], bool] | None = None) -> dict[tuple[str, int], tuple[str, str]]:
    """(node, GPU index) -> (service, variant), from each (service, variant)'s pending or running pods: running pods
    hold the GPUs `in_use` ((node, index) -> whether it holds memory, as its agent reported) first, in index order,
    then the others; a node no agent has reported on, its GPUs in index order (placed by the device plugin in the
    index order of the free ones, as it takes them, they had read a pod on GPU 2 as on GPU 0)."""
    per_node: dict[str, list[tuple[bool, str, int, str, str]]] = {}
    for (service, variant), pods in pods_by_variant.items():
        for pod in pods:
            node = pod.get("spec", {}).get("nodeName")
            phase = pod.get("status", {}).get("phase", "Running")
            if node and phase in ("Pending", "Running"):
                per_node.setdefault(node, []).append((phase != "Running", pod["metadata"]["name"], _gpus_of(pod),
                                                      service, variant))
    used = in_use or {}
    owners: dict[tuple[str, int], tuple[str, str]] = {}
    for node, held in per_node.items():
        known = sorted(k for n, k in used if n == node)
        order = iter([*(k for k in known if used[node, k]), *(k for k in known if not used[node, k]),
                      *(k for k in range(len(known) + sum(h[2] for h in held)) if k not in known)])
        for _, _, n, service, variant in sorted(held):
            for k in itertools.islice(order, n):
                owners[node, k] = (service, variant)
    return owners


def owner_caps(owners: Mapping[tuple[str, int], tuple[str, str]],
               held: Mapping[str, Mapping[str, float]]) -> dict[tuple[str, str], float]:
    """(service, variant) -> the highest limit the plans hold on its GPUs (a new leader's starting caps)."""
    out: dict[tuple[str, str], float] = {}
    for node, limits in held.items():
        for local, watts in limits.items():
            owner = owners.get((node, int(local)))
            if owner is not None:
                out[owner] = max(out.get(owner, 0.0), watts)
    return out


def reported_limits(plan: Mapping[str, Any]) -> dict[str, float]:
    """Each GPU's limit as the node's agent last reported it (its status, read as `reading` reads it),
    by local index; an entry that cannot be read, or whose limit lies outside its GPU's range, is left out."""
    status = plan.get("status")
    gpus = status.get("gpus") if isinstance(status, Mapping) else None
    out: dict[str, float] = {}
    for g in gpus if isinstance(gpus, list) else []:
        try:
            index, _, _, _, _, limit_w, min_w, max_w, _ = reading(g)
        except (KeyError, TypeError, ValueError):
            continue
        if min_w <= limit_w <= max_w:
            out[str(index)] = limit_w
    return out
