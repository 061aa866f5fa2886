"""The operator's side of the node plans: one `NodePowerPlan` per GPU node, the operator's spec (limits, safe
caps, a renewal sequence) and the agent's status (its GPUs' readings).

Seen from the control loop, the plans are a `GpuSource` (the agents' readings, numbered across the cluster:
controller/cluster/node_readings.py) and a `PowerLimiter` (limits collected each fast tick and written once per
node by `flush`). A node whose write fails waits its backoff (`controller/retry.py`): the fast tick that writes the
plans waits on a timing-out node once, not on every tick. Which service a GPU serves is read from the pods
(controller/cluster/node_gpus.py).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from actuators import ActuatorError, PermanentActuatorError
from actuators.kubernetes import translate
from actuators.kubernetes_calls import within
from controller.cluster.limit_room import Room
from controller.cluster.node_gpus import owners_of, reported_limits
from controller.cluster.node_readings import NodeReadings, stale_after_s
from controller.cluster.plan_spec import LIMIT_FIELDS, renew_s
from controller.cluster.resources import GROUP, PLANS, VERSION
from controller.power_rooms import safe_caps
from controller.retry import RetryBook

log = logging.getLogger("wattscale.operator")
MERGE = "application/merge-patch+json"


class NodePlans(NodeReadings):
    """The node plans as the loop's GPU source (`NodeReadings`) and power limiter, and the leader's hold on them."""

    name = "node-plans"
    applied_later = True
    """`set_power_limit` queues a limit for the next flush, and returns it: not a limit in force yet (the fast loop
    exports the limits it reads, not these)."""

    def __init__(self, api_client: Any, plan_ttl_s: float, safe_cap_share: float, stale_after_s: float,
                 timeout_s: float = 5.0, on_bad: Callable[[str], None] = lambda node: None,
                 tick_s: float | None = None) -> None:
        from kubernetes.client import CoreV1Api, CustomObjectsApi

        super().__init__(CustomObjectsApi(api_client), stale_after_s,
                         min(timeout_s, tick_s) if tick_s else timeout_s, on_bad)
        self.core = CoreV1Api(api_client)
        self.plan_ttl_s, self.safe_cap_share = plan_ttl_s, safe_cap_share
        self.timeout_s = timeout_s
        """What the slow loop's calls may take (a fast tick's: `tick_timeout_s`, within a tick)."""
        self.pending: dict[str, dict[str, float]] = {}
        """Node -> limits the fast loop set that are not written yet (kept through a failed write)."""
        self.asked: set[tuple[str, str]] = set()
        """(node, NVML index) of the limits the fast loop set since the last flush."""
        self.retry = RetryBook(base_delay_s=1.0, max_delay_s=renew_s(plan_ttl_s))
        """Per node (`node_plan:<node>`): a failed write waits its delay, doubled on each failure in a row up to
        a renewal period (a quarter TTL); a permanent one (forbidden, no such plan) until the plan is created
        again or the policy's plan settings change. Each run of failures is logged once."""
        self.written: dict[str, dict[str, Any]] = {}
        """Node -> the spec last written (limits, safe caps): unchanged specs are only renewed."""
        self.renewed: dict[str, float] = {}
        self.labels: dict[str, dict[str, str]] = {}
        """Node -> its labels, as last read (which power domains it is in): the listed nodes', and those of each
        node off the list whose GPUs are still counted (written by the slow loop alone: `ensure`)."""
        self.specs: dict[str, dict[str, Any]] = {}
        """Node -> its plan's spec as the API holds it (last written or adopted): what its agent is served."""

    def _drop(self, node: str) -> None:
        """What the writes kept of a node that left the site: no plan is written for it while it is gone."""
        for table in (self.pending, self.written, self.renewed, self.specs):
            table.pop(node, None)
        self.unacked.drop(node)
        self.retry.forget(f"node_plan:{node}")

    def configure(self, plan_ttl_s: float, safe_cap_share: float, tick_s: float | None = None) -> None:
        """The policy's plan settings, edited while this operator leads: every plan is rewritten with them at
        the next flush (an agent must not time a renewal by the old TTL); nodes given up on are tried afresh.
        A new fast tick (`tick_s`; None: as it was) moves what the fast tick's calls may take and when a beat is
        stale."""
        if tick_s is not None:
            self.tick_timeout_s, self.stale_after_s = min(self.timeout_s, tick_s), stale_after_s(tick_s)
        if (plan_ttl_s, safe_cap_share) != (self.plan_ttl_s, self.safe_cap_share):
            self.retry.max_delay_s = renew_s(plan_ttl_s)
            self.retry.forget()
        self.plan_ttl_s, self.safe_cap_share = plan_ttl_s, safe_cap_share

    def _settings(self) -> dict[str, float]:
        return {"ttl_s": self.plan_ttl_s, "safe_cap_share": self.safe_cap_share}

    # -- nodes and owners (slow loop) ----------------------------------------------------------
    def ensure(self, node_selector: Mapping[str, str]) -> list[str]:
        """A NodePowerPlan for every node the selector picks (created empty: its agent sets safe caps until
        the first renewal); returns the nodes."""
        selector = ",".join(f"{k}={v}" for k, v in sorted(node_selector.items()))
        call = ("nodes", "list on nodes")  # the call under way, as a refusal names it (all read "node plans")
        try:
            listed = self.core.list_node(label_selector=selector, _request_timeout=self.timeout_s).items
            labels = {n.metadata.name: dict(n.metadata.labels or {}) for n in listed}
            self.listed = frozenset(labels)
            nodes = sorted(labels)
            for node in sorted({node for node, _ in list(self.index)} - self.listed):
                # off the list but counted (it may draw): in the domains its labels put it in now (as last read
                # where it is deleted)
                found = self.core.list_node(field_selector=f"metadata.name={node}",
                                            _request_timeout=self.timeout_s).items
                labels[node] = dict(found[0].metadata.labels or {}) if found else self.labels.get(node, {})
            self.labels = labels
            call = ("node plans", f"list on nodepowerplans in group {GROUP}")
            have = {p["metadata"]["name"] for p in self._plans(self.timeout_s)}
            call = ("node plans", f"create on nodepowerplans in group {GROUP}")
            for node in nodes:
                if node not in have:
                    self.custom.create_cluster_custom_object(GROUP, VERSION, PLANS, {
                        "apiVersion": f"{GROUP}/{VERSION}", "kind": "NodePowerPlan", "metadata": {"name": node},
                        "spec": {"sequence": 0, "limits_w": {}, "safe_caps_w": {}, **self._settings()}},
                        _request_timeout=self.timeout_s)
                    self.retry.forget(f"node_plan:{node}")  # a write refused for want of the plan may go again
                    log.info("created the NodePowerPlan of node %s", node)
        except Exception as exc:
            raise translate(exc, *call) from exc
        return nodes

    def domain_gpus(self, selectors: Mapping[str, Mapping[str, str]]) -> dict[str, tuple[int, ...]]:
        """Domain name -> the cluster numbers of the GPUs seen on the nodes its selector picks."""
        out = {}
        for name, selector in selectors.items():
            nodes = {n for n, labels in self.labels.items() if all(labels.get(k) == v for k, v in selector.items())}
            out[name] = tuple(sorted(i for (node, _), i in list(self.index.items()) if node in nodes))
        return out

    def refresh_owners(self, pods_by_variant: Mapping[tuple[str, str], Sequence[Mapping[str, Any]]]) -> None:
        """(service, variant) -> its Deployment's pods: each pod's GPUs on its node, those in use first."""
        self.owners = owners_of(pods_by_variant, dict(self.in_use))  # the fast tick adds to it meanwhile

    def unowned(self) -> list[str]:
        """`node/index` of every GPU seen that no LLMService's pod holds: the governor keeps it at its minimum
        limit (reported on the PowerPolicy's status)."""
        return sorted(f"{node}/{local}" for node, local in list(self.index) if (node, local) not in self.owners
                      and local >= 0)  # not the stand-ins of entries that cannot be read (node_readings._stand_ins)

    # -- PowerLimiter (fast loop) ---------------------------------------------------------------
    def set_power_limit(self, gpu_index: int, watts: float) -> float:
        where = self.where.get(gpu_index)
        sample = self.samples.get(gpu_index)
        if where is None or sample is None:
            raise PermanentActuatorError(f"GPU {gpu_index}: on no node's plan")
        watts = min(max(watts, sample.min_limit_w), sample.max_limit_w)
        # a tenth of a watt down, never up past the governor's fit to a line (round() wrote up to 0.05 W more)
        self.pending.setdefault(where[0], {})[str(where[1])] = math.floor(watts * 10.0 + 1e-6) / 10.0
        self.asked.add((where[0], str(where[1])))
        return watts

    def unapplied(self) -> set[int]:
        """GPUs whose agent, reporting, holds a limit above the one queued or written for them (a plan not yet fetched,
        an agent in failsafe at min(old, safe cap), a write in its backoff): the fast loop holds them at the limit
        they hold, as a host a GPU whose limit could not be set, and fits the others around them."""
        out = set()
        for node in set(self.written) | set(self.pending):
            for k, w in {**self.written.get(node, {}).get("limits_w", {}), **self.pending.get(node, {})}.items():
                i = self.index.get((node, int(k)))
                g = self.samples.get(i) if i in self.reporting else None
                if g is not None and g.power_limit_w > max(w, g.min_limit_w) + 1.0:
                    out.add(g.index)
        return out

    def held_w(self) -> dict[int, float]:
        """Per GPU, the most it may hold: its reading's limit, or one in a plan written since the plan its agent last
        reported following: the fast loop counts each at this (a silent agent's too), and `flush` fits raises in it."""
        return {i: self.unacked.most(*self.where[i], g.power_limit_w, g.max_limit_w)
                for i, g in list(self.samples.items()) if i in self.where}

    def flush(self, now: float, budget_w: float, domains: Sequence[tuple[float, Sequence[int]]] = ()) -> list[str]:
        """Write each node's limits and safe caps where they changed, and renew every plan at least each quarter TTL;
        returns why each write tried failed (each node on its own, a failed one again after its backoff, its limits
        queued meanwhile). Cuts are written at once; a raise only while the limits, each GPU at the most it may hold,
        fit `budget_w` and each domain's line with it (limit_room.py), else it waits, queued, dropped where the fast
        loop no longer asks for it. A write failing for a reason that may pass, or less than half a tick left
        (`tick_timeout_s`, all writes together), leaves the nodes after it for the next tick. Safe caps fit lines."""
        lowest, _ = safe_caps(list(self.samples.values()), budget_w)
        for domain_w, members in domains:
            inside, _ = safe_caps([self.samples[i] for i in members if i in self.samples], domain_w)
            for i, w in inside.items():
                lowest[i] = min(lowest[i], w)
        where = self.where
        safe: dict[str, dict[str, float]] = {}
        for index, cap in lowest.items():
            node, local = where[index]
            safe.setdefault(node, {})[str(local)] = round(cap, 1)
        pending, self.pending = self.pending, {}
        asked, self.asked = self.asked, set()

        held = self.held_w()

        def in_force(node: str, k: str) -> float | None:
            """The most the GPU may hold (`held_w`), else its limit as last written (None: not known)."""
            i = self.index.get((node, int(k)))
            if i is not None and i in held:
                return held[i]
            written: float | None = self.written.get(node, {}).get("limits_w", {}).get(k)
            return written

        def lowers(node: str) -> bool:
            return any((old := in_force(node, k)) is not None and w < old for k, w in pending.get(node, {}).items())

        def up(node: str, k: str, w: float) -> bool:
            return (old := in_force(node, k)) is None or w > old

        # A raise queued at an earlier tick and not asked for again is no longer wanted (the fast loop asks, each
        # tick, for every limit it wants that is not in force): written late, it would land beside what it fitted since.
        pending = {node: {k: w for k, w in q.items() if (node, k) in asked or not up(node, k, w)}
                   for node, q in pending.items()}
        failed: list[str] = []
        room = Room(held, budget_w, domains)
        unreachable = False  # the API failed us once this tick: the other nodes wait for the next, not N timeouts
        deadline = time.monotonic() + self.tick_timeout_s  # the writes of one tick, all together
        for node in sorted(set(self.sequence) | set(pending), key=lambda n: (not lowers(n), n)):
            queued = pending.get(node, {})
            left_s = deadline - time.monotonic()  # a write gets half a tick at least, else waits for the next
            if unreachable or left_s < 0.5 * self.tick_timeout_s:
                self.pending[node] = {**queued, **self.pending.get(node, {})}
                continue
            later = {k: w for k, w in queued.items()
                     if up(node, k, w) and not room.take(self.index.get((node, int(k))), w)}
            if later:  # its cuts go now, its raises once they fit
                self.pending[node] = {**later, **self.pending.get(node, {})}
                queued = {k: w for k, w in queued.items() if k not in later}
            old = self.written.get(node, {})
            limits = {**old.get("limits_w", {}), **queued}
            spec = {"limits_w": limits, "safe_caps_w": safe.get(node, old.get("safe_caps_w", {})), "release": False,
                    **self._settings()}
            if spec == {k: old.get(k) for k in spec} and now - self.renewed.get(node, -1e9) < renew_s(self.plan_ttl_s):
                continue
            target = f"node_plan:{node}"
            if self.retry.may_try(target, now):
                error = self._write(node, spec, now, left_s)
                if error is None:
                    self.retry.succeeded(target)
                    continue
                self.retry.failed(target, now, error)
                failed.append(str(error))
                unreachable = not isinstance(error, PermanentActuatorError)
            self.pending[node] = {**queued, **self.pending.get(node, {})}  # tried again after its backoff, not lost
        return failed

    def _write(self, node: str, spec: dict[str, Any], now: float, timeout_s: float) -> ActuatorError | None:
        """Patch the node's plan within `timeout_s`; why it failed, or None."""
        seq = self.sequence.get(node, 0) + 1
        body = {"spec": {**self._settings(), **spec, "sequence": seq}}
        stray = self.stray.get(node, {})  # a merge patch keeps the keys it does not name: the stored ones go as null
        patch = {**body["spec"], **{f: {**dict.fromkeys(stray[f]), **spec[f]} for f in LIMIT_FIELDS
                                    if f in spec and stray.get(f)}}
        try:
            within(timeout_s, self.custom.patch_cluster_custom_object, GROUP, VERSION, PLANS, node, {"spec": patch},
                   _content_type=MERGE)
        except Exception as exc:
            return translate(exc, f"NodePowerPlan {node}")
        self.sequence[node], self.renewed[node], self.written[node] = seq, now, spec
        self.unacked.written(node, seq, spec.get("limits_w", {}))
        self.stray.pop(node, None)
        self.specs[node] = body["spec"]
        return None

    def spec_of(self, node: str) -> dict[str, Any] | None:
        """The plan's spec a node's agent is served (controller/cluster/plan_server.py)."""
        return self.specs.get(node)

    def release(self, now: float, within_s: float) -> list[str]:
        """Every plan asks its agent to restore the GPUs' default limits (the policy is gone), tried again a second
        apart within `within_s` (nothing tries it after), each call's timeout the time left; what failed at the last
        try, each logged (never raised: the operator stands down all the same)."""
        deadline, failed = time.monotonic() + within_s, ["not tried"]
        while failed and (left_s := deadline - time.monotonic()) > 0.5:
            try:
                failed = []
                for plan in self._plans(min(self.timeout_s, left_s)):
                    node, left_s = plan["metadata"]["name"], deadline - time.monotonic()
                    self.sequence[node] = max(self.sequence.get(node, 0), self._read(node, plan).sequence)
                    why = self._write(node, {"limits_w": {}, "safe_caps_w": {}, "release": True}, now,
                                      min(self.timeout_s, left_s)) if left_s > 0.1 else f"{node}: not tried in time"
                    failed += [] if why is None else [str(why)]
            except Exception as exc:
                failed = [f"{translate(exc, 'node plans')}: no plan could be told to release"]
            for said in failed:
                log.warning("release: %s", said)
            time.sleep(min(1.0, max(0.0, deadline - time.monotonic() - 0.5)) if failed else 0.0)
        return failed

    def adopt(self) -> dict[str, dict[str, float]]:
        """The limits the plans hold now (a previous leader's), so a new leader starts from them, none above the
        limit its agent last reported (an agent fallen back to its safe cap while no leader renewed the plan was
        raised to the plan's old limit); also their sequences, so renewals go on counting up."""
        held: dict[str, dict[str, float]] = {}
        for plan in self._plans(self.timeout_s):
            node = plan["metadata"]["name"]
            spec = self._read(node, plan)
            self.sequence[node] = spec.sequence
            self.unacked.written(node, spec.sequence, {str(k): w for k, w in spec.limits_w.items()})  # as served
            if node not in self.stray:  # served as it stands; one that cannot be read waits for its rewrite
                self.specs[node] = dict(plan.get("spec") or {})
            reported = reported_limits(plan)
            held[node] = {str(k): min(w, reported.get(str(k), w)) for k, w in spec.limits_w.items()}
            self.written[node] = {"limits_w": dict(held[node]),  # the first renewal writes them so
                                  "safe_caps_w": {str(k): w for k, w in spec.safe_caps_w.items()}, "release": False,
                                  "ttl_s": spec.ttl_s, "safe_cap_share": spec.safe_cap_share}
        return held
