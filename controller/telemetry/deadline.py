"""A GPU read the fast loop waits on for a bounded time, whatever hangs beneath it.

NVML's calls take no timeout, and a cluster source's name lookup runs before its socket's timeout applies (a
DNS outage held each read 10 s and more): a read that hangs held the governor with it, every tick skipped. Here
each read runs in a thread of its own, and a tick waits for it no longer than its deadline: past it the read is a
lost sample like any other (the fast loop sets safe caps after a few, or at once where the budget fell), and no
second read starts while the first still hangs, so a hung driver costs one thread, not one a tick.
"""

from __future__ import annotations

import threading
import time

from controller.telemetry.base import GpuSample, GpuSource, TelemetryError


class SampleDeadline:
    """`source`'s sample, answered within `deadline_s` or refused."""

    def __init__(self, source: GpuSource, deadline_s: float) -> None:
        self.source, self.deadline_s = source, deadline_s
        self.hung: threading.Thread | None = None
        """A read still running past its deadline."""
        self.hung_since = 0.0
        """When that read started (monotonic seconds), for the message."""

    def sample(self, now: float) -> list[GpuSample]:
        if self.hung is not None:
            if self.hung.is_alive():
                raise TelemetryError(f"the GPU read started {time.monotonic() - self.hung_since:.0f} s ago has "
                                     f"not returned (deadline {self.deadline_s:g} s); no other is started meanwhile")
            self.hung = None
        answer: list[list[GpuSample]] = []
        failed: list[BaseException] = []

        def read() -> None:
            try:
                answer.append(self.source.sample(now))
            except BaseException as exc:  # handed to the tick, which survives any failure of its source
                failed.append(exc)

        reader = threading.Thread(target=read, name="gpu-read", daemon=True)  # a hung driver keeps no exit waiting
        started = time.monotonic()
        reader.start()
        reader.join(self.deadline_s)
        if reader.is_alive():
            self.hung, self.hung_since = reader, started
            raise TelemetryError(f"the GPU read took longer than its {self.deadline_s:g} s deadline")
        if failed:
            raise failed[0]
        return answer[0]
