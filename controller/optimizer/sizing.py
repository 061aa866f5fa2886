"""Replicas a shape needs for a load: the fewest whose equal shares each meet the service's targets.

Sizing through the max rate costs a bisection, about 15 chain solves per shape, while a replica count asks
less: only whether each count's share fits. Per shape (its exact inputs, which the daemon's sizing basis
holds still while estimates jitter) the rates known to fit and known not to are kept as a bracket; only a
count whose share falls inside the bracket is solved, and the answer narrows it (controller.optimizer.counts).
Once sized, a shape's bracket is widened by two more checks in the next round to what a load within DRIFT
needs, so a shape sized in an earlier cycle mostly needs no solve at all while its load drifts, a new one two
or three, from a guess the same shape's last bracket gives where the inputs moved.
"""

from __future__ import annotations

import math
from collections import Counter, OrderedDict
from collections.abc import Generator, Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np
from numpy.typing import NDArray

from controller.optimizer.counts import drift_probes, fit_search, from_brackets
from queuemodels import Load, PowerProfile, ServerShape, ServiceParams, Targets, get_model
from queuemodels.law_arrays import Base, Bases, Points
from queuemodels.step_arrays import Bools, Floats

MAX_KEPT = 20_000
"""Entries kept per table (brackets: least recently used dropped first). A fleet's cycle needs few (1,000 services
of `benchmarks/optimizer_scale.py`: 144 bases, 994 max rates), but a tuner's refits add bases as a daemon runs
(about 100 an hour for three services, some 2.4 KB each): at 100,000 a daemon grew 240 MB over six weeks."""


class Shapes(tuple[ServerShape, ...]):
    """One service's shapes on one accelerator, hashed once: every bracket is looked up by them, and a tuple of
    dozens of dataclasses rehashes each field of each on every lookup."""

    @cached_property
    def _hash(self) -> int:
        return super().__hash__()

    def __hash__(self) -> int:
        return self._hash


@dataclass
class Brackets:
    """What is known of the max rate of each of a service's shapes on one accelerator, a row per shape: the rates
    checked that meet the targets and that do not. Held as arrays, so that from one cycle to the next, when the
    brackets answer most shapes, a service's shapes are sized in a few vector operations."""

    shapes: tuple[ServerShape, ...]
    fits_rps: Floats
    """The largest rate checked that meets the targets (0: none yet)."""
    misses_rps: Floats
    """The smallest rate checked that does not (inf: none yet)."""

    @classmethod
    def unknown(cls, shapes: tuple[ServerShape, ...]) -> Brackets:
        return cls(shapes, np.zeros(len(shapes)), np.full(len(shapes), np.inf))

    @property
    def blank(self) -> bool:
        """Nothing is known yet of any of its shapes."""
        return not (self.fits_rps.any() or np.isfinite(self.misses_rps).any())

    @cached_property
    def row(self) -> dict[ServerShape, int]:
        return {shape: i for i, shape in enumerate(self.shapes)}

    def known_fit_rps(self, shape: ServerShape) -> float:
        """The largest rate per replica known to meet the targets on this shape (0 where none is): a lower bound on
        its max rate that costs nothing, for ranking shapes not worth a bisection each."""
        return float(self.fits_rps[self.row[shape]])


_bases: dict[object, int] = {}
"""What every shape of one service on one accelerator shares (model, parameters, load per unit of rate, targets,
power profile), by a number: a bracket's key hashes that number, not the dozens of fields behind it."""
_brackets: OrderedDict[tuple[int, Shapes], Brackets] = OrderedDict()
_max_rates: dict[tuple[int, ServerShape], float] = {}
"""Each (basis, shape)'s max rate, where one was asked (`rates_per_replica`)."""
_guesses: dict[tuple[int, ServerShape], float] = {}
"""The last fitting rate per (model, targets, power profile) and shape, whatever the parameters: a guess where
they moved."""


def _numbers(*keys: object) -> list[int]:
    """Each key's number, the tables emptied first where they have grown too large (never between two keys: a
    number handed out must name one key while any bracket holds it)."""
    if len(_bases) > MAX_KEPT:
        _bases.clear()
        _brackets.clear()
        _guesses.clear()
        _max_rates.clear()
    return [_bases.setdefault(key, len(_bases)) for key in keys]


Job = tuple["Sizer", Sequence[ServerShape], int]
"""One service's shapes on one accelerator to size, and the most replicas it may run."""


def size_together(model: str, jobs: list[Job], bases: Bases | None = None) -> list[list[int | None]]:
    """Each job's needs (`Sizer.search`), every job's round of checks answered in one call of the queue model,
    which solves them together: a fleet's sizing costs a few calls a cycle, not one per service and round. Jobs
    that share brackets (one basis: equal parameters, mix, targets and profile) and find them blank run in
    successive waves, each starting from what the one before it learnt, as they would one by one; where the
    brackets already know something, a search is short and they run side by side (brackets only ever narrow).
    `bases`: the jobs' sizers' bases, in order, where the caller has them (what they read is worked out once)."""
    bases = Bases(sizer.base for sizer, _, _ in jobs) if bases is None else bases
    if len(bases) != len(jobs):
        raise ValueError(f"size_together: {len(bases)} bases for {len(jobs)} jobs")
    targets = [sizer.targets for sizer, _, _ in jobs]
    brackets = [sizer.brackets_of(shapes) for sizer, shapes, _ in jobs]
    waves: list[list[int]] = [[]]
    seen: Counter[int] = Counter()
    for j, ((sizer, _, _), known) in enumerate(zip(jobs, brackets, strict=True)):
        if not known.blank:
            waves[0].append(j)
            continue
        if seen[sizer.basis] == len(waves):
            waves.append([])
        waves[seen[sizer.basis]].append(j)
        seen[sizer.basis] += 1
    out: list[list[int | None]] = [[] for _ in jobs]
    for wave in filter(None, waves):
        for j, needs in zip(wave, _lockstep(model, [jobs[j] for j in wave], [brackets[j] for j in wave],
                                            (bases, targets, wave)), strict=True):
            out[j] = needs
    return out


def _lockstep(model: str, jobs: list[Job], brackets: list[Brackets],
              shared: tuple[Bases, list[Targets], list[int]]) -> list[list[int | None]]:
    """The jobs' searches side by side on their brackets, what those answer read for all at once, each round's
    checks in one call (none where the brackets answered every search's round). `shared`: every job's base and
    targets (`size_together`'s), and these jobs' rows among them."""
    sizes = [len(shapes) for _, shapes, _ in jobs]
    rates = np.repeat([sizer.load.rate_rps for sizer, _, _ in jobs], sizes).astype(float)
    mosts = np.repeat([most for _, _, most in jobs], sizes).astype(float)
    decided, need = from_brackets(np.concatenate([b.fits_rps for b in brackets]),
                                  np.concatenate([b.misses_rps for b in brackets]), rates, mosts)
    cuts = np.cumsum(sizes)[:-1]
    searches = {j: sizer.search(shapes, most, (b, d, n)) for j, ((sizer, shapes, most), b, d, n) in
                enumerate(zip(jobs, brackets, np.split(decided, cuts), np.split(need, cuts), strict=True))}
    out: list[list[int | None]] = [[] for _ in jobs]
    asked: dict[int, list[tuple[ServerShape, float]]] = {}

    def step(j: int, answers: Bools | None) -> None:
        try:
            asked[j] = next(searches[j]) if answers is None else searches[j].send(answers)
        except StopIteration as done:
            out[j] = done.value
            asked.pop(j, None)

    for j in searches:
        step(j, None)
    every, targets, rows = shared
    while asked:
        order = list(asked)
        checks = [check for j in order for check in asked[j]]
        sizes = [len(asked[j]) for j in order]
        points = Points.shaped(every, np.repeat([rows[j] for j in order], sizes), [shape for shape, _ in checks],
                               np.array([rate for _, rate in checks]))
        answers = get_model(model).within_targets_of(points, targets) if checks else np.zeros(0, dtype=bool)
        for j, part in zip(order, np.split(answers, np.cumsum(sizes)[:-1]), strict=True):
            step(j, part)
    return out


class Sizer:
    """Sizing of one service's load on one accelerator, shape by shape: the inputs its shapes share are hashed
    once, where a fleet sizes hundreds of thousands of shapes a cycle."""

    def __init__(self, model: str, params: ServiceParams, load: Load, targets: Targets, profile: PowerProfile) -> None:
        self.model, self.load, self.targets = model, load, targets
        self.base: Base = (params, load, profile)
        self.basis, self.guess_basis = _numbers((model, params, load.at_rate(1.0), targets, profile),
                                                (model, "guess", targets, profile))

    def rate_per_replica(self, shape: ServerShape) -> float:
        """The largest rate one replica takes within the targets on this shape (`rates_per_replica`)."""
        return rates_per_replica(self.model, [(self, shape, None)])[0]

    def search(self, shapes: Sequence[ServerShape], most: int, opening: tuple[Brackets, Bools, NDArray[np.int64]]) -> \
            Generator[list[tuple[ServerShape, float]], Bools, list[int | None]]:
        """For each shape, the fewest replicas (1..most) whose equal shares of the load each meet the targets;
        None where `most` do not. `opening`: the shapes' brackets and what they answer (`from_brackets`). The
        shapes' searches run side by side: each round yields the (shape, rate per replica) checks the brackets do
        not answer, then the drift probes of the shapes sized in the round before (`drift_probes`: they only widen
        the brackets), and is sent whether each fits (`size_together` answers many services' rounds in one call of
        the queue model)."""
        load = self.load
        if most < 1:
            return [None] * len(shapes)
        if load.rate_rps <= 0:
            rates = rates_per_replica(self.model, [(self, shape, None) for shape in shapes])
            return [1 if rate > 0 else None for rate in rates]
        brackets, decided, need = opening
        fits_rps, misses_rps = brackets.fits_rps, brackets.misses_rps
        out: list[int | None] = [n if n <= most else None for n in need.tolist()]
        searches: dict[int, tuple[Generator[int, bool, int | None], int]] = {}
        for i in np.flatnonzero(~decided).tolist():
            known = fits_rps[i] or _guesses.get((self.guess_basis, shapes[i]), 0.0)
            guess = min(load.rate_rps / known, most + 1.0) if known > 0 else 1.0  # a tiny guess overflowed ceil
            search = fit_search(most, math.ceil(guess - 1e-9))
            searches[i] = search, next(search)

        probes: list[tuple[int, float]] = []

        def advance(i: int, fits: bool) -> bool:
            """Answer shape i's search; False once it has finished (its need recorded, its probes queued)."""
            search, _ = searches[i]
            try:
                searches[i] = search, search.send(fits)
                return True
            except StopIteration as done:
                out[i] = done.value
                self._remember(shapes[i], float(fits_rps[i]))
                del searches[i]
                probes.extend((i, rate) for rate in drift_probes(load.rate_rps, done.value, most)
                              if fits_rps[i] < rate < misses_rps[i])
                return False

        while searches or probes:
            asked = {}
            for i in list(searches):
                while True:  # answered from the bracket while it can
                    rate = load.rate_rps / searches[i][1]
                    if fits_rps[i] < rate < misses_rps[i]:
                        asked[i] = rate
                        break
                    if not advance(i, rate <= fits_rps[i]):
                        break
            probed, probes = probes, []
            checks = [*asked.items(), *probed]
            answers = (yield [(shapes[i], rate) for i, rate in checks]).tolist()
            for (i, rate), ok in zip(checks, answers, strict=True):
                if ok:
                    fits_rps[i] = max(fits_rps[i], rate)
                else:
                    misses_rps[i] = min(misses_rps[i], rate)
            for i, ok in zip(asked, answers[:len(asked)], strict=True):
                advance(i, ok)
        return out

    def need(self, shape: ServerShape, most: int) -> int | None:
        """The need of one shape."""
        return size_together(self.model, [(self, [shape], most)])[0][0]

    def brackets_of(self, shapes: Sequence[ServerShape]) -> Brackets:
        """What is known of these shapes' max rates for this service's basis (kept from earlier cycles)."""
        key = (self.basis, shapes if isinstance(shapes, Shapes) else Shapes(shapes))
        brackets = _brackets.get(key)
        if brackets is None:
            brackets = _brackets[key] = Brackets.unknown(key[1])
            if len(_brackets) > MAX_KEPT:
                _brackets.popitem(last=False)
        else:
            _brackets.move_to_end(key)
        return brackets

    def _remember(self, shape: ServerShape, fits_rps: float) -> None:
        """The shape's fitting rate as a guess for other parameters (where the sizing basis moves)."""
        if fits_rps > 0:
            if len(_guesses) > MAX_KEPT:
                _guesses.clear()
            _guesses[(self.guess_basis, shape)] = fits_rps


def rates_per_replica(model: str, asks: Sequence[tuple[Sizer, ServerShape, Brackets | None]]) -> list[float]:
    """Each (sizer, shape)'s max rate per replica (for the few shapes whose rate itself is wanted: the best of an
    accelerator's, the one in force), kept per basis and shape; those not kept found together in a few stacked
    calls (`max_rates_of`), from what the shape's brackets, where given, know of it."""
    if len(_max_rates) > MAX_KEPT:
        _max_rates.clear()
    missing: dict[tuple[int, ServerShape], tuple[Sizer, ServerShape, Brackets | None]] = {}
    for sizer, shape, brackets in asks:
        if (sizer.basis, shape) not in _max_rates:
            missing.setdefault((sizer.basis, shape), (sizer, shape, brackets))
    if missing:
        sizers = list({id(s): s for s, _, _ in missing.values()}.values())
        base_of = {id(s): i for i, s in enumerate(sizers)}
        known = np.array([(b.fits_rps[b.row[shape]], b.misses_rps[b.row[shape]]) if b else (0.0, np.inf)
                          for _, shape, b in missing.values()], dtype=float).reshape(len(missing), 2)
        points = Points.shaped(Bases(s.base for s in sizers),
                               np.array([base_of[id(s)] for s, _, _ in missing.values()]),
                               [shape for _, shape, _ in missing.values()], np.ones(len(missing)))
        rates = get_model(model).max_rates_of(points, [s.targets for s in sizers], known[:, 0], known[:, 1])
        _max_rates.update(zip(missing, rates.tolist(), strict=True))
    return [_max_rates[(sizer.basis, shape)] for sizer, shape, _ in asks]
