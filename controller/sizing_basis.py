"""What the optimizer sizes candidates with, held still while the tuner's estimates only jitter.

Sizing a candidate (the largest rate one replica takes within its SLO) is the optimizer's costly step and
is cached on its exact inputs. The tuner moves the parameters a little every cycle and the observed token
means wander, so exact inputs would never repeat; holding each input until it moves by more than a
relative tolerance makes most cycles' sizing cache hits, at an error no larger than that tolerance.
"""

from __future__ import annotations

from typing import Any, TypeVar

Item = TypeVar("Item")


class SizingBasis:
    """Per key, the last values handed out, replaced only when a new reading moves any of them by more
    than `tolerance` (relative)."""

    def __init__(self, tolerance: float) -> None:
        self.tolerance = tolerance
        self._held: dict[str, tuple[float, ...]] = {}
        self._items: dict[str, Any] = {}

    def hold(self, key: str, values: tuple[float, ...]) -> tuple[float, ...]:
        last = self._held.get(key)
        if (last is not None and len(last) == len(values)
                and all(abs(v - h) <= self.tolerance * abs(h) for v, h in zip(values, last, strict=True))):
            return last
        self._held[key] = values
        return values

    def keep(self, key: str, signature: tuple[float, ...], item: Item) -> Item:
        """The item held for `key`, replaced by `item` only when its signature (what sizing reads of it) moves
        by more than the tolerance: an input whose parameters wander along a ridge of equal predictions is
        held as long as its predictions are."""
        if self.hold(key, signature) == signature or key not in self._items:
            self._items[key] = item
        held: Item = self._items[key]
        return held


class TokenMix:
    """Mean prompt and output tokens per service, pooled over recent windows by requests served.

    One window's means are noisy (a few dozen requests with heavy-tailed lengths); the mix a service
    sees changes slowly, so windows are pooled with geometric forgetting (`memory` per window)."""

    def __init__(self, memory: float = 0.9) -> None:
        self.memory = memory
        self._pooled: dict[str, tuple[float, float, float]] = {}

    def update(self, key: str, requests: float, in_tokens: float, out_tokens: float) -> tuple[float, float]:
        m = self.memory
        w, total_in, total_out = self._pooled.get(key, (0.0, 0.0, 0.0))
        w = m * w + requests
        total_in = m * total_in + requests * in_tokens
        total_out = m * total_out + requests * out_tokens
        self._pooled[key] = (w, total_in, total_out)
        return (total_in / w, total_out / w) if w > 0 else (in_tokens, out_tokens)
