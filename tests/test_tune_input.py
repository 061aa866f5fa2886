"""The observation files `wattscale tune` reads, as users export them: a byte-order mark (Excel), a header
with a column twice, a file without newlines, more rows than tune reads in minutes; each row named by its file
line whichever check refuses it."""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import one_line

from controller.cli import main
from controller.cli_tune import _usable
from controller.tune_input import MAX_ROWS, read_bounded
from queuemodels import Load, ServerShape, ServiceParams, get_model
from queuemodels.accelerators import profile
from tuner import PairFilter
from tuner.observation_file import ObservationFileError
from tuner.offline import run

ROOT = Path(__file__).resolve().parents[1]
HEADER = "rate_rps,in_tokens,out_tokens,max_batch,ttft_ms,itl_ms"
ROW = "2,500,200,64,120,20"


def test_a_byte_order_mark_is_read_past(tmp_path: Path) -> None:
    """Excel's 'CSV UTF-8' starts with a BOM: it was read into the first column's name ("missing rate_rps")."""
    path = tmp_path / "excel.csv"
    path.write_text("\ufeff" + HEADER + "\n" + ROW + "\n", encoding="utf-8")
    assert [o.rate_rps for o in read_bounded(path)] == [2.0]


def test_a_header_spaced_after_its_commas_is_read_as_its_names(tmp_path: Path) -> None:
    """"rate_rps, in_tokens, ..." was refused as missing 'in_tokens', whose cell read ' in_tokens'."""
    path = tmp_path / "spaced.csv"
    path.write_text(HEADER.replace(",", ", ") + "\n" + ROW.replace(",", ", ") + "\n")
    assert [(o.rate_rps, o.in_tokens, o.itl_ms) for o in read_bounded(path)] == [(2.0, 500.0, 20.0)]


def test_a_column_named_twice_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "twice.csv"
    path.write_text(HEADER + ",ttft_ms\n" + ROW + ",130\n")
    assert main(["tune", str(path)]) == 2
    assert f"{path}: column ['ttft_ms'] named more than once in the header" in one_line(capsys)


def test_a_file_without_newlines_gets_a_short_message(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Its whole text is the header: the message shows a few names, cut, and how many more (it was KBs)."""
    path = tmp_path / "flat.csv"
    path.write_text(HEADER + "," + ",".join(f"{i}.5,{i}{'x' * 60}" for i in range(300)))
    assert main(["tune", str(path)]) == 2
    err = one_line(capsys)
    assert f"{path}: unknown columns [" in err and "and 592 more" in err and len(err) < 600, err


def test_a_line_past_any_row_is_refused_without_reading_it_whole(tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    """A 2-GB sparse file (no newline) peaked at 4.3 GB before the csv module refused its field; read a bounded
    line at a time, it is refused at its first."""
    path = tmp_path / "sparse.csv"
    with path.open("wb") as f:
        f.truncate(1 << 31)
    assert main(["tune", str(path)]) == 2
    assert one_line(capsys).strip() == (f"wattscale: {path}:1: a line of more than 100000 characters (a row of "
                                        "observations takes a few hundred)")
    path.write_text(f"{HEADER}\n{ROW}\n" + "3," * 60_000 + "\n")
    with pytest.raises(ObservationFileError, match=f"^{path}:3: a line of more than 100000 characters"):
        read_bounded(path)
    path.write_text(f"{HEADER}\n{ROW}\n" + '"ab\ncd",' * 20_000 + '""\n')  # one record over 40,000 short lines
    with pytest.raises(ObservationFileError, match=f"^{path}:3: a quoted value runs on over 100000 characters"):
        read_bounded(path)


def test_a_file_longer_than_tune_reads_is_refused_at_its_limit(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    """165,899 rows ran 22 minutes without a word: refused at once, by its limit, where the reader reaches it (a
    3,000,000-row file was read whole first: 57 s and 1.8 GB before the refusal)."""
    path = tmp_path / "long.csv"
    path.write_text(HEADER + "\n" + (ROW + "\n") * (MAX_ROWS + 1) + "not,a,row,that,parses\n" * 3)
    assert main(["tune", str(path)]) == 2
    assert (f"{path}: more than the {MAX_ROWS} observations tune reads (about 8 ms each; the next is line "
            f"{MAX_ROWS + 2})") in one_line(capsys)
    path.write_text(HEADER + "\n" + (ROW + "\n") * MAX_ROWS)
    assert len(read_bounded(path)) == MAX_ROWS  # the limit itself is read


def test_every_check_names_a_row_by_its_file_line(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The reader's, the bounds' and the tuner's rejections all say `path:line` (they said `file.csv:3`,
    `observation 2` and `rows 2`), counting the blank lines a reader skips."""
    path = tmp_path / "obs.csv"
    path.write_text(f"{HEADER}\n{ROW}\n\n2,500,200,64,120,x\n")
    with pytest.raises(ObservationFileError, match=f"^{path}:4: column 'itl_ms' is not a number"):
        read_bounded(path)
    path.write_text(f"{HEADER}\n{ROW}\n\n2,1e308,200,64,120,20\n")
    with pytest.raises(ObservationFileError, match=f"^{path}:4: column 'in_tokens' must be in"):
        read_bounded(path)
    path.write_text(f"{HEADER}\n{ROW}\n\n2,500,200,64,nan,20\n")
    observations = read_bounded(path)
    with caplog.at_level(logging.WARNING):
        report = run(PairFilter(ServiceParams("gen1", 24.0, 0.18, 40.0, 0.07), None), observations)
    assert report["rejected_rows"] == {"non-finite": [4]} and "tune: rows rejected: non-finite" in caplog.text
    assert f": {path}:4" in caplog.text, caplog.text


def test_a_file_of_one_row_reads_as_one_and_says_what_it_cannot_score(tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """A file all warm-up printed "1 observations" and "one step ahead ttft nan, itl nan"."""
    from controller.cli import main

    path = tmp_path / "one.csv"
    path.write_text("".join((ROOT / "config" / "examples" / "observations.csv").read_text().splitlines(True)[:2]))
    assert main(["tune", str(path), "--accelerator", "H100-SXM"]) == 0
    got = capsys.readouterr()
    out = got.out
    assert out.startswith("1 observation (warmup 1): ") and "one step ahead no row scored (warm-up); in sample ttft " \
        in out and "from 1 window;" in out and "nan" not in out, out
    assert "tune: 1 observation for 8 parameters: they cannot pin most of them down" in got.err  # said, exit 0


def test_a_fit_that_does_not_explain_its_own_windows_exits_1_saying_so(capsys: pytest.CaptureFixture[str],
                                                                       caplog: pytest.LogCaptureFixture) -> None:
    """A prior ten times off the observations: alpha held at its bound, every row after the warm-up rejected, and
    the parameters printed (in-sample TTFT off 11,000-fold) with exit 0, to be pasted into `analyze` or a spec."""
    path = ROOT / "config" / "examples" / "observations.csv"
    assert main(["tune", str(path), "--accelerator", "H100-SXM", "--alpha-ms", "1500"]) == 1
    err = capsys.readouterr().err
    assert "alpha_ms held at its lower bound 150 (prior / 10)" in caplog.text
    assert "tune: the fit does not explain its own windows (in-sample median error ttft 11049" in err
    assert "a parameter held at a bound above says which prior to move" in err
    assert main(["tune", str(path), "--accelerator", "H100-SXM"]) == 0  # the example itself fits
    assert "does not explain" not in capsys.readouterr().err


def test_times_far_over_what_the_model_can_reach_are_an_unusable_fit(tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """The example with ITL per request (a request's mean gap times its tokens): the fit 200 times under it, and an
    in-sample error of 0.995 (|predicted / measured - 1| never passes 1 from below) passed with exit 0 (a trial)."""
    rows = list(csv.DictReader((ROOT / "config" / "examples" / "observations.csv").open()))
    path = tmp_path / "per-request.csv"
    with path.open("w", newline="") as f:
        out = csv.DictWriter(f, fieldnames=list(rows[0]))
        out.writeheader()
        out.writerows({**r, "itl_ms": float(r["itl_ms"]) * float(r["out_tokens"])} for r in rows)
    assert main(["tune", str(path), "--accelerator", "H100-SXM"]) == 1
    err = capsys.readouterr().err
    assert "tune: the fit does not explain its own windows: it predicts the median window's ITL at 0.00" in err
    assert "itl_ms the mean gap between a request's tokens?" in err


def test_an_unusable_fit_of_too_few_rows_says_so_and_a_bound_only_where_one_was_held_at(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture) -> None:
    """One row of extreme values: the exit-1 line pointed at "a parameter held at a bound above" where no bound was
    named, and the note of too few rows was not printed (a new user's trial). Whether the fit ends a hair inside
    beta's bound or at it depends on SciPy's release (1.17 ends at it), so both are said where both hold."""
    path = tmp_path / "extreme.csv"
    path.write_text("rate_rps,in_tokens,out_tokens,max_batch,ttft_ms,itl_ms\n1000000,1000000,1000000,4096,10000000,"
                    "10000000\n")
    assert main(["tune", str(path)]) == 1
    err = capsys.readouterr().err
    assert "its parameters are not usable; 1 observation for 8 parameters" in err
    assert ("held at a bound above" in err) == ("held at its" in caplog.text)


def test_thousands_of_rejected_rows_are_named_ten_at_a_time(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The warning named every rejected row: 6,567 of a 20,000-row file made one line of 200 KB. The report keeps
    them all."""
    path = tmp_path / "obs.csv"
    path.write_text(f"{HEADER}\n{ROW}\n" + "2,500,200,64,nan,20\n" * 25)
    with caplog.at_level(logging.WARNING):
        report = run(PairFilter(ServiceParams("gen1", 24.0, 0.18, 40.0, 0.07), None), read_bounded(path))
    assert report["rejected_rows"] == {"non-finite": list(range(3, 28))}
    (line,) = [r.getMessage() for r in caplog.records if "rows rejected" in r.getMessage()]
    assert line.endswith(f"{path}:12 and 15 more (the report's rejected_rows lists them)"), line
    assert f"{path}:13" not in line


def test_a_number_with_underscores_or_a_queueing_time_out_of_bounds_is_refused(tmp_path: Path) -> None:
    """Python's float read "1_0" as 10, and a queueing time of -5 or inf was dropped without a word; NaN there (a
    window that does not say it) reads as an empty cell."""
    path = tmp_path / "obs.csv"
    for text in ("1_0", "\uff12\uff12"):  # full-width digits: Python reads them as 22 (a trial)
        path.write_text(f"{HEADER}\n{text},500,200,64,120,20\n", encoding="utf-8")
        with pytest.raises(ObservationFileError, match=f"^{path}:2: column 'rate_rps' is not a number: '{text}'"):
            read_bounded(path)
    with pytest.raises(SystemExit) as stop:
        main(["analyze", "--alpha-ms", "9.5", "--beta-ms", "0.015", "--gamma-ms", "3.8", "--delta-ms", "0.026",
              "--in-tokens", "512", "--out-tokens", "200", "--rate-rps", "\uff15"])
    assert stop.value.code == 2
    for value in ("-5", "inf", "1e300"):
        path.write_text(f"{HEADER},queue_ms\n{ROW},{value}\n")
        with pytest.raises(ObservationFileError, match=f"^{path}:2: column 'queue_ms' must be in"):
            read_bounded(path)
    path.write_text(f"{HEADER},queue_ms,served_rps\n{ROW},nan,nan\n")
    obs = read_bounded(path)[0]
    assert obs.queue_ms is not None and obs.queue_ms != obs.queue_ms and not obs.splits_queue and obs.problem() is None


@pytest.mark.parametrize(("column", "row"), [("ttft_ms", "3,512,256,32,1e-308,11"),
                                             ("itl_ms", "3,512,256,32,40,5e-324")])
def test_a_latency_no_server_reads_is_refused_and_zero_is_no_traffic(tmp_path: Path, column: str, row: str) -> None:
    """1e-308 made the fit's residuals infinite (a traceback in scipy's least squares); 0 is a window without
    traffic, which the filter skips."""
    path = tmp_path / "obs.csv"
    path.write_text(f"{HEADER}\n{ROW}\n{row}\n")
    with pytest.raises(ObservationFileError, match=f"^{path}:3: column {column!r} must be 0 \\(no traffic\\) or in "
                                                   r"\[0\.001, 1e\+07\], got "):
        read_bounded(path)
    path.write_text(f"{HEADER}\n{ROW}\n3,512,256,32,0,0\n")
    assert [o.ttft_ms for o in read_bounded(path)] == [120.0, 0.0]


@pytest.mark.parametrize("column", ["rate_rps", "ttft_ms", "max_batch", "power_cap_w"])
def test_a_number_past_any_float_is_refused_as_written(tmp_path: Path, column: str) -> None:
    """400 digits (or 1e999) read as inf: a rate or a latency then passed for a missing figure and the row was
    dropped without a word, a max batch read "got inf"; 1e308 was refused by name."""
    path = tmp_path / "obs.csv"
    values = dict(zip(HEADER.split(","), ROW.split(","), strict=True))
    for text, shown in (("9" * 400, "9" * 40 + "... (400 characters)"), ("1e999", "1e999")):
        row = {**values, column: text} if column in values else {**values}
        path.write_text(f"{HEADER},power_cap_w\n{','.join(row.values())},{text if column == 'power_cap_w' else 400}\n")
        with pytest.raises(ObservationFileError) as err:
            read_bounded(path, profile("H100-SXM"))
        assert str(err.value) == f"{path}:2: column {column!r} is past any number a float holds: {shown}"


def test_a_whole_count_out_of_bounds_is_shown_as_written(tmp_path: Path) -> None:
    """A max batch of 99999999 was refused as "got 1e+08", not the value in the file (a new user's trial)."""
    path = tmp_path / "obs.csv"
    values = dict(zip(HEADER.split(","), ROW.split(","), strict=True))
    path.write_text(f"{HEADER}\n{','.join({**values, 'max_batch': '99999999'}.values())}\n")
    with pytest.raises(ObservationFileError) as err:
        read_bounded(path)
    assert str(err.value).endswith("column 'max_batch' must be in [1, 4096], got 99999999"), err.value


def test_every_row_out_of_bounds_is_named_as_one_row_is(tmp_path: Path) -> None:
    """One row with a cap of 0 was refused by its column and value, every row so as "no usable observation (18
    bad-shape ...)": the bounds were checked after the rows' usability."""
    path = tmp_path / "obs.csv"
    for rows in ([f"{ROW},400", f"{ROW},0"], [f"{ROW},0", f"{ROW},0"]):
        path.write_text("\n".join([f"{HEADER},power_cap_w", *rows]) + "\n")
        with pytest.raises(ObservationFileError) as err:
            read_bounded(path, profile("H100-SXM"))
        line = 2 + rows.index(f"{ROW},0")
        assert str(err.value) == f"{path}:{line}: column 'power_cap_w' must be in [200, 700], got 0.0"


def test_tune_json_writes_figures_it_does_not_have_as_null(tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    """One row leaves the one-step-ahead errors unknown: they were printed as NaN, which no strict JSON parser
    (jq, JavaScript, Go) reads."""
    path = tmp_path / "one.csv"
    path.write_text(f"{HEADER}\n{ROW}\n")
    assert main(["tune", str(path), "--json"]) == 0

    def refuse(name: str) -> None:
        raise AssertionError(f"{name} in the JSON")

    doc = json.loads(capsys.readouterr().out, parse_constant=refuse)
    assert doc["error_one_step_ahead"]["median_ttft"] is None


def test_a_gen2_prior_with_a_per_token_prefill_term_is_refused_and_without_one_fitted(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """gen2 has no delta: `--delta-ms` was taken and silently dropped."""
    path = tmp_path / "rows.csv"
    path.write_text(f"{HEADER}\n{ROW}\n")
    assert main(["tune", str(path), "--family", "gen2", "--delta-ms", "0.1"]) == 2
    assert "--delta-ms: gen2 has no per-token prefill term" in one_line(capsys)
    assert main(["tune", str(path), "--family", "gen2", "--gamma-ms", "0.002", "--json"]) == 0
    assert "delta_ms" not in json.loads(capsys.readouterr().out)["params"]


def test_one_operating_point_and_a_zero_prior_are_said(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """3,000 identical rows fitted 8 parameters without a word (the note counted rows), and a prior of 0, which fixes
    its term at 0, left beta out unsaid."""
    path = tmp_path / "same.csv"
    path.write_text(HEADER + "\n" + "3,512,256,32,40,11\n" * 30)
    assert main(["tune", str(path), "--beta-ms", "0"]) == 0
    err = capsys.readouterr().err
    assert "tune: beta_ms is 0 in the prior: its term is left out of the model, not fitted" in err
    assert "tune: 30 observations at 1 operating point for 8 parameters: they cannot pin most of them down" in err


def test_gen2_starts_from_a_prior_in_its_own_units(capsys: pytest.CaptureFixture[str]) -> None:
    """gen2's gamma is per sequence per context token, but the prior was gen1's 10 ms: every term of the fit at its
    bound and an in-sample TTFT error of 2.7e6 on the shipped observations (exit 1)."""
    example = ROOT / "config" / "examples" / "observations.csv"
    assert main(["tune", str(example), "--family", "gen2", "--accelerator", "H100-SXM", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["error_in_sample"]["median_ttft"] < 0.15 and doc["error_in_sample"]["median_itl"] < 0.15


def test_an_unknown_accelerator_is_named_as_the_option(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "rows.csv"
    path.write_text(f"{HEADER}\n{ROW}\n")
    with pytest.raises(SystemExit):
        main(["tune", str(path), "--accelerator", "H999"])
    assert "argument --accelerator: unknown 'H999', expected one of A100-SXM4" in one_line(capsys)


def _example_with(tmp_path: Path, power: Callable[[float, float | None], str]) -> Path:
    """The shipped example with each row's power_w rewritten by `power(power_w, power_cap_w)`."""
    lines = (ROOT / "config" / "examples" / "observations.csv").read_text().splitlines()
    names = lines[0].split(",")
    cap, drawn = names.index("power_cap_w"), names.index("power_w")
    rows = []
    for line in lines[1:]:
        cells = line.split(",")
        cells[drawn] = power(float(cells[drawn]), float(cells[cap]) if cells[cap] else None)
        rows.append(",".join(cells))
    path = tmp_path / "obs.csv"
    path.write_text("\n".join([lines[0], *rows]) + "\n")
    return path


@pytest.mark.parametrize(("power", "said"), [
    (lambda w, cap: f"{w / 1000:g}", "column 'power_w' must be in [23.75, 875], got 0.2863"),  # kW
    (lambda w, cap: f"{w * 10:g}", "column 'power_w' must be in [23.75, 875], got 2863.0"),  # in tenths of a W
    (lambda w, cap: "875.0004", "column 'power_w' must be in [23.75, 875], got 875.0004"),  # not "got 875"
    (lambda w, cap: f"{w if cap is None else cap * 1.25 + 0.0004!r}", "column 'power_w' must be at most 700 W "
                                                                      "(1.25 x the row's power_cap_w, 560 W), got "
                                                                      "700.0004"),
])
def test_a_power_reading_no_such_gpu_draws_is_refused_by_its_row(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                                 power: Callable[[float, float | None], str],
                                                                 said: str) -> None:
    """power_w was only held within [0, 10,000] W whatever the GPU: readings in kW fitted a draw curve to its
    bounds (median error 425) and `tune` exited 0."""
    path = _example_with(tmp_path, power)
    assert main(["tune", str(path), "--accelerator", "H100-SXM"]) == 2
    assert said in one_line(capsys)


def test_a_draw_curve_that_misses_its_readings_by_half_exits_1(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    """Readings a GPU can draw, but a tenth of what this load draws (another GPU's, a sum gone wrong): the fit is
    printed, and refused."""
    path = _example_with(tmp_path, lambda w, cap: "30")
    assert main(["tune", str(path), "--accelerator", "H100-SXM"]) == 1
    out, err = capsys.readouterr()
    assert "draw curve:" in out
    assert "tune: the draw curve does not explain the windows' power readings (median relative error" in err


def test_the_prefill_sensitivity_stays_the_catalogue_s_where_no_window_ran_under_a_cap(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Only a capped window tells how a cap slows prompts: fitted on uncapped windows alone it moved from 1 to 0.46
    with the times' common scale, and `analyze --power-cap-w` read prompts 4 % faster under a cap."""
    lines = (ROOT / "config" / "examples" / "observations.csv").read_text().splitlines()
    cap_at = lines[0].split(",").index("power_cap_w")
    path = tmp_path / "uncapped.csv"
    path.write_text("\n".join([lines[0], *(line for line in lines[1:] if not line.split(",")[cap_at])]) + "\n")
    assert main(["tune", str(path), "--accelerator", "H100-SXM", "--fit-power", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["params"]["prefill_sensitivity"] == 1.0
    for cap in ("700", "699"):  # caps at or near the top bind nothing: no window of these draws 699 W uncapped
        rows = [line.split(",") for line in path.read_text().splitlines()[1:]]
        capped = tmp_path / f"cap{cap}.csv"
        capped.write_text("\n".join([lines[0], *(",".join([*r[:cap_at], cap, *r[cap_at + 1:]]) for r in rows)]) + "\n")
        assert main(["tune", str(capped), "--accelerator", "H100-SXM", "--fit-power", "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["params"]["prefill_sensitivity"] == 1.0, cap
    assert main(["tune", str(ROOT / "config" / "examples" / "observations.csv"), "--accelerator", "H100-SXM",
                 "--fit-power", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["params"]["prefill_sensitivity"] < 0.9  # capped rows move it


@pytest.mark.parametrize(("text", "said"), [
    ("# exported 2026-12-01\n" + HEADER + "\n" + ROW + "\n", "its first line is ['# exported 2026-12-01']: the header "
                                                              "must be the first line, with no comment above it"),
    (HEADER.replace(",", ";") + "\n" + ROW.replace(",", ";") + "\n", "with commas, not semicolons"),
    (HEADER.replace(",", "\t") + "\n" + ROW.replace(",", "\t") + "\n", "with commas, not tabs"),
])
def test_a_header_under_a_comment_or_split_by_another_separator_says_so(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, said: str) -> None:
    """Both read as "missing columns" of every column, without a word on why."""
    path = tmp_path / "obs.csv"
    path.write_text(text)
    assert main(["tune", str(path)]) == 2
    assert said in one_line(capsys)


def test_a_prior_term_of_0_is_left_out_not_a_cause_to_reject_rows(capsys: pytest.CaptureFixture[str]) -> None:
    """`--delta-ms 0` (a term left out, as the README allows) rejected 10 of the example's 18 rows as ones the model
    cannot evaluate: the Jacobian perturbed the 0 to 1e-12, under the least value a term may take."""
    path = ROOT / "config" / "examples" / "observations.csv"
    assert main(["tune", str(path), "--accelerator", "H100-SXM", "--delta-ms", "0", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert "model-error" not in report["verdicts"] and report["params"]["delta_ms"] == 0.0, report["verdicts"]


def test_tune_takes_the_kv_cache_the_windows_ran_at(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """tune had no way to be told the replicas' KV cache: windows at batch 128-256 whose cache holds 40 requests were
    fitted as if the batch ran to its max, 80 % off in TTFT, and the printed law predicted an unbounded batch."""
    model, kv = get_model("mm1k-cb"), 40 * (1024 + 256)
    truth = ServiceParams("step", 11.8, 0.01, 6.2, 0.034, kappa_ms=5e-5, epsilon_ms=0.5, rho=1.0,
                          budget_tokens=8000.0, kv_tokens=kv)
    rows = [HEADER]
    for batch, n_in, share in ((b, n, u) for b in (128, 256) for n in (256, 1024) for u in (0.3, 0.6, 0.85)):
        load = Load(1.0, n_in, 256)
        rate = share * model.saturation_rps(truth, load, ServerShape(batch, None))
        perf = model.analyze(truth, dataclasses.replace(load, rate_rps=rate), ServerShape(batch, 1024), tails=False)
        rows.append(f"{rate},{n_in},256,{batch},{perf.ttft_ms},{perf.itl_ms}")
    path = tmp_path / "bound.csv"
    path.write_text("\n".join(rows) + "\n")
    errors = {}
    for flags in ([], ["--kv-tokens", str(kv)]):
        assert main(["tune", str(path), "--json", *flags]) == 0
        doc = json.loads(capsys.readouterr().out)
        errors[bool(flags)] = doc["error_in_sample"]["max_ttft"]
        assert doc.get("kv_tokens") == (kv if flags else None)
    assert errors[True] < 0.05 < 0.3 < errors[False]
    assert main(["tune", str(path), "--kv-tokens", str(kv)]) == 0
    assert f"fitted at a KV cache of {kv} tokens" in capsys.readouterr().out
    assert main(["tune", str(path), "--kv-tokens", "1234567"]) == 0  # as given: `g` printed it 1.23457e+06
    assert "fitted at a KV cache of 1234567 tokens" in capsys.readouterr().out
    assert main(["tune", str(path), "--kv-tokens", "1000"]) == 2  # under one request of 1,280 tokens
    assert one_line(capsys).startswith("wattscale: --kv-tokens: 1000 holds no whole request of the longest rows")
    rows.insert(1, "1,nan,256,64,50,10")  # a row the filter skips: first, it hid every other from the check
    path.write_text("\n".join(rows) + "\n")
    assert main(["tune", str(path), "--kv-tokens", "1000"]) == 2
    assert "holds no whole request of the longest rows (1280 tokens" in one_line(capsys)


def test_the_unusable_fit_gate_judges_the_law_where_ttft_is_fitted_less_its_queueing(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """With `queue_ms`, the law is fitted to TTFT less the queueing; the whole TTFT's error also holds the chain's
    queueing error, which no fit of the law mends: the gate reads the law's own, and both are printed."""
    model = get_model("mm1k-cb")
    truth = ServiceParams("step", 11.8, 0.01, 6.2, 0.034, kappa_ms=5e-5, epsilon_ms=0.5, rho=1.0, budget_tokens=8000.0)
    rows = [HEADER + ",queue_ms"]
    for batch, n_in, share in ((b, n, u) for u in (0.2, 0.8, 0.5) for b in (32, 64) for n in (256, 1024)):
        load = Load(1.0, n_in, 256)
        rate = share * model.saturation_rps(truth, load, ServerShape(batch, None))
        perf = model.analyze(truth, dataclasses.replace(load, rate_rps=rate), ServerShape(batch, 1024), tails=False)
        queue = 10.0 * (perf.ttft_ms - perf.extra["prefill_ms"])  # an engine queueing 10 x what the chain says
        rows.append(f"{rate},{n_in},256,{batch},{perf.extra['prefill_ms'] + queue},{perf.itl_ms},{queue}")
    path = tmp_path / "queued.csv"
    path.write_text("\n".join(rows) + "\n")
    assert main(["tune", str(path), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["error_in_sample_law"]["median_ttft"] < 0.05 < 0.3 < doc["error_in_sample"]["median_ttft"]
    assert main(["tune", str(path)]) == 0
    assert "the law alone, fitted to TTFT less the queueing time (queue_ms): in sample" in capsys.readouterr().out
    # the gate, on a fit whose whole TTFT is off by more than its windows measured and whose law is not
    law = {"median_ttft": 0.02, "median_itl": 0.01, "max_ttft": 0.05, "max_itl": 0.02, "bias_ttft": 0.01,
           "bias_itl": -0.01}
    report = {**doc, "error_in_sample": {**law, "median_ttft": 1.5}, "error_in_sample_law": law}
    assert _usable(report, 12) == 0 and _usable({**report, "error_in_sample_law": report["error_in_sample"]}, 12) == 1


def test_tokens_per_step_is_read_and_held_to_one_to_64(tmp_path: Path) -> None:
    """A speculative engine's windows say the tokens a step gave (default 1): the load the model reads takes them,
    and a value no engine gives is refused by its row and column."""
    path = tmp_path / "obs.csv"
    path.write_text(f"{HEADER},tokens_per_step\n{ROW},2.5\n{ROW},\n")
    spec, plain = read_bounded(path)
    assert spec.load.tokens_per_step == 2.5 and plain.load.tokens_per_step == 1.0
    assert spec.problem() is None
    for value in ("0.5", "65", "-1", "nan"):
        path.write_text(f"{HEADER},tokens_per_step\n{ROW},{value}\n")
        with pytest.raises(ObservationFileError, match=f"^{path}:2: column 'tokens_per_step' must be"):
            read_bounded(path)
    assert dataclasses.replace(spec, tokens_per_step=0.9).problem() == "implausible"  # a hand-edited state file


def test_draft_tokens_are_read_held_to_zero_to_63_and_said(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The tokens drafted a step (vLLM's spec_decode counters; default 0) reach the load the model reads, a value
    no engine gives is refused by its row and column, and tune says what analyze is to be given."""
    path = tmp_path / "obs.csv"
    path.write_text(f"{HEADER},tokens_per_step,draft_tokens\n{ROW},2.5,3\n{ROW},2.5,\n")
    drafted, unread = read_bounded(path)
    assert drafted.load.draft_tokens == 3.0 and unread.load.draft_tokens == 0.0 and drafted.problem() is None
    for value in ("64", "-1", "nan"):
        path.write_text(f"{HEADER},draft_tokens\n{ROW},{value}\n")
        with pytest.raises(ObservationFileError, match=f"^{path}:2: column 'draft_tokens' must be"):
            read_bounded(path)
    assert dataclasses.replace(drafted, draft_tokens=-0.5).problem() == "implausible"  # a hand-edited state file
    path.write_text(f"{HEADER},tokens_per_step,draft_tokens\n2,500,200,64,120,20,2.4,3\n4,500,200,64,150,22,2.6,3\n"
                    "3,500,200,64,130,21,,\n")  # a row that read neither: left out of both means (it read 1 and 0)
    main(["tune", str(path)])
    out = capsys.readouterr().out
    assert "tokens drafted a step read: mean 3 (3-3): give analyze --draft-tokens 3" in out
    assert "tokens a step read: mean 2.5 (2.4-2.6" in out
    path.write_text(f"{HEADER},tokens_per_step,draft_tokens\n{ROW},5,1\n")  # 5 kept of 1 drafted and 1 verified
    with pytest.raises(ObservationFileError, match=f"^{path}:2: column 'tokens_per_step' must be at most 1 \\+ "
                                                   r"draft_tokens \(2\) where drafts are given"):
        read_bounded(path)


def test_tune_says_the_tokens_a_step_its_windows_read(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """What analyze is to be given again (a user's trial: tune read the column and said nothing of it)."""
    path = tmp_path / "obs.csv"
    path.write_text(f"{HEADER},tokens_per_step\n2,500,200,64,120,20,2.4\n4,500,200,64,150,22,2.6\n3,500,200,64,130,21,"
                    f"2.5\n")
    main(["tune", str(path)])
    out = capsys.readouterr().out
    assert "tokens a step read: mean 2.5 (2.4-2.6; speculative decoding): give analyze --tokens-per-step 2.5" in out
    main(["tune", str(path), "--json"])
    assert json.loads(capsys.readouterr().out)["tokens_per_step"] == {"mean": 2.5, "min": 2.4, "max": 2.6, "rows": 3}
    path.write_text(f"{HEADER}\n2,500,200,64,120,20\n4,500,200,64,150,22\n")
    main(["tune", str(path)])
    assert "tokens a step" not in capsys.readouterr().out  # one a step: nothing to say


def test_tune_starts_the_step_familys_terms_where_it_is_told(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    """A user knows the token budget vLLM runs with, and that a speculative step verifies several positions: tune
    took no prior for the step family's terms, and rho stayed near 1 from windows that never reach a large batch
    (a user's trial). Given, the fit starts there; a family without the terms is told so."""
    path = tmp_path / "obs.csv"
    path.write_text(f"{HEADER}\n2,500,200,64,120,20\n4,500,200,64,150,22\n3,500,200,64,130,21\n")
    main(["tune", str(path), "--json", "--rho", "2.5", "--budget-tokens", "2048"])
    params = json.loads(capsys.readouterr().out)["params"]
    assert params["rho"] == pytest.approx(2.5, rel=0.3) and params["budget_tokens"] == pytest.approx(2048, rel=0.3)
    assert main(["tune", str(path), "--family", "gen1", "--rho", "2"]) == 2
    assert "--family: gen1 has no --rho; they are the step family's" in capsys.readouterr().err
    assert main(["tune", str(path), "--budget-tokens", "0.5"]) == 2
    assert "--budget-tokens: must be 0 or at least 1, got 0.5" in capsys.readouterr().err


def test_a_queueing_time_past_the_ttft_is_said_and_left_out(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A queue_ms at or past its row's ttft_ms (a unit slip: seconds for milliseconds) was left out silently, the
    fit the same as without the column: tune says which rows, and reads them whole."""
    path = tmp_path / "obs.csv"
    path.write_text(f"{HEADER},queue_ms\n{ROW},1000\n4,500,200,64,150,22,150\n3,500,200,64,130,21,30\n")
    assert main(["tune", str(path)]) == 0
    err = capsys.readouterr().err
    assert f"queue_ms at or past ttft_ms in 2 rows ({path}:2, {path}:3): the queueing time is part of TTFT" in err


@pytest.mark.parametrize(("text", "said"), [
    (f"{HEADER}\n1e-300,500,200,64,120,20\n", "column 'rate_rps' must be 0 or at least 1e-06, got"),  # was fitted
    (f"{HEADER},in_cv\n{ROW},nan\n", "column 'in_cv' must be a number >= 0, got nan"),  # "must be >= 0"
])
def test_a_rate_below_an_optimize_specs_least_and_a_nan_spread_are_refused(tmp_path: Path, text: str,
                                                                          said: str) -> None:
    path = tmp_path / "obs.csv"
    path.write_text(text)
    with pytest.raises(ObservationFileError, match=f"^{path}:2: {said}"):
        read_bounded(path)
