"""Every request of one simulated service, as a load generator's log would hold it: the ground truth of
request-level SLO attainment (the engines' histograms only say what a window's mean or quantile was).

Arrivals are logged as the router takes them, finishes as an engine frees the slot. A request handed back
by a restart and served elsewhere finishes once, with its first arrival time; one that never finishes
(dropped behind an empty service, still queued at the end) has an arrival and no finish.
"""

from __future__ import annotations

from array import array
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray


@dataclass(frozen=True)
class Finished:
    """The finished requests, one entry per request, times in seconds of simulated time."""

    arrival_s: NDArray[np.float64]
    ttft_s: NDArray[np.float64]
    itl_s: NDArray[np.float64]
    """Mean gap between outputs after the first, as vLLM's ITL histogram has them: one a step, so between tokens
    unless the engine decodes speculatively (0 for a one-token answer)."""
    e2e_s: NDArray[np.float64]
    out_tokens: NDArray[np.int64]
    in_tokens: NDArray[np.int64]


class RequestLog:
    """Arrivals and finishes of one service; a disabled log keeps nothing (a long-running daemon on the
    simulated host would otherwise hold every request it ever served)."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        # flat machine doubles: a request as Python objects took some 230 bytes (25 MB a simulated hour a policy)
        self._arrivals = array("d")
        self._rows = array("d")
        """Six a finished request: arrival, first token, done, in tokens, out tokens, outputs after the first."""

    def arrive(self, times_s: list[float]) -> None:
        if self.enabled:
            self._arrivals.extend(times_s)

    def finish(self, arrival_s: float, first_token_s: float, done_s: float, in_tokens: int, out_tokens: int,
               outputs: int) -> None:
        """A finished request; `outputs`: the steps that gave it tokens after its first (out_tokens - 1 where each
        gives one)."""
        if self.enabled:
            self._rows.extend((arrival_s, first_token_s, done_s, in_tokens, out_tokens, outputs))

    def arrivals(self) -> NDArray[np.float64]:
        return np.array(self._arrivals, dtype=float)  # a copy: the log may grow after

    def finished(self) -> Finished:
        rows = np.array(self._rows, dtype=float).reshape(-1, 6)
        arrival, first, done, outputs = rows[:, 0], rows[:, 1], rows[:, 2], rows[:, 5]
        out = rows[:, 4].astype(np.int64)
        itl = np.where(outputs > 0, (done - first) / np.maximum(outputs, 1), 0.0)
        return Finished(arrival, first - arrival, itl, done - arrival, out, rows[:, 3].astype(np.int64))
