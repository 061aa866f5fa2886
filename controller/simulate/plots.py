"""The report's PNGs: of the first seed's runs, site power against the budget (and each power domain's against its
limit), SLO attainment per service over time, replicas / max batch / mean power limit per service; and energy and
tokens per joule per policy, the mean over the seeds (summary.json's figures)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from controller.simulate.accounting import WINDOW_S, Shown
from controller.simulate.runner import FLAT
from controller.simulate.scenario import Scenario

PLOTS = ("power.png", "slo.png", "actuators.png", "energy.png")
"""The PNGs a report draws, in the order the summary shows them."""


DASHES = ("-", "--", "-.", ":", (0, (5, 1, 1, 1, 1, 1)))


def _style(k: int) -> dict[str, Any]:
    """The k-th policy's line where policies overlap (all at 1.0, one fleet, one cap): a dash of its own, and each
    thinner than the one before, drawn over it, so that lines on one value read as nested strokes."""
    return {"ls": DASHES[k % len(DASHES)], "lw": 2.4 * 0.78**k}  # six policies: 2.4 down to 0.7


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # files only, whatever the display
    import matplotlib.pyplot as plt

    return plt


def power(plt: Any, scn: Scenario, runs: dict[str, Shown], path: Path) -> None:
    """Site draw against the budget, and each power domain's (a rack's) draw against its own limit below it."""
    domains = scn.config.power.domains
    fig, axes = plt.subplots(1 + len(domains), 1, figsize=(10, 4 + 2.4 * len(domains)), squeeze=False, sharex=True)
    site = axes[0, 0]
    for name, r in runs.items():
        site.plot(r.trace.t_s / 60, r.trace.draw_w, lw=0.7, label=name)
    own = next((r.trace for name, r in runs.items() if name != FLAT), None)
    if own is not None:  # the scenario's budget, as every policy but wattscale-flat ran under it
        site.plot(own.t_s / 60, own.budget_w, "k--", lw=1.2, label="budget")
    if FLAT in runs:
        flat = runs[FLAT].trace
        site.plot(flat.t_s / 60, flat.budget_w, "k:", lw=1.2, label=f"{FLAT}'s budget")
    site.set(ylabel="site draw (W)", title="Site power against the budget")
    site.legend(fontsize=8, ncol=3)
    for ax, domain in zip(axes[1:, 0], domains, strict=True):
        for name, r in runs.items():
            ax.plot(r.trace.t_s / 60, r.trace.domain_draw_w[domain.name], lw=0.7, label=name)
        ax.axhline(domain.limit_w, color="k", ls="--", lw=1.2, label="limit")
        ax.set(ylabel="draw (W)", title=f"Power domain {domain.name} (GPUs {', '.join(map(str, domain.gpus))}) "
               "against its limit")
    axes[-1, 0].set_xlabel("minutes")
    _save(plt, fig, path)


def slo(plt: Any, scn: Scenario, runs: dict[str, Shown], path: Path) -> None:
    services = scn.config.services
    fig, axes = plt.subplots(len(services), 1, figsize=(10, 2.4 * len(services)), squeeze=False, sharex=True)
    for ax, svc in zip(axes[:, 0], services, strict=True):
        for k, (name, r) in enumerate(runs.items()):
            share = r.met_share[svc.name]
            ax.plot((np.arange(len(share)) + 0.5) * WINDOW_S / 60, share, label=name, **_style(k))
        ax.set(ylabel="met", ylim=(-0.02, 1.02), title=f"{svc.name} ({svc.statistic} TTFT <= {svc.ttft_ms:g} ms, "
               f"ITL <= {svc.itl_ms:g} ms), per {WINDOW_S:g} s")
    axes[0, 0].legend(fontsize=8, ncol=5)
    axes[-1, 0].set_xlabel("minutes")
    _save(plt, fig, path)


def actuators(plt: Any, scn: Scenario, runs: dict[str, Shown], path: Path) -> None:
    services = scn.config.services
    fig, axes = plt.subplots(len(services), 3, figsize=(13, 2.4 * len(services)), squeeze=False, sharex=True)
    for row, svc in zip(axes, services, strict=True):
        for k, (name, r) in enumerate(runs.items()):
            t = r.trace.t_s / 60
            row[0].step(t, r.trace.replicas[svc.name], label=name, **_style(k))
            row[1].step(t, r.trace.max_batch[svc.name], label=name, **_style(k))
            row[2].plot(t, r.trace.limit_w[svc.name], label=name, **_style(k))
        row[0].set_ylabel(svc.name)
        for ax in row[:2]:  # counts from 0 with whole ticks (a constant 64 on a 61-67 axis read as varying)
            ax.yaxis.set_major_locator(plt.MaxNLocator(integer=True))
            ax.ticklabel_format(axis="y", useOffset=False)
            ax.set_ylim(bottom=0, top=max(1.0, ax.get_ylim()[1]) * 1.08)
    for ax, title in zip(axes[0], ("replicas", "max batch", "mean power limit (W)"), strict=True):
        ax.set_title(title)
    for ax in axes[-1]:
        ax.set_xlabel("minutes")
    axes[0, 0].legend(fontsize=7)
    _save(plt, fig, path)


def energy(plt: Any, policies: dict[str, Any], path: Path) -> None:
    names = list(policies)
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.5))
    colours = [f"C{i}" for i in range(len(names))]  # each policy in its colour of the other figures
    a.bar(names, [policies[n]["energy_kwh"] or 0.0 for n in names], color=colours)
    a.set(title="GPU energy (kWh, mean over seeds)")
    b.bar(names, [policies[n]["tokens_per_joule"] or 0.0 for n in names], color=colours)
    b.set(title="output tokens per joule (mean over seeds)")
    for ax in (a, b):
        ax.tick_params(axis="x", labelrotation=20, labelsize=8)
    _save(plt, fig, path)


def draw_all(report_dir: Path, scn: Scenario, runs: dict[str, Shown], policies: dict[str, Any]) -> list[str]:
    """Write the PNGs into `report_dir`; their file names, in the order the summary shows them."""
    plt = _pyplot()
    power_png, slo_png, actuators_png, energy_png = (report_dir / name for name in PLOTS)
    power(plt, scn, runs, power_png)
    slo(plt, scn, runs, slo_png)
    actuators(plt, scn, runs, actuators_png)
    energy(plt, policies, energy_png)
    return list(PLOTS)


def _save(plt: Any, fig: Any, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
