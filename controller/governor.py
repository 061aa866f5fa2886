"""The fast-loop power governor: keep measured draw under the budget, lowest priority first.

Targets come from the plan (per-service caps). When measured draw passes budget x (1 - headroom), caps
are cut below the targets, lowest priority first (POLCA's two thresholds); once draw is back below
budget x release_below, the cuts are given back, highest priority first, no more in all than the spare
under that threshold: a GPU whose limit rises by x draws at most x more, so a release cannot carry the
site back over it (halving every cut each tick did, tick after tick, in a cut-release cycle). A GPU whose
reading failed counts at its cap, never at zero, so a blind spot cannot push the site over its budget.
"""

from __future__ import annotations

from collections.abc import Mapping

from controller.settings import PowerSettings
from controller.telemetry.base import GpuSample


class PowerGovernor:
    def __init__(self, settings: PowerSettings) -> None:
        self.settings = settings
        self.cut_w: dict[int, float] = {}
        self.emergency = False

    @staticmethod
    def accounted_w(sample: GpuSample) -> float:
        return sample.power_w if sample.power_w is not None else sample.power_limit_w

    def step(
        self,
        samples: list[GpuSample],
        plan_caps: Mapping[str, float],
        priorities: Mapping[str, int],
    ) -> dict[int, float]:
        """Limits to set now (GPU index -> watts), only where they differ from what is in force."""
        s = self.settings
        budget = s.budget_w
        target = {
            g.index: min(g.max_limit_w, max(g.min_limit_w, plan_caps.get(g.service or "", g.min_limit_w)))
            if g.service else g.min_limit_w
            for g in samples
        }
        if s.mode == "caps":
            self._fit_caps(samples, target, priorities, budget)
        measured = sum(self.accounted_w(g) for g in samples)
        if measured > budget * (1 - s.headroom):
            self.emergency = True
            self._cut(samples, target, priorities, measured - budget * (1 - s.headroom))
        elif measured < budget * s.release_below:
            self.emergency = False
            self._release(samples, priorities, budget * (1 - s.headroom) - measured)
        out = {}
        for g in samples:
            want = max(g.min_limit_w, target[g.index] - self.cut_w.get(g.index, 0.0))
            if abs(want - g.power_limit_w) >= 1.0:
                out[g.index] = want
        return out

    def _order(self, samples: list[GpuSample], priorities: Mapping[str, int]) -> list[list[GpuSample]]:
        """GPU groups from the lowest priority (largest number) up; idle GPUs first of all."""
        groups: dict[int, list[GpuSample]] = {}
        for g in samples:
            rank = priorities.get(g.service, 1) if g.service else 10**6
            groups.setdefault(rank, []).append(g)
        return [groups[k] for k in sorted(groups, reverse=True)]

    def _cut(self, samples: list[GpuSample], target: dict[int, float], priorities: Mapping[str, int],
             excess_w: float) -> None:
        for group in self._order(samples, priorities):
            room = {g.index: max(0.0, min(self.accounted_w(g), target[g.index] - self.cut_w.get(g.index, 0.0))
                                 - g.min_limit_w) for g in group}
            total = sum(room.values())
            if total <= 0:
                continue
            take = min(excess_w, total)
            for g in group:
                if room[g.index] > 0:
                    # Cut below present draw, so the limit bites at once.
                    draw_gap = max(0.0, target[g.index] - self.cut_w.get(g.index, 0.0) - self.accounted_w(g))
                    self.cut_w[g.index] = self.cut_w.get(g.index, 0.0) + draw_gap + take * room[g.index] / total
            excess_w -= take
            if excess_w <= 0:
                return

    def _release(self, samples: list[GpuSample], priorities: Mapping[str, int], spare_w: float) -> None:
        """Give cuts back, highest priority first, no more in all than `spare_w`."""
        for group in reversed(self._order(samples, priorities)):
            for g in group:
                cut = self.cut_w.get(g.index, 0.0)
                give = min(cut, spare_w)
                if give > 0:
                    self.cut_w[g.index] = cut - give
                    spare_w -= give
        self.cut_w = {i: c for i, c in self.cut_w.items() if c >= 1.0}

    def _fit_caps(self, samples: list[GpuSample], target: dict[int, float], priorities: Mapping[str, int],
                  budget: float) -> None:
        """Conservative mode: the caps themselves must fit the budget; trim lowest priority first."""
        over = sum(target.values()) - budget
        for group in self._order(samples, priorities):
            for g in group:
                if over <= 0:
                    return
                give = min(over, target[g.index] - g.min_limit_w)
                target[g.index] -= give
                over -= give
