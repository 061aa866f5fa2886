"""The `simulate` subcommand's arguments (kept apart from the runner, so that the CLI imports it cheaply)."""

from __future__ import annotations

import argparse

from controller.cli_args import directory, file, number, whole
from controller.service_settings import MAX_DURATION_S

POLICIES = ("static", "uniform-cap", "threshold", "slo-only", "wattscale", "wattscale-flat")
"""Every policy `wattscale simulate` knows, in the order reports show them."""
DEFAULT_POLICIES = POLICIES[:5]
"""What runs unless --policies says: `wattscale-flat` (wattscale under a flat budget of the same mean, the
carbon comparison) only where asked."""


def policy_list(text: str) -> list[str]:
    names = [p.strip() for p in text.split(",") if p.strip()]
    unknown = [p for p in names if p not in POLICIES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown policy {', '.join(unknown) or '(none)'}; expected a comma-separated "
                                         f"list of {', '.join(POLICIES)}")
    twice = sorted({p for p in names if names.count(p) > 1})
    if twice:  # dropped unsaid, it read as a typo for another policy the report then lacks
        raise argparse.ArgumentTypeError(f"{', '.join(twice)} given twice; each policy runs once")
    return names


def add_simulate_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("scenario", type=file, metavar="SCENARIO",
                   help="scenario TOML (see config/scenarios/ and docs/simulate.md)")
    p.add_argument("--report", type=directory, required=True, metavar="DIR",
                   help="directory for summary.json, summary.md, PNGs")
    p.add_argument("--policies", type=policy_list, default=list(DEFAULT_POLICIES), metavar="LIST",
                   help=f"comma-separated policies of {','.join(POLICIES)} (default: {','.join(DEFAULT_POLICIES)})")
    p.add_argument("--seeds", type=whole(1, 64), default=1, metavar="N",
                   help="runs per policy, seeds scenario.seed .. + N - 1 (1-64, default 1)")
    p.add_argument("--duration-s", type=number(1.0, MAX_DURATION_S), default=None, metavar="S",
                   help="simulated seconds instead of the scenario's duration_s")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--no-frontier", action="store_true",
                   help="where an energy target is missed, do not load-test the emulator's frontier to say why "
                        "(up to a minute)")

