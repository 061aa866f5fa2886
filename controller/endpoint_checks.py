"""Cross-field checks of where the daemon reaches its servers: every port one listener's, every scraped page one
replica's, every systemd unit one replica's, and the Kubernetes names the API server would take. Each of these
passed `check-config` before and then failed in `run`, or worse, ran wrong without a word (two URLs of one page
read twice the load; a replica whose port another answered counted as serving)."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from actuators.vllm_servers import unit_file
from controller.budget.settings import DemandResponseSettings
from controller.config_loader import ConfigError, quoted, svc_path

if TYPE_CHECKING:
    from controller.settings import Settings

DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
"""RFC 1123 label: a Kubernetes namespace's name."""
DNS_SUBDOMAIN = re.compile(r"(?=.{1,253}$)[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
"""RFC 1123 subdomain: a Deployment's name (lower case letters, digits, '-' and '.', at most 253)."""


def check_endpoints(s: Settings) -> None:
    """Raise ConfigError naming the first field (with its service) that reuses another's port, page or unit, or
    names a Kubernetes object the API server would refuse."""
    _one_port_each(s)
    _one_page_and_unit_each(s)
    if s.actuators.replicas == "kubernetes":
        _kubernetes_names(s)


def _one_port_each(s: Settings) -> None:
    """Each listener on a port of its own: the metrics endpoint, each demand-response endpoint, each vLLM server the
    `vllm` backend starts on 127.0.0.1. check-config probes each alone; `run` failed on the second to bind."""
    taken = {s.metrics.port: "metrics.port"} if s.metrics.port else {}

    def claim(port: int, where: str) -> None:
        if port in taken:
            raise ConfigError(where, f"{port} is also {taken[port]}'s: each listener needs its own port")
        taken[port] = where

    for i, (_, src) in enumerate(s.budget.sources if s.budget else ()):
        if port := src.port if isinstance(src, DemandResponseSettings) else 0:
            claim(port, f"power.budget.sources[{i}].port")
    if s.actuators.batch == "vllm":
        for svc in s.services:
            for port in svc.vllm_ports:
                claim(port, f"{svc_path(svc.name)}.vllm_ports")


def _one_page_and_unit_each(s: Settings) -> None:
    """Each scraped `/metrics` page read for one replica of a model (a trailing '/' is the same page; one exporter's
    page may carry several models, each read apart), each systemd unit one replica's (`x` and `x.service` are one)."""
    pages: dict[tuple[str, str], str] = {}
    units: dict[str, str] = {}
    for svc in s.services:
        where = svc_path(svc.name)
        for url in svc.metrics_urls if s.telemetry.vllm_source == "scrape" else ():
            page = (url.rstrip("/"), svc.model)
            if page in pages:
                raise ConfigError(f"{where}.metrics_urls", f"{quoted(url)} is also {pages[page]}'s, for {svc.model} "
                                  "too: each replica's page once, or its load is counted twice")
            pages[page] = f"{where}.metrics_urls"
        for unit in svc.systemd_units if s.actuators.batch == "vllm" else ():
            if (name := unit_file(unit)) in units:
                raise ConfigError(f"{where}.systemd_units", f"{quoted(unit)} is also {units[name]}'s: each replica "
                                  "runs as a unit of its own")
            units[name] = f"{where}.systemd_units"


def _kubernetes_names(s: Settings) -> None:
    """The namespace and every variant's Deployment as the API server takes them (the URL the scaler asks carries
    them: an empty namespace or `Chat_Svc` reached it as another path)."""
    namespace = s.actuators.kubernetes_namespace
    if not DNS_LABEL.fullmatch(namespace):
        raise ConfigError("actuators.kubernetes_namespace", "must be a Kubernetes namespace (1-63 lower case letters, "
                          f"digits or '-', a letter or digit at each end), got {quoted(namespace)}")
    for svc in s.services:
        for v in s.variants_of(svc):
            name = s.deployment_of(svc, v)
            if not DNS_SUBDOMAIN.fullmatch(name):
                field = f"variants[{v.accelerator}].deployment" if svc.variants else "deployment"
                named = "" if v.deployment or svc.deployment else (
                    " (<service>-<accelerator>, as no deployment is given)" if svc.variants else
                    " (the service's name, as no deployment is given)")
                raise ConfigError(f"{svc_path(svc.name)}.{field}", f"{quoted(name)}{named} is no Deployment name: "
                                  "lower case letters, digits, '-' and '.', at most 253, a letter or digit at each end")
