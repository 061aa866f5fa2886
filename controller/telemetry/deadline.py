"""A GPU read the fast loop waits on for a bounded time, whatever hangs beneath it.

NVML's calls take no timeout, and a cluster source's name lookup runs before its socket's timeout applies (a
DNS outage held each read 10 s and more): a read that hangs held the governor with it, every tick skipped. Here
each read runs in a thread of its own, and a tick waits for it no longer than its deadline: past it the read
is a lost sample (the fast loop cuts a fallen budget at once, and sets safe caps after a few), and its answer,
when it comes, is dropped: a listing older than the limits set since would misstate the room under the budget.
A source slower than the deadline is thus lost every tick, and says so; a longer fast_interval_s is its mend.
No read starts while another still runs, so a hung driver costs one thread, not one a tick.
The limit writes are not behind it: a driver that hangs there holds the tick, and the watchdog restarts the
daemon (systemd/wattscale.service).
"""

from __future__ import annotations

import threading

from controller.telemetry.base import DepartingGpus, GpuSample, GpuSource, TelemetryError


class _Read:
    """One read in its thread: the listing (and the GPUs the source says left meanwhile) or what it raised."""

    def __init__(self, source: GpuSource, now: float) -> None:
        self.source, self.now = source, now
        self.listing: list[GpuSample] | None = None
        self.departed: frozenset[str] = frozenset()
        self.failed: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="gpu-read", daemon=True)  # exits without waiting
        self.thread.start()

    def _run(self) -> None:
        try:
            self.listing = self.source.sample(self.now)
            if isinstance(self.source, DepartingGpus):  # read here: the source is this thread's while it reads
                self.departed = self.source.departed()
        except BaseException as exc:  # handed to the tick, which survives any failure of its source
            self.failed = exc

    def answer(self) -> list[GpuSample]:
        if self.failed is not None:
            raise self.failed
        assert self.listing is not None
        return self.listing


class SampleDeadline:
    """`source`'s sample, answered within `deadline_s` or refused."""

    def __init__(self, source: GpuSource, deadline_s: float) -> None:
        self.source, self.deadline_s = source, deadline_s
        self.late: _Read | None = None
        """A read that passed its deadline, until a tick takes its answer."""
        self._departed: set[str] = set()

    def sample(self, now: float) -> list[GpuSample]:
        late, self.late = self.late, None
        if late is not None and late.thread.is_alive():
            self.late = late
            raise TelemetryError(f"the GPU read asked at {late.now:.1f} s has not returned (deadline "
                                 f"{self.deadline_s:g} s); no other is started meanwhile")
        if late is not None:  # done since: its listing is stale, but the GPUs it saw leave have left
            self._departed |= late.departed
        read = _Read(self.source, now)
        read.thread.join(self.deadline_s)
        if read.thread.is_alive():
            self.late = read
            raise TelemetryError(f"the GPU read took longer than its {self.deadline_s:g} s deadline (a source this "
                                 "slow needs a longer daemon.fast_interval_s)")
        self._departed |= read.departed
        return read.answer()

    def departed(self) -> frozenset[str]:
        """The GPUs the source said left, over the reads taken since the last call (none where it says none)."""
        out, self._departed = frozenset(self._departed), set()
        return out
