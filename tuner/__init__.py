"""Keeps each (model, accelerator) pair's queue-model parameters true to what is observed."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from queuemodels import DEFAULT_MODEL, PowerProfile, ServiceParams
from tuner import store
from tuner.ekf import FilterSettings, PairFilter, Verdict
from tuner.observation import Observation

log = logging.getLogger(__name__)

__all__ = ["FilterSettings", "Observation", "PairFilter", "Tuner", "Verdict", "load_fitting_libraries", "pair_key"]


MAX_ASIDE = 64
"""Filters kept aside at most (`Tuner.aside`)."""


def load_fitting_libraries() -> None:
    """Import what the fits run on (filterpy's EKF, scipy.optimize) now. Commands that never fit leave them out
    (a second of CPU at every start); a daemon loads them as it starts, not in the slow cycle that first fits."""
    import filterpy.kalman  # noqa: F401
    import scipy.optimize  # noqa: F401


def pair_key(model: str, accelerator: str) -> str:
    return f"{model}|{accelerator}"


class Tuner:
    """One filter per (model, accelerator); state saved under `state_path` after accepted updates."""

    def __init__(
        self, state_path: Path | None = None, settings: FilterSettings | None = None, queue_model: str = DEFAULT_MODEL
    ) -> None:
        self.state_path = state_path
        self.settings = settings or FilterSettings()
        self.queue_model = queue_model
        self.filters: dict[str, PairFilter] = {}
        self.aside: dict[tuple[str, ServiceParams], PairFilter] = {}
        """Filters a prior's change replaced, by pair and prior, taken back where that prior returns: a config
        reloaded half-written (its last service's prior cut off) and then whole lost what the pair had learnt."""
        self.save_failures = 0
        """Saves of the state that failed (the file could not be written); the daemon counts them."""
        self.pending = False
        """Whether an accepted update has not been saved yet (`update(..., save=False)`)."""
        self.unused: dict[str, Any] = {}
        """The state file's pairs no filter holds (read, validated, saved again as they are), until one is made."""
        self.saved_whole = False
        """Whether the state file holds nothing the filters in memory lack (each save writes them all): a reload's
        new pairs then start from memory, the file not parsed again (31 MB held the governor's thread 2 s)."""

    def ensure(
        self, model: str, accelerator: str, prior: ServiceParams, profile: PowerProfile | None, fit_power: bool = False
    ) -> PairFilter:
        """The pair's filter, created from the prior (and restored from saved state) on first use."""
        self.ensure_all([(model, accelerator, prior, profile)], fit_power)
        return self.filters[pair_key(model, accelerator)]

    def ensure_all(self, pairs: Iterable[tuple[str, str, ServiceParams, PowerProfile | None]],
                   fit_power: bool = False) -> None:
        """Each (model, accelerator, prior, profile)'s filter, those new (or of a new prior) restored from saved state
        together: one read of the state file for all of them (one a pair read a 32-MiB file a pair at start)."""
        fresh: dict[str, PairFilter] = {}
        back: dict[str, PairFilter] = {}
        replaced: dict[str, PairFilter] = {}
        for model, accelerator, prior, profile in pairs:
            key = pair_key(model, accelerator)
            current = self.filters.get(key)
            if current is not None and current.prior == prior:
                continue
            if current is not None:
                replaced[key] = current
                self.aside[(key, current.prior)] = current
                while len(self.aside) > MAX_ASIDE:
                    del self.aside[next(iter(self.aside))]  # the oldest
            if (kept := self.aside.pop((key, prior), None)) is not None:
                back[key] = kept
            fresh[key] = self.filters[key] = PairFilter(prior, profile, self.settings, fit_power, self.queue_model)
        if fresh and self.state_path is not None and not self.saved_whole:
            for warning in store.load(self.state_path, fresh, back, self.unused):
                log.warning("%s", warning)
        else:  # what the file would give of a pair whose prior changed: its draw curve and clock, whatever the prior
            for key, old in replaced.items():
                fresh[key].draw.restore(old.draw.dump())
                fresh[key].clock.restore(old.clock.dump())
            returning = {k: d for k, d in self.unused.items() if k in fresh and not store.out_of_bounds(fresh[k], d)}
            if returning and self.state_path is not None:  # a pair the file held unused, back in the config
                for warning in store.restore_into(self.state_path, returning, fresh, back):
                    log.warning("%s", warning)
        for key in self.filters:  # a filter holds it now: saved from the filter
            self.unused.pop(key, None)
        taken = [key for key, kept in back.items() if fresh[key].updates == 0]  # the file has none of its prior
        for key in taken:
            self.filters[key] = back[key]
        if taken:  # saved at once: a restart before the pair's next window keeps it too
            self._save()

    def params(self, model: str, accelerator: str) -> tuple[ServiceParams, PowerProfile | None] | None:
        pair = self.filters.get(pair_key(model, accelerator))
        return None if pair is None else pair.params()

    def measured(self, model: str, accelerator: str) -> bool:
        """Whether a window of the pair has been fitted (its parameters are no longer the prior alone)."""
        pair = self.filters.get(pair_key(model, accelerator))
        return pair is not None and pair.accepted > 0

    def update(self, model: str, accelerator: str, obs: Observation, save: bool = True) -> Verdict:
        """The pair's filter updated with `obs`; an accepted window saves the state at once, or with `save` False at
        the next `save_pending` (the daemon saves once a cycle: a save a pair rewrote the whole file, fsync'd, three
        times a cycle for three pairs, some 1.5 GB a day)."""
        pair = self.filters[pair_key(model, accelerator)]
        verdict = pair.update(obs)
        if verdict.accepted:
            self.pending = True
            if save:
                self.save_pending()
        return verdict

    def save_pending(self) -> bool:
        """Save what updates since the last save changed (nothing where none did); False where the save failed
        (it is tried again at the next call)."""
        if self.pending:
            self.pending = not self._save()
        return not self.pending

    def _save(self) -> bool:
        """Every filter's state to the file, where there is one (a failure counted); whether it was written (or
        there is no file to write)."""
        if self.state_path is None:
            return True
        saved = store.save(self.state_path, self.filters, self.unused)
        self.save_failures += not saved
        self.saved_whole = self.saved_whole or saved
        return saved
