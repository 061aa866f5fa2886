"""Greedy's pairwise trades: two services move at once where neither move alone fits or pays.

Every candidate of every service sits in one flat set of arrays, so each round looks at all of them with a
few vector operations; a round makes the best trade it finds, and the rounds stop when none gains.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

POWER_ROUNDS = 8
"""Trades on the power row made at most."""
EXCHANGE_ROUNDS = 16
"""Trades of any kind made at most after them, each the best found: enough for the few a plan needs."""
EXCHANGE_TAKERS = 16
"""Takers tried per round, the most valuable moves first."""
TAKERS_READ = 8
"""Takers of the best net gains a power round tries for a donor of another service."""
TAKERS_LEAD = 64
"""Takers of the most value a power round nets first, to bound which others can be among the best."""


@dataclass(frozen=True)
class Ranked:
    """One service's candidates, most valuable first, as arrays."""

    value: np.ndarray
    power: np.ndarray
    gpus: np.ndarray
    acc: np.ndarray

    @cached_property
    def least_w(self) -> list[float]:
        """The least draw among the first k + 1 candidates, at k: a bound that rules out a whole prefix at once."""
        out: list[float] = np.minimum.accumulate(self.power).tolist()
        return out


@dataclass(frozen=True)
class Picks:
    """Where the services stand: each one's pick (per service) and every move's gain and watts (per candidate)."""

    chosen: np.ndarray
    at: np.ndarray
    """Flat index of each service's pick; clamped, and masked by `chosen`, for a service without one."""
    power: np.ndarray
    gpus: np.ndarray
    acc: np.ndarray
    spare_w: float
    left: np.ndarray
    """GPUs free per accelerator."""
    dv: np.ndarray
    """Each candidate's gain over its service's pick (or its shed value) alone."""
    dp: np.ndarray


@dataclass(frozen=True)
class Flat:
    """Every service's candidates, ranked as `Ranked` holds them, end to end in one set of arrays."""

    who: np.ndarray
    """The service of each candidate."""
    first: np.ndarray
    """Each service's first flat index."""
    power: np.ndarray
    value: np.ndarray
    gpus: np.ndarray
    acc: np.ndarray
    shed: np.ndarray

    @classmethod
    def of(cls, arrays: list[Ranked], shed: list[float]) -> Flat:
        who = np.concatenate([np.full(a.value.size, i) for i, a in enumerate(arrays)])
        first = np.cumsum([0] + [a.value.size for a in arrays])[:-1]
        power, value, gpus, acc = (np.concatenate([getattr(a, f) for a in arrays])
                                   for f in ("power", "value", "gpus", "acc"))
        return cls(who, first, power, value, gpus, acc, np.asarray(shed, dtype=float))

    def picks(self, picks: list[int], count: np.ndarray, budget: float) -> Picks:
        chosen = np.array(picks) >= 0
        at = np.minimum(self.first + np.maximum(picks, 0), self.who.size - 1)
        power, gpus = np.where(chosen, self.power[at], 0.0), np.where(chosen, self.gpus[at], 0.0)
        left = count - np.bincount(self.acc[at][chosen], weights=gpus[chosen], minlength=count.size)
        dv = self.value - np.where(chosen, self.value[at], self.shed)[self.who]
        return Picks(chosen, at, power, gpus, self.acc[at], budget + 1e-6 - float(power.sum()), left, dv,
                     self.power - power[self.who])

    def move(self, picks: list[int], k: int) -> None:
        """Move candidate k's service to it."""
        picks[int(self.who[k])] = int(k - self.first[self.who[k]])


def top(values: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest values, largest first and ties in index order, as `np.argsort(-values,
    kind="stable")[:k]` gives them, without sorting them all (tens of thousands of moves a round)."""
    if values.size <= k:
        return np.argsort(-values, kind="stable")
    kth = np.partition(values, values.size - k)[values.size - k]
    pick = np.flatnonzero(values >= kth)
    out: np.ndarray = pick[np.argsort(-values[pick], kind="stable")][:k]
    return out


def _net(dv: np.ndarray, need: np.ndarray, freed: np.ndarray, least: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Takers' gains `dv` net of the least loss among the donors that free their `need` of watts (`freed` ascending,
    `least` its suffix minima of the loss), and where those donors start."""
    at = np.searchsorted(freed, need, side="left")
    return dv - least[at], at


def trade_power(flat: Flat, picks: list[int], count: np.ndarray, budget: float) -> None:
    """Trades on the power row: one service (the donor) moves to a candidate drawing less, on the same accelerator
    with no more GPUs, and another (the taker, or a shed service) to one worth more that fits the GPUs free now,
    when the gain beats the loss. A donor only frees GPUs and a taker only takes free ones, so only the budget
    needs checking. Each round finds the best move in O(m log m) (donors sorted by watts freed, with suffix
    minima of the value lost)."""
    who, gpus, acc = flat.who, flat.gpus, flat.acc
    for _ in range(POWER_ROUNDS):
        p = flat.picks(picks, count, budget)
        same = p.chosen[who] & (acc == p.acc[who])
        own_gpus = np.where(same, p.gpus[who], 0.0)
        give = np.flatnonzero(same & (gpus <= own_gpus) & (p.dp < 0))
        take = np.flatnonzero((gpus <= p.left[acc] + own_gpus) & (p.dp > 0) & (p.dv > 1e-12))
        if give.size == 0 or take.size == 0:
            return
        give = give[np.argsort(-p.dp[give], kind="stable")]  # by watts freed, ascending
        freed, loss = -p.dp[give], -p.dv[give]
        least = np.minimum.accumulate(loss[::-1])[::-1]
        need = p.dp[take] - p.spare_w - 1e-9  # watts a donor must free
        freeable = need <= freed[-1]  # some donor frees enough
        take, need = take[freeable], need[freeable]
        dv = p.dv[take]
        # least only grows along the donors, so dv - least[0] bounds a taker's net gain: the best few are among
        # those whose bound reaches what the most valuable takers net (a search for each of them costs more)
        bound = dv - least[0]
        lead = top(bound, TAKERS_LEAD)
        lead_net = _net(dv[lead], need[lead], freed, least)[0]
        floor = lead_net[top(lead_net, TAKERS_READ)[-1]] if lead_net.size >= TAKERS_READ else -np.inf
        rows = np.flatnonzero(bound >= floor)
        gains, at = _net(dv[rows], need[rows], freed, least)
        best: tuple[float, int, int] | None = None
        for q in top(gains, TAKERS_READ):  # best few takers; a donor must be another service
            t, n = take[rows[q]], int(at[q])
            others = n + np.flatnonzero(who[give[n:]] != who[t])
            if others.size:
                m = int(others[np.argmin(loss[others])])
                gain = float(p.dv[t] - loss[m])
                if gain > 1e-9 and (best is None or gain > best[0]):
                    best = (gain, int(t), int(give[m]))
        if best is None:
            return
        flat.move(picks, best[1])
        flat.move(picks, best[2])


def exchange(flat: Flat, picks: list[int], count: np.ndarray, budget: float) -> None:
    """Any pairwise trade: one service (the taker, or a shed one) moves to a candidate worth more, and another (the
    donor) to one that frees what that needs, watts or GPUs of any accelerator, or is shed, when the gain beats
    the loss. The passes hand out GPUs in priority order, so an early service may hold one more than it needs
    while a later one finds none: this is the trade that frees it. Each round tries the best takers against
    every donor candidate at once."""
    who, gpus, acc = flat.who, flat.gpus, flat.acc
    for _ in range(EXCHANGE_ROUNDS):
        p = flat.picks(picks, count, budget)
        placed = p.chosen[who]  # candidates of the services that hold a pick: the donors' moves
        # GPUs a donor's move leaves free on its accelerator beyond what it takes (its own, where it stays)
        slack = np.where(placed & (p.acc[who] == acc), p.gpus[who], 0.0) - gpus
        freed_w = -p.dp
        takers = np.flatnonzero(p.dv > 1e-12)
        best: tuple[float, int, int | None] | None = None
        for t in takers[top(p.dv[takers], EXCHANGE_TAKERS)]:
            i = int(who[t])
            room = p.left.copy()
            if p.chosen[i]:
                room[p.acc[i]] += p.gpus[i]
            room[acc[t]] -= gpus[t]
            need_w = float(p.dp[t]) - p.spare_w  # watts a donor must free (negative: it may take some)
            if need_w <= 0 and room[acc[t]] >= 0:
                if best is None or p.dv[t] > best[0]:
                    best = (float(p.dv[t]), int(t), None)
                continue
            ok = placed & (who != i) & (freed_w >= need_w) & (room[acc] + slack >= 0)
            if room[acc[t]] < 0:  # the donor must also give back GPUs of the taker's accelerator
                own = np.where(p.acc[who] == acc[t], p.gpus[who], 0.0)
                ok &= room[acc[t]] + own - np.where(acc == acc[t], gpus, 0.0) >= 0
            donors = np.flatnonzero(ok)
            if donors.size:
                d = int(donors[np.argmax(p.dv[donors])])
                gain = float(p.dv[t] + p.dv[d])
                if gain > 1e-9 and (best is None or gain > best[0]):
                    best = (gain, int(t), d)
            # Or a donor is shed: all it holds is freed, at its shed value.
            frees = p.chosen & (np.arange(p.chosen.size) != i) & (p.power >= need_w)
            frees &= room[acc[t]] + np.where(p.acc == acc[t], p.gpus, 0.0) >= 0
            if frees.any():
                loss = np.where(frees, flat.value[p.at] - flat.shed, np.inf)
                j = int(np.argmin(loss))
                gain = float(p.dv[t] - loss[j])
                if gain > 1e-9 and (best is None or gain > best[0]):
                    best = (gain, int(t), -1 - j)
        if best is None:
            return
        _, taker, donor = best
        flat.move(picks, taker)
        if donor is not None and donor >= 0:
            flat.move(picks, donor)
        elif donor is not None:  # -1 - j: service j is shed
            picks[-1 - donor] = -1
