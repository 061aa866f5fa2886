"""Tuner state files are validated on load: a bad one is set aside with one warning and the pair starts from
its prior; a state dir that cannot be written is one warning, never an exception in the loop."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from queuemodels import DEFAULT_MODEL, Load, ServerShape, ServiceParams, get_model
from tuner import Observation, Tuner, own_files, store

PRIOR = ServiceParams("gen1", 24.0, 0.18, 40.0, 0.07)
TRUE = ServiceParams("gen1", 12.0, 0.09, 20.0, 0.035)


def observe(rate: float) -> Observation:
    perf = get_model(DEFAULT_MODEL).analyze(TRUE, Load(rate, 500, 200), ServerShape(64, 512), None, tails=False)
    return Observation(rate, 500, 200, 64, 512, perf.ttft_ms, perf.itl_ms)


def saved_state(path: Path) -> dict[str, Any]:
    """A genuine state file, written by a tuner that took four observations."""
    tuner = Tuner(path)
    tuner.ensure("m", "gpu", PRIOR, None)
    for r in (2.0, 8.0, 5.0, 11.0):
        tuner.update("m", "gpu", observe(r))
    doc: dict[str, Any] = json.loads(path.read_text())
    return doc


def pair_edit(field: str, value: object) -> Callable[[dict[str, Any]], None]:
    def edit(doc: dict[str, Any]) -> None:
        doc["pairs"]["m|gpu"][field] = value
    return edit


def skew_p(doc: dict[str, Any]) -> None:
    doc["pairs"]["m|gpu"]["p"][0][1] = 1.0


def huge_cov(doc: dict[str, Any]) -> None:
    p = doc["pairs"]["m|gpu"]["p"]
    p[0][1] = p[1][0] = 1e300  # symmetric and finite: every update after it was rejected, for good


def indefinite_cov(doc: dict[str, Any]) -> None:
    p = doc["pairs"]["m|gpu"]["p"]
    p[0][1] = p[1][0] = -1.0


def bad_draw(doc: dict[str, Any], **edit: object) -> None:
    window = {"rate_rps": 3.0, "in_tokens": 500, "out_tokens": 200, "max_batch": 64, "max_queue": 512,
              "ttft_ms": 120.0, "itl_ms": 20.0, "power_w": 400.0, **edit}
    doc["pairs"]["m|gpu"]["draw"]["recent"] = [window]


@pytest.mark.parametrize("edit,problem", [
    (lambda doc: doc.update(pairs=[]), "pairs is not a table"),
    (pair_edit("rejected", []), "saved state of m|gpu: rejected is not a table of counts"),
    (pair_edit("x", [1e308, -5, 0, 1e-300]), "saved state of m|gpu: x is not a list of finite numbers"),
    (pair_edit("x", [float("nan")] * 4), "saved state of m|gpu: x is not a list of finite numbers"),
    (pair_edit("x", [250.0, 1.8, 400.0, 0.7]), "saved state of m|gpu: outside the filter's bounds for its prior"),
    (pair_edit("p", [[1.0]]), "saved state of m|gpu: p is not a finite 4 x 4 matrix"),
    (skew_p, "saved state of m|gpu: p is not a covariance"),
    (huge_cov, "saved state of m|gpu: p is not a covariance (not positive semi-definite)"),
    (indefinite_cov, "saved state of m|gpu: p is not a covariance (not positive semi-definite)"),
    (pair_edit("updates", -1), "saved state of m|gpu: updates or accepted is not a count"),
    (pair_edit("accepted", True), "saved state of m|gpu: updates or accepted is not a count"),
    (lambda doc: doc["pairs"].update(other="x"), "saved state of other: not a table"),
])
def test_a_bad_state_file_is_set_aside_with_one_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, edit: Callable[[dict[str, Any]], None], problem: str
) -> None:
    path = tmp_path / "tuner.json"
    doc = saved_state(path)
    edit(doc)
    text = json.dumps(doc)
    path.write_text(text)
    tuner = Tuner(path)
    with caplog.at_level(logging.WARNING):
        pair = tuner.ensure("m", "gpu", PRIOR, None)
    np.testing.assert_allclose(pair.x, PRIOR.as_vector())
    assert pair.accepted == 0
    (record,) = caplog.records
    assert record.getMessage().startswith(f"{path}: {problem}")
    assert record.getMessage().endswith("; set aside as tuner.json.bad, starting from priors")
    assert not path.exists() and (tmp_path / "tuner.json.bad").read_text() == text
    # the pair learns and saves again from its prior
    assert tuner.update("m", "gpu", observe(3.0)).accepted and path.exists()


@pytest.mark.parametrize("content", [b"\xff\xfe\x00garbage", b"[" * 100_000, b'{"kind": "wattscale-tuner"}', None])
def test_unreadable_bytes_are_set_aside(tmp_path: Path, caplog: pytest.LogCaptureFixture, content: bytes | None,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """None: a file past the size read (a 3 GB one was read whole: 6 GB of memory and 17 s before the daemon ran)."""

    path = tmp_path / "tuner.json"
    if content is None:
        monkeypatch.setattr(store, "MAX_STATE_BYTES", 500)
        saved_state(path)
        assert path.stat().st_size > 500
    else:
        path.write_bytes(content)
    with caplog.at_level(logging.WARNING):
        pair = Tuner(path).ensure("m", "gpu", PRIOR, None)
    np.testing.assert_allclose(pair.x, PRIOR.as_vector())
    assert len(caplog.records) == 1 and "set aside as tuner.json.bad" in caplog.text


def test_a_state_file_that_cannot_be_read_is_set_aside_not_overwritten(tmp_path: Path,
                                                                       caplog: pytest.LogCaptureFixture) -> None:
    """One that could not be opened (an old owner's mode 000, a link to nothing, not a regular file) was left in
    place, and the first save replaced it unsaid: what it had learnt was lost (a trial of the daemon)."""
    path = tmp_path / "tuner.json"
    path.symlink_to(tmp_path / "gone")
    with caplog.at_level(logging.WARNING):
        tuner = Tuner(path)
        tuner.ensure("m", "gpu", PRIOR, None)
    assert caplog.records[0].getMessage() == (f"{path}: cannot read tuner state (a link to nothing); set aside as "
                                              "tuner.json.bad, starting from priors")
    assert (tmp_path / "tuner.json.bad").is_symlink() and not path.exists()
    caplog.clear()
    kept = tmp_path / "tuner.json.bad.1"
    path.mkdir()
    (path / "what.json").write_text("{}")
    with caplog.at_level(logging.WARNING):
        Tuner(path).ensure("m", "gpu", PRIOR, None)
    assert "cannot read tuner state (not a regular file); set aside as tuner.json.bad.1" in caplog.text
    assert (kept / "what.json").read_text() == "{}"


def test_a_second_bad_copy_is_kept_beside_the_first(tmp_path: Path) -> None:
    """Set aside again, a bad file replaced the copy kept from the first time, unsaid."""
    from tuner.own_files import MAX_ASIDE_COPIES, set_aside

    path = tmp_path / "tuner.json"
    said = []
    for k in range(MAX_ASIDE_COPIES + 1):
        path.write_text(f"copy {k}")
        said.append(set_aside(path, "bad"))
    assert said[:2] == [f"{path}: bad; set aside as tuner.json.bad, starting from priors",
                        f"{path}: bad; set aside as tuner.json.bad.1, starting from priors"]
    kept = sorted(p.name for p in tmp_path.iterdir())
    assert len(kept) == MAX_ASIDE_COPIES and (tmp_path / "tuner.json.bad").read_text() == "copy 0"
    assert (tmp_path / f"tuner.json.bad.{MAX_ASIDE_COPIES - 1}").read_text() == f"copy {MAX_ASIDE_COPIES}"


@pytest.mark.parametrize("edit", [{"ttft_ms": "lots"}, {"rate_rps": 1e308}, {"steady": 0}, {"power_w": None},
                                  {"power_w": 0.0}])
def test_a_bad_draw_curve_costs_only_the_curve(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                               edit: dict[str, object]) -> None:
    """Windows that are not observations (which the curve would fail on every cycle), or none the curve keeps (a
    rate of 1e308 overflowed the model to NaN: every slow tick failed for good), drop the curve alone."""
    path = tmp_path / "tuner.json"
    doc = saved_state(path)
    bad_draw(doc, **edit)
    path.write_text(json.dumps(doc))
    with caplog.at_level(logging.WARNING):
        pair = Tuner(path).ensure("m", "gpu", PRIOR, None)
    np.testing.assert_allclose(pair.x, doc["pairs"]["m|gpu"]["x"])
    assert pair.draw.recent == []
    (record,) = caplog.records
    assert "saved draw curve of m|gpu is unreadable; starting from the catalogue's" in record.getMessage()


def test_a_clock_window_with_a_field_no_reading_has_costs_only_the_clock(tmp_path: Path,
                                                                         caplog: pytest.LogCaptureFixture) -> None:
    """A saved clock window with an in_cv of "x" was restored (Observation.problem does not read it), stopped the
    clock fit unsaid, and was saved again: its fields are checked as the draw curve's are."""
    path = tmp_path / "tuner.json"
    doc = saved_state(path)
    window = {**vars(observe(5.0)), "sm_clock_fraction": 0.6, "in_cv": "x"}
    doc["pairs"]["m|gpu"]["clock"]["recent"] = [window]
    path.write_text(json.dumps(doc))
    with caplog.at_level(logging.WARNING):
        pair = Tuner(path).ensure("m", "gpu", PRIOR, None)
    assert pair.clock.recent == []
    (record,) = caplog.records
    assert "saved clock sensitivity of m|gpu is unreadable; starting from the catalogue's" in record.getMessage()


def test_state_of_another_prior_is_kept_not_set_aside(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "tuner.json"
    saved_state(path)
    other = ServiceParams("gen1", 2.4, 0.018, 4.0, 0.007)  # the saved estimate is 5x outside its bounds
    with caplog.at_level(logging.WARNING):
        pair = Tuner(path).ensure("m", "gpu", other, None)
    np.testing.assert_allclose(pair.x, other.as_vector())
    assert "saved state of m|gpu was fitted under another prior; starting from the prior" \
        in caplog.text and path.exists()


def test_an_unwritable_state_dir_warns_once_and_runs_on(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "afile").write_text("")
    tuner = Tuner(tmp_path / "afile" / "tuner.json")  # works as root too: a file is never a directory
    tuner.ensure("m", "gpu", PRIOR, None)
    with caplog.at_level(logging.WARNING):
        verdicts = [tuner.update("m", "gpu", observe(r)) for r in (2.0, 8.0, 5.0)]
    assert all(v.accepted for v in verdicts)
    assert len(caplog.records) == 1 and "cannot save tuner state" in caplog.text


def test_a_token_budgets_state_loads_back_unchanged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A step prior with max_num_batched_tokens 8192 starts with a variance of (0.15 x 8192)^2 = 1.5e6: a cap of
    1e6 on P's entries set every pair's state aside at each restart."""
    prior = ServiceParams("step", 24.0, 0.18, 40.0, 0.07, budget_tokens=8192.0).with_step_defaults()
    path = tmp_path / "tuner.json"
    tuner = Tuner(path)
    tuner.ensure("m", "gpu", prior, None)
    for r in (2.0, 8.0):
        tuner.update("m", "gpu", observe(r))
    saved = json.loads(path.read_text())["pairs"]["m|gpu"]
    assert max(max(row) for row in saved["p"]) > 1e6
    with caplog.at_level(logging.WARNING):
        pair = Tuner(path).ensure("m", "gpu", prior, None)
    assert not caplog.records and path.exists()
    np.testing.assert_allclose(pair.x, saved["x"])


def test_many_pairs_restore_from_one_read_and_a_pair_made_later_reads_what_was_saved_last(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A daemon starting with many pairs read the file (up to 32 MiB) and parsed it once a pair; a pair made
    later (a new prior) reads the file again, and gets what was saved last. Nothing parsed is kept between."""
    path = tmp_path / "tuner.json"
    writer = Tuner(path)
    for k in range(12):
        writer.ensure("m", f"gpu{k}", PRIOR, None)
    for r in (2.0, 8.0, 5.0, 11.0):
        writer.update("m", "gpu0", observe(r))
    opened: list[object] = []
    real_open = own_files.open_plain
    monkeypatch.setattr(own_files, "open_plain", lambda *a, **k: opened.append(a[0]) or real_open(*a, **k))
    reader = Tuner(path)
    reader.ensure_all(("m", f"gpu{k}", PRIOR, None) for k in range(12))  # as the controller starts
    assert len(opened) == 1
    assert reader.filters["m|gpu0"].accepted == writer.filters["m|gpu0"].accepted > 0
    writer.update("m", "gpu1", observe(6.0))  # saved: a new file
    reader.ensure("m", "gpu1", ServiceParams("gen1", 24.0, 0.18, 40.0, 0.08), None)  # another prior: a new filter
    reader.ensure("m", "gpu1", PRIOR, None)
    assert len(opened) == 3 and reader.filters["m|gpu1"].updates == writer.filters["m|gpu1"].updates > 0


def test_a_cycles_updates_of_several_pairs_are_saved_in_one_write(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """The daemon updates each pair in a cycle and saves once after them: a save a pair rewrote the whole file
    (fsync'd) three times a cycle for three pairs, some 1.5 GB a day. Nothing new, nothing written."""
    path = tmp_path / "tuner.json"
    tuner = Tuner(path)
    writes: list[Path] = []
    real = store.save
    monkeypatch.setattr(store, "save", lambda *a: (writes.append(a[0]), real(*a))[1])
    for name in ("a", "b", "c"):
        tuner.ensure(name, "gpu", PRIOR, None)
    for rate in (2.0, 8.0):
        for name in ("a", "b", "c"):
            assert tuner.update(name, "gpu", observe(rate), save=False).accepted
        assert not path.exists() if rate == 2.0 else len(writes) == 1
        assert tuner.save_pending()
    assert len(writes) == 2 and set(json.loads(path.read_text())["pairs"]) == {"a|gpu", "b|gpu", "c|gpu"}
    assert tuner.save_pending() and len(writes) == 2
