"""A run's figures, measured on requests and on the GPUs' energy counters, never on the controller's view.

- slo_attainment: share of the requests that arrived (until GRACE_S before the end) that met both targets.
  A `mean` service's request meets them when its own TTFT and mean inter-token gap do; for a `p95`/`p99`
  service every finished request of a WINDOW_S window (by arrival) meets them when that window's quantile
  of both does. A request never finished (dropped, still queued) meets nothing and counts as an infinite
  latency in its window's quantile.
- budget_violation_s: seconds whose mean site draw was above the budget by more than VIOLATION_SHARE, not
  counting the first STEP_GRACE_S after a budget step-down (`budget_violation_raw_s` counts them).
- the power figures (budget drops, domains, ramps, carbon): controller/simulate/power_figures.py.
- limits_over_budget_s: seconds the GPUs' power limits summed above the budget (a policy whose limits do may draw
  over it when its load peaks; wattscale's never do); limits_over_bound_s, those of them whose draw was within
  BOUND_SHARE of the budget or over it (where the budget bound, and the limits let the draw pass it).
- tokens_per_joule: output tokens of finished requests per joule the GPUs drew (idle ones included).
- sum_t_over_c: seed 000's objective, sum over services of token throughput / request concurrency, which
  Little's law makes output tokens / request-seconds in the system of the finished requests (one dropped or still
  waiting at the end counts in neither, so a backlog raises it: `finished` against `requests` says how many).
- restarts_per_hour: changes of a service's `--max-num-seqs` (each a rolling restart) per hour;
  replica_changes_per_hour likewise for its replica count.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray

from controller.simulate.power_figures import BOUND_SHARE, drops, power_figures
from controller.simulate.runner import Run, Trace
from controller.simulate.scenario import Scenario
from controller.strict_json import rounded
from queuemodels.types import QUANTILE_OF
from simulator.requests import Finished

WINDOW_S = 60.0
"""Window of a quantile target, and of the attainment-over-time series."""
GRACE_S = 120.0
"""Requests arriving this close to the end are left out: they may not have had time to finish."""
VIOLATION_SHARE = 0.02
"""Draw above the budget by more than this share is a violation."""
STEP_GRACE_S = 2.0
"""After a budget step-down, the governor has this long to bring the draw under it."""
LIMITS_SLACK_W = 0.5
"""Limits summed within this of the budget are within it: an even split of 2,600 W over 7 GPUs sums to
2600.0000000000005."""
QUANTILES = {name: 100.0 * q for name, q in QUANTILE_OF.items()}
"""Each percentile statistic as np.percentile takes it."""


class Targets(Protocol):
    """What scoring a request needs of its service (a ServiceSettings, or the static fleet's load test's)."""

    @property
    def ttft_ms(self) -> float: ...
    @property
    def itl_ms(self) -> float: ...
    @property
    def statistic(self) -> str: ...


def _window_met(svc: Targets, ttft_s: NDArray[np.float64], itl_s: NDArray[np.float64]) -> bool:
    q = QUANTILES[svc.statistic]
    with np.errstate(invalid="ignore"):  # a quantile between two unfinished requests (inf) reads NaN: a miss too
        return bool(np.percentile(ttft_s, q) * 1000 <= svc.ttft_ms and np.percentile(itl_s, q) * 1000 <= svc.itl_ms)


@dataclass(frozen=True)
class Shown:
    """What the report's figures draw of a policy's first-seed run, kept in place of the run (whose plant holds
    every request: some 4 MB a simulated hour a policy): its per-second trace, and each service's share of the
    requests that met its targets per WINDOW_S (NaN where none arrived)."""

    trace: Trace
    met_share: dict[str, NDArray[np.float64]]


def shown(scn: Scenario, run: Run) -> Shown:
    """What the report draws of `run`, measured as `figures` measures attainment (up to GRACE_S before the end)."""
    shares = {}
    for svc in scn.config.services:
        log = run.host.services[svc.name].requests
        arrived, met = request_met(svc, log.arrivals(), log.finished(), scored_end_s(float(run.trace.t_s[-1])))
        shares[svc.name] = np.divide(met, arrived, out=np.full(len(arrived), np.nan), where=arrived > 0)
    return Shown(run.trace, shares)


def request_met(svc: Targets, arrivals: NDArray[np.float64], fin: Finished, end_s: float,
                window_s: float = WINDOW_S) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Per window of `window_s` (by arrival, up to `end_s`): requests arrived, requests that met the targets."""
    edges = np.arange(0.0, end_s + window_s, window_s)
    edges[-1] = max(edges[-1], end_s)
    keep = fin.arrival_s < end_s
    arrived = np.histogram(arrivals[arrivals < end_s], edges)[0].astype(float)
    if svc.statistic == "mean":
        ok = keep & (fin.ttft_s * 1000 <= svc.ttft_ms) & (fin.itl_s * 1000 <= svc.itl_ms)
        return arrived, np.histogram(fin.arrival_s[ok], edges)[0].astype(float)
    finished = np.histogram(fin.arrival_s[keep], edges)[0]
    slot = np.searchsorted(edges, fin.arrival_s, side="right") - 1
    met = np.zeros(len(arrived))
    for w in range(len(arrived)):
        if not arrived[w]:
            continue
        mine = keep & (slot == w)
        missing = int(arrived[w] - finished[w])
        ttft = np.concatenate([fin.ttft_s[mine], np.full(missing, np.inf)])
        itl = np.concatenate([fin.itl_s[mine], np.full(missing, np.inf)])
        met[w] = finished[w] if _window_met(svc, ttft, itl) else 0.0
    return arrived, met


def _changes(series: NDArray[np.float64]) -> int:
    return int(np.count_nonzero(np.diff(series) != 0))


def _cut(met: float, arrived: float) -> float:
    """met / arrived cut (not rounded) to 4 decimals, in whole numbers: a few misses in 40,000 requests read 0.9999,
    never 1.0, and 57 of 100 reads 0.57 (cut as a float, 0.5699)."""
    return (int(met) * 10_000 // int(arrived)) / 10_000


def violations(run: Run) -> tuple[float, float]:
    """(seconds over budget after each step-down's grace, all seconds over budget)."""
    tr = run.trace
    dt = float(tr.t_s[0]) if len(tr.t_s) else 1.0
    over = tr.draw_w > tr.budget_w * (1.0 + VIOLATION_SHARE)
    excused = np.zeros(len(over), dtype=bool)
    for k, *_ in drops(tr):  # a step-down of any source's or event's
        at = tr.t_s[k - 1]
        excused |= (tr.t_s > at) & (tr.t_s <= at + STEP_GRACE_S)
    return float(np.count_nonzero(over & ~excused)) * dt, float(np.count_nonzero(over)) * dt


def scored_end_s(duration_s: float) -> float:
    """Arrivals up to when are scored: requests of the last GRACE_S may not have finished when the run ends."""
    return max(duration_s - GRACE_S, duration_s / 2)


def figures(scn: Scenario, run: Run) -> dict[str, Any]:
    """Every figure of one run (JSON-ready)."""
    tr = run.trace
    duration = float(tr.t_s[-1])
    hours = duration / 3600.0
    end = scored_end_s(duration)
    energy_j = sum(g.energy_j for g in run.host.gpus)
    services: dict[str, Any] = {}
    tokens, t_over_c = 0, 0.0
    for svc in scn.config.services:
        log = run.host.services[svc.name].requests
        fin, arrivals = log.finished(), log.arrivals()
        arrived, met = request_met(svc, arrivals, fin, end)
        tokens += int(fin.out_tokens.sum())
        busy_s = float(fin.e2e_s.sum())
        svc_t_over_c = float(fin.out_tokens.sum()) / busy_s if busy_s > 0 else 0.0
        t_over_c += svc_t_over_c
        counted = fin.arrival_s < end
        services[svc.name] = {
            "slo_attainment": _cut(met.sum(), arrived.sum()) if arrived.sum() else None,
            "requests": int(arrived.sum()),
            "finished": int(np.count_nonzero(counted)),
            "ttft_mean_ms": rounded(float(fin.ttft_s[counted].mean() * 1000), 1) if counted.any() else None,
            "ttft_p95_ms": rounded(float(np.percentile(fin.ttft_s[counted], 95) * 1000), 1) if counted.any() else None,
            "itl_mean_ms": rounded(float(fin.itl_s[counted].mean() * 1000), 2) if counted.any() else None,
            "itl_p95_ms": rounded(float(np.percentile(fin.itl_s[counted], 95) * 1000), 2) if counted.any() else None,
            "t_over_c": rounded(svc_t_over_c, 3),
            "restarts_per_hour": rounded(_changes(tr.max_batch[svc.name]) / hours, 2),
            "replica_changes_per_hour": rounded(_changes(tr.replicas[svc.name]) / hours, 2),
            "replicas_mean": rounded(float(tr.replicas[svc.name].mean()), 2),
        }
    violation_s, raw_s = violations(run)
    dt = float(tr.t_s[0]) if len(tr.t_s) else 1.0
    over_limits = tr.limits_w > tr.budget_w + LIMITS_SLACK_W
    return {
        "seed": run.seed,
        "duration_s": duration,
        "budget_violation_s": violation_s,
        "budget_violation_raw_s": raw_s,
        "peak_draw_w": rounded(float(tr.draw_w.max()), 1),
        "mean_draw_w": rounded(float(tr.draw_w.mean()), 1),
        "limits_over_budget_s": float(np.count_nonzero(over_limits)) * dt,
        "limits_over_bound_s": float(np.count_nonzero(over_limits & (tr.draw_w >= tr.budget_w * (1 - BOUND_SHARE))))
        * dt,
        "mean_limits_w": rounded(float(tr.limits_w.mean()), 1),
        "energy_kwh": rounded(energy_j / 3.6e6, 4),
        "tokens_per_joule": rounded(tokens / energy_j if energy_j > 0 else 0.0, 4),
        "sum_t_over_c": rounded(t_over_c, 3),
        "services": services,
        **power_figures(scn.config, tr, tokens),
    }
