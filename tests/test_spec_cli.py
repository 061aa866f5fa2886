"""optimize, plan and tune: a bad spec or option is one line naming it (with the service path), exit 2; a
plan that cannot be solved exits 1; no option is silently ignored."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import one_line

from controller.cli import main
from controller.config_loader import ConfigError
from controller.optimize_spec import load_spec
from controller.settings import load_settings
from queuemodels import ServiceParams

ROOT = Path(__file__).resolve().parents[1]
OPTIMIZE = (ROOT / "config" / "examples" / "optimize.toml").read_text()
PACKING = str(ROOT / "config" / "plans" / "seed002-packing.toml")
ALLOCATION = str(ROOT / "config" / "plans" / "seed001-allocation.toml")



def code_service(name: str) -> str:
    block = OPTIMIZE[OPTIMIZE.index('[[services]]\nname = "code"'):OPTIMIZE.index('[[services]]\nname = "bulk"')]
    return "\n" + block.replace('name = "code"', f'name = "{name}"')


@pytest.mark.parametrize("edit,message", [
    (lambda t: t.replace('name = "code"', 'name = "chat"'), r"services\[chat\].name: duplicate service name 'chat'"),
    (lambda t: t.replace('name = "code"', 'name = "CHAT"'),  # as a daemon config refuses them
     r"services\[CHAT\].name: duplicate service name 'CHAT' \(as 'chat': names are compared in lower case"),
    (lambda t: t.replace('name = "code"', 'name = ""'), r"services\[1\].name: must not be empty"),
    (lambda t: t.replace("batch_sizes = [16, 32, 64, 128]", "batch_sizes = []"), "batch_sizes: must be 1..64"),
    (lambda t: t.replace("power_levels = [0.6, 0.8, 1.0]", "power_levels = []"), "power_levels: must be 1..64"),
    (lambda t: t.replace("power_levels = [0.6, 0.8, 1.0]", "power_levels = [-0.5, 3.0]"),
     r"power_levels: must be 1..64 shares in \(0, 1\], each once, got \[-0.5, 3.0\]"),
    (lambda t: t.replace("power_levels = [0.6, 0.8, 1.0]", f"power_levels = {[0.5] * 65}"),
     r"power_levels: must be 1..64 shares in \(0, 1\], each once, got \[0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, ...\] "
     r"\(65 values\)"),
    (lambda t: t.replace("max_replicas = 4", "max_replicas = 4\nmin_replicas = 5", 1),
     r"services\[chat\].min_replicas: must be between 0 and max_replicas \(4\), got 5"),
    (lambda t: t.replace("max_replicas = 4", "max_replicas = 8\nmin_replicas = 7", 1),  # 10 in all, 6 on one type
     r"services\[chat\].min_replicas: 7 replicas fit on none of its accelerators \(H100-SXM holds 6, "
     r"A100-SXM4 holds 4\): a service runs on one type at a time"),
    (lambda t: t.replace("in_tokens = 2000", "in_tokens = 2000\nmin_replicas = 3")  # bulk and a copy: H100s only
     + code_service("bulk2").replace("max_replicas = 4", "max_replicas = 4\nmin_replicas = 4")
     .replace('params."A100-SXM4"', "# "),  # 9 of the 10 GPUs in all, 7 of the 6 H100s
     r"services\[bulk2\].min_replicas: the min_replicas up to here of the services that run on H100-SXM alone add "
     r"up to 7, more than it holds \(6\)"),
    (lambda t: t.replace("priority = 2", "priority = -1"), r"services\[code\].priority: must be in 1..1000, got -1"),
    (lambda t: t.replace('objective = "token_speed"', 'objective = "token_speed"\ntransition_penalty = -1'),
     r"transition_penalty: must be in \[0, 1\], got -1.0"),
    (lambda t: t.replace("rate_rps = 10", "rate_rps = inf"), r"services\[chat\].rate_rps: must be in \[0, 1e\+06\]"),
    (lambda t: t.replace("rate_rps = 10", "rate_rps = 10\ntokens_per_step = 0.5"),
     r"services\[chat\].tokens_per_step: must be in \[1, 64\], got 0.5"),
    (lambda t: t.replace("rate_rps = 10", "rate_rps = 10\ndraft_tokens = 64"),
     r"services\[chat\].draft_tokens: must be in \[0, 63\], got 64"),
    # a step keeps no more than it drafts and verifies: 5 of 1 + 0.5 planned twice the capacity, unsaid
    (lambda t: t.replace("rate_rps = 10", "rate_rps = 10\ntokens_per_step = 5\ndraft_tokens = 0.5"),
     r"services\[chat\].tokens_per_step: must be at most 1 \+ draft_tokens \(1.5\) where drafts are given"),
    # a denormal passed the range: the plan's values from it were not finite (scipy's milp raised)
    (lambda t: t.replace("rate_rps = 10", "rate_rps = 1e-310"),
     r"services\[chat\].rate_rps: must be 0 or at least 1e-06, got 1e-310"),
    (lambda t: t.replace("ttft_ms = 300", "ttft_ms = inf"),
     r"services\[chat\].ttft_ms: must be in \(0, 1e\+07\], got inf"),
    (lambda t: t.replace("ttft_ms = 300", "ttft_ms = 1e308"),  # analyze held its --ttft-slo-ms to 1e7, specs not
     r"services\[chat\].ttft_ms: must be in \(0, 1e\+07\], got 1e\+308"),
    (lambda t: t.replace("budget_w = 3000", "budget_w = 1e308"), r"budget_w: must be in \(0, 1e\+08\], got 1e\+308"),
    (lambda t: t.replace("max_replicas = 4", "max_replicas = 4\nmax_queue = -3", 1),
     r"services\[chat\].max_queue: must be in 0..1000000, got -3"),
    (lambda t: t.replace('params."A100-SXM4" = { alpha_ms = 20, beta_ms = 0.15, gamma_ms = 18, delta_ms = 0.07 }\n', "")
     .replace('params."H100-SXM" = { alpha_ms = 12, beta_ms = 0.09, gamma_ms = 10, delta_ms = 0.035 }', "params = {}"),
     r"services\[chat\].params: needs the queue-model parameters of at least one accelerator"),
    (lambda t: t.replace('name = "A100-SXM4"', 'name = "H100-SXM"'), r"accelerators\[H100-SXM\].name: duplicate"),
    (lambda t: t.replace("alpha_ms = 12,", "alpha_ms = inf,"),
     r"services\[chat\].params.H100-SXM.alpha_ms: must be in \(0, 60000\], got inf"),
    (lambda t: t.replace('params."A100-SXM4" = { alpha_ms = 20,', 'params."L4" = { alpha_ms = 20,'),
     r"services\[chat\].params.L4: L4 is not in the inventory \(accelerators: \['A100-SXM4', 'H100-SXM'\]\)"),
    (lambda t: t.replace("beta_ms = 0.15, ", "", 1),
     r"services\[chat\].params.A100-SXM4.beta_ms: required key is missing \(a spec gives alpha_ms, beta_ms, "
     r"gamma_ms\)"),
    (lambda t: "extra = { note = 1 }\n" + t, r"^wattscale: extra: unknown key \(expected one of \['accelerators', "),
    # 64 batch sizes x 64 levels: minutes of sizing (3 services took 30 s), where a daemon's config is held to 1,024
    (lambda t: t.replace("batch_sizes = [16, 32, 64, 128]", f"batch_sizes = {list(range(1, 65))}")
     .replace("power_levels = [0.6, 0.8, 1.0]", f"power_levels = {[k / 64 for k in range(1, 65)]}"),
     r"clock_levels: batch_sizes x power_levels x clock_levels give 4096 shapes .* at most 1024"),
])
def test_bad_optimize_spec_is_one_line_naming_the_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], edit: Callable[[str], str], message: str
) -> None:
    path = tmp_path / "spec.toml"
    path.write_text(edit(OPTIMIZE))
    assert main(["optimize", str(path)]) == 2
    err = one_line(capsys)
    assert re.search(message, err), err


def test_exhaustive_on_too_many_services_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "spec.toml"
    path.write_text(OPTIMIZE + "".join(code_service(f"code{k}") for k in range(5)))
    assert main(["optimize", str(path), "--solver", "exhaustive"]) == 2
    assert "--solver: exhaustive: more than 2000000 combinations; use greedy or milp (8 services)" in one_line(capsys)


def test_more_services_than_a_spec_plans_are_refused_before_any_is_sized(tmp_path: Path,
                                                                        capsys: pytest.CaptureFixture[str]) -> None:
    """6,000 services ran out of memory with a traceback (2.3 GB at 2,000)."""
    path = tmp_path / "spec.toml"
    path.write_text(OPTIMIZE + "".join(code_service(f"code{k}") for k in range(998)))
    assert main(["optimize", str(path)]) == 2
    assert one_line(capsys).strip() == "wattscale: services: 1001 listed, more than the 1000 one spec plans"


def test_priorities_past_what_the_milp_can_order_fall_back_to_greedy(tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    """Each priority level weighs a shortfall some 200 times the one below: at 12 levels HiGHS failed, at some 140
    the weights overflowed to inf and the MILP raised (every slow tick of a daemon on `solver = "milp"`)."""
    text = OPTIMIZE + "".join(code_service(f"code{k}").replace("priority = 2", f"priority = {k + 3}\nmin_replicas = 0")
                              for k in range(10))
    path = tmp_path / "spec.toml"
    path.write_text(text)
    assert main(["optimize", str(path), "--solver", "milp"]) == 0
    out = capsys.readouterr()
    assert "note: milp: 12 priority levels weigh a shortfall up to" in out.out + out.err, out
    assert "greedy result used" in out.out + out.err and "Traceback" not in out.err


def test_shed_weights_stay_finite_over_any_number_of_levels() -> None:
    from controller.optimizer.values import MAX_SHED_WEIGHT, shed_weights

    services = [SimpleNamespace(priority=p) for p in range(1, 1001)]
    weights = shed_weights(SimpleNamespace(services=services), 1.0)  # type: ignore[arg-type]
    assert all(math.isfinite(w) for w in weights.values()) and weights[1] == MAX_SHED_WEIGHT
    assert weights[1000] < weights[999] < weights[998]


@pytest.mark.parametrize("args,message", [
    (["--mip-gap", "-1"], "argument --mip-gap: must be a finite number in [0, 0.999], got '-1'"),
    (["--time-limit-s", "0"], "argument --time-limit-s: must be a finite number in (0, 600], got '0'"),
])
def test_bad_optimize_option_is_one_line(capsys: pytest.CaptureFixture[str], args: list[str], message: str) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["optimize", str(ROOT / "config" / "examples" / "optimize.toml"), "--solver", "milp", *args])
    assert exc.value.code == 2
    assert message in one_line(capsys)


@pytest.mark.parametrize("argv", [["run", "--config", ""], ["check-config", " "], ["status", "--config", ""],
                                  ["optimize", ""], ["plan", ""], ["tune", ""], ["simulate", "", "--report", "r"]])
def test_an_empty_file_name_is_refused_as_such(capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    """An empty name was read as the working directory: "'.': not a regular file"."""
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert re.search(r"argument [-A-Za-z]+: must name a file, got '\s?'$", one_line(capsys)), argv


def test_plan_options_that_do_not_apply_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    afile = tmp_path / "afile"
    afile.write_text("")
    cases = [
        ([PACKING, "--plots", str(tmp_path)], "--plots: applies with --compare only"),
        ([PACKING, "--gamma", "2"], "--gamma: applies to allocation specs only"),
        ([PACKING, "--compare", "--plots", str(afile)], f"--plots: {afile} exists and is not a directory"),
        ([PACKING, "--compare", "--plots", str(afile / "such")], f"--plots: {afile / 'such'}: cannot be made: "
                                                                 f"{afile} is not a directory"),
        ([PACKING, "--compare", "--requests", "10"], "--scenario/--trace/--requests: --compare runs every one"),
        ([PACKING, "--compare", "--solver", "greedy"], "--solver: --compare runs every solver; give none"),
        ([PACKING, "--compare", "--solver", "milp"], "--solver: --compare runs every solver; give none"),
        # refused before a folder is made (it had been left behind)
        ([ALLOCATION, "--compare", "--plots", str(tmp_path / "made" / "by")], "--compare/--plots: apply to packing"),
        ([str(tmp_path / "no-spec.toml"), "--compare", "--plots", str(tmp_path / "made" / "by")], "no such file"),
        ([ALLOCATION, "--requests", "10"], "--scenario/--trace/--requests: apply to packing specs only"),
    ]
    for argv, message in cases:
        assert main(["plan", *argv]) == 2, argv
        assert message in one_line(capsys)
    assert not (tmp_path / "made").exists()


def test_extreme_sizes_within_bounds_are_a_type_that_fits_nowhere(tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """A card of compute 1e-300 against a request of 1e9: a copy held 1e-308 requests, and greedy's count of
    copies overflowed (a traceback), the homogeneous one too, and HiGHS called the model an error. Now it holds
    none, and each solver says the type fits no config, by name."""
    path = tmp_path / "plan.toml"
    text = re.sub(r"(price_per_h = [0-9.]+, memory_gb = [0-9]+, compute = )[0-9]+", r"\g<1>1e-300",
                  Path(PACKING).read_text())  # every card's
    path.write_text(text.replace("t1 = { memory_gb = 4, compute = 20 }", "t1 = { memory_gb = 4, compute = 1e9 }"))
    for solver in ("greedy", "milp", "homogeneous"):
        assert main(["plan", str(path), "--solver", solver]) == 1
        out, err = capsys.readouterr()
        assert "Traceback" not in err and "no feasible packing" in err
        assert solver == "homogeneous" or "request type 't1' fits no config" in out


def test_a_scenario_without_cards_says_so_in_each_solvers_words(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    """The MILP's row had read HiGHS's "The problem is infeasible. (HiGHS Status 8: ...)", and --compare's greedy gap
    "nan"."""
    path = tmp_path / "plan.toml"
    text = Path(PACKING).read_text()
    scarce = "scarce    = { RTX_4090 = 16, A40 = 12, RTX_A6000 = 8,  L40 = 12, A100_80G = 6,  H100 = 8 }"
    assert scarce in text
    path.write_text(text.replace(scarce, "scarce    = { RTX_4090 = 0, A40 = 0, RTX_A6000 = 0,  L40 = 0, "
                                         "A100_80G = 0,  H100 = 0 }"))
    assert main(["plan", str(path), "--solver", "milp"]) == 1
    out = capsys.readouterr().out
    assert out.splitlines()[-1].endswith("fail  cards -  infeasible: the scenario has no card"), out
    assert main(["plan", str(path), "--compare"]) == 0
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines() if line.startswith("scarce")]
    assert rows and all(r[3:] == ["fail"] * (len(r) - 4) + ["-"] for r in rows), out
    assert "nan" not in out
    path.write_text(text.replace(scarce, "scarce    = { RTX_4090 = 1, A40 = 0, RTX_A6000 = 0,  L40 = 0, "
                                         "A100_80G = 0,  H100 = 0 }"))
    assert main(["plan", str(path), "--solver", "milp"]) == 1
    # the count after the spec's availability_scale
    assert re.search(r"infeasible: the cards available \(RTX_4090 \d+\) cannot hold 5000 requests\n",
                     capsys.readouterr().out)


def test_a_spec_past_the_size_any_is_refused_unread(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    import controller.toml_file as loader

    monkeypatch.setattr(loader, "MAX_TOML_BYTES", 1 << 10)
    path = tmp_path / "plan.toml"
    path.write_text(Path(PACKING).read_text())
    assert main(["plan", str(path)]) == 2
    assert one_line(capsys) == f"wattscale: {path}: larger than 1024 bytes: no config, scenario or spec is\n"  # once


def test_compare_past_its_instances_is_refused_before_solving(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "plan.toml"
    path.write_text(Path(PACKING).read_text().replace("scales = [1000, 3000, 5000]",
                                                      f"scales = {list(range(1000, 1100))}"))
    assert main(["plan", str(path), "--compare"]) == 2
    assert "--compare: 4 scenarios x 3 traces x 100 scales = 1200 instances, past the 200" in one_line(capsys)


def test_plan_requests_absurd_or_infeasible(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["plan", PACKING, "--requests", "100000000"])
    assert exc.value.code == 2
    assert "argument --requests: must be in 0..10000000" in one_line(capsys)
    assert main(["plan", PACKING, "--requests", "1000000"]) == 1
    err = capsys.readouterr().err
    assert "wattscale: plan: no feasible packing of 1000000 requests" in err and "Traceback" not in err


@pytest.mark.parametrize(("flag", "got"), [("--scenario", "got '' and 'swiss_ai'"),
                                           ("--trace", "got 'scarce' and ''")])
def test_plan_an_empty_instance_name_is_unknown_not_the_first(capsys: pytest.CaptureFixture[str], flag: str,
                                                               got: str) -> None:
    """'' had solved the spec's first scenario (or trace) and said "--scenario " in its header."""
    assert main(["plan", PACKING, flag, ""]) == 2
    assert f"--scenario/--trace: {got};" in one_line(capsys)


def test_tune_bad_inputs_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    binary = tmp_path / "obs.bin"
    binary.write_bytes(bytes(range(256)) * 4)
    nan = tmp_path / "nan.csv"
    nan.write_text("rate_rps,in_tokens,out_tokens,max_batch,ttft_ms,itl_ms\n" + "nan,nan,nan,64,nan,nan\n" * 5)
    header = "rate_rps,in_tokens,out_tokens,max_batch,ttft_ms,itl_ms\n"
    infinite = tmp_path / "inf.csv"
    infinite.write_text(header + "1,500,200,inf,30,10\n")
    huge = tmp_path / "huge.csv"
    huge.write_text(header + "1,500,200,64,30,10\n1,1e308,200,64,30,10\n")
    queue = tmp_path / "queue.csv"
    queue.write_text(header.rstrip("\n") + ",max_queue\n1,500,200,64,30,10,1e300\n")
    cases = [
        ([str(infinite)], f"{infinite}:2: column 'max_batch' must be a whole number >= 1, got inf"),
        ([str(huge)], f"{huge}:3: column 'in_tokens' must be in [0, 1e+06], got 1e+308"),
        ([str(queue)], f"{queue}:2: column 'max_queue' must be in [0, 1e+06], got 1e+300"),  # not 301 digits
        ([str(nan), "--fit-power"], "--fit-power: needs --accelerator"),
        ([str(binary)], f"{binary}: not a CSV text file"),
        ([str(nan)], f"{nan}: no usable observation (5 non-finite; the first, {nan}:2: non-finite (a latency, rate "
                     "or token count is missing or infinite: +Inf is a quantile past the last bucket))"),
    ]
    for argv, message in cases:
        assert main(["tune", *argv]) == 2, argv
        assert message in one_line(capsys)


def test_every_option_has_help(capsys: pytest.CaptureFixture[str]) -> None:
    from controller.cli import parser

    for name, sub in parser()._subparsers._group_actions[0].choices.items():
        for action in sub._actions:
            assert action.help, f"{name} {action.option_strings or action.dest} has no help"


@pytest.mark.parametrize("spec,edit,message", [
    (PACKING, lambda t: t.replace("seed = 0", "seed = 0\ntime_limit_s = 1e300"),
     r"time_limit_s: must be in \(0, 600\]"),
    (PACKING, lambda t: t.replace("scales = [1000, 3000, 5000]", "scales = [100000000]"),
     r"scales: needs request counts in 0..10000000"),
    (ALLOCATION, lambda t: t.replace("max_replicas = 16", "max_replicas = 100000"),
     "max_replicas: must be in 1..1024, got 100000"),
    (PACKING, lambda t: t.replace("cards = [1, 2, 4, 8]", "cards = [1, 1, 4, 8]"),  # the second speedup won
     r"cards: names a value twice: \[1, 1, 4, 8\]"),
    (PACKING, lambda t: t.replace("scales = [1000, 3000, 5000]", "scales = [1000, 1000, 5000]"),
     "scales: names a value twice"),
    (PACKING, lambda t: t.replace('homogeneous = ["A100_80G",', 'homogeneous = ["A100_80G", "A100_80G",'),
     "homogeneous: names a value twice"),
    (PACKING, lambda t: t.replace("cards = [1, 2, 4, 8]", f"cards = {list(range(1, 65))}").replace(
        "speedups = [1.0, 1.75, 3.2, 5.6]", f"speedups = {[1.0] * 64}").replace(
        "[request_types]", "[request_types]\n" + "".join(f"x{i} = {{ memory_gb = 1, compute = 1 }}\n"
                                                        for i in range(300))),
     r"request_types: 6 GPU types x 64 config sizes x 309 request types = 118656 flows, past the 100000"),
    (ALLOCATION, lambda t: t + "".join(f"[models.m{i}]\nweights_gb = 14.0\nkv_gb_per_token = 0.0005\n"
                                       for i in range(700)),  # 256,000 routes had built 2.3 GB for 27 s
     r"^wattscale: models: 4 query types x 703 models x 4 GPU types x 2 precisions = 22496 routes, past the 20000"),
    (PACKING, lambda t: t.replace("speedups = [1.0, 1.75, 3.2, 5.6]", "speedups = [1.0, 1.75, 3.2, 1e308]"),
     r"speedups\[3\]: must be in \(0, 1e\+09\], got 1e\+308"),  # it said "cards/speedups", neither the entry
    (PACKING, lambda t: t.replace("cards = [1, 2, 4, 8]", "cards = [0, 2, 4, 8]"), r"cards\[0\]: must be >= 1, got 0"),
    (PACKING, lambda t: t.replace("compute_adjust = 10.0", "compute_adjust = 1e-300"),
     r"compute_adjust: must be in \[1e-06, 1e\+06\], got 1e-300"),  # it fitted no config, or every one at 1e308
])
def test_plan_spec_bounds(tmp_path: Path, capsys: pytest.CaptureFixture[str], spec: str,
                          edit: Callable[[str], str], message: str) -> None:
    path = tmp_path / "plan.toml"
    path.write_text(edit(Path(spec).read_text()))
    assert main(["plan", str(path)]) == 2
    err = one_line(capsys)
    assert re.search(message, err), err


def test_optimize_says_inventory_where_no_usable_type_has_a_gpu_and_prints_its_notes(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """bulk runs only on H100s: with none on offer it is short for inventory, not its SLO; a MILP stopped before it
    found a plan prints the solver's note in text mode too, not only with --json; a budget below the inventory's
    idle draw is refused, as check-config refuses it."""
    text = (ROOT / "config" / "examples" / "optimize.toml").read_text()
    (tmp_path / "none.toml").write_text(text.replace("count = 6", "count = 0", 1))
    assert main(["optimize", str(tmp_path / "none.toml")]) == 0
    lines = {x.split()[0]: x for x in capsys.readouterr().out.splitlines()}
    assert lines["bulk"].endswith("SHORT 6.00 rps (inventory)"), lines["bulk"]
    # a shed service printed "cap 0 W  ttft 0.0 ms  itl 0.0 ms"; a p95 service its mean, not what it is held to
    assert "cap     - W  ttft mean       - ms  itl mean      - ms" in lines["bulk"]
    assert re.search(r"ttft p95 +[0-9.]+ ms  itl p95 +[0-9.]+ ms", lines["code"]), lines["code"]
    assert main(["optimize", str(ROOT / "config" / "examples" / "optimize.toml"), "--time-limit-s", "1e-6"]) == 0
    assert any(x.startswith("note: milp: ") for x in capsys.readouterr().out.splitlines())
    (tmp_path / "tight.toml").write_text(text.replace("budget_w = 3000", "budget_w = 1", 1))
    assert main(["optimize", str(tmp_path / "tight.toml")]) == 2  # as check-config refuses a daemon's
    assert "budget_w: 1 W is below the inventory's idle draw, 850 W" in one_line(capsys)


@pytest.mark.parametrize("rate", ["100", "1e6"])
def test_the_milp_at_its_default_gap_plans_as_the_exhaustive_search_does(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], rate: str) -> None:
    """The gap was relative to an objective the shed penalties of a load no plan serves dominate: at 1 % the MILP
    stopped at a plan worth 60.5 where 81.1 was there (every service at 100 rps), and at a million rps it gave
    chat (priority 1) one replica of four so that bulk (priority 3) ran. It is now the plan's score's."""
    text = (ROOT / "config" / "examples" / "optimize.toml").read_text()
    (tmp_path / "loaded.toml").write_text(re.sub(r"(?m)^rate_rps = 10$", f"rate_rps = {rate}", text))
    objectives = {}
    for solver in ("milp", "exhaustive"):
        assert main(["optimize", str(tmp_path / "loaded.toml"), "--solver", solver]) == 0
        out = capsys.readouterr().out.splitlines()
        totals = next(x for x in out if x.startswith("power "))
        objectives[solver] = re.search(r"objective ([-0-9.]+)", totals).group(1)  # type: ignore[union-attr]
        assert not any(x.startswith("note:") and "power limits" not in x for x in out), out  # a solver's own
    assert objectives["milp"] == objectives["exhaustive"], objectives


@pytest.mark.parametrize("argv", [["schema"], ["plan", PACKING, "--json"]])
def test_a_reader_that_goes_away_ends_the_command_quietly(argv: list[str]) -> None:
    """`wattscale schema | head`: the reader's end closed before the command writes (it ended in a
    BrokenPipeError traceback); exit 1 as Python's own EPIPE advice, nothing on stderr."""
    proc = subprocess.Popen([sys.executable, "-m", "controller.cli", *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, cwd=ROOT)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 1 and err == "", err


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="no /dev/full on this system")
def test_an_output_that_cannot_be_written_is_one_line() -> None:
    """`wattscale schema > /dev/full` (a full disk): an OSError traceback; now one line and exit 1."""
    with open("/dev/full", "w") as full:
        out = subprocess.run([sys.executable, "-m", "controller.cli", "schema", "config"], stdout=full,
                             stderr=subprocess.PIPE, cwd=ROOT, timeout=60, text=True)
    assert out.returncode == 1 and out.stderr == "wattscale: No space left on device (writing its output)\n", \
        out.stderr


def test_the_optimize_docs_show_what_the_command_prints(capsys: pytest.CaptureFixture[str]) -> None:
    """docs/optimize-spec.md's sample output is the example spec's (it showed a plan the command no longer
    made: chat 1 x batch 128, 2952.1 W); timings aside, figures within 1e-6."""
    import json

    doc = (ROOT / "docs" / "optimize-spec.md").read_text()
    shown = json.loads(doc.split("## Output (`--json`)", 1)[1].split("```json\n", 1)[1].split("```", 1)[0])
    assert main(["optimize", str(ROOT / "config" / "examples" / "optimize.toml"), "--solver", "milp", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    for timing in ("solve_s", "candidates_s"):
        del shown["totals"][timing], printed["totals"][timing]
    assert _approx(printed) == _approx(shown)


def _approx(doc: object) -> object:
    """Floats rounded to 6 significant digits, the rest as is: the comparison the docs' figures get."""
    if isinstance(doc, dict):
        return {k: _approx(v) for k, v in doc.items()}
    if isinstance(doc, list):
        return [_approx(v) for v in doc]
    return float(f"{doc:.6g}") if isinstance(doc, float) else doc


def test_every_benchmark_the_readme_lists_prints_its_json_unindented() -> None:
    """README: 'Each prints one JSON line'; planner.py printed 21 indented lines (so did three others). What is
    read is each script's source: its JSON is never dumped with an indent (a script printing one line per
    personality, as queue_heldout.py does, the README says so)."""
    import ast

    readme = (ROOT / "README.md").read_text()
    listed = readme.split("## Benchmarks", 1)[1].split("\n## ", 1)[0]
    names = sorted(set(re.findall(r"`(?:benchmarks/)?([a-z_]+\.py)`", listed)))
    assert "planner.py" in names and len(names) >= 10
    for name in names:
        tree = ast.parse((ROOT / "benchmarks" / name).read_text())
        dumps = [c for c in ast.walk(tree) if isinstance(c, ast.Call) and isinstance(c.func, ast.Attribute)
                 and c.func.attr == "dumps"]
        assert dumps and not [k.arg for c in dumps for k in c.keywords if k.arg == "indent"], name


def test_schema_crds_without_pyyaml_says_what_to_install(monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    """`schema --crds` writes YAML: where pyyaml is not installed (it comes with the cluster extra) it says so in
    one line, as `operator` does, where it ended in a ModuleNotFoundError traceback."""
    monkeypatch.setitem(sys.modules, "yaml", None)  # import yaml raises ImportError
    assert main(["schema", "--crds"]) == 2
    assert "schema --crds: needs: pip install 'wattscale[cluster]'" in one_line(capsys)


FILES = {"daemon config": "config/sim.toml", "scenario": "config/scenarios/diurnal.toml",
         "plan spec": "config/plans/seed002-packing.toml", "optimize spec": "config/examples/optimize.toml"}
COMMANDS = {"daemon config": ["check-config"], "scenario": ["simulate", "--report", "{tmp}"],
            "plan spec": ["plan"], "optimize spec": ["optimize"]}


@pytest.mark.parametrize(("given", "command"), [(g, c) for g in FILES for c in COMMANDS  # check-config checks a
                                                 if g != c and (g, c) != ("scenario", "daemon config")])  # scenario
def test_a_shipped_file_given_to_another_command_is_named_for_what_it_is(
        given: str, command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """check-config on a scenario said "name: unknown key", and on a plan spec pointed at [power.budget]."""
    argv = [a.replace("{tmp}", str(tmp_path / "report")) for a in COMMANDS[command]]
    assert main([argv[0], str(ROOT / FILES[given]), *argv[1:]]) == 2
    an = "an" if given[0] in "aeiou" else "a"
    assert f"is {an} {given}, not " in one_line(capsys)


def test_a_name_stdout_cannot_encode_and_a_closed_stdout_are_no_traceback(sim_config: Callable[..., Path],
                                                                          tmp_path: Path) -> None:
    """check-config on a path of non-UTF-8 bytes ended in UnicodeEncodeError (surrogates not allowed), and with
    standard output closed (`>&-`) in AttributeError ('NoneType' has no 'flush')."""
    odd = os.path.join(os.fsencode(tmp_path), b"d\xff\xfe sp")
    os.mkdir(odd)
    config = os.path.join(odd, b"sim.toml")
    with open(config, "w") as f:
        f.write(sim_config().read_text())
    argv = [sys.executable, "-m", "controller.cli", "check-config"]
    done = subprocess.run([*argv, config], capture_output=True, timeout=60, cwd=ROOT)
    assert done.returncode == 0 and done.stdout.endswith(b"sim.toml: ok (3 services, budget 4000 W)\n"), done.stderr
    closed = subprocess.run([*argv, sim_config()], stdout=None, stderr=subprocess.PIPE, timeout=60, cwd=ROOT,
                            preexec_fn=lambda: os.close(1))
    assert closed.returncode == 0 and closed.stderr == b"", closed.stderr


def test_an_optimize_spec_missing_its_budget_is_told_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A spec of accelerators and services alone (no `budget_w`, its other settings left at their defaults) has
    services as a daemon's config has: its own missing field is the error."""
    path = tmp_path / "spec.toml"
    path.write_text(OPTIMIZE[OPTIMIZE.index("[[accelerators]]"):])
    assert main(["optimize", str(path)]) == 2
    err = one_line(capsys)
    assert "budget_w" in err and "daemon config" not in err, err


def test_a_scenario_missing_its_duration_is_told_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A scenario that sets a budget but not `duration_s` read as an optimize spec (its budget_w)."""
    path = tmp_path / "s.toml"
    path.write_text(f'name = "x"\nconfig = "{ROOT / "config" / "sim.toml"}"\nbudget_w = 3000\n')
    assert main(["simulate", str(path), "--report", str(tmp_path / "r")]) == 2
    err = one_line(capsys)
    assert "duration_s" in err and "optimize spec" not in err, err


def test_the_optimize_spec_schema_requires_the_params_the_loader_requires() -> None:
    """The schema gave a spec's params the daemon's prior defaults, so a table of delta_ms alone passed it and
    `optimize` refused it: the schema and the command agree now."""
    import tomllib

    from jsonschema import Draft202012Validator

    from controller.schema_catalog import schemas

    validator = Draft202012Validator(schemas()["optimize-spec"])
    spec = tomllib.loads(OPTIMIZE)
    assert not list(validator.iter_errors(spec))
    spec["services"][0]["params"] = {"H100-SXM": {"delta_ms": 0.035}}
    assert [e.message for e in validator.iter_errors(spec)] == ["'alpha_ms' is a required property",
                                                                "'beta_ms' is a required property",
                                                                "'gamma_ms' is a required property"]
    prior = schemas()["config"]["properties"]["services"]["items"]["properties"]["prior"]
    assert prior["properties"]["alpha_ms"]["default"] == 15.0  # a daemon's prior still takes its defaults


def test_an_optimize_spec_whose_minimums_the_inventory_cannot_hold_is_refused_by_field(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """It planned chat at 0 replicas and called it an SLO shortfall; a daemon's config is refused so."""
    path = tmp_path / "spec.toml"
    path.write_text(OPTIMIZE.replace("max_replicas = 4", "min_replicas = 100\nmax_replicas = 100", 1))
    assert main(["optimize", str(path)]) == 2
    assert "services[chat].min_replicas: the services' min_replicas up to here add up to 100, more replicas than " \
           "the accelerators hold (10; " in one_line(capsys)


def test_what_tune_fits_goes_into_an_optimize_spec_and_a_config_prior_whole(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """tune fits rho and budget_tokens beside the step law's other terms; a spec's params and a config's prior
    refused them as unknown keys, so a fit copied as the docs say lost two of its terms or was refused."""
    assert main(["tune", str(ROOT / "config" / "examples" / "observations.csv"), "--accelerator", "H100-SXM",
                 "--json"]) == 0
    fitted = json.loads(capsys.readouterr().out)["params"]
    assert {"rho", "budget_tokens"} <= fitted.keys()
    table = "{ " + ", ".join(f"{k} = {v!r}" for k, v in fitted.items()) + " }"
    spec = tmp_path / "spec.toml"
    spec.write_text(OPTIMIZE.replace('params."H100-SXM" = { alpha_ms = 12, beta_ms = 0.09, gamma_ms = 10, '
                                     'delta_ms = 0.035 }', f'params."H100-SXM" = {table}', 1))
    assert load_spec(spec).services[0].params["H100-SXM"] == ServiceParams("step", **fitted)
    assert main(["optimize", str(spec)]) == 0, capsys.readouterr().err
    config = tmp_path / "sim.toml"
    text = (ROOT / "config" / "sim.toml").read_text()
    config.write_text(text.replace('prior = { family = "step", alpha_ms = 20.0, beta_ms = 0.2, gamma_ms = 20.0, '
                                   'delta_ms = 0.06 }', f"prior = {table}", 1).replace('"../var/state"', '"state"'))
    settings = load_settings(config)
    assert settings.services[0].prior.params() == ServiceParams("step", **fitted)


def test_a_packing_stopped_at_its_time_limit_says_so_not_infeasible(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """HiGHS stopped before an incumbent ("Time limit reached") read as a proof: "no feasible packing"."""
    path = tmp_path / "plan.toml"
    path.write_text(Path(PACKING).read_text().replace("seed = 0", "seed = 0\ntime_limit_s = 1e-300"))
    assert main(["plan", str(path), "--solver", "milp"]) == 1
    out, err = capsys.readouterr()
    assert "wattscale: plan: no packing found in time_limit_s of " in err and "no feasible" not in err
    assert "stopped before any packing was found (Time limit reached" in out


def test_a_spec_whose_sizing_work_is_past_its_bound_is_refused_before_sizing(tmp_path: Path) -> None:
    """Each list was bounded alone, their product not: 300 services at 1,024 shapes took 36 s and 560 MB, 200 services
    on seven accelerators ran past two minutes and 1.7 GB. Now 49 services on two accelerators at 1,024 shapes each
    (100,352 shapes to size) are refused naming the product; 48 (98,304) load."""
    chat = OPTIMIZE[OPTIMIZE.index("[[services]]"):OPTIMIZE.index("[[services]]", OPTIMIZE.index("[[services]]") + 1)]
    head = OPTIMIZE[:OPTIMIZE.index("[[services]]")].replace(
        "batch_sizes = [16, 32, 64, 128]", f"batch_sizes = {list(range(1, 65))}").replace(
        "power_levels = [0.6, 0.8, 1.0]", f"power_levels = {[round(0.4 + 0.04 * k, 2) for k in range(16)]}").replace(
        "count = 6", "count = 60").replace("count = 4", "count = 40").replace(  # room for every service's minimum
        "budget_w = 3000", "budget_w = 30000")
    for n, refused in ((49, True), (48, False)):
        path = tmp_path / f"spec{n}.toml"
        path.write_text(head + "".join(chat.replace('name = "chat"', f'name = "s{k}"').replace("max_replicas = 4",
                                                                                               "max_replicas = 1")
                                       for k in range(n)))
        if refused:
            with pytest.raises(ConfigError) as err:
                load_spec(path)
            assert err.value.where == "services[s48].params"  # the service that crosses the bound
            assert "brings the shapes a plan sizes to 100352 (98 service x accelerator pairs so far, 1024 shapes " \
                   "each" in err.value.reason
        else:
            load_spec(path)


def test_a_speculative_services_itl_is_said_to_be_a_steps(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """optimize's line read "itl mean 17.2 ms" under 2.5 tokens a step, easily taken for a token's: it says a step's,
    and a plain service's line is as it was."""
    path = tmp_path / "spec.toml"
    path.write_text(OPTIMIZE.replace("rate_rps = 10", "rate_rps = 10\ntokens_per_step = 2.5\ndraft_tokens = 3", 1))
    assert main(["optimize", str(path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert any(x.startswith("chat") and x.endswith("ms a step of 2.5 tokens") for x in lines), lines
    assert all("a step" not in x for x in lines if not x.startswith("chat")), lines
