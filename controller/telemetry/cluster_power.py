"""GPU sources for clusters, through Prometheus: `dcgm` (NVIDIA's DCGM exporter) and `kepler`.

A cluster controller cannot open NVML on other nodes; it reads what the node exporters publish:
- dcgm: `DCGM_FI_DEV_POWER_USAGE` (W), `DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION` (mJ), `DCGM_FI_DEV_SM_CLOCK`
  (MHz) and, where the exporter's counters include it, `DCGM_FI_DEV_POWER_MGMT_LIMIT` (W); GPUs keyed by
  the `UUID` label, owned by a service when the exporter's pod mapping names one of its Deployment's pods.
- kepler: `kepler_node_gpu_watts` (W) and `kepler_node_gpu_joules_total` (J), one series per GPU of a node, keyed
  by its `gpu_uuid` label, and `kepler_node_gpu_info` for the GPU's `gpu_name` (no clocks or limits).
Limits the exporter does not give come from the accelerator's catalogue profile. Samples are ordered by their
key (`gpu_key`), and each GPU keeps the index it was first given (ordinal positions shifted as a node came or went,
and a GPU missing from a read took another's number). A GPU seen in some series but whose power is NaN or
missing is sampled with `power_w=None` (the governor counts it at its cap); a failed query fails the whole sample.
A GPU absent from every series for GONE_AFTER_S while others report has left the cluster (`departed`): counted at
its last limit for ever, a replaced node's GPUs made the site read over budget and the plan shed replicas. A read
with no series at all departs none (the exporters or the scrape are down: every GPU is missing, counted at its last
limit). These sources never set a limit: a cluster's caps are set on each node, by its host daemon or the agent.
"""

from __future__ import annotations

import logging
import re
import time
from typing import Literal

from controller.telemetry.base import GpuSample, Numbers, TelemetryError
from controller.telemetry.prometheus_api import Fetch, PrometheusApi, http_post

log = logging.getLogger(__name__)
Flavour = Literal["dcgm", "kepler"]
GONE_AFTER_S = 900.0
"""A GPU absent this long has left the cluster: three times Prometheus' 5 minutes before a vanished exporter's
series go stale."""

QUERIES: dict[Flavour, dict[str, str]] = {
    "dcgm": {"power_w": "DCGM_FI_DEV_POWER_USAGE", "energy_mj": "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION",
             "sm_clock_mhz": "DCGM_FI_DEV_SM_CLOCK", "limit_w": "DCGM_FI_DEV_POWER_MGMT_LIMIT"},
    "kepler": {"power_w": "kepler_node_gpu_watts", "energy_j": "kepler_node_gpu_joules_total",
               "info": "kepler_node_gpu_info"},
}


def gpu_key(labels: dict[str, str]) -> tuple[str, str]:
    """(node, GPU) of a series: its UUID alone where the exporter gives one (DCGM's `UUID`, Kepler's `gpu_uuid`:
    unique everywhere, where DCGM's Hostname is the exporter pod's name unless the exporter is told the node's and
    the scrape's `instance` is the pod's address, so a rollout renamed every GPU and counted it twice), else the
    node's name and the GPU's index label."""
    uuid = labels.get("UUID") or labels.get("gpu_uuid")
    if uuid:
        return "", uuid
    node = labels.get("Hostname") or labels.get("node_name") or labels.get("node") or labels.get("instance", "")
    gpu = labels.get("gpu") or labels.get("index") or labels.get("zone", "")
    return node, gpu


def _uuid(key: tuple[str, str]) -> str:
    """A GPU's UUID as the fast loop knows it: the exporter's, else node/index."""
    return key[1] if not key[0] else "/".join(key)


class PrometheusGpuSource:
    def __init__(self, url: str, flavour: Flavour, limits_w: tuple[float, float],
                 deployments: dict[str, tuple[str, str]], timeout_s: float = 5.0, fetch: Fetch = http_post,
                 envelopes: dict[str, tuple[float, float]] | None = None) -> None:
        self.api = PrometheusApi(url, timeout_s, fetch)
        self.flavour, self.limits_w = flavour, limits_w
        self.deployments = deployments
        """Deployment name -> (service, variant), to own a GPU whose pod is one of the Deployment's pods."""
        self.index = Numbers()
        """(node, GPU) -> its index, from the first read that listed it."""
        self.absent: dict[tuple[str, str], float] = {}
        """(node, GPU) -> how long it has been absent from reads that listed others (s)."""
        self.last_read_s: float | None = None
        """When the last read was (controller time)."""
        self._departed: set[str] = set()
        """UUIDs of GPUs gone, not yet handed to the fast loop."""
        self.envelopes = envelopes or {}
        """Accelerator type -> its (min, max) limits: a GPU's own, by the variant that runs on it or by its
        model name (DCGM's modelName, e.g. "NVIDIA L40S" for L40S); `limits_w` where neither says."""

    def _owner(self, labels: dict[str, str]) -> tuple[str | None, str | None]:
        """The Deployment whose pods' names the pod's starts with; the longest such name (`chat-l40s`'s pods
        are not `chat`'s)."""
        pod = labels.get("exported_pod") or labels.get("pod", "")
        matches = [d for d in self.deployments if pod.startswith(d + "-")]
        return self.deployments[max(matches, key=len)] if matches else (None, None)

    def _envelope(self, variant: str | None, model_name: str) -> tuple[float, float]:
        """The variant's type's limits; else the type whose name's parts (H100, PCIe) are most of them words of
        the model name ("NVIDIA H100 PCIe" is H100-PCIe, "NVIDIA L40S" is not L4), the higher limit of a tie (an
        H100 SXM is "NVIDIA H100 80GB HBM3": read as a PCIe card, it was counted at 350 W of its 700); else
        `limits_w`."""
        if variant in self.envelopes:
            return self.envelopes[variant]
        words = set(re.split(r"[\s_-]+", model_name.lower()))
        scores = {a: sum(part in words for part in a.lower().split("-")) for a in self.envelopes}
        best = max(scores, key=lambda a: (scores[a], self.envelopes[a][1]), default=None)
        return self.envelopes[best] if best is not None and scores[best] > 0 else self.limits_w

    def sample(self, now: float) -> list[GpuSample]:
        """Every GPU's figures, all queries within the source's one timeout (the fast loop waits on them: set it
        within a fast tick); a query that fails or finds no time left fails the whole sample."""
        figures: dict[tuple[str, str], dict[str, float]] = {}
        labels_of: dict[tuple[str, str], dict[str, str]] = {}
        deadline = time.monotonic() + self.api.timeout_s
        for figure, promql in QUERIES[self.flavour].items():
            left_s = deadline - time.monotonic()
            if left_s <= 0.0:
                raise TelemetryError(f"prometheus: GPU readings took longer than {self.api.timeout_s:g} s")
            for labels, value in self.api.query(promql, timeout_s=left_s):
                key = gpu_key(labels)
                figures.setdefault(key, {})[figure] = value
                merged = labels_of.setdefault(key, labels)
                if merged is not labels:  # labels the GPU's earlier series lack (Kepler's gpu_name: its info's)
                    labels_of[key] = {**labels, **merged}
        out = []
        for key in sorted(labels_of):
            f, labels = figures[key], labels_of[key]
            energy = f["energy_mj"] / 1000.0 if "energy_mj" in f else f.get("energy_j")
            service, variant = self._owner(labels)
            name = labels.get("modelName") or labels.get("gpu_name", "")
            lo, hi = self._envelope(variant, name)
            self.absent[key] = 0.0
            out.append(GpuSample(
                index=self.index.number(key), uuid=_uuid(key), name=name,
                power_w=f.get("power_w"), energy_j=energy,
                power_limit_w=f.get("limit_w", hi), min_limit_w=lo, max_limit_w=hi,
                sm_clock_mhz=f.get("sm_clock_mhz"), service=service, variant=variant))
        step_s, self.last_read_s = (0.0 if self.last_read_s is None else now - self.last_read_s), now
        if not out:  # no series at all: the exporters or the scrape are down, not every GPU gone (all missing)
            return out
        for key in [key for key in self.absent if key not in labels_of]:
            self.absent[key] += step_s  # absence counts only over reads that listed others: not an outage's length
            if self.absent[key] > GONE_AFTER_S:
                absent_s = self.absent.pop(key)
                del self.index[key]
                self._departed.add(_uuid(key))
                log.warning("GPU %s absent from the exporters' series for %.0f s while others report: taken to have "
                            "left the cluster, no longer counted", _uuid(key), absent_s)
        return out

    def departed(self) -> frozenset[str]:
        """UUIDs of the GPUs absent for GONE_AFTER_S since the last call."""
        out, self._departed = frozenset(self._departed), set()
        return out
