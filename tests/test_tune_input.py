"""The observation files `wattscale tune` reads, as users export them: a byte-order mark (Excel), a header
with a column twice, a file without newlines, more rows than tune reads in minutes; each row named by its file
line whichever check refuses it."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from conftest import one_line

from controller.cli import main
from controller.tune_input import MAX_ROWS, read_bounded
from queuemodels import ServiceParams
from tuner import PairFilter
from tuner.offline import ObservationFileError, run

HEADER = "rate_rps,in_tokens,out_tokens,max_batch,ttft_ms,itl_ms"
ROW = "2,500,200,64,120,20"



def test_a_byte_order_mark_is_read_past(tmp_path: Path) -> None:
    """Excel's 'CSV UTF-8' starts with a BOM: it was read into the first column's name ("missing rate_rps")."""
    path = tmp_path / "excel.csv"
    path.write_text("\ufeff" + HEADER + "\n" + ROW + "\n", encoding="utf-8")
    assert [o.rate_rps for o in read_bounded(path)] == [2.0]


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


def test_a_file_longer_than_tune_reads_is_refused_with_its_count(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """165,899 rows ran 22 minutes without a word: refused at once, by count and limit."""
    path = tmp_path / "long.csv"
    path.write_text(HEADER + "\n" + (ROW + "\n") * (MAX_ROWS + 1))
    assert main(["tune", str(path)]) == 2
    assert f"{path}: {MAX_ROWS + 1} observations, more than the {MAX_ROWS} tune reads" in one_line(capsys)
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
