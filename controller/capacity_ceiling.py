"""Capacity seen, not modelled: the rate at which a service's replicas were seen to top out.

The queue model is fitted on the windows a service ran; asked about a rate per replica past them it extrapolates,
and may be far off. A steady window whose queue grew through it, or that held a full batch queued, served what its
replicas could and no more (budget-step.toml: a prefill-heavy service the model held good for 9 requests a second
on one replica topped out at 6.7 there, its queue growing for minutes, and was planned there again). So no replica
of a shape no larger (max batch, planned cap, clock) is planned past `TOPPED_SHARE` of that rate, whatever the
model says, until a window shows replicas of that shape serving more steadily, `TOPPED_TTL_S` passes (an upgrade
may have made the engine faster), or the budget rises (they may have topped out under the governor's holds). The
tuner goes on learning the model meanwhile; this bounds only how far the plan trusts it.
"""

from __future__ import annotations

from controller.optimizer import Assignment, Ceiling
from tuner import Observation

TOPPED_OUT = ("saturated", "unsteady-queue")
"""Tuner verdicts (tuner/observation.py) of a steady window whose replicas served all they could."""
TOPPED_SHARE = 0.85
"""Of the rate replicas topped out at, the most the plan puts on one of a shape no larger."""
TOPPED_TTL_S = 3600.0
"""Seconds a topped-out rate holds without a window topping out again."""


class Ceilings:
    """Each (service, accelerator)'s topped-out rate, from the windows the estimator reads."""

    def __init__(self) -> None:
        self._topped: dict[tuple[str, str], tuple[Ceiling, float]] = {}
        """Per (service, accelerator): the bound replicas topping out set (a Ceiling) and when they last did."""
        self._budget_w = float("inf")
        """The budget the last cycle planned under."""

    def observe(self, service: str, in_force: Assignment, obs: Observation, verdict: str, now: float) -> None:
        """Learn from one window (`obs`: per replica), run as `in_force` plans, and the tuner's verdict on it."""
        key = (service, in_force.accelerator)
        held = self._topped.get(key)
        if held is not None and now - held[1] > TOPPED_TTL_S:
            del self._topped[key]
            held = None
        if verdict in TOPPED_OUT and obs.rate_rps > 0.0:
            seen = Ceiling(TOPPED_SHARE * obs.rate_rps, in_force.max_batch, in_force.power_cap_w,
                           in_force.sm_clock_fraction)
            if held is not None and held[0].limit_rps(seen.max_batch, seen.cap_w, seen.clock) is not None:
                seen = Ceiling(max(seen.rps_per_replica, held[0].rps_per_replica), held[0].max_batch,
                               held[0].cap_w, held[0].clock)  # no larger a shape: the higher of the two
            self._topped[key] = (seen, now)
        elif held is not None and verdict == "accepted" and obs.rate_rps > held[0].rps_per_replica / TOPPED_SHARE:
            del self._topped[key]  # replicas served more than it, steadily: it was too low

    def at_budget(self, budget_w: float) -> None:
        """The budget this cycle plans under: one higher than the last clears the topped-out rates."""
        if budget_w > self._budget_w:
            self._topped.clear()
        self._budget_w = budget_w

    def of(self, service: str) -> dict[str, tuple[Ceiling, ...]]:
        """The service's bounds, by accelerator."""
        return {acc: (c,) for (name, acc), (c, _) in self._topped.items() if name == service}

    def record(self, service: str) -> dict[str, dict[str, float | int | None]]:
        """For the decision record: per accelerator, the most requests/s the plan may put on a replica, and the
        largest shape it bounds."""
        return {acc: {"rps_per_replica": round(c.rps_per_replica, 3), "max_batch": c.max_batch, "cap_w": c.cap_w,
                      "clock": c.clock} for acc, (c,) in self.of(service).items()}
