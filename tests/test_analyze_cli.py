"""`wattscale analyze`: the JSON a user reads, and one clear line with exit 2 for each kind of bad input."""

from __future__ import annotations

import dataclasses
import json
import threading

import pytest
from conftest import ROOT

from controller.cli import main
from controller.cli_args import accelerator
from queuemodels import Load, ServerShape, ServiceParams, Targets, get_model
from queuemodels.accelerators import profile
from queuemodels.batch_choice import TIE

BASE = ["analyze", "--alpha-ms", "11.4", "--beta-ms", "0.05", "--gamma-ms", "4.9", "--delta-ms", "0.035",
        "--in-tokens", "400", "--out-tokens", "200", "--rate-rps", "10"]
PARAMS = ServiceParams("gen1", 11.4, 0.05, 4.9, 0.035)
SLO = ["--ttft-slo-ms", "300", "--itl-slo-ms", "30"]
SATURATION = get_model("mm1k-cb").saturation_rps(PARAMS, Load(40.0, 400, 200, 1.0, 1.0), ServerShape(64, None), None)
"""BASE's shape's saturation rate, as the model reads it (the command's --in-cv and --out-cv default to 1)."""


def run(args: list[str], capsys: pytest.CaptureFixture[str]) -> dict[str, object]:
    assert main(args) == 0
    out: dict[str, object] = json.loads(capsys.readouterr().out)
    return out


def test_prints_the_models_figures_and_the_sized_rate(capsys: pytest.CaptureFixture[str]) -> None:
    out = run([*BASE, "--accelerator", "H100-SXM", "--power-cap-w", "500", "--max-batch", "64", *SLO], capsys)
    model, h100 = get_model("mm1k-cb"), profile("H100-SXM")
    shape = ServerShape(64, None, 500.0)
    perf = model.analyze(PARAMS, Load(10.0, 400, 200), shape, h100)
    for key in ("ttft_ms", "itl_ms", "ttft_p95_ms", "itl_p95_ms", "throughput_rps", "mean_batch", "utilization",
                "power_w"):
        assert out[key] == pytest.approx(getattr(perf, key), rel=1e-12), key
    assert out["max_rate_rps"] == pytest.approx(
        model.max_rate(PARAMS, Load(10.0, 400, 200), shape, Targets(300, 30), h100), rel=1e-12)
    assert 0 < perf.power_w <= 500.0


def test_gen2_a_bounded_queue_and_no_accelerator(capsys: pytest.CaptureFixture[str]) -> None:
    out = run(["analyze", "--family", "gen2", "--alpha-ms", "20.58", "--beta-ms", "0.041", "--gamma-ms", "0.00128",
               "--in-tokens", "256", "--out-tokens", "64", "--rate-rps", "20", "--max-batch", "32",
               "--max-queue", "100"], capsys)
    assert out["power_w"] is None  # no accelerator: no power envelope to predict with
    assert 0.1 < float(out["block_probability"]) < 1 and float(out["throughput_rps"]) < 20  # type: ignore[arg-type]
    assert out["utilization"] == pytest.approx(1.0, abs=1e-9)  # saturated, and never above 1
    assert float(out["utilization"]) <= 1.0  # type: ignore[arg-type]


def test_the_step_familys_terms_as_tune_prints_them(capsys: pytest.CaptureFixture[str]) -> None:
    """The default family is step: its four terms and the KV cache reach the model (what `tune` fitted can be
    analysed); left out, the law is gen1's to the bit; given under another family, one line names them."""
    terms = {"kappa_ms": 4e-5, "epsilon_ms": 3.0, "rho": 1.0, "budget_tokens": 2048.0, "kv_tokens": 60_000.0}
    flags = [x for k, v in terms.items() for x in (f"--{k.replace('_', '-')}", str(v))]
    out = run([*BASE, *flags], capsys)
    step = ServiceParams("step", 11.4, 0.05, 4.9, 0.035, **terms)
    perf = get_model("mm1k-cb").analyze(step, Load(10.0, 400, 200), ServerShape(64, 1024, None))
    assert out["ttft_ms"] == pytest.approx(perf.ttft_ms, rel=1e-12)
    assert out["itl_ms"] == pytest.approx(perf.itl_ms, rel=1e-12)
    assert run(BASE, capsys)["ttft_ms"] == run([*BASE, "--family", "gen1"], capsys)["ttft_ms"] != out["ttft_ms"]
    assert main([*BASE, "--family", "gen1", "--rho", "1"]) == 2
    assert "--family: gen1 has no --kappa-ms" in capsys.readouterr().err


def test_batch_sizes_choose_by_rate_and_by_power(capsys: pytest.CaptureFixture[str]) -> None:
    sizes = [8, 16, 32, 64, 128, 256]
    out = run([*BASE, "--accelerator", "H100-SXM", *SLO, "--batch-sizes", ",".join(map(str, sizes))], capsys)
    model, h100 = get_model("mm1k-cb"), profile("H100-SXM")
    rates = [model.max_rate(PARAMS, Load(10.0, 400, 200), ServerShape(n, None), Targets(300, 30), h100)
             for n in sizes]
    by_rate = out["best_batch_for_rate"]
    assert isinstance(by_rate, dict)
    assert by_rate["max_rate_rps"] == pytest.approx(rates[sizes.index(by_rate["max_batch"])], rel=1e-12)
    assert max(rates) <= by_rate["max_rate_rps"] * (1 + TIE)
    by_power = out["best_batch_for_power"]
    assert isinstance(by_power, dict) and by_power["max_batch"] in sizes
    assert "best_batch_for_power_why" not in out
    # a rate no size serves: null, and why (a bare null had said nothing)
    rate = [x if x != "10" else "1000" for x in BASE]
    assert rate != BASE
    out = run([*rate, "--accelerator", "H100-SXM", *SLO, "--batch-sizes", ",".join(map(str, sizes))], capsys)
    best = out["best_batch_for_rate"]
    assert out["best_batch_for_power"] is None and isinstance(best, dict)
    assert out["best_batch_for_power_why"] == (
        "no batch size of [8, 16, 32, 64, 128, 256] serves 1000 rps within the targets: the most any takes is "
        f"{best['max_rate_rps']:.3g} rps (batch {best['max_batch']})")
    # a rate one batch takes within the targets, but with a queue of 2 that turns 5 % away: it had said the rate
    out = run([*BASE, "--max-queue", "2", "--accelerator", "H100-SXM", *SLO, "--batch-sizes", "8,16,32"], capsys)
    assert out["best_batch_for_power"] is None
    assert out["best_batch_for_power_why"] == (
        "no batch size of [8, 16, 32] serves 10 rps within the targets without turning requests away: batch 32 meets "
        "them but turns 4.96% away (a full queue of 2; at most 0.1%)")


def test_batches_apart_by_rounding_alone_are_a_tie_the_smaller_wins(capsys: pytest.CaptureFixture[str]) -> None:
    """At 5.5 rps a replica runs some 33 sequences: max batch 64 and 128 serve it alike, and read a rate 2.5e-5 and a
    draw 1e-8 apart (the rate's bisection width, the mass of the states past 64). 128 had won both: the command told
    a user to restart vLLM with a larger --max-num-seqs for nothing."""
    args = ["analyze", "--alpha-ms", "20", "--beta-ms", "0.2", "--gamma-ms", "20", "--delta-ms", "0.07",
            "--in-tokens", "400", "--out-tokens", "200", "--rate-rps", "5.5", "--accelerator", "H100-SXM",
            "--power-cap-w", "500", *SLO]  # a prompt cost where 128's rate is the one ahead by its rounding
    alone = [run([*args, "--max-batch", str(n)], capsys) for n in (64, 128)]
    rates, draws = ([float(out[key]) for out in alone] for key in ("max_rate_rps", "power_w"))  # type: ignore[arg-type]
    assert rates[0] < rates[1] <= rates[0] * (1 + TIE) and draws[1] < draws[0] <= draws[1] * (1 + TIE)  # the case
    out = run([*args, "--batch-sizes", "16,32,64,128"], capsys)
    assert out["best_batch_for_rate"] == {"max_batch": 64, "max_rate_rps": rates[0]}
    assert out["best_batch_for_power"] == {"max_batch": 64, "power_w": draws[0]}


def test_the_power_fit_tune_prints_is_taken_as_printed(capsys: pytest.CaptureFixture[str]) -> None:
    """`tune --fit-power` prints a prompt's cap sensitivity and a draw curve; analyze had no flags for them, so its
    draw and capped figures were the catalogue's whatever the fit said."""
    fit = {"prefill_sensitivity": 0.38, "busy_share": 0.2253, "batch_half": 79.64}
    flags = [x for k, v in fit.items() for x in (f"--{k.replace('_', '-')}", str(v))]
    args = [*BASE, "--accelerator", "H100-SXM", "--power-cap-w", "400"]
    out, plain = run([*args, *flags], capsys), run(args, capsys)
    fitted = dataclasses.replace(profile("H100-SXM"), **fit)
    perf = get_model("mm1k-cb").analyze(PARAMS, Load(10.0, 400, 200), ServerShape(64, 1024, 400.0), fitted)
    assert out["power_w"] == pytest.approx(perf.power_w, rel=1e-12) and out["power_w"] != plain["power_w"]
    assert out["ttft_ms"] == pytest.approx(perf.ttft_ms, rel=1e-12) and out["ttft_ms"] != plain["ttft_ms"]


@pytest.mark.parametrize("args,message", [
    (["--rate-rps", "-1"], "--rate-rps: must be a finite number >= 0"),
    (["--alpha-ms", "0"], "--alpha-ms: must be a finite number > 0 and <= 60000, got 0.0"),  # as the flag says it
    (["--in-tokens", "0"], "--in-tokens: must be a finite number >= 1 and <= 1e+06, got 0.0"),
    (["--out-tokens", "0.5"], "--out-tokens: must be a finite number >= 1 and <= 1e+06, got 0.5"),
    (["--in-tokens", "0.001"], "--in-tokens: must be a finite number >= 1 and <= 1e+06, got 0.001"),  # as specs hold
    (["--kv-tokens", "1"], "--kv-tokens: 1 holds no whole request of this load (400 + 200 tokens)"),
    (["--budget-tokens", "1e-9"], "--budget-tokens: must be 0 or at least 1, got 1e-09"),  # a TTFT of 7e16 ms
    (["--rate-rps", "40", "--max-queue", "-1"], "--rate-rps: 40 has no stationary solution with an unbounded queue: "
                                                f"max_batch 64 saturates at {SATURATION:.6g} rps"),
    (["--rate-rps", "500", "--max-queue", "-1"], "--rate-rps: 500 has no stationary solution with an unbounded queue: "
                                                 f"max_batch 64 saturates at {SATURATION:.6g} rps"),
    (["--family", "gen2"], "--delta-ms: the gen2 family has no such term, got 0.035"),  # was silently ignored
    (["--power-cap-w", "300"], "--power-cap-w: needs --accelerator"),
    (["--tokens-per-step", "5", "--draft-tokens", "1"],  # read twice the capacity of what it could keep, unsaid
     "--tokens-per-step: must be at most 1 + draft_tokens (2) where drafts are given"),
    (["--draft-tokens", "63.5"], "--draft-tokens: must be in [0, 63], got 63.5"),
    (["--accelerator", "H100-SXM", "--power-cap-w", "5000"],
     "--power-cap-w: must be within H100-SXM's limits, 200-700 W, got 5000"),
    (["--ttft-slo-ms", "300"], "--ttft-slo-ms and --itl-slo-ms: give both"),
    (["--batch-sizes", "8,16"], "--batch-sizes: needs --ttft-slo-ms and --itl-slo-ms"),
    (["--busy-share", "0.3"], "--busy-share: needs --accelerator, whose profile it sets"),
    (["--accelerator", "H100-SXM", "--busy-share", "1"], "--busy-share: must be below 1, got 1.0"),
    (["--accelerator", "H100-SXM", "--busy-share", "0.95"], "--busy-share: must be in [0, 0.9], got 0.95"),
    (["--accelerator", "H100-SXM", "--batch-half", "0.5"], "--batch-half: must be in [1, 4096], got 0.5"),
    (["--accelerator", "H100-SXM", "--prefill-sensitivity", "1e9"],
     "--prefill-sensitivity: must be in [0, 100], got 1e+09"),
])
def test_bad_input_exits_2_with_one_line_naming_it(capsys: pytest.CaptureFixture[str], args: list[str],
                                                   message: str) -> None:
    assert main(replaced(BASE, args)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err


@pytest.mark.parametrize("args,message", [
    (["--batch-sizes", "8,0"], "argument --batch-sizes: every batch size must be >= 1, got '8,0'"),
    (["--batch-sizes", "8,8"], "argument --batch-sizes: each batch size once, got '8,8'"),
    (["--batch-sizes", "8,100000"], "argument --batch-sizes: at most 64 batch sizes, each <= 4096"),
    (["--batch-sizes", ",".join(map(str, range(1, 4097)))],  # echoed whole: 19 KB on one line
     "at most 64 batch sizes, each <= 4096, got '1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,"
     "26,27,28,29,3... (19374 characters)\n"),
    (["--max-batch", "0"], "argument --max-batch: must be in 1..4096, got '0'"),
    (["--max-batch", "1000000000"], "argument --max-batch: must be in 1..4096, got '1000000000'"),
    (["--max-queue", "-7"], "argument --max-queue: must be in -1..1000000, got '-7'"),
    (["--power-cap-w", "nan"], "argument --power-cap-w: must be a finite number in (0, 10000]"),
    (["--alpha-ms", "nan"], "argument --alpha-ms: must be a finite number, got 'nan'"),
    # as written: 1e999 had read "got inf"
    (["--accelerator", "H100-SXM", "--batch-half", "1e999"],
     "argument --batch-half: must be a finite number, got '1e999'"),
    (["--accelerator", "B300"], "argument --accelerator: unknown 'B300', expected one of A100-SXM4, H100-PCIe"),
])
def test_a_bad_option_is_refused_by_argparse_in_one_line(capsys: pytest.CaptureFixture[str], args: list[str],
                                                         message: str) -> None:
    with pytest.raises(SystemExit) as exc:
        main(replaced(BASE, [*SLO, *args]))
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err


def replaced(base: list[str], args: list[str]) -> list[str]:
    """The base command with each flag in `args` set to its value there (added where absent)."""
    out = list(base)
    for flag, value in zip(args[::2], args[1::2], strict=True):
        if flag in out:
            out[out.index(flag) + 1] = value
        else:
            out += [flag, value]
    return out


def test_absurd_model_numbers_are_refused_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    """1e308 tokens or step times overflowed the models' arithmetic (a ZeroDivisionError traceback)."""
    assert main(replaced(BASE, ["--out-tokens", "1e308"])) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--out-tokens: must be a finite number >= 1 and <= 1e+06, got 1e+308" in err


def test_an_overloaded_bounded_queue_serves_its_saturation_rate_and_says_so(capsys: pytest.CaptureFixture[str]) -> None:
    """The default queue is the one configs and observation files use (1,024): past saturation, the analysis
    serves the saturation rate, blocks the rest, and prints that rate."""
    out = run(replaced(BASE, ["--rate-rps", "40"]), capsys)
    assert out["saturation_rps"] == pytest.approx(SATURATION, rel=1e-9) and 18.0 < SATURATION < 18.4
    # served at the saturation rate, to the fixed points' rounding (the prompts' share read at the served rate)
    assert out["throughput_rps"] <= 1.0001 * SATURATION and out["block_probability"] > 0.5  # type: ignore[operator]
    assert out["ttft_ms"] <= out["ttft_p95_ms"]  # type: ignore[operator]


@pytest.mark.parametrize("max_queue", ["1000", "100000", "1000000"])
def test_a_long_overloaded_queues_percentiles_lie_above_its_mean_in_order(capsys: pytest.CaptureFixture[str],
                                                                          max_queue: str) -> None:
    """A million-long queue's wait fell within one bracket of the finer grid too: p95 read 110,522 s against a mean
    of 110,562 s and its p99 near the true p95 (a new user's trial). The wait is a sum of ~max_queue departures, so
    its spread is about sqrt(max_queue) of them: p95 sits 1.6 such spreads past the mean, p99 2.3."""
    out = run([*replaced(BASE, ["--rate-rps", "100"]), "--max-queue", max_queue], capsys)
    mean, p95, p99 = (float(out[k]) for k in ("ttft_ms", "ttft_p95_ms", "ttft_p99_ms"))  # type: ignore[arg-type]
    spread = mean / float(max_queue) ** 0.5  # the wait's standard deviation, to the departures' own spread
    assert mean < p95 < p99 and 0.8 < (p95 - mean) / (1.645 * spread) < 1.25 and p99 - mean < 3.0 * spread


@pytest.mark.parametrize("max_queue", ["1024", "0"])
def test_a_shape_that_turns_nearly_every_arrival_away_is_analysed_in_bounded_time(
        capsys: pytest.CaptureFixture[str], max_queue: str) -> None:
    """Values inside every bound (a million-token prompt and output, 60 s of KV read per context token, 1,000 rps):
    the bisection on the accepted rate halved it toward 0 and its tolerance, relative to that rate, was never met
    (a new user's trial: a million passes in 20 s, then the timeout). It answers: nothing is served."""
    args = ["analyze", "--alpha-ms", "20", "--beta-ms", "0.2", "--gamma-ms", "20", "--kappa-ms", "60000",
            "--in-tokens", "1e6", "--out-tokens", "1e6", "--rate-rps", "1000", "--max-queue", max_queue]
    done: list[dict[str, object]] = []
    worker = threading.Thread(target=lambda: done.append(run(args, capsys)), daemon=True)
    worker.start()
    worker.join(30.0)
    assert done, "analyze did not return in 30 s"
    assert done[0]["block_probability"] == 1.0 and done[0]["throughput_rps"] == 0.0


@pytest.mark.parametrize(("flag", "what"), [("--rho", "convex decode"), ("--budget-tokens", "token budget")])
def test_a_roofline_term_the_batched_reading_has_none_of_is_refused_not_dropped(
        capsys: pytest.CaptureFixture[str], flag: str, what: str) -> None:
    """`--model mm1k-batch --budget-tokens 1` printed the same figures as without it, where mm1k-cb's TTFT moves from
    48 ms to 71,000,000 ms (a new user's trial); `tune --model mm1k-batch` printed rho and budget_tokens as fitted,
    the starting values no window moves under that reading."""
    assert main([*BASE, "--model", "mm1k-batch", flag, "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"wattscale: {flag}: mm1k-batch has no {what} term (mm1k-cb, the default, reads it)"]
    assert main([*BASE, flag, "1"]) == 0  # the default reads it
    capsys.readouterr()
    example = str(ROOT / "config" / "examples" / "observations.csv")
    assert main(["tune", example, "--model", "mm1k-batch", "--accelerator", "H100-SXM", "--json"]) in (0, 1)
    params = json.loads(capsys.readouterr().out)["params"]
    assert "rho" not in params and "budget_tokens" not in params and "epsilon_ms" in params


def test_an_itl_of_several_tokens_a_step_is_said_to_be_a_steps(capsys: pytest.CaptureFixture[str]) -> None:
    """The JSON's itl_ms under speculative decoding is a step's gap, as vLLM's histogram reads it: said on stderr
    (the JSON itself unchanged), and nothing said at one token a step."""
    assert main([*BASE, "--tokens-per-step", "2.5", "--draft-tokens", "3"]) == 0
    out = capsys.readouterr()
    assert "itl_ms" in json.loads(out.out)
    assert out.err == ("wattscale: analyze: itl_ms and its percentiles are a step's gap between outputs, of 2.5 tokens "
                       "(as vLLM's ITL histogram reads it); a token's is that over 2.5\n")
    assert main(BASE) == 0 and capsys.readouterr().err == ""


def test_an_accelerator_is_named_in_any_case() -> None:
    """h100-sxm was refused as unknown where the catalogue has H100-SXM (a trial)."""
    assert accelerator("h100-sxm") == "H100-SXM" and accelerator("H100-SXM") == "H100-SXM"
