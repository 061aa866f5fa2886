"""The agents' side of the node plans, as the operator's fast loop reads them: each GPU's readings from its
node's NodePowerPlan status, numbered across the cluster; missing while its agent is silent; departed with a node
that left the site. `NodePlans` (controller/cluster/nodes.py) writes the plans on top of this.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any

from actuators import TransientActuatorError
from actuators.kubernetes import translate
from actuators.kubernetes_calls import within
from controller.cluster.limit_room import Unacked
from controller.cluster.node_gpus import IN_USE_SHARE, reading
from controller.cluster.plan_spec import PlanSpec, read_spec, stored_keys
from controller.cluster.resources import GROUP, PLANS, VERSION
from controller.telemetry.base import GpuSample, Numbers, TelemetryError, finite

log = logging.getLogger("wattscale.operator")
PLANS_BYTES = 4 << 20
"""Most bytes of the plans' listing read on the fast tick: a node's plan with its status is some 3 KB, so some 1,300
nodes; past it the sample is lost (safe caps). The parse holds the interpreter's lock: 16 MB held the tick 3 s."""
NODE_GONE_AFTER_S = 300.0
"""How long a node off the policy's node list must have had a silent agent before its GPUs leave the count (until
then they count at their last limits, as they may still draw)."""


def stale_after_s(tick_s: float) -> float:
    """How long an agent's beat may stand still before its GPUs count as missing: three fast ticks, 10 s at
    least."""
    return max(3.0 * tick_s, 10.0)


def keys_by_node(index: Numbers) -> dict[str, list[tuple[str, int]]]:
    """Node -> the keys of its GPUs (not its stand-ins'), grouped once a read (a scan of a whole site's index per
    node with an unreadable entry, every tick, had made the fast tick quadratic in the site)."""
    out: dict[str, list[tuple[str, int]]] = {}
    for key in index:
        if key[1] >= 0:
            out.setdefault(key[0], []).append(key)
    return out


class NodeReadings:
    """The node plans as a `GpuSource`, and what the operator keeps of each node and GPU it has read."""

    def __init__(self, custom: Any, stale_after_s: float, tick_timeout_s: float,
                 on_bad: Callable[[str], None] = lambda node: None) -> None:
        self.custom = custom
        """The CustomObjectsApi the plans are read (and written) through."""
        self.stale_after_s = stale_after_s
        self.tick_timeout_s = tick_timeout_s
        """What the fast tick's reading of the plans (a LIST) may take, and its writing of them (the PATCHes of a
        flush, all together): within one tick each, so a slow API server costs the governor a tick or two, never
        one per node."""
        self.index = Numbers()
        """(node, NVML index) -> the GPU's index across the cluster, kept while the operator runs."""
        self.where: dict[int, tuple[str, int]] = {}
        """The index's inverse, kept beside it: the fast loop looks a GPU up on every limit it sets."""
        self.owners: dict[tuple[str, int], tuple[str, str]] = {}
        """(node, NVML index) -> (service, variant), from the pods."""
        self.beats: dict[str, tuple[Any, float]] = {}
        """Node -> its agent's last beat and when it changed (controller time)."""
        self.samples: dict[int, GpuSample] = {}
        self.in_use: dict[tuple[str, int], bool] = {}
        """(node, NVML index) -> whether its agent last reported it holding memory (a process on it)."""
        self.reporting: frozenset[int] = frozenset()
        """The GPUs the last read listed (their agents reporting): a silent one's sample is its last."""
        self.sequence: dict[str, int] = {}
        """Node -> its plan's renewal sequence, as read or last written."""
        self.unacked = Unacked()
        """The limits of the plans written and not yet reported followed: any may be in force by the next tick."""
        self.on_bad = on_bad
        """Called with the node for every malformed GPU entry its agent reports (the operator counts them)."""
        self.bad: dict[tuple[str, int], str] = {}
        """(node, entry) -> why it was last skipped (logged once while it stays so)."""
        self.listed: frozenset[str] | None = None
        """The nodes the selector picked at its last listing (None: not listed yet). A plan of any other node whose
        agent has gone silent is one whose node left the site (deleted, relabelled): its GPUs depart (`_leave`)."""
        self._departed: set[str] = set()
        """UUIDs of GPUs whose node left the site, not yet handed to the fast loop."""
        self.gone: dict[str, Any] = {}
        """Node -> its agent's last beat, for each node that left the site while its plan remains (`_leave`)."""
        self.stand_ins: dict[str, int] = {}
        """Node -> how many of its entries stand in as GPUs never read (`_stand_ins`)."""
        self.stray: dict[str, dict[str, set[str]]] = {}
        """Node -> the keys of its stored plan's limit maps, where that plan could not be read (rewritten whole)."""

    def _plans(self, timeout_s: float) -> list[dict[str, Any]]:
        """Every node's plan, read whole within `timeout_s` (on the fast tick: a server that trickled its answer had
        held the operator's governor for good)."""
        answer = within(timeout_s, self.custom.list_cluster_custom_object, GROUP, VERSION, PLANS,
                        max_bytes=PLANS_BYTES)
        items = answer.get("items") if isinstance(answer, dict) else None
        if not isinstance(items, list):
            raise TransientActuatorError("the API server's answer is no list of NodePowerPlans", 1.0)
        return items

    def sample(self, now: float) -> list[GpuSample]:
        try:
            plans = self._plans(self.tick_timeout_s)
        except Exception as exc:
            raise TelemetryError(str(translate(exc, "node plans"))) from exc
        out: list[GpuSample] = []
        listed = self.listed
        names = set()
        uuids: dict[str, str] = {}  # listed this read -> where: one GPU is one sample (the loop keys GPUs by UUID)
        known: dict[str, list[tuple[str, int]]] | None = None  # node -> its GPUs' keys, grouped once a read
        for plan in plans:
            node, status = plan["metadata"]["name"], plan.get("status")
            names.add(node)
            status = status if isinstance(status, dict) else {}  # one written without the schema: no readings
            beat = status.get("beat")
            if status.get("mode") == "following":  # in failsafe it names the plan it has stopped applying
                self.unacked.acked(node, status.get("plan_sequence"), self.sequence.get(node))
            if node in self.gone:
                if self.gone[node] == beat and (listed is None or node not in listed):
                    continue  # gone, and its plan (until deleted) says nothing new
                del self.gone[node]
                log.info("node %s is back: its GPUs are counted again", node)
            if node not in self.sequence:  # read once, not each fast tick
                self.sequence[node] = self._read(node, plan).sequence
            last = self.beats.get(node)
            if last is None or last[0] != beat:
                self.beats[node] = (beat, now)
            elif now - last[1] > self.stale_after_s:
                if self._off(node, listed, now):
                    self._leave(node, beat)
                continue  # the agent stopped reporting: its GPUs are missing (counted at their last limit)
            gpus = status.get("gpus")
            bad_now: set[tuple[str, int]] = set()
            read_now: set[tuple[str, int]] = set()
            for k, g in enumerate(gpus if isinstance(gpus, list) else []):
                try:
                    local, uuid, name, *watts = reading(g)
                    if uuid in uuids:
                        raise ValueError(f"uuid {uuid!r:.60} is {uuids[uuid]}'s too")
                    uuids[uuid] = f"{node}'s GPU {local}"
                except (KeyError, TypeError, ValueError) as exc:
                    self._bad(node, k, exc)
                    bad_now.add((node, k))
                    continue
                key = (node, local)
                read_now.add(key)
                index = self.index.number(key)
                self.where[index] = key
                service, variant = self.owners.get(key, (None, None))
                power_w, energy_j, limit_w, min_w, max_w, clock = watts
                assert limit_w is not None and min_w is not None and max_w is not None
                capped = finite(g.get("capped_share"))
                sample = GpuSample(index, uuid, name, power_w, energy_j, limit_w, min_w, max_w, clock, service, variant,
                                   capped_share=capped if capped is not None and 0.0 <= capped <= 1.0 else None)
                self.samples[index] = sample
                out.append(sample)
                share = finite(g.get("memory_share"))
                if share is not None and 0.0 <= share <= 1.0:  # which GPUs a pod holds (node_gpus.owners_of)
                    self.in_use[key] = share > IN_USE_SHARE
            if bad_now or self.stand_ins.get(node):
                known = known if known is not None else keys_by_node(self.index)
                missing = sum(1 for key in known.get(node, ()) if key not in read_now)
                out += self._stand_ins(node, len(bad_now) - missing)
            if self.bad:  # an entry is bad while a read finds it so: mended or gone, it is logged anew if bad again
                self.bad = {key: why for key, why in self.bad.items() if key[0] != node or key in bad_now}
        self.gone = {node: beat for node, beat in self.gone.items() if node in names}  # its plan deleted: forgotten
        for node in {node for node, _ in self.index} - names:  # its plan deleted: missing, until it is gone
            if self._off(node, listed, now):
                self._leave(node, None)
        self.reporting = frozenset(g.index for g in out)
        return out

    def _off(self, node: str, listed: frozenset[str] | None, now: float) -> bool:
        """Whether a node has left the site: off the node list, and its agent silent for NODE_GONE_AFTER_S (an
        agent's restart or rollout, or an API outage, is well within it: its GPUs stay counted meanwhile)."""
        last = self.beats.get(node)
        return (listed is not None and node not in listed and last is not None
                and now - last[1] > NODE_GONE_AFTER_S)

    def departed(self) -> frozenset[str]:
        """UUIDs of the GPUs whose node left the site since the last call: the fast loop stops counting them (a
        replaced node's GPUs were counted at their last limits for ever, a power emergency on a site under budget)."""
        out, self._departed = frozenset(self._departed), set()
        return out

    def _leave(self, node: str, beat: Any) -> None:
        """A node that left the site (`_off`): its GPUs depart, what was kept of it is dropped, and its plan is no
        longer read nor renewed until the node is listed or reports again. (One relabelled out whose agent still
        reports is still counted, and its plan renewed: its GPUs still draw.)"""
        self.gone[node] = beat
        for key in [key for key in self.index if key[0] == node]:
            index = self.index.pop(key)
            self.where.pop(index, None)
            sample = self.samples.pop(index, None)
            if sample is not None:
                self._departed.add(sample.uuid)
        for j in range(self.stand_ins.pop(node, 0)):
            self._departed.add(f"{node}/unread-{j}")
        for table in (self.beats, self.sequence, self.stray):
            table.pop(node, None)
        self._drop(node)
        self.bad = {key: why for key, why in self.bad.items() if key[0] != node}
        log.warning("node %s left the site (off the policy's node list, its agent silent): its GPUs are no longer "
                    "counted", node)

    def _drop(self, node: str) -> None:
        """What a writer keeps of a node that left the site, dropped (nothing here)."""

    def _stand_ins(self, node: str, unaccounted: int) -> list[GpuSample]:
        """A node's entries that cannot be read, past its GPUs read before and missing now (the fast loop counts those
        at their last limits: `unaccounted` is the difference), as GPUs never read: counted at the most a GPU may draw
        and never set, as the NVML source's stand-ins are (skipped, a GPU whose first report could not be read drew
        uncounted for good). Keyed (node, -1 - j); those no longer wanted depart."""
        wanted, had = max(0, unaccounted), self.stand_ins.get(node, 0)
        for j in range(wanted, had):
            self._departed.add(f"{node}/unread-{j}")
            self.where.pop(self.index.pop((node, -1 - j)), None)
        self.stand_ins[node] = wanted
        out = []
        for j in range(wanted):
            index = self.index.number((node, -1 - j))
            self.where[index] = (node, -1 - j)
            out.append(GpuSample(index, f"{node}/unread-{j}", "", None, None, math.nan, math.nan, math.nan,
                                 never_read=True))
        return out

    def _bad(self, node: str, k: int, exc: Exception) -> None:
        """An agent's GPU entry that cannot be read: skipped (its GPU is missing this tick), counted, logged
        once while it stays bad."""
        self.on_bad(node)
        why = f"{type(exc).__name__}: {exc}"
        if self.bad.get((node, k)) != why:
            log.warning("NodePowerPlan %s: status.gpus[%d] skipped: %s", node, k, why)
        self.bad[node, k] = why

    def _read(self, node: str, plan: dict[str, Any]) -> PlanSpec:
        """The plan's spec; one that cannot be read (written past the schema) counts as empty, is logged once,
        and its next write replaces it whole."""
        try:
            spec = read_spec(plan.get("spec"))
        except ValueError as exc:
            if node not in self.stray:
                log.warning("NodePowerPlan %s: %s; read as empty and rewritten whole at the next write", node, exc)
            self.stray[node] = stored_keys(plan.get("spec"))
            return PlanSpec()
        return spec
