"""Keeps each (model, accelerator) pair's queue-model parameters true to what is observed."""

from __future__ import annotations

import logging
from pathlib import Path

from queuemodels import DEFAULT_MODEL, PowerProfile, ServiceParams
from tuner import store
from tuner.ekf import FilterSettings, PairFilter, Verdict
from tuner.observation import Observation

log = logging.getLogger(__name__)

__all__ = ["FilterSettings", "Observation", "PairFilter", "Tuner", "Verdict", "pair_key"]


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
        self.save_failures = 0
        """Saves of the state that failed (the file could not be written); the daemon counts them."""

    def ensure(
        self, model: str, accelerator: str, prior: ServiceParams, profile: PowerProfile | None, fit_power: bool = False
    ) -> PairFilter:
        """The pair's filter, created from the prior (and restored from saved state) on first use."""
        key = pair_key(model, accelerator)
        current = self.filters.get(key)
        if current is not None and current.prior == prior:
            return current
        pair = PairFilter(prior, profile, self.settings, fit_power, self.queue_model)
        self.filters[key] = pair
        if self.state_path is not None:
            for warning in store.load(self.state_path, {key: pair}):
                log.warning("%s", warning)
        return pair

    def params(self, model: str, accelerator: str) -> tuple[ServiceParams, PowerProfile | None] | None:
        pair = self.filters.get(pair_key(model, accelerator))
        return None if pair is None else pair.params()

    def update(self, model: str, accelerator: str, obs: Observation) -> Verdict:
        pair = self.filters[pair_key(model, accelerator)]
        verdict = pair.update(obs)
        if verdict.accepted and self.state_path is not None and not store.save(self.state_path, self.filters):
            self.save_failures += 1
        return verdict
