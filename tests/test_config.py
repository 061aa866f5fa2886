"""check-config: the shipped file passes; each kind of bad file exits 2 with one line naming the field."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from controller.cli import main

ROOT = Path(__file__).resolve().parents[1]
GOOD = (ROOT / "config" / "sim.toml").read_text()


def test_shipped_sim_config_is_valid(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-config", str(ROOT / "config" / "sim.toml")]) == 0
    assert "ok" in capsys.readouterr().out


@pytest.mark.parametrize(
    "edit,field",
    [
        (lambda t: t.replace("[power]", "[power"), "invalid TOML"),
        (lambda t: t.replace("budget_w = 4000", "budget_w = 4000\nbudget_kw = 4"), "power.budget_kw: unknown key"),
        (lambda t: t.replace("budget_w = 4000", 'budget_w = "lots"'), "power.budget_w: must be a number"),
        (lambda t: t.replace("budget_w = 4000", "budget_w = -5"), "power.budget_w: must be > 0"),
        (lambda t: t.replace("budget_w = 4000", "budget_w = nan"), "power.budget_w: must be a number, got nan"),
        (lambda t: t.replace("ttft_ms = 300", "ttft_ms = 0"), r"services\[0\].ttft_ms: must be > 0"),
        (lambda t: t.replace('power = "sim"', 'power = "ipmi"'), "actuators.power: must be one of"),
        (lambda t: t.replace('solver = "greedy"', 'solver = "cplex"'), "optimizer.solver: must be one of"),
        (lambda t: t.replace('statistic = "p95"', 'statistic = "p42"'), r"services\[1\].statistic: unknown"),
        (lambda t: t.replace("num_gpus = 8", "num_gpus = 8.5"), "simulator.num_gpus: must be an integer"),
        (lambda t: t.replace('solver = "greedy"', 'solver = "greedy"\nqueue_model = "mg1"'),
         "optimizer.queue_model: unknown"),
        (lambda t: t.replace("initial_max_batch = 64", "initial_max_batch = 64\ngpus = [0, -1]", 1),
         r"services\[0\].gpus: GPU indices must be >= 0"),
        (lambda t: t.replace('solver = "greedy"', 'solver = "greedy"\nresize_tolerance = 0.9'),
         "optimizer.resize_tolerance: must be in"),
        (lambda t: t.replace("in_tokens_cv = 0.6", "in_tokens_cv = -0.1", 1),
         r"services\[0\].in_tokens_cv: must be between 0 and 10"),
        (lambda t: t.replace("budget_w = 4000", "budget_w = 4000\nplan_margin = 0.6"),
         r"power.plan_margin: must be in \[0, 0.5\)"),
    ],
)
def test_bad_file_exits_2_naming_the_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], edit: object, field: str
) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(edit(GOOD))  # type: ignore[operator]
    assert main(["check-config", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert re.search(field, err), err


def test_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-config", str(tmp_path / "nope.toml")]) == 2
    assert "no such file" in capsys.readouterr().err


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_unreadable_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "secret.toml"
    path.write_text(GOOD)
    path.chmod(0)
    assert main(["check-config", str(path)]) == 2
    assert "not readable" in capsys.readouterr().err


def test_unreadable_file_as_root_too(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A directory in place of the file is unreadable as a config for every user."""
    path = tmp_path / "dir.toml"
    path.mkdir()
    assert main(["check-config", str(path)]) == 2
    assert "not a regular file" in capsys.readouterr().err
