"""Versioned, atomically written tuner state. A file that does not validate (schema, finite, in range) is
set aside as `<name>.bad` with one warning and its pairs start from their priors: a corrupt file must not
stop the daemon or fail every cycle. A state dir that cannot be written is warned about, never raised."""

from __future__ import annotations

import math
import sys
from collections.abc import Collection
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Any

import numpy as np

from tuner.ekf import PairFilter
from tuner.observation import Observation
from tuner.own_files import read_json, set_aside, write_json

STATE_KIND = "wattscale-tuner"
STATE_VERSION = 1
MAX_STATE_BYTES = 32 << 20
"""Largest tuner state read (a pair's state is some 6 KB: room for thousands of pairs); a larger file is set
aside unread (a 3 GB one took 6 GB of memory and 17 s before the daemon ran)."""
MAX_PARAM = 1e6
"""Largest saved parameter (ms, or a sensitivity); the filter clamps to 10x its prior, far below."""
MAX_SPREAD = 1e3
"""Largest saved standard deviation of a parameter, in multiples of the larger of its prior and its estimate: the
filter clamps the estimate within 10x the prior, so a spread past this says nothing (a variance of 1e300 made every
update's innovation covariance ill-conditioned)."""
OBSERVATION_FIELDS = {f.name for f in fields(Observation)}
OBSERVATION_REQUIRED = {f.name for f in fields(Observation) if f.default is MISSING}
OBSERVATION_OPTIONAL = {f.name for f in fields(Observation) if f.default is None}
"""Fields an observation may hold as null (a reading a window did not have)."""


def dump_pair(f: PairFilter) -> dict[str, Any]:
    return {
        "family": f.prior.family,
        "queue_model": f.queue_model,
        "prior": list(f.prior_vector()),
        "routing": _routing(f),
        "x": [float(v) for v in f.x],
        "p": f.p.tolist(),
        "updates": f.updates,
        "accepted": f.accepted,
        "rejected": dict(f.rejected),
        "draw": f.draw.dump(),
        "clock": f.clock.dump(),
    }


def _routing(f: PairFilter) -> list[float]:
    """The experts' routing the filter's law reads (read, not fitted: a fit under another routing is another law)."""
    return [f.prior.expert_weight_share, f.prior.expert_token_share]


def _number(v: object) -> bool:
    """A finite JSON number (an integer of 400 digits is an int Python cannot make a float: math.isfinite raised)."""
    if isinstance(v, int) and not isinstance(v, bool):
        return abs(v) <= sys.float_info.max
    return isinstance(v, float) and math.isfinite(v)


def _count(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2**63


def _vector(v: object) -> bool:
    return isinstance(v, list) and all(_number(a) and 0 <= a <= MAX_PARAM for a in v)


def draw_problem(draw: object) -> str | None:
    """Why a saved draw curve is unusable (None when DrawFit.restore may read it); it costs only the curve."""
    if not isinstance(draw, dict) or not isinstance(draw.get("recent"), list):
        return "draw is not a table with a list of recent windows"
    for name in ("busy_share", "batch_half"):
        if draw.get(name) is not None and not _number(draw[name]):
            return f"draw.{name} is not a finite number"
    return windows_problem(draw["recent"], "draw")


def windows_problem(recent: object, where: str) -> str | None:
    """Why a curve's saved windows are unusable (None where each is an observation of finite numbers): the clock's
    were read through Observation.problem alone, which does not look at every field (an in_cv of "x" stopped the
    clock fit unsaid, and was saved again)."""
    if not isinstance(recent, list):
        return f"{where}.recent is not a list of windows"
    for obs in recent:
        if not isinstance(obs, dict) or not OBSERVATION_REQUIRED <= set(obs) <= OBSERVATION_FIELDS:
            return f"{where}.recent holds something other than observations"
        if not all(_number(v) or (v is None and k in OBSERVATION_OPTIONAL) or (k == "steady" and v in (0, 1))
                   for k, v in obs.items()):
            return f"{where}.recent holds a value that is not a finite number"
    return None


def pair_problem(data: object) -> str | None:
    """Why one saved pair is not usable state (None when it is): its schema, finiteness and ranges."""
    if not isinstance(data, dict):
        return "not a table"
    if not isinstance(data.get("family"), str) or not isinstance(data.get("queue_model", ""), str):
        return "family or queue_model is not a name"
    for name in ("prior", "x"):
        if not _vector(data.get(name)) or not data[name]:
            return f"{name} is not a list of finite numbers in [0, {MAX_PARAM:g}]"
    routing = data.get("routing", [0.0, 0.0])  # state saved before the routing was: a dense model's
    if not (isinstance(routing, list) and len(routing) == 2 and all(_number(v) and 0 <= v <= 1 for v in routing)):
        return "routing is not two shares in [0, 1]"
    n = len(data["x"])
    p = data.get("p")
    if not (isinstance(p, list) and len(p) == n and all(isinstance(r, list) and len(r) == n for r in p)
            and all(_number(v) for r in p for v in r)):
        return f"p is not a finite {n} x {n} matrix"
    cov = np.array(p, dtype=float)
    if np.any(np.diag(cov) < 0) or not np.allclose(cov, cov.T, rtol=1e-6, atol=1e-12):
        return "p is not a covariance (symmetric, variances >= 0)"
    prior = np.asarray(data["prior"], dtype=float)
    if len(prior) == n and np.any(np.diag(cov) > (MAX_SPREAD * np.maximum(prior, np.asarray(data["x"]))) ** 2):
        return f"p is not a covariance this filter makes (a spread over {MAX_SPREAD:g}x a parameter's prior)"
    if np.linalg.eigvalsh(0.5 * (cov + cov.T)).min() < -1e-9 * max(1.0, float(np.diag(cov).max())):
        # one not positive semi-definite (a symmetric 1e300 entry is not either) rejected every update after it,
        # and, saved only on an accepted one, for good
        return "p is not a covariance (not positive semi-definite)"
    if not _count(data.get("updates")) or not _count(data.get("accepted")):
        return "updates or accepted is not a count"
    rejected = data.get("rejected")
    if not isinstance(rejected, dict) or not all(_count(v) for v in rejected.values()):
        return "rejected is not a table of counts"
    return None


def mismatch(f: PairFilter, data: dict[str, Any]) -> str | None:
    """What of the filter validated saved state was not written under (None: it was written by a filter of the same
    family, queue model, prior, experts' routing and shape, and fits it)."""
    prior = np.asarray(data["prior"], dtype=float)
    if data["family"] != f.prior.family:
        return f"family ({data['family']}, now {f.prior.family})"
    if (saved := data.get("queue_model", "mm1k-batch")) != f.queue_model:
        return f"queue model ({saved}, now {f.queue_model})"
    if (routing := data.get("routing", [0.0, 0.0])) != _routing(f):
        return "experts' routing ({}, now {})".format(*(
            "dense" if not r[0] else f"expert_weight_share {r[0]:g}, expert_token_share {r[1]:g}"
            for r in (routing, _routing(f))))
    if prior.shape != f.prior_vector().shape or not np.allclose(prior, f.prior_vector()):
        return "prior"
    if len(data["x"]) != f.x.size:  # the same law, other terms fitted (the draw curve's, with --fit-power)
        return f"set of fitted terms ({len(data['x'])}, now {f.x.size})"
    return None


def fits(f: PairFilter, data: dict[str, Any]) -> bool:
    """Validated saved state was written by a filter of the same family, queue model, prior, routing and shape."""
    return mismatch(f, data) is None


def restore_pair(f: PairFilter, data: dict[str, Any]) -> bool:
    """Load validated saved state into a fresh filter if it fits (see `fits`); else False, nothing changed."""
    if not fits(f, data):
        return False
    x = np.asarray(data["x"], dtype=float)
    p = np.asarray(data["p"], dtype=float)
    f.x, f.p = x, p
    f.updates = int(data["updates"])
    f.accepted = int(data["accepted"])
    f.rejected = {str(k): int(v) for k, v in data["rejected"].items()}
    return True


def out_of_bounds(f: PairFilter, data: dict[str, Any]) -> bool:
    """Saved state that fits the filter but lies outside the clamp it keeps its estimate in: no filter wrote it."""
    low, high = f.bounds
    x = np.asarray(data["x"], dtype=float)
    return fits(f, data) and bool(np.any(x < low * (1 - 1e-9)) or np.any(x > high * (1 + 1e-9)))


def save(path: Path, filters: dict[str, PairFilter], unused: dict[str, Any] | None = None) -> bool:
    """Write every filter's state, and as they were read the pairs of the file no filter holds (`unused`: a service
    commented out over a restart, a model renamed, had its fit dropped at the next save, unsaid); False (with one
    warning per new error) when the file cannot be written."""
    pairs = {**(unused or {}), **{k: dump_pair(v) for k, v in filters.items()}}
    doc = {"kind": STATE_KIND, "version": STATE_VERSION, "pairs": pairs}
    return write_json(path, doc, "tuner state", "what it learnt since its last save is lost on restart")


def doc_problem(doc: object) -> str | None:
    """Why a whole state document is unusable (None when every pair in it validates)."""
    if not isinstance(doc, dict) or doc.get("kind") != STATE_KIND:
        return "not a wattscale tuner state file"
    if doc.get("version") != STATE_VERSION:
        return f"state version {doc.get('version')!r} is not {STATE_VERSION}"
    pairs = doc.get("pairs")
    if not isinstance(pairs, dict):
        return "pairs is not a table"
    for key, data in pairs.items():
        problem = pair_problem(data)
        if problem is not None:
            return f"saved state of {key}: {problem}"
    return None


def load(path: Path, filters: dict[str, PairFilter], aside: Collection[str] = (),
         unused: dict[str, Any] | None = None) -> list[str]:
    """Restore what fits into `filters`; returns warnings (never raises on bad content). A pair of `aside`, whose
    state the caller holds from before its prior changed, is not warned of where the file has none of its prior.
    The file's other pairs (validated) go into `unused`, where given, to be saved again as they are."""
    doc, unread = read_json(path, MAX_STATE_BYTES, "tuner state", "starting from priors")
    if doc is None:
        return [] if unread is None else [unread]
    problem = doc_problem(doc)
    if problem is None:
        problem = next((f"saved state of {k}: outside the filter's bounds for its prior"
                        for k, f in filters.items() if k in doc["pairs"] and out_of_bounds(f, doc["pairs"][k])), None)
    if problem is not None:
        return [set_aside(path, problem)]
    return restore_into(path, doc["pairs"], filters, aside, unused)


def restore_into(path: Path, pairs: dict[str, Any], filters: dict[str, PairFilter], aside: Collection[str] = (),
                 unused: dict[str, Any] | None = None) -> list[str]:
    """`load`'s restore of validated `pairs` (read from `path`) into `filters`; the others into `unused`."""
    warnings = []
    for key, data in pairs.items():
        if key not in filters:
            if unused is not None:
                unused[key] = data
            continue
        notes = []
        if (other := mismatch(filters[key], data)) is not None and key not in aside:
            notes.append(f"state of {key} was fitted under another {other}; starting from the prior")
        restore_pair(filters[key], data)
        # The draw curve is the pair's (model x accelerator), whatever its latency prior.
        if "draw" in data and (draw_problem(data["draw"]) or not filters[key].draw.restore(data["draw"])):
            notes.append(f"draw curve of {key} is unreadable; starting from the catalogue's")
        if "clock" in data and not (isinstance(data["clock"], dict) and windows_problem(
                data["clock"].get("recent"), "clock") is None and filters[key].clock.restore(data["clock"])):
            notes.append(f"clock sensitivity of {key} is unreadable; starting from the catalogue's")
        if notes:
            warnings.append(f"{path}: saved " + ", and ".join(notes))
    return warnings
