"""Two services trading accelerator types through the real gate and enforcer on dry-run actuators, over a model of
a scheduler: a replica asked for takes a free GPU of its type in the order asked, or waits for one, and serves a
warm-up after it has one. Every swap completes, whatever the warm-up against the cooldown, urgent or not."""

from __future__ import annotations

from dataclasses import replace

import pytest
from prometheus_client import CollectorRegistry

from actuators.dryrun import DryRunBatchSizer, DryRunReplicaScaler
from controller.enforce import Enforcer
from controller.optimizer import Assignment
from controller.own_metrics import OwnMetrics
from controller.settings import StabilitySettings
from controller.stability import StabilityGate

TYPES = ("H100-SXM", "A100-SXM4")


def swap(cooldown_s: float, warm_s: float, urgent_from_s: float | None) -> dict[tuple[str, str], tuple[int, int]]:
    """a (3 on H100s) and b (3 on A100s) are planned onto each other's type, four GPUs of each and one free; the
    end state: (replicas holding a GPU, replicas waiting for one) per service and type."""
    gate = StabilityGate(replace(StabilitySettings(), max_replica_step=1, confirm_cycles=1, cooldown_s=cooldown_s))
    scaler = DryRunReplicaScaler({("a", TYPES[0]): 3, ("a", TYPES[1]): 0, ("b", TYPES[0]): 0, ("b", TYPES[1]): 3})
    enforcer = Enforcer(scaler, DryRunBatchSizer({"a": 64, "b": 64}), OwnMetrics(CollectorRegistry()))
    placed = {k: [-warm_s] * n for k, n in scaler.replicas.items()}  # when each replica got its GPU
    waiting = dict.fromkeys(scaler.replicas, 0)
    believed = {"a": Assignment(TYPES[0], 3, 64, 700.0), "b": Assignment(TYPES[1], 3, 64, 400.0)}
    plan = {"a": Assignment(TYPES[1], 3, 64, 400.0), "b": Assignment(TYPES[0], 3, 64, 700.0)}
    draining: dict[str, dict[str, float]] = {"a": {}, "b": {}}
    for t in range(15, 1500, 15):
        for k, asked in scaler.replicas.items():  # the scheduler: scale down the waiting first, then the placed
            waiting[k] += max(0, asked - len(placed[k]) - waiting[k])
            while asked < len(placed[k]) + waiting[k]:
                if waiting[k]:
                    waiting[k] -= 1
                else:
                    placed[k].pop()
        for k in sorted(waiting):
            free = 4 - sum(len(p) for j, p in placed.items() if j[1] == k[1])
            got = min(free, waiting[k])
            waiting[k] -= got
            placed[k] += [float(t)] * got
        urgent = urgent_from_s is not None and t >= urgent_from_s
        for s in ("a", "b"):
            now, draining[s] = enforcer.in_force(s, TYPES, believed[s], draining[s])
            serving = sum(t - at >= warm_s for v in TYPES for at in placed[s, v])
            admitted = gate.admit(float(t), s, now.assignment, plan[s], None, urgent, 2, now.one_variant)
            believed[s], done = enforcer.apply(float(t), s, now, admitted, serving, plan[s], urgent)
            if done.asked:
                gate.note_change(float(t), s)
            if believed[s].accelerator != now.assignment.accelerator:
                draining[s] = {now.assignment.accelerator: now.assignment.power_cap_w}
    return {k: (len(placed[k]), waiting[k]) for k in placed}


@pytest.mark.parametrize(("cooldown_s", "warm_s", "urgent_from_s"),
                         [(120.0, 60.0, None), (120.0, 150.0, None), (60.0, 90.0, None), (600.0, 60.0, 30.0)])
def test_two_services_trading_types_both_arrive(cooldown_s: float, warm_s: float, urgent_from_s: float | None) -> None:
    """Once the cooldown ran out before the first new replica served, the next step's replica waited for a GPU
    the other service's old variant held, and each old variant waited for its new one to serve whole: a on 3 H100s
    and 1 A100 (2 waiting), b the same the other way, for good. Mid-move the new variant now waits to grow."""
    end = swap(cooldown_s, warm_s, urgent_from_s)
    arrived = 2 if urgent_from_s is not None else 3  # urgent: min_replicas only, nothing past them adds draw
    assert end == {("a", TYPES[0]): (0, 0), ("a", TYPES[1]): (arrived, 0), ("b", TYPES[0]): (arrived, 0),
                   ("b", TYPES[1]): (0, 0)}, end
