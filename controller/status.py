"""`wattscale status`: what is in place against what is planned, per service, and whether its SLO is met
and why not, read from the running daemon's last decision-log line (no connection to the daemon needed).
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import fields
from difflib import get_close_matches
from pathlib import Path
from typing import Any, NamedTuple

from controller import strict_json
from controller.config_loader import ConfigError, build
from controller.decision_log import BOOT_ID, HOST, PID_NS
from controller.settings import LEAST_FAST_S, DaemonSettings, ServiceSettings, load_settings
from controller.slo_margin import slo_met
from controller.status_record import check_record, printable
from controller.telemetry.base import shortened
from controller.toml_file import read_toml
from tuner.own_files import open_plain

STALE_CYCLES = 3
"""Slow cycles past which the last decision is flagged stale (the daemon writes one a cycle)."""
TAIL_BYTES = 1 << 20
"""How much of the log's end is read for its last line (a line holds every service of one cycle)."""


def last_decision(path: Path) -> dict[str, Any]:
    """The last whole line of the decision log; ConfigError naming the file where there is none."""
    try:
        with open_plain(path, "rb") as f:
            f.seek(0, 2)
            size = f.tell()
            f.seek(max(0, size - TAIL_BYTES))
            lines = f.read().decode("utf-8", "replace").splitlines()
    except OSError as exc:
        raise ConfigError("daemon.decision_log", f"cannot read {path}: {exc.strerror or exc} (is the daemon "
                          "running with this config?)") from None
    for line in reversed(lines):
        try:
            record = json.loads(line)
        except (ValueError, RecursionError):
            continue  # a line cut by the tail's start, or being written (or no log line: nested thousands deep)
        if isinstance(record, dict) and isinstance(record.get("services"), dict):
            return record
    if size > TAIL_BYTES:  # a record longer than the tail read, or no log line at all
        raise ConfigError("daemon.decision_log", f"{path}: its last {TAIL_BYTES >> 20} MiB hold no whole decision "
                          f"record (the file is {size} bytes)")
    written = [line for line in lines if line.strip()]
    if written:  # lines, none a decision: not "yet", but a file the daemon did not write (or cut by hand); not
        # quoted: a decision_log set to /etc/passwd printed one of its lines
        lines_read = f"{len(written)} line{'s' * (len(written) != 1)}"
        raise ConfigError("daemon.decision_log", f"{path}: no line of it is a decision record ({lines_read} read, "
                          "none a JSON object holding services); is it the daemon's decision log?")
    raise ConfigError("daemon.decision_log", f"{path} holds no decision yet")


def _shape(s: dict[str, Any] | None) -> str:
    if not s:
        return "nothing"
    clock = f" clock {s['sm_clock_share']:.0%}" if isinstance(s.get("sm_clock_share"), int | float) else ""
    return f"{s['replicas']} x {s['accelerator']} batch {s['max_batch']} cap {s['cap_w']:.0f} W{clock}"


NO_WINDOW = "no window observed"
"""A service's SLO line before any window measured it: the plan counted it at no load."""


def _slo(svc: ServiceSettings, observed: dict[str, Any] | None) -> tuple[bool | None, str]:
    """Whether the window's statistic met both targets, and the figures that say so."""
    if not observed:
        return None, NO_WINDOW
    observed = {k: v for k, v in observed.items() if not (isinstance(v, float) and not math.isfinite(v))}  # NaN: none
    met = slo_met(svc, observed.get("ttft_ms"), observed.get("itl_ms"), observed.get("ttft_p95_ms"),
                  observed.get("itl_p95_ms"))
    if met is None:
        return None, "no latency observed (no traffic)"
    suffix = "" if svc.statistic == "mean" else "_p95"
    ttft, itl = observed[f"ttft{suffix}_ms"], observed[f"itl{suffix}_ms"]
    stat = svc.statistic if svc.statistic != "p99" else "p95 (p99 target)"
    per_step, drafts = observed.get("tokens_per_step"), observed.get("draft_tokens")
    step = f" (a step: {per_step:.2f} tokens)" if isinstance(per_step, int | float) and per_step > 1.005 else ""
    if step and isinstance(drafts, int | float) and drafts > 0:
        step = f" (a step: {per_step:.2f} tokens, {drafts:.3g} drafted)"
    return met, f"{stat} TTFT {_figure(ttft)}/{svc.ttft_ms:.0f} ms, ITL{step} {_figure(itl, 1)}/{svc.itl_ms:.0f} ms"


def _entry(r: dict[str, Any], priority: int | None, met: bool | None, slo: str, why: list[str]) -> dict[str, Any]:
    """One service's line of the report: what the cycle applied is what runs now (a record written before
    "applied" was says what ran before it)."""
    if r.get("applied") and r.get("in_force") and _shape(r["applied"]) != _shape(r["in_force"]):  # as printed
        why = [*why, f"changed this cycle: its window and GPU figures are of {_shape(r['in_force'])}"]
    return {"priority": priority, "in_force": r.get("applied", r.get("in_force")), "planned": r.get("planned"),
            "gpus": _gpus(r.get("gpus")), "ceiling_w": r.get("ceiling_w"), "slo_met": met, "slo": slo, "why": why,
            "tuner": r.get("tuner")}


def _gpus(g: Any) -> dict[str, float | None] | None:
    """The service's GPUs over the cycle (mean draw and limit, and the share of it the limits held their clocks
    where the source reads it), as the daemon writes them, or none (a record from before it did)."""
    if g is None:
        return None
    return {"draw_w": g["draw_w"], "limit_w": g["limit_w"], "capped_share": g.get("capped_share")}


def _clipped(g: dict[str, Any]) -> str:
    """How much of the cycle the limits held the GPUs' clocks, where the source reads it: a limit can bite under a
    mean draw well below it (a prompt's compute-bound steps)."""
    c = g.get("capped_share")
    return "" if c is None else f", held by them {100 * c:.0f} % of the time"


class View(NamedTuple):
    """What status reads of a config: its services' targets, the slow loop's period and the decision log."""

    services: tuple[ServiceSettings, ...]
    slow_interval_s: float
    log: Path | None
    problem: str | None = None
    """Why the file does not load where it does not (its [daemon] table read alone: the log is still found)."""


FINDS_LOG = ("state_dir", "decision_log", "slow_interval_s")
"""The [daemon] keys status reads of a file that does not load: where the log is, and when its last line is stale
(beside the least fast period, which no slow period of a daemon that ran is shorter than)."""


TYPO = 0.85
"""How near (difflib's ratio) a key the [daemon] table does not know must be to another field to be read as its typo
(`fast_intervall_s`, 0.97); `logfile` is 0.63 from `log_level` and may mean `decision_log`."""
TABLE_TYPO = 0.75
"""How near a table's name must be to `daemon` to be read as [daemon] misspelt (`deamon` is 0.83; the other tables'
names are 0.13-0.33 from it)."""


def _misspells_log(data: dict[str, Any]) -> bool:
    """Whether the file may name the log in a way it is not read by: a [daemon] table misspelt (`[deamon]`), or a key
    of it that is not a typo of a field outside FINDS_LOG (`state_dri`, `STATE_DIR`, `dir`, `logfile`). The log it
    meant is then not known, and none is guessed."""
    if "daemon" not in data and get_close_matches("daemon", [k.lower() for k in data], n=1, cutoff=TABLE_TYPO):
        return True
    table = data.get("daemon", {})
    known = [f.name for f in fields(DaemonSettings)]
    for key in set(table) - set(known):
        near = get_close_matches(key.lower().replace("-", "_"), known, n=1, cutoff=TYPO)
        if not near or near[0] in FINDS_LOG:
            return True
    return False


def view(config: Path) -> View:
    """The config's view; where the file does not load but its [daemon] table does, that table's log and period
    with no services (a refused edit is when an operator asks the running daemon most); else the ConfigError."""
    try:
        s = load_settings(config)
        return View(s.services, s.daemon.slow_interval_s, s.decision_log_path)
    except ConfigError as exc:
        daemon = None
        try:
            data = read_toml(config, "daemon config")
            table = data.get("daemon", {})
            # a key or value of its own refused (an edit the daemon would not reload): the log is still found
            if isinstance(table, dict) and not _misspells_log(data):
                found = {k: v for k, v in table.items() if k in FINDS_LOG}
                daemon = build(DaemonSettings, {**found, "fast_interval_s": LEAST_FAST_S}, "daemon")
        except ConfigError:
            pass
        if daemon is None:  # no [daemon] table to find the log by (`daemon = 5`: the default's is another daemon's)
            raise exc from None
        return View((), daemon.slow_interval_s, daemon.decision_log_path(config.resolve().parent), str(exc))


def report(config_view: View, record: dict[str, Any], now_s: float | None = None,
           config: Path | None = None) -> dict[str, Any]:
    """Per service: in force, planned, SLO met or not, and why (shortfall, what the gate or actuators held);
    `other_config`: the config the record's daemon ran where it is not `config` (two configs share the log);
    `writer_running`: whether the process that wrote the record runs (None where this host cannot tell)."""
    services = {}
    unknown = "not in this config file" if config_view.problem is None else "the config file does not load"
    for svc in config_view.services:
        r = record["services"].get(svc.name, {})
        met, figures = _slo(svc, r.get("observed"))
        why = []
        if r.get("reason"):
            why.append(f"short {_figure(r.get('short_rps', 0), 2)} rps ({r['reason']})")
        why += [f"gate held {h}" for h in _items(r.get("gate_held"))]
        why += [f"actuator held {h}" for h in _items(r.get("actuator_held"))]
        services[svc.name] = _entry(r, svc.priority, met, figures, why)
    for name in sorted(set(record["services"]) - {svc.name for svc in config_view.services}):
        # in the daemon's config but not this file's (an edit not yet loaded, or a file that does not load)
        services[name] = _entry(record["services"][name], None, None, unknown, [])
    wall = record.get("wall_time")
    age = None if wall is None else round((time.time() if now_s is None else now_s) - float(wall), 1)
    # a decision from the future is no sign of life either (a clock set back, or a foreign file)
    fresh = (-config_view.slow_interval_s, STALE_CYCLES * config_view.slow_interval_s)
    running = _running(record.get("pid"), (record.get("host"), record.get("pid_ns"), record.get("boot_id")))
    return {"age_s": age, "stale": running is False or (age is not None and not fresh[0] <= age <= fresh[1]),
            "writer_running": running, "config_problem": config_view.problem,
            "budget_w": record.get("budget_w"), "predicted_w": record.get("predicted_w"),
            "draw_w": record.get("draw_w"), "degradation": record.get("degradation") or {},
            "budget_why": (record.get("budget") or {}).get("why"), "errors": _items(record.get("errors")),
            "blocked": _items(record.get("blocked")), "services": services,
            "untold": _items(record.get("held_untold")),
            "other_config": None if config is None or _same(record.get("config"), config) else str(record["config"])}


def _running(pid: Any, where: tuple[Any, Any, Any]) -> bool | None:
    """Whether process `pid` (checked: controller/status_record.py) runs, where the record was written on this host,
    in this pid namespace, since its boot (a daemon stopped or restarted since left its last cycle reading as
    current for STALE_CYCLES; a reused pid reads as running, as before)."""
    if where != (HOST, PID_NS, BOOT_ID) or None in where or pid is None:  # another host's, a container's pids
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: another user's process, running
        pass
    return True


def _same(written_by: Any, config: Path) -> bool:
    """The record's config is `config` (or names none): the same name (a ConfigMap's link the kubelet has moved
    since still names it) or the same file (one reached through a link)."""
    if written_by is None or written_by == os.path.abspath(config):
        return True
    try:
        return Path(str(written_by)).resolve() == config.resolve()
    except (OSError, RuntimeError, ValueError):  # a link loop, a NUL: not shown as the same
        return False


def _items(value: Any) -> list[Any]:
    """A record's list (none: empty); a lone string is one item, not one a character."""
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    return list(value)


def status(config_view: View, path: Path, as_json: bool, config: Path | None = None) -> str:
    """What `wattscale status` prints (of the daemon running `config`); a last record this version cannot read is
    one ConfigError, no traceback."""
    record = last_decision(path)
    try:
        check_record(record)
        rep = report(config_view, record, config=config)
        shown = text(printable(rep))  # in both modes: a record the text cannot read is refused in JSON too
        return strict_json.dumps(rep, indent=2) if as_json else shown
    except (KeyError, TypeError, ValueError, AttributeError, OverflowError, RecursionError) as exc:
        what = f"no field {exc.args[0]!r}" if isinstance(exc, KeyError) and exc.args else shortened(str(exc))
        raise ConfigError("daemon.decision_log", f"{path}: its last record has a field that is not what the daemon "
                          f"writes ({what}): edited by hand, or from another version of wattscale; "
                          "the running daemon writes a new one each cycle") from None


def _figure(x: float, decimals: int = 0) -> str:
    """Seconds, watts, ms or rps as a person reads them: to `decimals` below a billion, a short float past (1e308
    printed 309 digits)."""
    return f"{x:.{decimals}f}" if abs(x) < 1e9 else f"{x:.3g}"


def text(rep: dict[str, Any]) -> str:
    age = "" if rep["age_s"] is None else (f", decided {_figure(rep['age_s'])} s ago" if rep["age_s"] >= 0 else
                                            f", dated {_figure(-rep['age_s'])} s in the future")
    if rep["writer_running"] is False:
        age += " (stale: the daemon that wrote it has stopped)"
    elif rep["stale"]:
        age += " (stale: is the daemon running?)"
    why = f" ({rep['budget_why']})" if rep["budget_why"] else ""
    drawn = "" if rep["draw_w"] is None else f", drawing {_figure(rep['draw_w'])} W"
    unseen = len(rep["untold"])  # the daemon's, not this file's (it may name others)
    at = f" (at no load for services no window has measured yet: {unseen})" if unseen else ""
    planned = ("no plan applied that cycle (the optimizer failed, or the daemon was stopping)"
               if rep["predicted_w"] is None else f"plan predicts {_figure(rep['predicted_w'])} W{at}")
    lines = [f"budget {_figure(rep['budget_w'])} W{why}, {planned}{drawn}{age}"]
    if rep["config_problem"]:
        lines.insert(0, f"this config file does not load ({rep['config_problem']}): a running daemon keeps the "
                        "config it loaded last; its services below without this file's targets")
    if rep["other_config"]:
        lines.insert(0, f"written by the daemon running {rep['other_config']}, not this config: the two share "
                        "daemon.decision_log (give each its own daemon.state_dir)")
    d = rep["degradation"]
    if d.get("emergency"):
        floor = "; every limit at its floor" if d.get("urgent") else ""
        lines.append(f"power emergency: the governor holds {d.get('gpus_held_below_plan', 0)} GPUs below the plan's "
                     f"caps (step {d.get('step', '?')}){floor}")
    elif d.get("gpus_held_below_plan"):  # the budget binds without an emergency: what the caps alone do not say
        line = "its ramp limit (power.ramp_up_w_per_s)" if d.get("ramp_bound") else "the budget"
        lines.append(f"the governor holds {d['gpus_held_below_plan']} GPUs below the plan's caps to fit {line} "
                     f"(step {d.get('step', '?')})")
    for name, s in rep["services"].items():
        verdict = {True: "SLO met", False: "SLO missed", None: "SLO unknown"}[s["slo_met"]]
        planned = "" if _shape(s["planned"]) == _shape(s["in_force"]) else f"; planned {_shape(s['planned'])}"
        priority = "" if s["priority"] is None else f" (priority {s['priority']})"
        gpus = "" if s["gpus"] is None else (f"; its GPUs under {_figure(s['gpus']['limit_w'])} W limits, drawing "
                                             f"{_figure(s['gpus']['draw_w'])} W{_clipped(s['gpus'])}")  # the governor's
        ceiling = "" if s.get("ceiling_w") is None else f" (up to {_figure(s['ceiling_w'])} W while it holds them)"
        lines.append(f"{name}{priority}: {_shape(s['in_force'])}{ceiling}{planned}{gpus}; {verdict}: {s['slo']}")
        lines += [f"  - {w}" for w in s["why"]]
    lines += [f"error: {e}" for e in rep["errors"]]
    for b in rep["blocked"]:  # a GPU's limit is tried again after 5 minutes too (controller/retry.py)
        lines.append(f"given up until its config changes{' or 5 minutes pass' if b.startswith('power_limit:') else ''}"
                     f": {b}")
    return "\n".join("".join(c if c.isprintable() else repr(c)[1:-1] for c in line) for line in lines)
