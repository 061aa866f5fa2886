"""Versioned, atomically written tuner state; a corrupt or foreign file falls back to the priors."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from tuner.ekf import PairFilter

STATE_KIND = "wattscale-tuner"
STATE_VERSION = 1


def atomic_write_text(path: Path, text: str) -> None:
    """Write via a temporary file in the same directory, fsync, then rename over the target."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def dump_pair(f: PairFilter) -> dict[str, Any]:
    return {
        "family": f.prior.family,
        "queue_model": f.queue_model,
        "prior": list(f.prior_vector()),
        "x": [float(v) for v in f.x],
        "p": f.p.tolist(),
        "updates": f.updates,
        "accepted": f.accepted,
        "rejected": dict(f.rejected),
        "draw": f.draw.dump(),
    }


def restore_pair(f: PairFilter, data: dict[str, Any]) -> bool:
    """Load saved state into a fresh filter if it fits the same family, queue model and prior; else False."""
    x = np.asarray(data["x"], dtype=float)
    p = np.asarray(data["p"], dtype=float)
    same = (
        data.get("family") == f.prior.family
        and data.get("queue_model", "mm1k-batch") == f.queue_model
        and np.allclose(data.get("prior", []), f.prior_vector())
    )
    if not same or x.shape != f.x.shape or p.shape != f.p.shape or not np.all(np.isfinite(x)):
        return False
    f.x, f.p = x, p
    f.updates = int(data["updates"])
    f.accepted = int(data["accepted"])
    f.rejected = {str(k): int(v) for k, v in data["rejected"].items()}
    return True


def save(path: Path, filters: dict[str, PairFilter]) -> None:
    doc = {"kind": STATE_KIND, "version": STATE_VERSION, "pairs": {k: dump_pair(v) for k, v in filters.items()}}
    atomic_write_text(path, json.dumps(doc))  # compact: with an indent json falls back to its Python encoder


def load(path: Path, filters: dict[str, PairFilter]) -> list[str]:
    """Restore what fits into `filters`; returns warnings (never raises on bad content)."""
    if not path.exists():
        return []
    try:
        doc = json.loads(path.read_text())
        if not isinstance(doc, dict) or doc.get("kind") != STATE_KIND:
            return [f"{path}: not a wattscale tuner state file; starting from priors"]
        if doc.get("version") != STATE_VERSION:
            return [f"{path}: state version {doc.get('version')!r} is not {STATE_VERSION}; starting from priors"]
        warnings = []
        for key, data in doc["pairs"].items():
            if key not in filters:
                continue
            if not restore_pair(filters[key], data):
                warnings.append(f"{path}: saved state of {key} no longer matches its prior; starting from the prior")
            # The draw curve is the pair's (model x accelerator), whatever its latency prior.
            if "draw" in data and not filters[key].draw.restore(data["draw"]):
                warnings.append(f"{path}: saved draw curve of {key} is unreadable; starting from the catalogue's")
        return warnings
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return [f"{path}: unreadable tuner state ({exc}); starting from priors"]
