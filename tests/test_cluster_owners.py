"""Which service holds which GPU, read from the pods: a container's GPU limit is a Kubernetes quantity, and one
that is no whole number of GPUs a node could hold counts none (it stopped every leading step: int("1k"))."""

from __future__ import annotations

from typing import Any

import pytest
from cluster_fixtures import NODE, pod

from controller.cluster.node_gpus import owner_caps, owners_of, reading


def with_gpus(name: str, quantity: Any) -> dict[str, Any]:
    p = pod(name, "vllm-chat", 1)
    p["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] = quantity
    return p


@pytest.mark.parametrize(("quantity", "held"), [("2", 2), (2, 2), ("2e0", 2), ("1k", 0), ("0.5", 0), ("abc", 0),
                                                ("-1", 0), ({"a": 1}, 0), ("64", 64), ("65", 0)])
def test_a_containers_gpu_limit_is_read_as_a_quantity(quantity: Any, held: int) -> None:
    owners = owners_of({("llm/chat", "H100-SXM"): [with_gpus("a-0", quantity), with_gpus("b-0", "1")]})
    assert sorted(k for node, k in owners if node == NODE) == list(range(held + 1))


def test_a_new_leaders_starting_caps_are_the_highest_its_gpus_hold() -> None:
    owners = owners_of({("llm/chat", "H100-SXM"): [with_gpus("a-0", "2")]})
    assert owner_caps(owners, {NODE: {"0": 400.0, "1": 450.0, "2": 600.0}}) == {("llm/chat", "H100-SXM"): 450.0}


@pytest.mark.parametrize("field", ["power_w", "limit_w"])
def test_an_agents_reading_too_big_for_a_float_is_a_malformed_entry(field: str) -> None:
    """An integer of 401 digits made math.isfinite raise OverflowError, which the operator's read of the plans
    (skipping entries that raise KeyError, TypeError or ValueError) let through: every fast tick failed."""
    entry = {"index": 0, "uuid": "GPU-0", "name": "H100", "power_w": 300.0, "energy_j": 1.0, "limit_w": 700.0,
             "min_w": 200.0, "max_w": 700.0, field: 10**400}
    with pytest.raises(ValueError, match=f"{field} must be a finite number"):
        reading(entry)


def test_a_pod_holds_the_gpus_in_use_not_the_first_in_index_order() -> None:
    """The device plugin gave a node's one pod GPU 2: read as GPU 0, the GPU serving was held at its lowest limit as
    no service's and an idle one got the cap, on a node of one service the docs called exact. The agents report
    which GPUs hold memory; a running pod takes those, a pending one (no process yet) the others."""
    running = pod("chat-0", "vllm-chat", 1)
    in_use = {(NODE, 0): False, (NODE, 1): False, (NODE, 2): True, (NODE, 3): False}
    assert owners_of({("llm/chat", "H100-SXM"): [running]}, in_use) == {(NODE, 2): ("llm/chat", "H100-SXM")}
    pending = {**pod("chat-1", "vllm-chat", 2), "status": {"phase": "Pending"}}
    owners = owners_of({("llm/chat", "H100-SXM"): [pending, running]}, in_use)
    assert sorted(owners) == [(NODE, 0), (NODE, 1), (NODE, 2)]
    assert owners_of({("llm/chat", "H100-SXM"): [running]}) == {(NODE, 0): ("llm/chat", "H100-SXM")}  # none reported
