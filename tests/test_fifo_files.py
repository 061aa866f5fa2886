"""The daemon's own files are regular files: a FIFO in the place of the tuner state, the decision log, a
demand-response signal or a carbon CSV is refused at once (opening one waits for a process at its other end:
the loop that opened it would wait for ever), and `check-config` names the field."""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from controller.budget.api_http import MalformedAnswer
from controller.budget.base import TransientBudgetError
from controller.budget.carbon_feeds import CsvIntensityFeed
from controller.budget.demand_response import DemandResponseSource
from controller.cli import main
from controller.config_loader import ConfigError
from controller.decision_log import DecisionLog
from controller.status import last_decision
from tuner import store


def fifo(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    os.mkfifo(path)
    return path


def within(seconds: float, call: Callable[[], Any]) -> Any:
    """`call()`'s result or exception, or a failure if it is still waiting after `seconds`."""
    out: list[Any] = []

    def run() -> None:
        try:
            out.append(("value", call()))
        except Exception as exc:  # handed back to the test, which names what it expects
            out.append(("error", exc))

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(seconds)
    assert out, f"still waiting after {seconds} s"
    kind, value = out[0]
    if kind == "error":
        raise value
    return value


def test_a_fifo_as_the_tuner_state_is_one_warning_and_the_priors(tmp_path: Path) -> None:
    path = fifo(tmp_path / "tuner.json")
    warnings = within(5.0, lambda: store.load(path, {}))
    assert warnings == [f"{path}: cannot read tuner state (not a regular file); set aside as tuner.json.bad, "
                        "starting from priors"]


def test_a_fifo_as_the_decision_log_is_a_failed_write_not_a_stalled_cycle(tmp_path: Path) -> None:
    log = DecisionLog(fifo(tmp_path / "decisions.jsonl"))
    assert within(5.0, lambda: log.write({"services": {}})) is False
    assert log.failed


def test_status_on_a_fifo_names_the_decision_log(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^daemon\.decision_log: cannot read .*: not a regular file"):
        within(5.0, lambda: last_decision(fifo(tmp_path / "decisions.jsonl")))


def test_budget_sources_refuse_a_fifo_and_retry(tmp_path: Path) -> None:
    with pytest.raises(MalformedAnswer, match="not a regular file"):
        within(5.0, lambda: DemandResponseSource(str(fifo(tmp_path / "signal.json"))).step(0.0))
    with pytest.raises(TransientBudgetError, match="not a regular file"):
        within(5.0, lambda: CsvIntensityFeed(str(fifo(tmp_path / "grid.csv"))).fetch(0.0))


@pytest.mark.parametrize(("name", "field"), [("tuner.json", "daemon.state_dir"),
                                             ("decisions.jsonl", "daemon.decision_log")])
def test_check_config_names_a_state_file_that_is_not_a_regular_file(
        sim_config: Callable[..., Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str,
        field: str) -> None:
    path = sim_config()
    fifo(tmp_path / "state" / name)
    assert within(20.0, lambda: main(["check-config", str(path)])) == 2
    assert f"{field}: {tmp_path / 'state' / name} is not a regular file" in capsys.readouterr().err


@pytest.mark.parametrize(("name", "field"), [("tuner.json", "daemon.state_dir"),
                                             ("decisions.jsonl", "daemon.decision_log")])
def test_check_config_names_a_state_file_that_is_a_link_loop(sim_config: Callable[..., Path], tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str], name: str,
                                                             field: str) -> None:
    """check-config said ok, and run warned every cycle that the file "cannot be written"."""
    path = sim_config()
    link = tmp_path / "state" / name
    link.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(link, link)  # a link to itself: ELOOP
    assert main(["check-config", str(path)]) == 2
    assert f"{field}: {link} cannot be opened (Too many levels of symbolic links)" in capsys.readouterr().err


@pytest.mark.parametrize("kind", ["fifo", "device"])
def test_tune_refuses_a_fifo_or_a_device_as_its_observations(tmp_path: Path, kind: str,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    """`wattscale tune` opened its CSV as it came: a FIFO waited for ever, /dev/zero read until memory ran out."""
    path = fifo(tmp_path / "obs.csv") if kind == "fifo" else Path("/dev/zero")
    assert within(10.0, lambda: main(["tune", str(path)])) == 2
    assert f"{path}: cannot read (not a regular file)" in capsys.readouterr().err


def test_check_config_warns_of_a_demand_response_signal_that_is_no_file(sim_config: Callable[..., Path],
                                                                       tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    """A carbon CSV that is a FIFO was warned of, a signal file that is one was not."""
    signal = fifo(tmp_path / "signal.json")
    path = sim_config()
    table = (f'\n[power.budget]\nsafe_budget_w = 3000\n[[power.budget.sources]]\nkind = "fixed"\nbudget_w = 3800\n'
             f'[[power.budget.sources]]\nkind = "demand_response"\npath = "{signal}"\n')
    path.write_text(path.read_text().replace('mode = "predicted"\n', 'mode = "predicted"\n' + table))
    assert within(20.0, lambda: main(["check-config", str(path)])) == 0
    err = capsys.readouterr().err
    assert "power.budget.sources[demand_response].path: demand response" in err
    assert "it counts as 3000 W (safe_budget_w, at most budget_w)" in err


def test_a_config_swapped_for_a_fifo_after_its_checks_is_refused_not_waited_on(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A trial swapped a FIFO in for the config between the reload's regular-file check and its open: the main
    thread (SIGTERM, the watchdog's pings) then waited for ever. The check passes here as it did in that race."""
    from controller.toml_file import read_toml

    path = fifo(tmp_path / "wattscale.toml")
    monkeypatch.setattr(Path, "is_file", lambda self: True)  # the check ran while a regular file was there
    try:
        with pytest.raises(ConfigError, match="cannot be read \\(not a regular file\\)"):
            within(5.0, lambda: read_toml(path, "daemon config"))
    finally:  # a reader left waiting (the code before) is let go
        with contextlib.suppress(OSError):
            os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
