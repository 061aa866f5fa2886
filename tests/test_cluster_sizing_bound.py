"""An operator whose LLMServices pass the sizing bound (services x accelerators x shapes) leaves the newest out
alone: the bound named no service, so one LLMService too many refused the whole PowerPolicy (`spec.services`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cluster_fixtures import policy, service

from controller.cluster.snapshot import read_resources


class Custom:
    """The custom objects a read asks for: the policy and the LLMServices."""

    def __init__(self, pol: dict[str, Any], items: list[dict[str, Any]]) -> None:
        self.pol, self.items = pol, items

    def get_cluster_custom_object(self, *args: Any, **kw: Any) -> dict[str, Any]:
        return self.pol

    def list_cluster_custom_object(self, *args: Any, **kw: Any) -> dict[str, Any]:
        return {"items": self.items}


class Deployments:
    def check(self, svc: Any) -> None:
        """Every Deployment is there."""


def test_the_llmservice_past_the_sizing_bound_is_left_out_alone(tmp_path: Path) -> None:
    pol = policy(budget_w=1e6)
    pol["spec"]["accelerators"] = [{"name": "H100-SXM", "count": 1000}]
    pol["spec"]["optimizer"] = {"time_limit_s": 0.5, "batch_sizes": list(range(1, 65)),
                                "power_levels": [round(0.4 + 0.04 * k, 2) for k in range(16)]}  # 1,024 shapes
    items = []
    for k in range(98):  # the 98th brings the shapes to 100,352
        svc = service(f"s{k:03d}", f"vllm-{k}", min_replicas=1, max_replicas=1)
        svc["metadata"]["creationTimestamp"] = f"2026-01-01T00:{k // 60:02d}:{k % 60:02d}Z"
        items.append(svc)
    got = read_resources(Custom(pol, items), "default", Deployments(), None, str(tmp_path), 5.0)
    assert got.settings is not None and len(got.settings.services) == 97
    assert "policy" not in got.errors
    (key, error), = got.errors.items()
    assert key.endswith("/s097") and error.where == "spec.variants" and "100352" in error.reason
