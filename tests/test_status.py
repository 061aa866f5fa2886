"""`wattscale status`: from a daemon's decision log, what runs against what is planned, per service, with
its SLO met or not; one line and exit 2 where there is no log to read."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from controller.cli import main
from controller.daemon import Daemon
from controller.settings import load_settings


def decision_log(config: Path) -> Path:
    """The config's decision-log path, its directory made (the tests write the log's lines themselves)."""
    log = load_settings(config).decision_log_path
    assert log is not None
    log.parent.mkdir(parents=True, exist_ok=True)
    return log


def real_record(sim_config: Callable[..., Path]) -> tuple[Path, Path, dict[str, Any]]:
    """A config, its decision log and the last record a daemon wrote there after one cycle."""
    path = sim_config()
    daemon = Daemon(path, load_settings(path))
    daemon.t0 -= 20.0
    daemon.fast()
    daemon.slow()
    daemon.parts.close()
    log = decision_log(path)
    record: dict[str, Any] = json.loads(log.read_text().splitlines()[-1])
    return path, log, record


def test_status_reads_the_last_decision(sim_config: Callable[..., Path], capsys: pytest.CaptureFixture[str]) -> None:
    path = sim_config()
    daemon = Daemon(path, load_settings(path))
    for _ in range(2):
        daemon.t0 -= 20.0  # 20 simulated seconds a step: the services serve and a window is observed
        daemon.fast()
        daemon.slow()
    daemon.parts.close()
    assert main(["status", "--config", str(path)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("budget 4000 W, plan predicts") and ", drawing " in out[0] and "decided" in out[0]
    assert "at no load" not in out[0]
    for name in ("chat", "code", "batch-summaries"):
        line = next(x for x in out if x.startswith(f"{name} (priority"))
        assert "x H100-SXM batch" in line and ("SLO met" in line or "SLO missed" in line), line
    assert main(["status", "--config", str(path), "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["services"]["code"]["slo"].startswith("p95 TTFT")
    assert rep["services"]["chat"]["in_force"]["accelerator"] == "H100-SXM" and rep["age_s"] < 60
    assert rep["draw_w"] > 0 and rep["degradation"]["emergency"] is False and rep["degradation"]["urgent"] is False
    running = daemon.controller.assignments["chat"]  # what the last cycle applied is what status says runs
    assert rep["services"]["chat"]["in_force"] == {"accelerator": running.accelerator, "replicas": running.replicas,
                                                   "max_batch": running.max_batch,
                                                   "cap_w": round(running.power_cap_w, 1)}


def test_status_without_a_decision_log_is_one_line(sim_config: Callable[..., Path],
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["status", "--config", str(sim_config())]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("wattscale: daemon.decision_log: cannot read"), err


SHAPE = {"accelerator": "H100-SXM", "replicas": 1, "max_batch": 64, "cap_w": 420.0}


@pytest.mark.parametrize("edit", [{"wall_time": "x"}, {"services": {"chat": 5}}, {"budget_w": "lots"},
                                  {"wall_time": float("nan")}, {"budget_w": 10**400}, {"draw_w": float("inf")},
                                  {"services": {"chat": {"in_force": {**SHAPE, "replicas": -5}}}},
                                  {"services": {"chat": {"in_force": {**SHAPE, "cap_w": float("inf")}}}},
                                  {"services": {"chat": {"gpus": {"draw_w": "", "limit_w": 400.0}}}},
                                  {"services": {"chat": {"gpus": {"draw_w": 300.0}}}},
                                  {"services": {"chat": {"gpus": {"draw_w": 300.0, "limit_w": 400.0,
                                                                  "capped_share": 1.5}}}},
                                  {"services": {"chat": {"in_force": {"replicas": 1}}}}])
@pytest.mark.parametrize("as_json", [[], ["--json"]])
def test_a_last_record_status_cannot_read_is_one_line(sim_config: Callable[..., Path], edit: dict[str, object],
                                                      as_json: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    """A hand-edited or foreign decision log: one line naming the file, no traceback and no "nan s ago"; the same
    in JSON (it printed what the text refused)."""
    path = sim_config()
    log = decision_log(path)
    log.write_text(json.dumps({"t": 1.0, "budget_w": 4000.0, "wall_time": 0.0, "services": {}, **edit}) + "\n")
    assert main(["status", "--config", str(path), *as_json]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"wattscale: daemon.decision_log: {log}: its last record has a field "
                                               "that is not what the daemon writes ("), err
    assert "Error" not in err[0]  # no Python class names: TypeError, AttributeError


@pytest.mark.parametrize(("edit", "named"), [
    ({"services": {"chat": {"in_force": {**SHAPE, "replicas": "x"}}}}, "services.chat.in_force.replicas 'x'"),
    ({"services": {"chat": {"in_force": {"replicas": 1}}}}, "services.chat.in_force has no field 'accelerator'"),
    ({"services": {"chat": {"reason": "busy", "short_rps": "x"}}}, "services.chat.short_rps 'x'"),
    ({"services": {"chat": {"observed": {"ttft_ms": "x"}}}}, "services.chat.observed.ttft_ms 'x'"),
    ({"services": {"chat": {"gate_held": {"a": 1}}}}, "services.chat.gate_held {'a': 1}"),
    ({"budget_w": [1]}, "budget_w [1]"), ({"degradation": [1]}, "degradation [1]"), ({"budget": "x"}, "budget 'x'"),
    ({"wall_time": True}, "wall_time True"), ({"errors": 5}, "errors 5"), ({"held_untold": 5}, "held_untold 5"),
    # and values it had shown as nonsense: "True x H100-SXM", "2.7 x", "2 x 5 batch 64", "SLO met: mean TTFT -100",
    # "drawing -5 W", "holds x GPUs", "budget 4000 W (['a'])", "abs(): 'NoneType'" where the budget was gone
    ({"services": {"chat": {"in_force": {**SHAPE, "replicas": True}}}}, "services.chat.in_force.replicas True"),
    ({"services": {"chat": {"in_force": {**SHAPE, "replicas": 2.7}}}}, "services.chat.in_force.replicas 2.7"),
    ({"services": {"chat": {"in_force": {**SHAPE, "accelerator": 5}}}}, "services.chat.in_force.accelerator 5"),
    ({"services": {"chat": {"observed": {"ttft_ms": -100.0, "itl_ms": 3.0}}}}, "services.chat.observed.ttft_ms -100.0"),
    ({"draw_w": -5}, "draw_w -5"), ({"budget_w": None}, "budget_w None"),
    ({"degradation": {"emergency": True, "gpus_held_below_plan": "x"}}, "degradation.gpus_held_below_plan 'x'"),
    ({"budget": {"why": ["a"]}}, "budget.why ['a']"),
    # the on-disk trial: a cap printed in 309 digits, "clock nan%", and "'int' object has no attribute 'startswith'"
    ({"services": {"chat": {"in_force": {**SHAPE, "cap_w": 1e308}}}}, "services.chat.in_force.cap_w 1e+308"),
    ({"services": {"chat": {"in_force": {**SHAPE, "sm_clock_share": 7.0}}}},
     "services.chat.in_force.sm_clock_share 7.0"),
    ({"blocked": [5]}, "blocked [5]"),
])
def test_a_field_of_another_type_is_named_by_its_path(sim_config: Callable[..., Path], edit: dict[str, object],
                                                      named: str, capsys: pytest.CaptureFixture[str]) -> None:
    """Python's own words had reached the user ("'<=' not supported between instances of 'int' and 'str'", "Unknown
    format code 'f' for object of type 'str'", "'list' object has no attribute 'get'"), and a text latency was
    read as none."""
    path = sim_config()
    log = decision_log(path)
    log.write_text(json.dumps({"t": 1.0, "budget_w": 4000.0, "wall_time": 0.0, "services": {}, **edit}) + "\n")
    assert main(["status", "--config", str(path)]) == 2
    assert capsys.readouterr().err == (f"wattscale: daemon.decision_log: {log}: its last record has a field that is "
                                       f"not what the daemon writes ({named}): edited by hand, or from another "
                                       "version of wattscale; the running daemon writes a new one each cycle\n")


def test_a_record_whose_degradation_is_null_reads_as_none(sim_config: Callable[..., Path],
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    """"'NoneType' object has no attribute 'get'" had reached the user (the on-disk trial)."""
    path = sim_config()
    decision_log(path).write_text(json.dumps({"t": 1.0, "budget_w": 4000.0, "wall_time": 0.0, "services": {},
                                              "degradation": None}) + "\n")
    assert main(["status", "--config", str(path)]) == 0
    assert "Traceback" not in capsys.readouterr().err


def test_a_record_nested_past_the_json_writer_is_one_line(sim_config: Callable[..., Path],
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    """A real record whose tuner figures are nested 600 deep parses, but the strict JSON writer recursed past
    Python's limit: a traceback in --json."""
    path, log, record = real_record(sim_config)
    record["services"]["chat"]["tuner"] = "DEEP"
    log.write_text(json.dumps(record).replace('"DEEP"', "[" * 600 + "]" * 600) + "\n")
    assert main(["status", "--config", str(path), "--json"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("\n") == 1 and "maximum recursion depth" in err


def test_a_last_line_past_the_tail_read_is_named_as_such(sim_config: Callable[..., Path],
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    """A valid record and then a 2-MiB line: "holds no decision yet", which was false."""
    path = sim_config()
    log = decision_log(path)
    log.write_text(json.dumps({"t": 1.0, "budget_w": 4000.0, "wall_time": 0.0, "services": {}}) + "\n"
                   + "x" * (2 << 20) + "\n")
    assert main(["status", "--config", str(path)]) == 2
    assert "its last 1 MiB hold no whole decision record" in capsys.readouterr().err


@pytest.mark.parametrize(("wall_time", "words"), [(1.0, " s ago"), (4e9, " s in the future")])
def test_an_old_or_future_last_decision_is_flagged_stale(sim_config: Callable[..., Path],
                                                         capsys: pytest.CaptureFixture[str], wall_time: float,
                                                         words: str) -> None:
    """A line from the future is no sign of life either (a clock set back, or another host's log)."""
    path = sim_config()
    log = decision_log(path)
    log.write_text(json.dumps({"t": 1.0, "budget_w": 4000.0, "wall_time": wall_time, "services": {}}) + "\n")
    assert main(["status", "--config", str(path)]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert words in first and first.endswith("(stale: is the daemon running?)"), first


def test_a_foreign_records_strings_and_escapes_are_printed_as_one_safe_line(
        sim_config: Callable[..., Path], capsys: pytest.CaptureFixture[str]) -> None:
    """A string where a list belongs was printed a character a line; a name holding terminal escapes raw."""
    path = sim_config()
    log = decision_log(path)
    shape = {"accelerator": "H100-SXM", "replicas": 1, "max_batch": 64, "cap_w": 420.0}
    record = {"t": 1.0, "budget_w": 900.0, "wall_time": time.time(), "errors": "nvml down",
              "services": {"chat": {"in_force": shape, "planned": shape, "gate_held": "replicas 1 not 2"},
                           "evil\x1b[2J\nname": {"in_force": shape, "planned": shape}}}
    log.write_text(json.dumps(record) + "\n")
    assert main(["status", "--config", str(path)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert "  - gate held replicas 1 not 2" in out and "error: nvml down" in out, out
    assert any(x.startswith("evil\\x1b[2J\\nname: 1 x H100-SXM") for x in out), out
    assert not any("\x1b" in x for x in out)


def test_status_counts_the_daemons_unmeasured_services_and_says_gpus_held_outside_an_emergency(
        sim_config: Callable[..., Path], capsys: pytest.CaptureFixture[str]) -> None:
    """The note counted this file's services with no window (a renamed one the daemon does not run among them),
    where the record says which the plan counted at no load; and the GPUs the budget held under the plan's caps
    showed only in --json unless in an emergency."""
    path = sim_config()
    shape = {"accelerator": "H100-SXM", "replicas": 1, "max_batch": 64, "cap_w": 630.0}
    record = {"t": 1.0, "budget_w": 2000.0, "predicted_w": 1796.0, "draw_w": 1900.0, "wall_time": time.time(),
              "degradation": {"emergency": False, "urgent": False, "gpus_held_below_plan": 4, "step": "caps"},
              "services": {"chat": {"in_force": shape, "applied": shape, "planned": shape}}}
    decision_log(path).write_text(json.dumps(record) + "\n")
    assert main(["status", "--config", str(path)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("budget 2000 W, plan predicts 1796 W, drawing 1900 W"), out
    assert out[1] == "the governor holds 4 GPUs below the plan's caps to fit the budget (step caps)"
    record["degradation"]["ramp_bound"] = True  # type: ignore[index]  # 910 W of 4,000 drawn under a ramp limit
    decision_log(path).write_text(json.dumps(record) + "\n")  # blamed on the budget (a new user's trial)
    assert main(["status", "--config", str(path)]) == 0
    assert capsys.readouterr().out.splitlines()[1] == ("the governor holds 4 GPUs below the plan's caps to fit its "
                                                      "ramp limit (power.ramp_up_w_per_s) (step caps)")


def test_status_says_what_the_cycle_applied_the_draw_and_an_emergency(sim_config: Callable[..., Path],
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    """The applied shape, not the one before the decision; the measured draw and the governor's emergency; a
    service the running daemon has and this file does not (a refused reload's edit) is still listed."""
    path = sim_config()
    log = decision_log(path)
    before = {"accelerator": "H100-SXM", "replicas": 1, "max_batch": 64, "cap_w": 420.0}
    after = {**before, "replicas": 2, "cap_w": 520.0}
    record = {"t": 1.0, "budget_w": 900.0, "predicted_w": 760.0, "draw_w": 1390.0, "wall_time": time.time(),
              "held_untold": ["chat", "code", "old-name"],  # the daemon's count, whatever this file names
              "degradation": {"emergency": True, "urgent": True, "gpus_held_below_plan": 8, "step": "caps"},
              "services": {"chat": {"in_force": before, "applied": after, "planned": after},
                           "old-name": {"in_force": before, "applied": {**before, "cap_w": 420.3},  # as printed
                                        "planned": before},
                           "zz-gone": {"in_force": before, "applied": {**before, "sm_clock_share": 0.7},
                                       "planned": before}}}
    log.write_text(json.dumps(record) + "\n")
    assert main(["status", "--config", str(path)]) == 0
    out = capsys.readouterr().out.splitlines()
    # no window has measured a service yet: the plan counted them at no load, which the prediction says
    assert out[0].startswith("budget 900 W, plan predicts 760 W (at no load for services no window has measured "
                             "yet: 3), drawing 1390 W")
    assert out[1] == ("power emergency: the governor holds 8 GPUs below the plan's caps (step caps); every limit "
                      "at its floor")
    assert any(x.startswith("chat (priority 1): 2 x H100-SXM batch 64 cap 520 W; SLO unknown") for x in out), out
    # its window and GPU figures are the cycle's before the change: a miss measured on 1 replica read as on 2
    chat = out.index(next(x for x in out if x.startswith("chat (priority 1)")))
    assert out[chat + 1] == ("  - changed this cycle: its window and GPU figures are of 1 x H100-SXM batch 64 cap "
                             "420 W")
    assert any(x.startswith("old-name: 1 x H100-SXM batch 64 cap 420 W; SLO unknown: not in this config file")
               for x in out), out
    old = out.index(next(x for x in out if x.startswith("old-name")))
    # old-name: nothing said of a change under the watt its shape prints
    assert out[old + 1].startswith("zz-gone: 1 x H100-SXM batch 64 cap 420 W clock 70%;")
    # a service of the record alone (this file's, or one that does not load) is said changed too; a clock is shape
    assert out[old + 2] == "  - changed this cycle: its window and GPU figures are of 1 x H100-SXM batch 64 cap 420 W"


def test_a_last_line_nested_thousands_deep_is_no_decision(sim_config: Callable[..., Path],
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    """json.loads raised RecursionError on it, a traceback; it is read past as a line that is no record."""
    path = sim_config()
    log = decision_log(path)
    log.write_text("[" * 100_000 + "\n")
    assert main(["status", "--config", str(path)]) == 2
    assert capsys.readouterr().err.strip().startswith(f"wattscale: daemon.decision_log: {log}: no line of it is a "
                                                      "decision record (1 line read, none a JSON object")


@pytest.mark.parametrize("line", ["garbage", "{}", "[]", "null"])
def test_a_log_of_lines_that_are_no_decision_says_so(sim_config: Callable[..., Path], line: str,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """Such a file read "holds no decision yet", as an empty log does: a file the daemon never wrote."""
    path = sim_config()
    log = decision_log(path)
    log.write_text(line + "\n")
    assert main(["status", "--config", str(path)]) == 2
    assert capsys.readouterr().err.strip() == (f"wattscale: daemon.decision_log: {log}: no line of it is a decision "
                                               "record (1 line read, none a JSON object holding services); is it the "
                                               "daemon's decision log?")
    log.write_text(f"{line}\nroot:x:0:0:root:/root:/bin/bash\n")  # a foreign file's lines are not echoed
    assert main(["status", "--config", str(path)]) == 2
    assert "2 lines read" in (err := capsys.readouterr().err) and "root" not in err.replace(str(log), "")
    log.write_text("\n")
    assert main(["status", "--config", str(path)]) == 2
    assert capsys.readouterr().err.strip() == f"wattscale: daemon.decision_log: {log} holds no decision yet"


def test_a_nan_latency_is_unknown_and_an_absurd_age_is_short(sim_config: Callable[..., Path],
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    """A foreign log's NaN TTFT read "SLO missed: mean TTFT nan/300"; a wall_time of -1e308 printed 309 digits."""
    path, log, record = real_record(sim_config)
    record["wall_time"] = -1e308
    record["budget_w"], record["predicted_w"] = 1e308, 1e300  # as many digits again (a negative one is refused)
    record["services"]["chat"]["observed"] = {"ttft_ms": float("nan"), "itl_ms": 10.0}
    record["services"]["code"].update(reason="busy", short_rps=1e308)  # "short 1000...(309 digits).00 rps"
    log.write_text(json.dumps(record) + "\n")
    assert main(["status", "--config", str(path)]) == 0
    out = capsys.readouterr().out
    assert "decided 1e+308 s ago" in out and "nan" not in out.lower() and "no latency observed" in out
    assert "short 1e+308 rps (busy)" in out, out
    assert out.startswith("budget 1e+308 W, plan predicts 1e+300 W"), out


def test_status_says_when_the_log_is_another_configs(sim_config: Callable[..., Path],
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """Two configs with one state directory (the shipped sim.toml and a scenario's host both read var/state):
    status under one showed the other's fleet as its own. The same file by another name is no other config."""
    path, log, record = real_record(sim_config)
    assert record["config"] == str(path.absolute())
    link = path.with_name("link.toml")
    link.symlink_to(path)
    for name in (path, link):
        assert main(["status", "--config", str(name)]) == 0
        assert "written by the daemon running" not in capsys.readouterr().out
    # a ConfigMap's file: the daemon ran with the link, which the kubelet has since moved to a new folder
    log.write_text(json.dumps({**record, "config": str(link)}) + "\n")
    moved = path.with_name("moved.toml")
    moved.write_text(path.read_text())
    link.unlink()
    link.symlink_to(moved)
    assert main(["status", "--config", str(link)]) == 0
    assert "written by the daemon running" not in capsys.readouterr().out
    other = path.with_name("other.toml")
    other.write_text(path.read_text())
    assert main(["status", "--config", str(other)]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert first == (f"written by the daemon running {link}, not this config: the two share "
                     "daemon.decision_log (give each its own daemon.state_dir)")


def exited_pid() -> int:
    """The pid of a process that has run and been reaped."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_a_last_decision_whose_daemon_has_stopped_is_stale_at_once(sim_config: Callable[..., Path],
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """A daemon stopped (or restarted and not yet through a cycle) left its last cycle reading as current for three
    slow cycles: each line names its process, and on its host status asks whether it runs."""
    path, log, record = real_record(sim_config)
    assert record["pid"] == os.getpid()  # this process wrote it, and runs
    assert main(["status", "--config", str(path), "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["writer_running"] is True and rep["stale"] is False
    log.write_text(json.dumps({**record, "pid": exited_pid()}) + "\n")
    assert main(["status", "--config", str(path)]) == 0
    assert capsys.readouterr().out.splitlines()[0].endswith(" s ago (stale: the daemon that wrote it has stopped)")
    # another host's process, another pid namespace's (a container on the host's network has the host's name) or
    # another boot's, or a record with no pid: not asked, and not stale for it
    here = (record["host"], record["pid_ns"], record["boot_id"])
    for pid, (host, space, boot) in ((exited_pid(), ("elsewhere", *here[1:])), (exited_pid(), (here[0], 1, here[2])),
                                     (exited_pid(), (*here[:2], "another boot")), (None, here)):
        log.write_text(json.dumps({**record, "pid": pid, "host": host, "pid_ns": space, "boot_id": boot}) + "\n")
        assert main(["status", "--config", str(path), "--json"]) == 0
        rep = json.loads(capsys.readouterr().out)
        assert rep["writer_running"] is None and rep["stale"] is False, (pid, host)
    # a pid the daemon never writes (one that would name a process group, or none) is a hand-edited record: refused,
    # where it read as a current decision
    for pid in (0, -1, True, 1 << 40, "1", 2.5):
        log.write_text(json.dumps({**record, "pid": pid}) + "\n")
        assert main(["status", "--config", str(path), "--json"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].endswith(f"writes (pid {pid!r}): edited by hand, or from another version of "
                                                 "wattscale; the running daemon writes a new one each cycle"), err


def test_status_reads_the_running_daemons_log_when_the_file_does_not_load(sim_config: Callable[..., Path],
                                                                         capsys: pytest.CaptureFixture[str]) -> None:
    """An edit the daemon refused (it keeps running its config) made status refuse too, when it is most wanted:
    the file's [daemon] table still finds the log, and the services are shown without this file's targets. A
    [daemon] table that does not load is the file's error, as before."""
    path, log, _ = real_record(sim_config)
    path.write_text(path.read_text().replace("ttft_ms = 300", "ttft_ms = -1"))
    assert main(["status", "--config", str(path)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("this config file does not load (services[chat].ttft_ms: ") and "-1" in out[0], out
    assert out[0].endswith("a running daemon keeps the config it loaded last; its services below without this "
                           "file's targets")
    assert any(x.startswith("chat: 1 x H100-SXM") and x.endswith("SLO unknown: the config file does not load")
               for x in out), out
    assert main(["status", "--config", str(path), "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["config_problem"].startswith("services[chat].ttft_ms") and rep["services"]["chat"]["slo_met"] is None
    # a [daemon] table the daemon ran, its slow period under the default fast one's: still found by
    text = path.read_text()
    path.write_text(text.replace("fast_interval_s = 1.0", "fast_interval_s = 0.1").replace(
        "slow_interval_s = 15.0", "slow_interval_s = 0.5"))
    assert main(["status", "--config", str(path)]) == 0
    assert capsys.readouterr().out.startswith("this config file does not load (services[chat].ttft_ms")
    path.write_text(text)
    # a key that may be one of those misspelt: the log it names is not known, so none is guessed
    for misspelt in ("state_dri", "STATE_DIR", "dir", "logfile"):
        path.write_text(text.replace("state_dir = ", f"{misspelt} = ", 1))
        assert main(["status", "--config", str(path)]) == 2
        assert f"daemon.{misspelt}: unknown key" in capsys.readouterr().err
    for table in ("[deamon]", "[Daemon]"):  # the whole table misspelt: the defaults' log is another daemon's
        path.write_text(text.replace("[daemon]", table, 1))
        assert main(["status", "--config", str(path)]) == 2
        assert "unknown key" in capsys.readouterr().err
    path.write_text(text)
    # a [daemon] key or value of its own the daemon refused to reload: the log is still found by the rest
    for edit in ("fast_intervall_s = ", "fast_interval_s = 0.09\n# "):
        path.write_text(path.read_text().replace("fast_interval_s = ", edit, 1))
        assert main(["status", "--config", str(path)]) == 0
        out = capsys.readouterr().out.splitlines()
        assert out[0].startswith("this config file does not load (daemon.fast_interval"), out
        assert any(x.startswith("chat: 1 x H100-SXM") for x in out), out
        path.write_text(path.read_text().replace(edit, "fast_interval_s = ", 1))
    path.write_text(path.read_text().replace("slow_interval_s = ", "slow_interval_s = -"))
    assert main(["status", "--config", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("wattscale: daemon.slow_interval_s: must be in"), err
    # `daemon = 5`: no table to find the log by, and the default state_dir's log is another daemon's
    other = path.parent / "var" / "state" / "decisions.jsonl"
    other.parent.mkdir(parents=True)
    other.write_text(log.read_text())
    path.write_text(path.read_text().replace("[daemon]\n", "daemon = 5\n[elsewhere]\n", 1))
    assert main(["status", "--config", str(path)]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_a_command_starts_without_the_fitting_libraries() -> None:
    """Every command paid 2.2 s of CPU before it began, 1.2 s of it filterpy's scipy.stats and scipy.optimize,
    which only a fit or a MILP uses: `status`, polled, and `--version` among them. They load where they are used."""
    code = ("import sys, controller.cli, controller.status\n"
            "print(sorted(m for m in ('filterpy', 'scipy.stats', 'scipy.optimize') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == "[]", out.stdout


def test_the_daemon_loads_the_fitting_libraries_as_its_slow_worker_starts(sim_config: Callable[..., Path]) -> None:
    """Loaded at first use, filterpy's import (a second of CPU, scipy.stats with it) fell inside the slow cycle that
    first filtered a window, in the daemon's steady state: it is loaded as the slow worker starts, before any cycle."""
    path = sim_config()
    code = ("import sys\nfrom pathlib import Path\nfrom controller.daemon import Daemon\n"
            "from controller.settings import load_settings\n"
            f"path = Path({str(path)!r})\ndaemon = Daemon(path, load_settings(path))\n"
            "before = [m for m in ('filterpy', 'scipy.optimize') if m in sys.modules]\n"
            "daemon.stop_event.set()\ndaemon.slow_due.set()\ndaemon.slow_worker()  # returns before a cycle: stopped\n"
            "print(before, [m for m in ('filterpy.kalman', 'scipy.optimize') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.strip().splitlines()[-1] == "[] ['filterpy.kalman', 'scipy.optimize']", out.stdout


def _ran_under(sim_config: Callable[..., Path], budget_w: int, cycles: int,
               until: Callable[[dict[str, Any]], bool] = lambda _: False) -> tuple[Path, dict[str, Any]]:
    """A daemon on the simulated host under `budget_w`, run `cycles` fast and slow ticks 20 s apart, or until a
    decision meets `until`: its config and its last decision."""
    path = sim_config({"budget_w = 4000": f"budget_w = {budget_w}"})
    daemon = Daemon(path, load_settings(path))
    for _ in range(cycles):
        daemon.t0 -= 20.0
        daemon.fast()
        daemon.slow()
        if until(json.loads(decision_log(path).read_text().splitlines()[-1])):
            break
    daemon.parts.close()
    return path, json.loads(decision_log(path).read_text().splitlines()[-1])


def test_status_says_the_limits_the_governor_runs_the_gpus_under(sim_config: Callable[..., Path],
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """Under a budget that binds, the governor holds the limits' sum under it tick by tick, below the plan's caps:
    status said "cap 630 W" of GPUs that ran under 425-510 W (a new-user trial). Now it says both."""
    path, record = _ran_under(sim_config, 2400, cycles=3)
    chat = record["services"]["chat"]
    assert chat["gpus"]["draw_w"] > 0 and chat["gpus"]["limit_w"] < chat["in_force"]["cap_w"], chat
    assert main(["status", "--config", str(path)]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("chat (priority"))
    held = chat["gpus"]["capped_share"]  # the simulated GPUs keep NVML's power violation time
    assert f"batch {chat['applied']['max_batch']} cap {chat['applied']['cap_w']:.0f} W" in line, line
    assert (f"; its GPUs under {chat['gpus']['limit_w']:.0f} W limits, drawing {chat['gpus']['draw_w']:.0f} W, held "
            f"by them {100 * held:.0f} % of the time; SLO") in line, line


def test_status_says_how_far_a_fitted_cap_lets_its_gpus_grow(sim_config: Callable[..., Path],
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    """A cap fitted within the limits' sum read "cap 420 W" of GPUs under 472-W limits, and nothing said why (a
    new-user trial): the governor grows a GPU its fitted cap holds down toward the cap chosen before."""
    path, record = _ran_under(sim_config, 3600, cycles=30,  # caps are fitted once no service is adding replicas
                              until=lambda r: any("ceiling_w" in s for s in r["services"].values()))
    name, svc = next((n, s) for n, s in record["services"].items() if "ceiling_w" in s)
    assert svc["ceiling_w"] > svc["applied"]["cap_w"]
    assert main(["status", "--config", str(path)]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith(f"{name} (priority"))
    assert f"cap {svc['applied']['cap_w']:.0f} W (up to {svc['ceiling_w']:.0f} W while it holds them)" in line, line
    assert main(["status", "--config", str(path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["services"][name]["ceiling_w"] == svc["ceiling_w"]


def test_status_says_an_itl_read_a_step_where_a_step_gives_several_tokens(sim_config: Callable[..., Path],
                                                                            capsys: pytest.CaptureFixture[str]) -> None:
    """Under speculative decoding the ITL vLLM reports (and the target is held to) is a step's, several tokens':
    status says so beside the figure, and nothing where a step gives one."""
    path, log, record = real_record(sim_config)
    for per_step, drafts, said in ((2.5, None, "ITL (a step: 2.50 tokens) "),
                                   (2.5, 3.0, "ITL (a step: 2.50 tokens, 3 drafted) "), (1.0, None, "ITL ")):
        record["services"]["chat"]["observed"] = {"ttft_ms": 40.0, "itl_ms": 20.0, "rate_rps": 5.0,
                                                  "tokens_per_step": per_step, "draft_tokens": drafts}
        log.write_text(json.dumps(record) + "\n")
        assert main(["status", "--config", str(path)]) == 0
        line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("chat (priority"))
        assert f"{said}20.0/" in line, line


def test_status_cuts_a_records_long_strings_in_its_text_and_refuses_a_count_past_2_31(
        sim_config: Callable[..., Path], capsys: pytest.CaptureFixture[str]) -> None:
    """A 100-kB reason was printed whole, and 10^30 planned replicas as a figure: a long string is cut with its
    length said (its escapes shown escaped, as any), and such a count refused by its path."""
    path, log, record = real_record(sim_config)
    record["services"]["chat"]["reason"] = "\u001b[2J\u001b[31mhacked" + "x" * 100_000
    log.write_text(json.dumps(record) + "\n")
    assert main(["status", "--config", str(path)]) == 0
    out = capsys.readouterr().out
    assert "\u001b" not in out, out
    assert "\\x1b[2J\\x1b[31mhacked" in out, out
    assert re.search(r"hackedx+\.\.\. \(1000\d\d characters\)$", out, re.M), out  # the line "short ... (reason)"
    assert len(out) < 10_000
    assert main(["status", "--config", str(path), "--json"]) == 0  # the JSON keeps it whole
    assert len(json.loads(capsys.readouterr().out)["services"]["chat"]["why"][0]) > 100_000
    record["services"]["chat"]["reason"] = "budget"
    record["services"]["chat"]["planned"] = {"accelerator": "H100-SXM", "replicas": 10**30, "max_batch": 64,
                                             "cap_w": 700.0}
    log.write_text(json.dumps(record) + "\n")
    assert main(["status", "--config", str(path)]) == 2
    assert "services.chat.planned.replicas 1000000000000000000000000000000" in capsys.readouterr().err
