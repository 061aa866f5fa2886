"""The failure book: each failure counted, recorded for the next decision, and logged once while it repeats; many
new ones of a kind at once logged as a few and a count."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, Counter

from controller.failures import SAID_ONE_BY_ONE, Failures


def test_a_flood_of_new_failures_of_one_kind_is_logged_as_a_few_and_a_count(caplog: pytest.LogCaptureFixture) -> None:
    """An exporter listing 5,000 GPUs against 8 made some 10,000 lines in seconds, one per GPU it named."""
    counter = Counter("errors", "test", ["kind"], registry=CollectorRegistry())
    book = Failures(counter)
    for _ in range(2):
        for gpu in range(5000):
            book.report("power_limit", f"gpu {gpu}: no such GPU")
        book.report("scrape", "chat: page down")
        assert len(book.take()) == 5001
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == SAID_ONE_BY_ONE + 2  # the second cycle repeats every one: nothing new to say
    assert lines[SAID_ONE_BY_ONE].startswith("scrape: chat: page down")
    assert lines[-1] == (f"power_limit: {5000 - SAID_ONE_BY_ONE} more new failures of this kind, not logged one by "
                         "one (each counted in wattscale_errors_total)")
    assert counter.labels("power_limit")._value.get() == 10_000


def test_one_failure_twice_in_a_cycle_is_recorded_once_and_counted_twice() -> None:
    """A plan solved twice in a cycle (again with untried accelerators at risk) fell back twice alike, and the
    decision listed the same line twice."""
    counter = Counter("errors", "test", ["kind"], registry=CollectorRegistry())
    book = Failures(counter)
    for _ in range(2):
        book.report("optimizer", "solver 'exhaustive': planned with auto instead")
    book.report("optimizer", "another")
    assert book.take() == ["optimizer: solver 'exhaustive': planned with auto instead", "optimizer: another"]
    assert counter.labels("optimizer")._value.get() == 3
    book.report("optimizer", "another")  # the next cycle records it again
    assert book.take() == ["optimizer: another"]


def test_a_fast_loop_failure_is_recorded_in_the_next_decision_once_a_cycle_and_logged_once_while_it_repeats(
        caplog: pytest.LogCaptureFixture) -> None:
    """The fast loop's failures were counted and logged but never recorded: a decision log of GPU readings lost
    for minutes read "errors": [] throughout. And each was logged: a source failing every other tick (each failure
    the first of a run) logged 300 lines in ten minutes."""
    counter = Counter("errors", "test", ["kind"], registry=CollectorRegistry())
    book = Failures(counter)
    for _cycle in range(20):  # ten minutes of 30-s cycles
        for _ in range(15):  # a source that fails every other tick starts a run each time
            book.report("gpu_source", "the exporter does not answer")
        assert book.take() == ["gpu_source: the exporter does not answer"]
    assert counter.labels("gpu_source")._value.get() == 300
    assert book.take() == []
    assert len(caplog.records) == 1
    book.report("gpu_source", "the exporter does not answer")  # a cycle went by without it: a new run, logged
    assert len(caplog.records) == 2
