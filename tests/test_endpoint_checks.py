"""What check-config passed and `run` then failed on or ran wrong with: two listeners on one port, one page or unit
counted for two replicas, Kubernetes names the API server refuses, and lists that made a cycle's work unbounded."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from controller.config_loader import ConfigError
from controller.settings import load_settings

ROOT = Path(__file__).resolve().parents[1]
GOOD = (ROOT / "config" / "sim.toml").read_text().replace("port = 9464", "port = 0")
SERVICES = ("chat", "code", "batch-summaries")


def refused(tmp_path: Path, text: str) -> ConfigError:
    path = tmp_path / "wattscale.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    return caught.value


def with_vllm(ports: dict[str, str], units: dict[str, str] | None = None) -> str:
    """GOOD on the vllm batch backend, each service on the ports (and systemd units) given."""
    text = GOOD.replace('batch = "sim"', 'batch = "vllm"\nvllm_runner = "systemd"' if units else 'batch = "vllm"')
    for name in SERVICES:
        extra = f"vllm_ports = {ports[name]}\n" + (f"systemd_units = {units[name]}\n" if units else
                                                    'vllm_command = ["/usr/bin/vllm"]\n')
        text = text.replace(f'name = "{name}"\n', f'name = "{name}"\n{extra}', 1)
    return text


def test_each_vllm_server_listens_on_a_port_no_other_listener_has(tmp_path: Path) -> None:
    ok = {"chat": "[18000, 18001]", "code": "[18002]", "batch-summaries": "[18003]"}
    path = tmp_path / "ok.toml"
    path.write_text(with_vllm(ok))
    load_settings(path)
    error = refused(tmp_path, with_vllm(ok | {"chat": "[18000, 18000]"}))
    assert (error.where, error.reason) == ("services[chat].vllm_ports", "18000 is also services[chat].vllm_ports's: "
                                                                        "each listener needs its own port")
    error = refused(tmp_path, with_vllm(ok | {"code": "[18001]"}))
    assert error.where == "services[code].vllm_ports" and "services[chat].vllm_ports's" in error.reason
    error = refused(tmp_path, with_vllm(ok | {"batch-summaries": "[9464]"}).replace("port = 0", "port = 9464"))
    assert error.where == "services[batch-summaries].vllm_ports" and "is also metrics.port's" in error.reason


def test_each_systemd_unit_serves_one_replica(tmp_path: Path) -> None:
    ports = {"chat": "[18000, 18001]", "code": "[18002]", "batch-summaries": "[18003]"}
    units = {"chat": '["vllm-chat-0", "vllm-chat-1"]', "code": '["vllm-code-0"]',
             "batch-summaries": '["vllm-chat-1.service"]'}  # the same unit as systemctl reads it
    error = refused(tmp_path, with_vllm(ports, units))
    assert error.where == "services[batch-summaries].systemd_units"
    assert error.reason.startswith("'vllm-chat-1.service' is also services[chat].systemd_units's")


def scraped(urls: dict[str, str], source: str = "scrape") -> str:
    text = GOOD.replace('vllm_source = "sim"', f'vllm_source = "{source}"')
    for name in SERVICES:
        text = text.replace(f'name = "{name}"\n', f'name = "{name}"\nmetrics_urls = {urls[name]}\n', 1)
    return text


def test_a_page_scraped_twice_for_one_model_is_refused_as_it_would_count_its_load_twice(tmp_path: Path) -> None:
    urls = {"chat": '["http://127.0.0.1:8000/metrics", "http://127.0.0.1:8001/metrics"]',
            "code": '["http://127.0.0.1:8000/metrics"]', "batch-summaries": '["http://127.0.0.1:8002/metrics"]'}
    path = tmp_path / "ok.toml"
    path.write_text(scraped(urls))  # one exporter's page, two models: each read apart by its model
    load_settings(path)
    chat_too = urls | {"chat": '["http://127.0.0.1:8000/metrics", "http://127.0.0.1:8000/metrics/"]'}
    error = refused(tmp_path, scraped(chat_too))
    assert error.where == "services[chat].metrics_urls"
    assert error.reason.startswith("'http://127.0.0.1:8000/metrics/' is also services[chat].metrics_urls's, for "
                                   "llama-3.1-8b too")
    path.write_text(scraped(chat_too, "prometheus"))  # not read with another source
    load_settings(path)


@pytest.mark.parametrize(("edit", "where", "value"), [
    ('replicas = "kubernetes"\nkubernetes_namespace = ""', "actuators.kubernetes_namespace", "''"),
    ('replicas = "kubernetes"\nkubernetes_namespace = "Prod"', "actuators.kubernetes_namespace", "'Prod'"),
])
def test_kubernetes_names_the_api_server_refuses_are_refused_by_field(tmp_path: Path, edit: str, where: str,
                                                                        value: str) -> None:
    error = refused(tmp_path, GOOD.replace('replicas = "sim"', edit))
    assert error.where == where and error.reason.endswith(f"got {value}")


def test_a_deployment_named_after_its_service_must_be_a_deployment_name(tmp_path: Path) -> None:
    text = GOOD.replace('replicas = "sim"', 'replicas = "kubernetes"').replace('name = "chat"', 'name = "Chat_Svc"')
    error = refused(tmp_path, text)
    assert error.where == "services[Chat_Svc].deployment"
    assert error.reason.startswith("'Chat_Svc' (the service's name, as no deployment is given) is no Deployment name")
    path = tmp_path / "named.toml"
    path.write_text(text.replace('name = "Chat_Svc"', 'name = "Chat_Svc"\ndeployment = "chat-svc"'))
    load_settings(path)


def test_more_services_than_one_daemon_plans_are_refused_before_each_is_checked(tmp_path: Path) -> None:
    block = GOOD[GOOD.index("[[services]]"):GOOD.index("[[services]]", GOOD.index("[[services]]") + 1)]
    many = "".join(re.sub(r'name = "chat"', f'name = "s{i}"', block, count=1) for i in range(1001))
    error = refused(tmp_path, GOOD.replace(block, many, 1))
    assert (error.where, error.reason) == ("services", "1003 listed, more than the 1000 one daemon plans")
