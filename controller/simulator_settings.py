"""The simulated host's settings ([simulator]): its GPUs, the engines' hidden personalities and the GPUs' power laws."""

from __future__ import annotations

from dataclasses import dataclass, field

from controller.config_loader import ConfigError, check_range, quoted
from controller.settings_checks import MAX_GPUS
from controller.simulator_checks import check_law_names
from simulator.hardware import SPECS

MIN_SIM_SPEED, MAX_SIM_SPEED = 0.01, 100.0
"""Simulated seconds per wall-clock second, fewest and most (1e-308 was taken: a simulated host that never moves)."""


@dataclass(frozen=True)
class SimulatorSettings:
    gpu_type: str = "H100-SXM"
    """GPU type of the simulated host."""
    num_gpus: int = 8
    """GPUs on the simulated host."""
    seed: int = 1
    """Seed of the hidden parameters, arrivals and noise."""
    speed: float = 1.0
    """Simulated seconds per wall-clock second."""
    start_delay_s: float = 30.0
    """Time a new or restarted vLLM replica takes to load its model."""
    shutdown_timeout_s: float = 0.0
    """vLLM's `--shutdown-timeout`: a replica scaled away or restarted takes no new request and finishes those it
    holds for up to this long, its GPU busy until then; what it holds past it is resubmitted by the router. 0:
    vLLM's default, it aborts them at once (the router resubmits them all, their progress lost)."""
    personalities: dict[str, str] = field(default_factory=dict)
    """Engine personality (hidden step law) per model, or per "model|gpu_type": roofline (default), chunked,
    prefill-overhead, compute-bound-decode, long-context, mixture-of-experts, spec-decode (simulator/personality.py)."""
    power_laws: dict[str, str] = field(default_factory=dict)
    """Hidden power law (how draw follows a step's work and the clock) per GPU type: dynamic (default),
    voltage-floor, memory-heavy (simulator/power_law.py)."""
    gpu_types: tuple[str, ...] = ()
    """Each GPU's type in index order, for a mixed host (e.g. four H100-SXM then four L40S); empty: `num_gpus`
    of `gpu_type`."""

    @property
    def host_types(self) -> list[str]:
        """The simulated host's GPU types, one entry per GPU."""
        return list(self.gpu_types) or [self.gpu_type] * self.num_gpus

    def check(self, where: str) -> None:
        check_law_names(f"{where}.", self.personalities, self.power_laws)
        if self.gpu_type not in SPECS:
            raise ConfigError(f"{where}.gpu_type", f"{quoted(self.gpu_type)} is not a GPU the simulator has, "
                              f"expected one of {sorted(SPECS)}")
        if not 1 <= self.num_gpus <= MAX_GPUS:
            raise ConfigError(f"{where}.num_gpus", f"must be in 1..{MAX_GPUS}, got {self.num_gpus}")
        if len(self.gpu_types) > MAX_GPUS:
            raise ConfigError(f"{where}.gpu_types", f"must list at most {MAX_GPUS} GPUs, got {len(self.gpu_types)}")
        for i, name in enumerate(self.gpu_types):
            if name not in SPECS:
                raise ConfigError(f"{where}.gpu_types[{i}]", f"{quoted(name)} is not a GPU the simulator has, "
                                  f"expected one of {sorted(SPECS)}")
        if not 0 <= self.seed < 2**63:
            raise ConfigError(f"{where}.seed", f"must be in 0..2^63-1, got {self.seed}")
        check_range(self, where, ("speed",), MIN_SIM_SPEED, MAX_SIM_SPEED)
        check_range(self, where, ("start_delay_s", "shutdown_timeout_s"), 0.0, 86400.0)
