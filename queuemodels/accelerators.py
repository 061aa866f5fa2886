"""Public power envelopes of common accelerators (NVIDIA's datasheets: default and maximum limit, minimum limit,
idle), as power profiles. The H200's are what one read through NVML (driver 580.159.04; docs/gpus.md, "Measured
on real GPUs"): its limits, its idle with a CUDA context held (124-128 W: a replica's idle) and with no process
(80 W). The others' draw with no process is not published: the daemon reads it off the GPUs it leaves free."""

from __future__ import annotations

from queuemodels.types import ModelInputError, PowerProfile

CATALOG: dict[str, PowerProfile] = {
    p.name: p
    for p in (
        PowerProfile("H100-SXM", max_power_w=700, min_power_w=200, idle_power_w=95),
        PowerProfile("H100-PCIe", max_power_w=350, min_power_w=200, idle_power_w=60),
        PowerProfile("H200-SXM", max_power_w=700, min_power_w=200, idle_power_w=126, empty_power_w=80),
        PowerProfile("A100-SXM4", max_power_w=400, min_power_w=100, idle_power_w=70),
        PowerProfile("L40S", max_power_w=350, min_power_w=100, idle_power_w=45),
        PowerProfile("L4", max_power_w=72, min_power_w=40, idle_power_w=16),
        PowerProfile("T4", max_power_w=70, min_power_w=60, idle_power_w=12),
    )
}


def profile(name: str) -> PowerProfile:
    """The catalogue profile of an accelerator type; the message lists the known types."""
    try:
        return CATALOG[name]
    except KeyError:
        raise ModelInputError(f"accelerator: unknown {name!r}, expected one of {sorted(CATALOG)}") from None
