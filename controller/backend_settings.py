"""The [telemetry] and [actuators] sections: which backends the daemon reads its GPUs and vLLM servers through, and
which it acts through, each field documented and its bounds checked here."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from controller.config_loader import ConfigError, check_http_url, check_positive, check_range

GpuSource = Literal["sim", "nvml", "dcgm", "kepler"]
VllmSource = Literal["sim", "prometheus", "scrape"]
PowerBackend = Literal["sim", "nvml", "dry-run"]
ClockBackend = Literal["none", "sim", "nvml", "dry-run"]
BatchBackend = Literal["sim", "vllm", "dry-run"]
ReplicaBackend = Literal["sim", "kubernetes", "dry-run"]


@dataclass(frozen=True)
class TelemetrySettings:
    gpu_source: GpuSource = "sim"
    """Where GPU power, energy and limits come from."""
    vllm_source: VllmSource = "sim"
    """Where vLLM load and latency come from."""
    prometheus_url: str = "http://127.0.0.1:9090"
    """Prometheus that scrapes the vLLM servers (`vllm_source = "prometheus"`)."""
    window_s: float = 60.0
    """Window of the rate() queries, whole seconds (the queries say it so); at least four scrape intervals."""
    timeout_s: float = 5.0
    """HTTP timeout of one page (scrape); of each of a window's queries, none asked past three timeouts in all
    (prometheus); of all of a GPU sample's queries (dcgm, kepler)."""

    def check(self, where: str) -> None:
        check_http_url(self.prometheus_url, f"{where}.prometheus_url")
        check_positive(self, where, ("window_s", "timeout_s"))
        check_range(self, where, ("window_s",), 1.0, 86400.0)
        if self.window_s != round(self.window_s):  # `[2s]` read over a 1.5-s window: every growth a third high
            raise ConfigError(f"{where}.window_s", f"must be whole seconds, got {self.window_s}")
        check_range(self, where, ("timeout_s",), 0.0, 300.0, low_open=True)


@dataclass(frozen=True)
class ActuatorSettings:
    power: PowerBackend = "sim"
    """Backend that sets GPU power limits."""
    batch: BatchBackend = "sim"
    """Backend that changes `--max-num-seqs`."""
    replicas: ReplicaBackend = "sim"
    """Backend that scales replicas."""
    restore_power_limits: bool = False
    """On exit, put every GPU back at its default power limit (`nvml` power backend). Servers that outlive the
    daemon then serve unbudgeted until it is back (`check-config` warns of it): false keeps the limits it set."""
    clocks: ClockBackend = "none"
    """Backend that locks SM clocks (docs/clocks.md); "none" plans and runs on caps alone."""
    reset_clocks_on_exit: bool = True
    """On exit, unlock every GPU clock the daemon locked (`nvml` clock backend)."""
    kubernetes_namespace: str = "default"
    """Namespace of the services' Deployments (`kubernetes` replica backend)."""
    kubeconfig: str = ""
    """Kubeconfig file (relative to the config file); empty: in-cluster credentials inside a pod, else
    ~/.kube/config."""
    kubernetes_timeout_s: float = 5.0
    """Timeout of one API call."""
    vllm_runner: Literal["child", "systemd"] = "child"
    """`vllm` batch backend: servers run as the daemon's children, or as systemd units."""
    systemd_batch_dir: str = "/var/lib/wattscale/units"
    """Where the `vllm` backend writes each unit's max batch, `<unit>.service.batch`, which the unit's
    `wattscale vllm-exec --batch-file <this>/%n.batch` reads (systemd/README.md): a folder the daemon owns (under the
    shipped unit's StateDirectory), not /etc."""
    health_timeout_s: float = 300.0
    """How long a restarted vLLM server has to answer /health before the change is rolled back (a child server
    that exits fails at once; a stop or the end of `--duration` is not held up by the wait)."""

    @property
    def writes_unit_batches(self) -> bool:
        """Whether max batches go to systemd units through files in `systemd_batch_dir`."""
        return self.batch == "vllm" and self.vllm_runner == "systemd"

    def check(self, where: str) -> None:
        check_positive(self, where, ("kubernetes_timeout_s", "health_timeout_s"))
        check_range(self, where, ("kubernetes_timeout_s",), 0.0, 300.0, low_open=True)
        check_range(self, where, ("health_timeout_s",), 0.0, 86400.0, low_open=True)
