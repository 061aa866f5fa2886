"""`wattscale simulate SCENARIO --report DIR`: every policy on the same arrivals, seed by seed, with a
progress bar over simulated time; then summary.json, summary.md and the PNGs in DIR."""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import os
import re
import sys
import tempfile
from pathlib import Path
from typing import Any

from controller.config_loader import ConfigError
from controller.simulate.accounting import Shown, figures, shown
from controller.simulate.args import POLICIES
from controller.simulate.frontier import FrontierUnavailable, frontier
from controller.simulate.plots import PLOTS
from controller.simulate.report import NO_PLOTS, POWER_FIGURES, POWER_LABELS, aggregate, summary, write, write_trace
from controller.simulate.runner import FLAT, run
from controller.simulate.scenario import TICK_ROUNDING, Scenario, fast_ticks, load_scenario
from controller.simulate.sizing import static_fleet
from controller.simulate.sources import mean_budget_w
from controller.simulate.targets import energy_missed


class _RunOf(logging.Filter):
    """Names the run each line of simulate.log came from: the policies' lines read alike."""

    run = "-"

    def filter(self, record: logging.LogRecord) -> bool:
        record.run = self.run
        return True


RUN = _RunOf()


class NoBar:
    """What the runner asks of a progress bar, doing nothing (tqdm not installed)."""

    def __init__(self, **_: object) -> None:
        pass

    def __enter__(self) -> NoBar:
        return self

    def __exit__(self, *_: object) -> None:
        pass

    def update(self, n: float) -> None:
        pass

    def set_description(self, text: str) -> None:
        pass


def simulate(scn: Scenario, report_dir: Path, policies: list[str], seeds: list[int], duration_s: float,
             progress: bool = True, explain: bool = True) -> dict[str, Any]:
    """Run, measure, write the report; returns the summary. With `explain`, a missed energy target has the emulator's
    frontier measured (controller/simulate/frontier.py) to say whether any plan reaches it."""
    try:
        from tqdm import tqdm
    except ImportError:  # the bar is the `plots` extra's; the run does not need it
        tqdm = NoBar

    report_dir.mkdir(parents=True, exist_ok=True)
    first: dict[str, Shown] = {}
    per_policy: dict[str, list[dict[str, Any]]] = {p: [] for p in policies}
    fleets: dict[int, dict[str, dict[str, int]]] = {}
    unmet: set[str] = set()
    flat_w = None
    if FLAT in policies:
        with tempfile.TemporaryDirectory(prefix="wattscale-simulate-") as tmp:
            flat_w = mean_budget_w(scn, duration_s, Path(tmp))
    # disable=None: no bar where stderr is no terminal (a redirected log took every redraw)
    with tqdm(total=duration_s * len(policies) * len(seeds), unit="sim s", disable=None if progress else True,
              bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f} sim s [{elapsed}<{remaining}]") as bar:
        for seed in seeds:
            bar.set_description(f"seed {seed}: sizing the static fleet")
            RUN.run = f"sizing seed {seed}"
            fleets[seed] = static_fleet(scn, seed, unmet if seed == seeds[0] else None)  # the fleet summary.md shows
            for policy in policies:
                bar.set_description(f"seed {seed}: {policy}")
                RUN.run = f"{policy} seed {seed}"
                log = report_dir / _decisions(seed) if policy == "wattscale" else None
                if log is not None:
                    log.open("w").close()  # the daemon's log appends: an earlier report's cycles went before these
                r = run(scn, policy, seed, fleets[seed], duration_s, progress=bar.update, decision_log=log,
                        flat_budget_w=flat_w)
                per_policy[policy].append(figures(scn, r))
                if seed == seeds[0]:
                    first[policy] = shown(scn, r)
                    write_trace(report_dir / f"trace-{policy}.csv", r.trace)
                del r  # its plant holds every request: gone before the next run builds its own
    RUN.run = "-"  # the lines after the runs are no run's
    aggregated = {p: aggregate(runs) for p, runs in per_policy.items()}
    front: dict[str, Any] | str | None = None
    missed = energy_missed(scn, aggregated)
    if missed and not explain:  # said, not left blank (a new user read no why at all)
        front = ("the emulator's frontier was not measured (--no-frontier): run without it for why this target was "
                 "missed")
    elif missed:
        if progress:
            print("wattscale: measuring the emulator's frontier to explain a missed energy target", file=sys.stderr)
        try:
            front = frontier(scn, fleets[seeds[0]])
        except FrontierUnavailable as exc:
            front = f"the emulator's frontier was not measured: {exc}"
    doc = summary(scn, duration_s, seeds, fleets[seeds[0]], aggregated, front, sorted(unmet))
    try:
        from controller.simulate.plots import draw_all

        images = draw_all(report_dir, scn, first, aggregated)
    except ImportError:
        print(f"wattscale: warning: {NO_PLOTS}", file=sys.stderr)
        images = []
    write(report_dir, doc, images)
    return doc


def _per_run(policies: list[str], seeds: list[int]) -> list[str]:
    """The report's files of each policy (its first seed's trace) and of each seed (wattscale's decision log)."""
    return [*(f"trace-{p}.csv" for p in policies), *(_decisions(s) for s in seeds if "wattscale" in policies)]


def _decisions(seed: int) -> str:
    """The decision log's name in the report folder: one per seed of the wattscale policy."""
    return f"decisions-seed{seed}.jsonl"


def _check_report_files(report_dir: Path, policies: list[str], seeds: list[int]) -> None:
    """Refuse, before anything runs, a report directory where a file the report writes is there and no regular
    file (a link to one is fine): a FIFO blocked the run for ever, a directory or a dangling link failed it after
    the whole simulation."""
    names = ["simulate.log", "summary.json", "summary.md", *PLOTS, *_per_run(policies, seeds)]
    for path in (report_dir / name for name in names):
        if (path.is_symlink() or path.exists()) and not path.is_file():
            raise ConfigError("--report", f"{path} exists and is not a regular file (the report writes it); "
                              "remove it or name another directory")


def _earlier_report(report_dir: Path) -> list[Path]:
    """Where `report_dir` holds an earlier report (its summary.json), that report's traces, decision logs and PNGs: a
    run of other policies or seeds would leave them beside the new summary, which says nothing of them, and one
    stopped midway would leave its own half-written ones under the earlier summary. None in a directory without a
    summary (its files may be a user's own); a link is a user's, written through."""
    if not (report_dir / "summary.json").is_file():
        return []
    return [path for path in report_dir.iterdir() if (EARLIER.fullmatch(path.name) or path.name in PLOTS)
            and path.is_file() and not path.is_symlink()]


def _recover(report_dir: Path) -> None:
    """Files a run killed midway (SIGKILL: no `finally` ran) left set aside go back where they were, over what it had
    begun under their names: they are the ones the summary.json beside them names. The oldest last, so a folder left
    by each of two such runs gives back the first's, the earlier report's own."""
    left = [p for p in report_dir.glob(".earlier-*") if p.is_dir() and not p.is_symlink()]
    for aside in sorted(left, key=lambda p: p.stat().st_mtime, reverse=True):
        _put_back(report_dir, aside, done=False)


def _set_aside(report_dir: Path, earlier: list[Path]) -> Path | None:
    """Move the earlier report's files into a hidden folder of the report's: dropped once this run's report is written
    whole, put back where it fails or is stopped (removed first, a run stopped midway had lost them, its summary left
    naming them). A move that fails puts back those moved before it."""
    if not earlier:
        return None
    aside = Path(tempfile.mkdtemp(prefix=".earlier-", dir=report_dir))
    try:
        for path in earlier:
            path.rename(aside / path.name)
    except BaseException:
        _put_back(report_dir, aside, done=False)
        raise
    return aside


def _put_back(report_dir: Path, aside: Path | None, done: bool) -> None:
    """The files set aside: dropped where the run wrote its report, else back where they were, over what the run had
    begun of its own under their names. A folder another run into the same report took back meanwhile (`_recover`)
    is gone: nothing is left to do."""
    if aside is None:
        return
    try:
        paths = list(aside.iterdir())
    except FileNotFoundError:
        return
    for path in paths:
        with contextlib.suppress(FileNotFoundError):  # taken back by that other run meanwhile: the rest still are
            if done:
                path.unlink()
            else:
                path.replace(report_dir / path.name)
    with contextlib.suppress(FileNotFoundError):
        aside.rmdir()


EARLIER = re.compile(r"trace-(" + "|".join(map(re.escape, POLICIES)) + r")\.csv|decisions-seed\d+\.jsonl")
"""The names of an earlier report's per-policy and per-seed files."""


def _labelled(key: str, value: float) -> str:
    """A power figure as its summary column reads, the unit after the value: `fastest rise 12.3 W/s`."""
    label, _, unit = POWER_LABELS[key].partition(" (")
    return f"{label} {value:g}" + (f" {unit.rstrip(')')}" if unit else "")


def simulate_command(args: argparse.Namespace) -> int:
    scn = load_scenario(Path(args.scenario))
    for warning in scn.warnings():  # as check-config says them (a budget under the GPUs' lowest limits)
        print(f"wattscale: warning: {warning}", file=sys.stderr)
    duration = args.duration_s if args.duration_s is not None else scn.settings.duration_s
    if not 1.0 <= duration <= scn.settings.duration_s:
        raise ConfigError("--duration-s", f"must be in [1, {scn.settings.duration_s:g}] (the scenario's duration_s), "
                          f"got {duration:g}")
    fast = scn.config.daemon.fast_interval_s
    ran = round(fast_ticks(duration, fast) * fast, 9)
    if not math.isclose(ran, duration, rel_tol=TICK_ROUNDING):  # whole fast ticks: 3.7 s ran 4, reported as 3.7
        print(f"wattscale: warning: a run is whole fast ticks of {fast:g} s: {duration:g} s runs as {ran:g} s",
              file=sys.stderr)
        duration = ran
    report_dir = Path(args.report)
    if report_dir.exists() and not report_dir.is_dir():
        raise ConfigError("--report", f"{report_dir} exists and is not a directory")
    if report_dir.is_symlink() and not report_dir.exists():  # mkdir would say only "File exists"
        raise ConfigError("--report", f"{report_dir} is a link to {os.readlink(report_dir)}, which does not exist")
    if scn.settings.seed + args.seeds - 1 >= 2**63:  # the seeds' range: a run of seed 2^63 read as any other
        raise ConfigError("--seeds", f"{args.seeds} seeds from the scenario's seed {scn.settings.seed} pass 2^63-1")
    seeds = [scn.settings.seed + k for k in range(args.seeds)]
    try:
        report_dir.mkdir(parents=True, exist_ok=True)
        _recover(report_dir)
        _check_report_files(report_dir, args.policies, seeds)
        earlier = _earlier_report(report_dir)
        handler = logging.FileHandler(report_dir / "simulate.log", mode="w")
    except OSError as exc:
        raise ConfigError("--report", f"{report_dir}: cannot be written ({exc.strerror or exc})") from None
    cut = [e for e in scn.settings.events if e.at_s >= duration]  # said once the run is sure to start
    if cut:
        print(f"wattscale: warning: --duration-s {duration:g} ends the run before {len(cut)} of the scenario's events "
              f"({', '.join(f'{e.kind} at {e.at_s:g} s' for e in cut[:3])}{', ...' if len(cut) > 3 else ''}): "
              "the run and its report leave them out", file=sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s [%(run)s] %(name)s: %(message)s"))
    handler.addFilter(RUN)
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        aside = _set_aside(report_dir, earlier)
    except OSError as exc:
        root.removeHandler(handler)
        handler.close()
        raise ConfigError("--report", f"{report_dir}: cannot be written ({exc.strerror or exc})") from None
    done = False
    try:
        doc = simulate(scn, report_dir, args.policies, seeds, duration, progress=not args.no_progress,
                       explain=not args.no_frontier)
        done = True
    except KeyboardInterrupt:  # the log says why the folder holds no new report (the command line says it too)
        logging.getLogger(__name__).warning("interrupted: no report written")
        raise
    finally:
        root.removeHandler(handler)
        handler.close()
        _put_back(report_dir, aside, done)
    width = max(map(len, doc["policies"])) + 1  # the names in a column, as many as run
    for policy, p in doc["policies"].items():
        slo = ", ".join(f"{k} {'no request' if v['slo_attainment'] is None else v['slo_attainment']}"
                        for k, v in p["services"].items())  # None: no request of it came (summary.md says so)
        power = "  ".join(_labelled(k, p[k]) for k in POWER_FIGURES if p.get(k) is not None)
        print(f"{policy:<{width}} violation {p['budget_violation_s']:g} s  tokens/J {p['tokens_per_joule']}  "
              f"sum T/C {p['sum_t_over_c']}  SLO {slo}" + (f"  {power}" if power else ""))
    said: set[str] = set()
    for t in doc["targets"]:
        why = t.get("why") if not t["met"] else None
        print(f"target {'met' if t['met'] else 'MISSED'}: {t['target']}: {t['value']} {t['unit']}"
              + ("" if why is None else "\n  why: as above" if why in said else f"\n  why: {why}"))
        said |= {why} if why is not None else set()
    for line in doc["not_judged"]:
        print(f"not judged: {line}")
    print(f"report: {report_dir / 'summary.md'}", file=sys.stderr)
    return 0
