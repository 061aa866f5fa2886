"""Simulated GPUs: a power limit that the clock obeys, draw that follows activity, an energy counter.

The clock law is hidden from the controller: draw = idle + compute_w * u_c * c(s) + memory_w * u_m, with s the
SM clock as a fraction of its maximum, u_c, u_m the compute and memory busy shares of a step, and c(s) and the
split of the dynamic draw the GPU's power law (`simulator/power_law.py`; s^2.4 by default). Under a cap the GPU
picks the largest s whose draw fits, so draw never exceeds the limit. A locked clock sets s directly: the GPU
runs at the lock, or lower where the cap still bounds the draw.
"""

from __future__ import annotations

from dataclasses import dataclass

from simulator.power_law import DYNAMIC, PowerLaw

MIN_CLOCK_FRACTION = 0.2
CLOCK_STEP_MHZ = 15
"""Spacing of the graphics clocks a GPU supports (NVIDIA's tables step by 15 MHz)."""


@dataclass(frozen=True)
class GpuSpec:
    """Hardware facts of one GPU type: public figures (bandwidth, FLOPS, the driver's power-limit range and
    idle draw, as NVIDIA's datasheets and `nvidia-smi -q` give them); the split of dynamic power is the
    simulator's own."""

    name: str
    memory_tb_s: float
    dense_tflops: float
    memory_gb: float
    max_clock_mhz: float
    compute_w: float
    memory_w: float
    min_limit_w: float
    max_limit_w: float
    idle_w: float
    """Draw of a GPU a loaded engine holds idle (its CUDA context keeps it out of the deepest idle state)."""
    empty_w: float
    """Draw of a GPU with no process on it. Hidden: the catalogue does not give it; the controller reads it off
    the GPUs it leaves free. Set at about two thirds of `idle_w`, as one H200 read (80 W with no process, 124-128 W
    with a CUDA context held, docs/gpus.md)."""


SPECS: dict[str, GpuSpec] = {
    s.name: s
    for s in (
        GpuSpec("H100-SXM", 3.35, 990.0, 80, 1980, compute_w=560, memory_w=230, min_limit_w=200, max_limit_w=700,
                idle_w=95, empty_w=62),
        GpuSpec("H100-PCIe", 2.0, 756.0, 80, 1755, compute_w=270, memory_w=110, min_limit_w=200, max_limit_w=350,
                idle_w=60, empty_w=40),
        GpuSpec("A100-SXM4", 2.04, 312.0, 80, 1410, compute_w=300, memory_w=130, min_limit_w=100, max_limit_w=400,
                idle_w=70, empty_w=46),
        GpuSpec("L40S", 0.864, 362.0, 48, 2520, compute_w=280, memory_w=90, min_limit_w=100, max_limit_w=350,
                idle_w=45, empty_w=30),
        GpuSpec("L4", 0.3, 121.0, 24, 2040, compute_w=52, memory_w=20, min_limit_w=40, max_limit_w=72, idle_w=16,
                empty_w=11),
        GpuSpec("T4", 0.32, 65.0, 16, 1590, compute_w=55, memory_w=20, min_limit_w=60, max_limit_w=70, idle_w=12,
                empty_w=8),
    )
}


class SimGPU:
    """One simulated GPU; the engine on it reports each step's work and gets the clock it may run at."""

    def __init__(self, index: int, spec: GpuSpec, law: PowerLaw = DYNAMIC) -> None:
        self.index = index
        self.spec = spec
        self.law = law
        self._compute_w = spec.compute_w * law.compute_scale
        self._memory_w = spec.memory_w * law.memory_scale
        self.uuid = f"GPU-sim-{index:04d}-{spec.name}"
        self.power_limit_w = spec.max_limit_w
        self.energy_j = 0.0
        self.clock_fraction = 1.0
        self.locked_clock_mhz: int | None = None
        self.last_power_w = spec.empty_w
        self.accounted_to_s = 0.0
        """Simulated time up to which `energy_j` holds the draw: an engine step is accounted whole as it starts."""
        self._last_s = 0.0
        self._window_j = 0.0
        self._window_s = 0.0
        self.capped_s = 0.0
        """Seconds of steps the power limit held the clock below its top, as NVML's power violation time counts
        them (accounted as the energy is: a step whole as it starts; `capped_at_s` reads it as it elapses)."""
        self._clipped = False
        """Whether the limit held the step `run_step` timed last, which `account` counts next."""
        self._last_clipped = False

    def set_power_limit(self, watts: float) -> float:
        """Clamp to the device's constraints, as the driver does; returns the limit now in force."""
        self.power_limit_w = min(self.spec.max_limit_w, max(self.spec.min_limit_w, float(watts)))
        return self.power_limit_w

    def supported_clocks_mhz(self) -> list[int]:
        """The graphics clocks a lock may name, lowest first."""
        top = int(self.spec.max_clock_mhz)
        return list(range(top, int(MIN_CLOCK_FRACTION * top), -CLOCK_STEP_MHZ))[::-1]

    def lock_clock(self, mhz: int | None) -> int | None:
        """Lock the SM clock at a supported clock (the driver refuses others), or unlock (None)."""
        if mhz is not None and mhz not in self.supported_clocks_mhz():
            raise ValueError(f"{mhz} MHz is not a supported clock")
        self.locked_clock_mhz = mhz
        return mhz

    def _draw_and_ms(self, clock: float, compute_ms: float, memory_ms: float, overhead_ms: float,
                     serial_ms: float) -> tuple[float, float]:
        """The draw over a step at `clock` and the step's length."""
        step = step_length_ms(clock, compute_ms, memory_ms, overhead_ms, serial_ms)
        u_c = ((compute_ms + serial_ms) / clock) / step
        u_m = memory_ms / step
        return float(self.spec.idle_w + self._compute_w * u_c * self.law.clock_draw(clock) + self._memory_w * u_m), step

    @property
    def top_clock(self) -> float:
        """The highest clock a step may run at, as a share of the maximum: the lock's, else the maximum."""
        return 1.0 if self.locked_clock_mhz is None else self.locked_clock_mhz / self.spec.max_clock_mhz

    def run_step(self, compute_ms: float, memory_ms: float, overhead_ms: float,
                 serial_ms: float = 0.0) -> tuple[float, float, float]:
        """One engine step: the clock it settles at (the largest, up to a lock, whose draw fits the limit: a
        bisection, draw rising with the clock), its draw and its length (ms) at that clock, each sum made once
        (the engine's every step asks all three); where even the lowest clock draws past the limit, what the power
        law does there (`PowerLaw.throttled_ms`)."""
        top = self.top_clock
        power_w, step_ms = self._draw_and_ms(top, compute_ms, memory_ms, overhead_ms, serial_ms)
        self._clipped = power_w > self.power_limit_w
        if not self._clipped:
            self.clock_fraction = top
            return top, power_w, step_ms
        low, high = MIN_CLOCK_FRACTION, top
        at_low: tuple[float, float] | None = None
        for _ in range(14):
            mid = 0.5 * (low + high)
            at_mid = self._draw_and_ms(mid, compute_ms, memory_ms, overhead_ms, serial_ms)
            if at_mid[0] <= self.power_limit_w:
                low, at_low = mid, at_mid
            else:
                high = mid
        self.clock_fraction = low
        if at_low is None:
            draw_w, step_ms = self._draw_and_ms(low, compute_ms, memory_ms, overhead_ms, serial_ms)
            at_low = self.law.throttled_ms(draw_w, step_ms, self.power_limit_w, self.spec.idle_w)
        return low, *at_low

    def account(self, seconds: float, power_w: float, end_s: float) -> None:
        """Integrate energy over a busy or idle stretch that ends at simulated time `end_s`."""
        power_w = min(power_w, self.power_limit_w)
        self.energy_j += power_w * seconds
        self.accounted_to_s, self._last_s = end_s, seconds
        self._last_clipped, self._clipped = self._clipped, False
        self.capped_s += seconds if self._last_clipped else 0.0
        self._window_j += power_w * seconds
        self._window_s += seconds
        self.last_power_w = power_w

    def energy_at_j(self, t_s: float) -> float:
        """The energy counter as it reads at `t_s`, as a real one integrates the draw while it happens: the part of
        the last stretch (a step accounted whole as it began) after `t_s` not yet drawn. Read per second, the whole
        step read as drawn in its first second: a 3-s step of 400 W was 1,200 W in one second and 0 in the next."""
        return self.energy_j - self.last_power_w * self._ahead_s(t_s)

    def capped_at_s(self, t_s: float) -> float:
        """The power violation time as it reads at `t_s`: the part of a held last step after `t_s` not yet counted (a
        step of 0.5 s counted whole as it began had read half a second more than a second's time)."""
        return self.capped_s - (self._ahead_s(t_s) if self._last_clipped else 0.0)

    def _ahead_s(self, t_s: float) -> float:
        """Seconds of the last stretch accounted after `t_s` (it was accounted whole as it began)."""
        return min(max(self.accounted_to_s - t_s, 0.0), self._last_s)

    def cut_at(self, t_s: float) -> None:
        """The engine on it stopped at `t_s` (drained, scaled away, lost): the part of its last step after `t_s`
        was never drawn, and what runs next on it is accounted from `t_s`. The step's tokens stay counted (an
        engine counts them as the step begins): a bias in tokens per joule under 0.01 % on the shipped scenarios."""
        over = self._ahead_s(t_s)
        self.energy_j -= self.last_power_w * over
        self.capped_s -= over if self._last_clipped else 0.0
        self.accounted_to_s, self._last_s = self.accounted_to_s - over, self._last_s - over
        if self._window_s >= over:
            self._window_j -= self.last_power_w * over
            self._window_s -= over

    def sample_power_w(self) -> float:
        """Mean draw since the last sample (what NVML's 1 s average reports)."""
        if self._window_s <= 0:
            return self.last_power_w
        mean = self._window_j / self._window_s
        self._window_j = 0.0
        self._window_s = 0.0
        return mean

    @property
    def sm_clock_mhz(self) -> float:
        return self.clock_fraction * self.spec.max_clock_mhz


def step_length_ms(clock: float, compute_ms: float, memory_ms: float, overhead_ms: float, serial_ms: float) -> float:
    """A step's length at a clock fraction: the host's part as it is, compute overlapping memory (`step_core_ms`),
    serial compute after it (a cap or a lock slows compute, not memory or the host)."""
    return overhead_ms + step_core_ms(memory_ms, compute_ms / clock) + serial_ms / clock


def step_core_ms(memory_ms: float, compute_ms: float) -> float:
    """Roofline-like smooth maximum of memory and compute time within one engine step."""
    return float((memory_ms**3 + compute_ms**3) ** (1.0 / 3.0))
