"""Replicas a shape needs for a load: the fewest whose equal shares each meet the service's targets.

Sizing through the max rate costs a bisection, about 15 chain solves per shape, while a replica count asks
less: only whether each count's share fits. Per shape (its exact inputs, which the daemon's sizing basis
holds still while estimates jitter) the rates known to fit and known not to are kept as a bracket; only a
count whose share falls inside the bracket is solved, and the answer narrows it. A shape sized in an
earlier cycle mostly needs no solve at all, a new one two or three, from a guess the same shape's last
bracket gives where the inputs moved.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

from queuemodels import Load, PowerProfile, ServerShape, ServiceParams, Targets, get_model

MAX_KEPT = 100_000
"""Brackets kept (least recently used dropped first): a fleet of 1,000 services' shapes, several times."""

@dataclass
class Bracket:
    """What is known of one shape's max rate."""

    fits_rps: float = 0.0
    """The largest rate checked that meets the targets (0: none yet)."""
    misses_rps: float = math.inf
    """The smallest rate checked that does not."""


_bases: dict[object, int] = {}
"""What every shape of one service on one accelerator shares (model, parameters, load per unit of rate, targets,
power profile), by a number: a bracket's key hashes that number, not the dozens of fields behind it."""
_brackets: OrderedDict[tuple[int, ServerShape], Bracket] = OrderedDict()
_guesses: dict[tuple[int, ServerShape], float] = {}
"""The last fitting rate per (model, targets, power profile) and shape, whatever the parameters: a guess where
they moved."""


@lru_cache(maxsize=200_000)
def rate_per_replica(
    model: str, params: ServiceParams, load: Load, shape: ServerShape, targets: Targets, profile: PowerProfile,
) -> float:
    """The largest rate one replica takes within `targets` (a bisection: for the few shapes whose rate itself
    is wanted, the best of an accelerator's and the one in force)."""
    return get_model(model).max_rate(params, load, shape, targets, profile)


def _number(key: object) -> int:
    if len(_bases) > MAX_KEPT:
        _bases.clear()
        _brackets.clear()
        _guesses.clear()
    return _bases.setdefault(key, len(_bases))


class Sizer:
    """Sizing of one service's load on one accelerator, shape by shape: the inputs its shapes share are hashed
    once, where a fleet sizes hundreds of thousands of shapes a cycle."""

    def __init__(self, model: str, params: ServiceParams, load: Load, targets: Targets, profile: PowerProfile) -> None:
        self.model, self.params, self.load, self.targets, self.profile = model, params, load, targets, profile
        self.per_unit = load.at_rate(1.0)
        self.basis = _number((model, params, self.per_unit, targets, profile))
        self.guess_basis = _number((model, "guess", targets, profile))

    def rate_per_replica(self, shape: ServerShape) -> float:
        return rate_per_replica(self.model, self.params, self.per_unit, shape, self.targets, self.profile)

    def known_fit_rps(self, shape: ServerShape) -> float:
        """The largest rate per replica known to meet the targets on this shape (0 where none is): a lower bound on
        its max rate that costs nothing, for ranking shapes whose rates are not worth a bisection each."""
        bracket = _brackets.get((self.basis, shape))
        return bracket.fits_rps if bracket is not None else 0.0

    def need(self, shape: ServerShape, most: int) -> int | None:
        """Fewest replicas (1..most) whose equal shares of the load each meet the targets; None where `most` do
        not."""
        if most < 1:
            return None
        load = self.load
        if load.rate_rps <= 0:
            return 1 if self.rate_per_replica(shape) > 0 else None
        key = (self.basis, shape)
        bracket = _brackets.get(key)
        if bracket is None:
            bracket = _brackets[key] = Bracket()
            if len(_brackets) > MAX_KEPT:
                _brackets.popitem(last=False)
        else:
            _brackets.move_to_end(key)
            decided, n = _from_bracket(bracket, load.rate_rps, most)
            if decided:
                return n
        queue_model = get_model(self.model)

        def fits(n: int) -> bool:
            rate = load.rate_rps / n
            if rate <= bracket.fits_rps:
                return True
            if rate >= bracket.misses_rps:
                return False
            ok = queue_model.within_targets(self.params, load.at_rate(rate), shape, self.targets, self.profile)
            if ok:
                bracket.fits_rps = rate
            else:
                bracket.misses_rps = rate
            return ok

        guess_key = (self.guess_basis, shape)
        known = bracket.fits_rps or _guesses.get(guess_key, 0.0)
        guess = math.ceil(load.rate_rps / known - 1e-9) if known > 0 else 1
        need = first_fit(fits, most, guess)
        if bracket.fits_rps > 0:
            if len(_guesses) > MAX_KEPT:
                _guesses.clear()
            _guesses[guess_key] = bracket.fits_rps
        return need


def _from_bracket(bracket: Bracket, rate_rps: float, most: int) -> tuple[bool, int | None]:
    """(True, need) where the bracket alone answers: n replicas' shares are known to fit and n - 1's known not to
    (or n is 1), so no search is needed, as for most shapes from one cycle to the next."""
    if bracket.fits_rps <= 0:
        return False, None
    n = max(1, math.ceil(rate_rps / bracket.fits_rps))
    while n > 1 and rate_rps / (n - 1) <= bracket.fits_rps:
        n -= 1
    while rate_rps / n > bracket.fits_rps:
        n += 1
    if n > 1 and rate_rps / (n - 1) < bracket.misses_rps:
        return False, None
    return True, (n if n <= most else None)


def first_fit(fits: Callable[[int], bool], most: int, guess: int) -> int | None:
    """Smallest n in 1..most with fits(n), fits monotone (false, then true): outward from `guess` in doubling
    steps, then by bisection, so a right guess costs two checks and a wrong one a few more."""
    n = min(max(guess, 1), most)
    bad, good, step = 0, n, 1
    if fits(n):
        while good - step > bad:
            if not fits(good - step):
                bad = good - step
                break
            good, step = good - step, 2 * step
    else:
        bad = n
        while True:
            probe = min(most, bad + step)
            if fits(probe):
                good = probe
                break
            if probe == most:
                return None
            bad, step = probe, 2 * step
    while good - bad > 1:
        mid = (good + bad) // 2
        if fits(mid):
            good = mid
        else:
            bad = mid
    return good
