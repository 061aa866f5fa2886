"""The node agent (`wattscale agent`, a DaemonSet): applies its node's NodePowerPlan to the GPUs through NVML
and reports their readings in the plan's status, where the operator's fast loop reads them.

The plan comes from the acting operator (`GET /v1/nodes/<node>/plan` on its Service), asked with the pod's
projected token for the audience `wattscale-operator`, re-read at each request (the kubelet rotates it): the
operator serves only the node that token names, so the agent needs no read of NodePowerPlans in the API. Each
request carries a fresh nonce, and an answer (a plan, or that there is none) is read only with the operator's
signature over this node, that nonce and the answer's bytes (controller/cluster/plan_signing.py): whoever else
answers can at most withhold the plan.

Fail-closed: the plan is fresh while the operator renews it (its `sequence` moves) within its `ttl_s`, timed
on this node's own clock, so no clock skew between nodes matters. A plan gone stale, absent or unreadable
sets each GPU to the plan's safe cap, or the agent's own (a share of the GPU's maximum) where the plan has
none, and never raises a limit while doing so. A plan marked `release` (its policy was deleted) puts every
GPU back at its default limit; the agent's exit keeps the limits (`--restore-defaults-on-exit` restores them).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge

from actuators import ActuatorError, worth_setting
from actuators.kubernetes import translate
from actuators.nvml import EnergyCadence, GpuReading, NvmlDevices
from actuators.nvml_limits import NvmlPowerLimiter
from controller.cluster.plan_signing import NONCE_HEADER, SIGNATURE_HEADER, PlanKeys, new_nonce, verify
from controller.cluster.plan_spec import PlanSpec, read_spec
from controller.cluster.resources import GROUP, PLANS, VERSION
from controller.http_fetch import Unreachable, http_request, opener
from controller.telemetry.capped import CappedShares
from tuner.own_files import open_plain

log = logging.getLogger("wattscale.agent")
MERGE = "application/merge-patch+json"


class AgentMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        r, gpu = registry, ["node", "gpu", "uuid"]
        self.power = Gauge("wattscale_agent_gpu_power_watts", "Measured GPU power draw.", gpu, registry=r)
        self.limit = Gauge("wattscale_agent_gpu_power_limit_watts", "GPU power limit in force.", gpu, registry=r)
        self.energy = Gauge("wattscale_agent_gpu_energy_joules", "GPU energy counter.", gpu, registry=r)
        self.failsafe = Gauge("wattscale_agent_failsafe", "1 while the node's plan is stale or absent and the safe "
                              "caps are in force.", ["node"], registry=r)
        self.plan_age = Gauge("wattscale_agent_plan_age_seconds", "Seconds since the plan was last renewed.",
                              ["node"], registry=r)
        self.errors = Counter("wattscale_agent_errors", "Errors survived, by kind.", ["kind"], registry=r)


class NodeAgent:
    def __init__(self, node: str, devices: NvmlDevices, api_client: Any, operator_url: str, token_file: str,
                 plan_keys: PlanKeys, registry: CollectorRegistry | None = None,
                 safe_cap_share: float = 0.6, default_ttl_s: float = 60.0, timeout_s: float = 5.0,
                 clock: Callable[[], float] | None = None, report_timeout_s: float | None = None,
                 restore_on_exit: bool = False) -> None:
        from kubernetes.client import CustomObjectsApi

        self.node, self.devices = node, devices
        self.plan_url = f"{operator_url.rstrip('/')}/v1/nodes/{node}/plan"
        self.token_file, self.plan_keys = token_file, plan_keys
        self.http = opener(proxies={})  # in-cluster: no proxy
        self.limiter = NvmlPowerLimiter(devices, min_interval_s=0.0, **({"clock": clock} if clock else {}))
        self.custom = CustomObjectsApi(api_client)
        self.metrics = AgentMetrics(registry or CollectorRegistry())
        self.safe_cap_share, self.default_ttl_s, self.timeout_s = safe_cap_share, default_ttl_s, timeout_s
        self.report_timeout_s = timeout_s if report_timeout_s is None else report_timeout_s
        """How long a status report may wait: what a slow API server delays the next step's limits by."""
        self.restore_on_exit = restore_on_exit
        """Default limits back on exit. Off by default: the GPUs serve on while the agent is away (a DaemonSet
        rollout, an eviction), and the operator, hearing nothing, counts them at the limits they last reported."""
        self.seen: tuple[Any, float] | None = None
        """The plan's last sequence and when it was first seen (this node's clock)."""
        self.last: PlanSpec | None = None
        """The spec of the plan last read (None: no plan for this node)."""
        self.beat = 0
        self.mode = "starting"
        self.energy = EnergyCadence()
        """When the energy counter is read (the costly read, and only a gauge)."""
        self.energy_j: dict[str, float] = {}
        """Each GPU's (by UUID) last counter reading, reported between reads: the operator may read few statuses."""
        self.capped = CappedShares()
        """Each GPU's share of the time since the last report its limit held its clock (the power violation time)."""
        self.failing: set[str] = set()

    def failed(self, kind: str, message: str) -> None:
        """Log the first failure of a run, count every one."""
        self.metrics.errors.labels(kind).inc()
        if kind not in self.failing:
            log.warning("%s: %s", kind, message)
        self.failing.add(kind)

    def _plan(self) -> PlanSpec | None:
        """This node's plan's spec as the acting operator serves it (at most 1 MiB read); None where it says it has
        none for this node. OSError (the token file), Unreachable (a timeout, a broken answer) or ValueError (401/
        403/503, an answer not signed for this request, a body that is not a plan: one field a plan cannot hold
        refuses it whole) where no plan came."""
        with open_plain(self.token_file, "r", encoding="utf-8") as f:  # a FIFO waited for ever
            token = f.read(1 << 16).strip()
        nonce = new_nonce()
        answer = http_request(self.plan_url, {"Authorization": f"Bearer {token}", NONCE_HEADER: nonce},
                              self.timeout_s, via=self.http, max_body=1 << 20)
        if answer.status not in (200, 404):
            raise ValueError(f"{self.plan_url}: HTTP {answer.status} {answer.body[:200].decode(errors='replace')}")
        try:  # a 404 too: unsigned, it had dropped the plan's safe caps for the agent's own at once
            verify(self.plan_keys.keys, self.node, nonce, answer.body, answer.headers.get(SIGNATURE_HEADER.lower()))
        except ValueError as exc:
            raise ValueError(f"{self.plan_url}: HTTP {answer.status}: {exc}") from None
        if answer.status == 404:
            return None
        try:
            plan = json.loads(answer.body)
        except RecursionError:
            raise ValueError(f"{self.plan_url}: the answer is nested too deeply") from None
        if not isinstance(plan, dict) or not isinstance(plan.get("spec"), dict):
            raise ValueError(f"{self.plan_url}: the answer is not a NodePowerPlan")
        return read_spec(plan["spec"])

    def step(self, now: float) -> str:
        """Read the plan and the GPUs, set the limits, report; returns the mode (following, failsafe, released)."""
        return self.act(now, self.fetch())

    def fetch(self) -> PlanSpec | None:
        """The plan read now, or the last one read where it cannot be (it holds, unrenewed, so it goes stale in
        its TTL). Apart from `act`, so the time a plan is judged at is taken after its fetch (up to `timeout_s`
        waiting on an operator that does not answer counted no age)."""
        problem = self.plan_keys.refresh()
        if problem:
            self.failed("plan_keys", problem)
        else:
            self.failing.discard("plan_keys")
        try:
            plan = self._plan()
        except (OSError, ValueError, Unreachable) as exc:
            self.failed("plan", str(exc))
            return self.last
        self.failing.discard("plan")
        return plan

    def act(self, now: float, plan: PlanSpec | None) -> str:
        """`plan` (from `fetch`) at `now`: the GPUs' limits set, then reported."""
        self.last = plan
        spec = plan or PlanSpec()
        if plan and (self.seen is None or spec.sequence != self.seen[0]):
            self.seen = (spec.sequence, now)
        ttl = spec.ttl_s or self.default_ttl_s
        age = None if self.seen is None else now - self.seen[1]
        fresh = plan is not None and age is not None and age <= ttl
        # Released holds without renewals (its policy is gone: nobody renews it); else a stale plan fails closed.
        mode = "released" if plan and spec.release else "following" if fresh else "failsafe"
        try:
            count = self.devices.count()
        except ActuatorError as exc:
            self.failed("nvml", str(exc))
            return mode
        energy = self.energy.due(now)
        gpus = []
        for i in range(count):
            try:
                gpus.append(self._apply(self.devices.read(i, energy), mode, spec))
            except ActuatorError as exc:
                self.failed(f"gpu{i}", str(exc))
        self.metrics.failsafe.labels(self.node).set(1.0 if mode == "failsafe" else 0.0)
        self.metrics.plan_age.labels(self.node).set(age if age is not None else float("nan"))
        if mode != self.mode:
            log.info("node %s: %s -> %s", self.node, self.mode, mode)
        self.mode = mode
        if plan is not None:  # no plan object: nowhere to report until the operator creates it
            self._report(gpus, spec)
        return mode

    def _apply(self, g: GpuReading, mode: str, spec: PlanSpec) -> dict[str, Any]:
        key = str(g.index)
        if mode == "released":
            target = g.default_limit_w if g.default_limit_w is not None else g.power_limit_w
        else:
            share = self.safe_cap_share if spec.safe_cap_share is None else spec.safe_cap_share  # the policy's first
            safe = spec.safe_caps_w.get(g.index) or max(g.min_limit_w, share * g.max_limit_w)
            planned = spec.limits_w.get(g.index) if mode == "following" else None
            target = planned if planned is not None else min(g.power_limit_w, safe)  # never a rise
        limit = g.power_limit_w
        if worth_setting(limit, target):
            limit = self.limiter.set_power_limit(g.index, target)
        labels = (self.node, key, g.uuid)
        if g.power_w is not None:
            self.metrics.power.labels(*labels).set(g.power_w)
        if g.energy_j is not None:
            self.energy_j[g.uuid] = g.energy_j
            self.metrics.energy.labels(*labels).set(g.energy_j)
        self.metrics.limit.labels(*labels).set(limit)
        self.failing.discard(f"gpu{g.index}")
        return {"index": g.index, "uuid": g.uuid, "name": g.name, "power_w": g.power_w,
                "energy_j": self.energy_j.get(g.uuid),
                "limit_w": limit, "min_w": g.min_limit_w, "max_w": g.max_limit_w, "default_w": g.default_limit_w,
                "sm_clock_mhz": g.sm_clock_mhz, "memory_share": _memory_share(g),
                "capped_share": self.capped.share(g.uuid, g.capped_at_s, g.capped_s)}

    def _report(self, gpus: list[dict[str, Any]], spec: PlanSpec) -> None:
        self.beat += 1
        body = {"status": {"beat": self.beat, "mode": self.mode, "plan_sequence": spec.sequence,
                           "gpus": gpus}}
        try:
            self.custom.patch_cluster_custom_object_status(GROUP, VERSION, PLANS, self.node, body,
                                                           _request_timeout=self.report_timeout_s,
                                                           _content_type=MERGE)
            self.failing.discard("report")
        except Exception as exc:
            self.failed("report", str(translate(exc, f"NodePowerPlan {self.node} status")))

    def close(self) -> None:
        """On exit: the limits kept as they are (or, asked, every GPU back at its default limit; what failed is
        logged), then NVML shut down. A released plan has put them at their defaults already."""
        for failure in self.limiter.restore_defaults() if self.restore_on_exit else ():
            log.warning("restoring the default power limit: %s", failure)
        try:
            self.devices.close()
        except ActuatorError as exc:
            log.warning("NVML shutdown: %s", exc)


def _memory_share(g: GpuReading) -> float | None:
    """The share of its memory a GPU holds: which GPUs a pod runs on, to the operator (node_gpus.owners_of)."""
    if g.memory_used_bytes is None or not g.memory_total_bytes:
        return None
    return round(min(1.0, g.memory_used_bytes / g.memory_total_bytes), 4)
