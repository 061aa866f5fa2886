"""Power laws: how a GPU's draw follows the work of a step and its clock, hidden from the controller.

A GPU draws idle + compute_w u_c c(s) + memory_w u_m over a step, with u_c and u_m the step's compute and memory
busy shares and s the SM clock as a share of its top. The laws differ in c(s), in how the dynamic draw splits
between the SM array and the memory system, and in what a limit the lowest clock still overdraws does. Like the
engine personalities (`simulator/personality.py`) they are chosen per GPU type in config (`[simulator]
power_laws`) and never shown to the controller, whose catalogue keeps one draw curve per accelerator and whose
tuner must learn the rest from the draw NVML reports.
"""

from __future__ import annotations

from dataclasses import dataclass

CLOCK_EXPONENT = 2.4
"""c(s) = s^2.4 under the default law: dynamic power f V^2 with the voltage falling part-way with the clock."""


@dataclass(frozen=True)
class PowerLaw:
    """One GPU's draw law; the default values are the simulator's original one."""

    name: str
    compute_scale: float = 1.0
    """Multiplies the GPU type's `compute_w` (the SM array's dynamic draw at the top clock, fully busy)."""
    memory_scale: float = 1.0
    """Multiplies its `memory_w` (the memory system's, streaming at full bandwidth: no clock lowers it)."""
    voltage_floor: float | None = None
    """Clock share below which the voltage stops falling (None: c(s) = s^CLOCK_EXPONENT at every clock)."""
    throttles_memory: bool = False
    """Where the lowest clock still draws past the limit, the GPU stretches the step (clock gating) until its mean
    draw fits, slowing memory-bound work too; off, such a step runs at the lowest clock and its draw is counted at
    the limit, as if met by means that cost no time."""

    def clock_draw(self, clock: float) -> float:
        """c(s): the SM array's dynamic draw at clock share `clock`, relative to the top clock's."""
        if self.voltage_floor is None:
            return float(clock**CLOCK_EXPONENT)
        volts = max(self.voltage_floor, clock)
        return clock * volts * volts

    def throttled_ms(self, draw_w: float, step_ms: float, limit_w: float, idle_w: float) -> tuple[float, float]:
        """A step of `step_ms` drawing `draw_w` at the lowest clock, under `limit_w`: (draw, length). Stretched so its
        energy above idle is spent at the limit where the law throttles (and the limit is above idle)."""
        if draw_w <= limit_w or not self.throttles_memory or limit_w <= idle_w:
            return draw_w, step_ms
        return limit_w, step_ms * (draw_w - idle_w) / (limit_w - idle_w)


DYNAMIC = PowerLaw("dynamic")
"""The original law: dynamic draw f V^2 with the voltage following the clock part-way (s^2.4), the memory system's
draw a quarter to a third of the dynamic range (an H100's 230 W of 790)."""

POWER_LAWS: dict[str, PowerLaw] = {
    p.name: p
    for p in (
        DYNAMIC,
        # DVFS tables hold the voltage at a floor below some clock: above it power falls as f V^2 ~ s^3, below it
        # only as f, so the first cuts of a power limit are cheap in speed and deep ones dear (Mei, Wang and Chu,
        # "A survey and measurement study of GPU DVFS on energy conservation", Digital Communications and
        # Networks, 2017; You, Chung and Chowdhury, "Zeus", NSDI 2023, measure the same flattening of power
        # against the limit).
        PowerLaw("voltage-floor", voltage_floor=0.65),
        # The memory system draws most of a decode step's power: streaming the weights alone on an H200 drew
        # 632-691 W of its 700-W limit (docs/gpus.md), where the default law gives an H100's memory 230 W. Twice
        # the memory draw and 0.6 of the compute, about the same peak; a limit below what the memory traffic draws
        # throttles the whole step, memory-bound decode included.
        PowerLaw("memory-heavy", compute_scale=0.6, memory_scale=2.0, throttles_memory=True),
    )
}


def get_power_law(name: str) -> PowerLaw:
    """A power law by name; the message lists the known ones."""
    try:
        return POWER_LAWS[name]
    except KeyError:
        raise ValueError(f"power law: unknown {name!r}, expected one of {sorted(POWER_LAWS)}") from None
