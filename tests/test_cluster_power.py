"""GPU sources `dcgm` and `kepler` through Prometheus' HTTP API: what each exporter's series become, NaN
power as an unknown reading, pod ownership, and failures."""

from __future__ import annotations

import itertools
import json
import time
from pathlib import Path

import pytest
from cluster_fixtures import NS, policy, service
from prometheus_client import CollectorRegistry

from actuators.dryrun import DryRunPowerLimiter
from controller.cluster.resources import PowerPolicySpec, policy_field, policy_spec, service_settings, settings_of
from controller.config_loader import ConfigError, build
from controller.domain_rooms import placements
from controller.fast_loop import FastLoop
from controller.own_metrics import OwnMetrics
from controller.power_settings import PowerSettings
from controller.settings import load_settings
from controller.telemetry.base import DepartingGpus, TelemetryError
from controller.telemetry.cluster_power import GONE_AFTER_S, QUERIES, PrometheusGpuSource
from controller.telemetry.deadline import SampleDeadline
from controller.telemetry.prometheus_api import http_post
from controller.wiring import build_parts


def answer(series: list[tuple[dict[str, str], str]]) -> bytes:
    result = [{"metric": labels, "value": [1.0, v]} for labels, v in series]
    return json.dumps({"status": "success", "data": {"resultType": "vector", "result": result}}).encode()


def dcgm_gpu(host: str, uuid: str, pod: str = "") -> dict[str, str]:
    labels = {"Hostname": host, "UUID": uuid, "gpu": uuid[-1], "modelName": "NVIDIA H100 80GB HBM3"}
    return {**labels, "exported_pod": pod, "exported_namespace": "llm"} if pod else labels


DCGM = {
    "DCGM_FI_DEV_POWER_USAGE": [(dcgm_gpu("n2", "GPU-b1", "chat-7d9f-abcde"), "412.5"),
                                (dcgm_gpu("n1", "GPU-a0"), "NaN"), (dcgm_gpu("n1", "GPU-a1"), "96.0")],
    "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION": [(dcgm_gpu("n2", "GPU-b1"), "5000000"),
                                             (dcgm_gpu("n1", "GPU-a0"), "1000"), (dcgm_gpu("n1", "GPU-a1"), "2000")],
    "DCGM_FI_DEV_SM_CLOCK": [(dcgm_gpu("n2", "GPU-b1"), "1755"), (dcgm_gpu("n1", "GPU-a1"), "1980")],
    "DCGM_FI_DEV_POWER_MGMT_LIMIT": [(dcgm_gpu("n2", "GPU-b1"), "600")],
}


def test_dcgm_series_become_samples_keyed_by_node_and_uuid() -> None:
    asked: list[str] = []

    def fetch(url: str, form: dict[str, str], timeout_s: float) -> bytes:
        asked.append(form["query"])
        return answer(DCGM[form["query"]])

    source = PrometheusGpuSource("http://prom:9090", "dcgm", (200.0, 700.0), {"chat": ("chat", "H100-SXM")},
                                 fetch=fetch)
    samples = source.sample(0.0)
    assert sorted(asked) == sorted(QUERIES["dcgm"].values())
    assert [s.uuid for s in samples] == ["GPU-a0", "GPU-a1", "GPU-b1"]
    assert [s.index for s in samples] == [0, 1, 2]
    a0, a1, b1 = samples
    assert a0.power_w is None and a0.energy_j == pytest.approx(1.0)  # NaN power: unknown, counted at its cap
    assert a1.power_w == 96.0 and a1.power_limit_w == 700.0 and a1.sm_clock_mhz == 1980.0 and a1.service is None
    assert b1.power_w == 412.5 and b1.power_limit_w == 600.0 and b1.energy_j == pytest.approx(5000.0)
    assert b1.service == "chat" and b1.name == "NVIDIA H100 80GB HBM3" and b1.min_limit_w == 200.0


def test_each_gpu_gets_its_own_types_limits_by_its_variant_or_its_model_name() -> None:
    def gpu(uuid: str, model: str, pod: str = "") -> dict[str, str]:
        return {"Hostname": "n1", "UUID": uuid, "modelName": model, **({"exported_pod": pod} if pod else {})}

    series = [(gpu("GPU-1", "NVIDIA L40S"), "90"), (gpu("GPU-2", "NVIDIA H100 80GB HBM3", "chat-h-1-x"), "400"),
              (gpu("GPU-3", "unknown card"), "50"), (gpu("GPU-4", "NVIDIA H100 PCIe", "chat-h-l40s-9-y"), "300")]
    envelopes = {"H100-SXM": (200.0, 700.0), "H100-PCIe": (200.0, 350.0), "L4": (40.0, 72.0),
                 "L40S": (100.0, 350.0)}
    owners = {"chat-h": ("chat", "H100-SXM"), "chat-h-l40s": ("chat", "L40S")}
    source = PrometheusGpuSource("http://prom", "dcgm", (200.0, 700.0), owners,
                                 fetch=lambda url, form, t: answer(series if "USAGE" in form["query"] else []),
                                 envelopes=envelopes)
    l40s, h100, other, pcie = source.sample(0.0)
    assert (l40s.min_limit_w, l40s.max_limit_w, l40s.service) == (100.0, 350.0, None)  # L40S, not L4
    assert (h100.min_limit_w, h100.max_limit_w, h100.service, h100.variant) == (200.0, 700.0, "chat", "H100-SXM")
    assert (other.min_limit_w, other.max_limit_w) == (200.0, 700.0)  # the first accelerator's, as configured
    assert pcie.variant == "L40S"  # the longest Deployment name its pod starts with


def test_an_unowned_gpus_name_that_fits_two_types_as_well_takes_the_higher_limits() -> None:
    """DCGM names an H100 SXM "NVIDIA H100 80GB HBM3", as near H100-PCIe as H100-SXM: with the PCIe card listed
    first it was counted at 350 W, half what it may draw."""
    series = [({"UUID": "GPU-1", "modelName": "NVIDIA H100 80GB HBM3"}, "650"),
              ({"UUID": "GPU-2", "modelName": "NVIDIA H100 PCIe"}, "300")]
    source = PrometheusGpuSource("http://prom", "dcgm", (200.0, 700.0), {},
                                 fetch=lambda url, form, t: answer(series if "USAGE" in form["query"] else []),
                                 envelopes={"H100-PCIe": (200.0, 350.0), "H100-SXM": (200.0, 700.0)})
    sxm, pcie = source.sample(0.0)
    assert (sxm.max_limit_w, sxm.power_limit_w, pcie.max_limit_w) == (700.0, 700.0, 350.0)


def test_a_gpus_labels_are_merged_over_its_series() -> None:
    """The pod that owns a GPU on a later series only (DCGM's pod mapping on some counters), and a GPU only
    Kepler's info series lists: counted, its power unknown (at its limit, as a NaN reading)."""
    dcgm = {"DCGM_FI_DEV_POWER_USAGE": [({"UUID": "GPU-1"}, "400")],
            "DCGM_FI_DEV_SM_CLOCK": [({"UUID": "GPU-1", "exported_pod": "chat-7d9f-abcde"}, "1755")]}
    owned = PrometheusGpuSource("http://prom", "dcgm", (200.0, 700.0), {"chat": ("chat", "H100-SXM")},
                                fetch=lambda url, form, t: answer(dcgm.get(form["query"], [])))
    assert [(g.uuid, g.service, g.power_w) for g in owned.sample(0.0)] == [("GPU-1", "chat", 400.0)]
    kepler_series = {"kepler_node_gpu_watts": [(kepler("10.0.0.5:28282", "0", "GPU-k0"), "150")],
                     "kepler_node_gpu_info": [({**kepler("10.0.0.5:28282", "1", "GPU-k1"), "gpu_name": "L4"}, "1")]}
    info_only = PrometheusGpuSource("http://prom", "kepler", (100.0, 400.0), {},
                                    fetch=lambda url, form, t: answer(kepler_series.get(form["query"], [])))
    assert [(g.uuid, g.power_w, g.power_limit_w) for g in info_only.sample(0.0)] == [
        ("GPU-k0", 150.0, 400.0), ("GPU-k1", None, 400.0)]


def kepler(instance: str, gpu: str, uuid: str = "") -> dict[str, str]:
    """A Kepler series' labels: the scrape's instance (the exporter pod's address), the constant node_name, the
    GPU's index and, on Kepler's newer exporters, its UUID."""
    return {"instance": instance, "node_name": "n1", "gpu": gpu, "vendor": "nvidia",
            **({"gpu_uuid": uuid} if uuid else {})}


def test_kepler_gpu_watts_and_joules_per_gpu_uuid_with_the_info_series_name() -> None:
    series = {"kepler_node_gpu_watts": [(kepler("10.0.0.5:28282", "0", "GPU-k0"), "150"),
                                        (kepler("10.0.0.5:28282", "1", "GPU-k1"), "75.5")],
              "kepler_node_gpu_joules_total": [(kepler("10.0.0.5:28282", "0", "GPU-k0"), "9000.5")],
              "kepler_node_gpu_info": [({**kepler("10.0.0.5:28282", "1", "GPU-k1"), "gpu_name": "NVIDIA L40S"}, "1")]}
    source = PrometheusGpuSource("http://prom", "kepler", (100.0, 400.0), {},
                                 fetch=lambda url, form, t: answer(series[form["query"]]),
                                 envelopes={"L40S": (100.0, 350.0), "L4": (40.0, 72.0)})
    k0, k1 = source.sample(0.0)
    assert (k0.uuid, k0.power_w, k0.energy_j, k0.power_limit_w, k0.name) == ("GPU-k0", 150.0, 9000.5, 400.0, "")
    assert (k1.uuid, k1.power_w, k1.energy_j, k1.name, k1.max_limit_w) == ("GPU-k1", 75.5, None, "NVIDIA L40S", 350.0)


@pytest.mark.parametrize("uuid", ["GPU-k0", ""], ids=["gpu_uuid", "older exporter"])
def test_a_restarted_kepler_exporter_keeps_its_gpus_numbers(uuid: str) -> None:
    """The exporter pod's new address is a new `instance`: keyed by it, every GPU was a new one, counted beside
    its old self at its last limit until GONE_AFTER_S had passed (the site read twice its GPUs)."""
    now = {"instance": "10.0.0.5:28282"}
    source = PrometheusGpuSource("http://prom", "kepler", (100.0, 400.0), {}, fetch=lambda url, form, t: answer(
        [(kepler(now["instance"], "0", uuid), "150")] if form["query"] == "kepler_node_gpu_watts" else []))
    before = source.sample(0.0)
    now["instance"] = "10.0.0.9:28282"
    after = source.sample(5.0)
    assert [(s.index, s.uuid) for s in after] == [(s.index, s.uuid) for s in before]
    assert after[0].uuid == (uuid or "n1/0") and not source.absent.keys() - {("", uuid) if uuid else ("n1", "0")}


def test_an_unreachable_prometheus_fails_the_sample() -> None:
    source = PrometheusGpuSource("http://127.0.0.1:9", "dcgm", (200.0, 700.0), {}, timeout_s=1.0, fetch=http_post)
    with pytest.raises(TelemetryError, match="unreachable"):
        source.sample(0.0)


@pytest.mark.parametrize("flavour", ["dcgm", "kepler"])
def test_config_selects_the_cluster_power_source(flavour: str, tmp_path: Path) -> None:
    text = (Path(__file__).resolve().parents[1] / "config" / "sim.toml").read_text()
    for old, new in (('gpu_source = "sim"', f'gpu_source = "{flavour}"'),
                     ('vllm_source = "sim"', 'vllm_source = "prometheus"'), ('power = "sim"', 'power = "dry-run"'),
                     ('batch = "sim"', 'batch = "dry-run"'), ('replicas = "sim"', 'replicas = "dry-run"')):
        text = text.replace(old, new)
    path = tmp_path / "cluster.toml"
    path.write_text(text)
    parts = build_parts(load_settings(path))
    assert parts.host is None and isinstance(parts.gpus, SampleDeadline)  # a tick waits a bounded time on it
    assert isinstance(parts.gpus.source, PrometheusGpuSource) and parts.gpus.source.flavour == flavour
    assert isinstance(parts.gpus, DepartingGpus)  # the GPUs it says left pass through: the fast loop retires them


def test_a_policy_rack_above_the_site_budget_is_taken_the_sites_line_binds_there() -> None:
    """A breaker keeps its rating through a budget cut: refused, an emergency cut of the site's budget failed until
    every rack above it was rewritten too (a host config's reload did so; a trial)."""
    spec = policy(budget_w=2400.0, domains=[{"name": "rack-1", "limit_w": 3000.0, "node_selector": {"rack": "r1"}}])
    assert [d.limit_w for d in build(PowerPolicySpec, spec["spec"], "spec").domains] == [3000.0]


@pytest.mark.parametrize(("where", "labels", "said"), [
    ("node_selector", {"gpu": "h100,rack=r1"}, r"^spec\.node_selector\.gpu: 'h100,rack=r1' is no label value"),
    ("node_selector", {"gpu!": "h100"}, r"^spec\.node_selector: 'gpu!' is no label key"),
    ("node_selector", {"": "h100"}, r"^spec\.node_selector: '' is no label key"),
    ("node_selector", {"/gpu": "h100"}, r"^spec\.node_selector: '/gpu' is no label key"),  # an empty prefix
    ("domains", {"rack": "r1 "}, r"^spec\.domains\[rack-1\]\.node_selector\.rack: 'r1 ' is no label value"),
])
def test_a_label_a_selector_cannot_hold_is_refused_by_field(where: str, labels: dict[str, str], said: str) -> None:
    """Joined into a label selector, a value "h100,rack=r1" chose every node labelled gpu=h100 and rack=r1 (a
    policy for gpu "h100,rack=r1" governed gpu-a); a key with a space read as a 400 on every slow tick."""
    domain = {"name": "rack-1", "limit_w": 1000.0, "node_selector": labels if where == "domains" else {"rack": "r1"}}
    spec = policy(budget_w=2400.0, domains=[domain])["spec"]
    if where == "node_selector":
        spec["node_selector"] = labels
    with pytest.raises(ConfigError, match=said):
        policy_spec(spec)
    spec["node_selector"] = {"kubernetes.io/hostname": "gpu-a", "tier": ""}  # a prefix, an empty value: labels
    spec["domains"] = [{**domain, "node_selector": {"rack": "r1"}}]
    assert policy_spec(spec).node_selector == {"kubernetes.io/hostname": "gpu-a", "tier": ""}


@pytest.mark.parametrize("budget", [0, "", []])
def test_a_policys_budget_that_is_no_object_is_refused(budget: object) -> None:
    """`spec.budget: 0` passed as no budget (the schema refuses it: a file the schema passes may be refused, never
    the other way round)."""
    spec = policy(budget_w=2400.0)["spec"]
    spec["budget"] = budget
    with pytest.raises(ConfigError, match=r"^spec\.budget: must be an object, got "):
        policy_spec(spec)


def test_a_policys_demand_response_source_takes_no_port() -> None:
    """The signal endpoint is the host daemon's; on a policy its port was accepted and served by nobody."""
    spec = policy(budget_w=2400.0)["spec"]
    spec["budget"] = {"safe_budget_w": 1200.0, "sources": [{"kind": "fixed", "budget_w": 2000.0},
                                                           {"kind": "demand_response", "path": "/s/x.json",
                                                            "port": 9477}]}
    with pytest.raises(ConfigError, match=r"^spec\.budget\.sources\[demand_response\]\.port: the operator serves no "
                                          r"signal endpoint"):
        policy_spec(spec)


def test_a_variant_pinned_to_a_node_pool_is_planned_in_its_domain(tmp_path: Path) -> None:
    """A variant whose Deployment runs in one domain's nodes: its watts are charged there once the pool's GPUs
    have reported, count in no domain before, and a pool the policy does not name is refused by field."""
    spec = policy_spec(policy(budget_w=2400.0, domains=[
        {"name": "rack-1", "limit_w": 1500.0, "node_selector": {"rack": "r1"}}])["spec"])
    svc = service("chat", "chat-h100", min_replicas=1)
    svc["spec"]["variants"][0]["domain"] = "rack-1"
    chat = service_settings(NS, "chat", svc["spec"])
    held = settings_of(spec, [chat], str(tmp_path), {"rack-1": (0, 1)})
    assert set(placements(held, held.services[0])["H100-SXM"]) == {0, 1}
    waiting = settings_of(spec, [chat], str(tmp_path), {})
    assert placements(waiting, waiting.services[0]) == {}
    svc["spec"]["variants"][0]["domain"] = "rack-9"
    with pytest.raises(ConfigError, match=r"^services\[llm/chat\]\.variants\[H100-SXM\]\.domain: unknown domain "
                                          r"'rack-9', expected one of the policy's domains \['rack-1'\]"):
        settings_of(spec, [service_settings(NS, "chat", svc["spec"])], str(tmp_path), {"rack-1": (0, 1)})


def test_policy_domains_must_nest_on_the_gpus_their_nodes_report(tmp_path: Path) -> None:
    """Nodes join domains by label, so nesting is checked once their GPUs report: a rack above the row holding
    it is refused by its field (the operator reports it under `spec.`); a rack alone on its row's GPUs so far
    (the rest not yet reported) is not, as the lower line binds."""
    spec = policy_spec(policy(budget_w=6000.0, domains=[
        {"name": "rack-1", "limit_w": 4000.0, "node_selector": {"rack": "r1"}},
        {"name": "row-a", "limit_w": 3000.0, "node_selector": {"row": "a"}}])["spec"])
    chat = [service_settings(NS, "chat", service("chat", "chat-h100")["spec"])]
    with pytest.raises(ConfigError, match=r"^domains\[rack-1\]\.limit_w: 4000 W is above 3000 W of domain "
                                          r"'row-a', which holds it"):
        settings_of(spec, chat, str(tmp_path), {"rack-1": (0, 1, 2, 3), "row-a": tuple(range(8))})
    held = settings_of(spec, chat, str(tmp_path), {"rack-1": (0, 1, 2, 3), "row-a": (0, 1, 2, 3)})
    assert [d.name for d in held.power.domains] == ["rack-1", "row-a"]


def test_a_domain_error_from_the_settings_names_the_policys_field(tmp_path: Path) -> None:
    """The settings call a policy's domains power.domains; the operator had reported `spec.power.domains[r]`, a
    field a PowerPolicy refuses, where the user's is `spec.domains[r]`."""
    spec = policy_spec(policy(budget_w=2400.0, domains=[
        {"name": "r", "limit_w": 1.0, "node_selector": {"rack": "r1"}}])["spec"])
    chat = [service_settings(NS, "chat", service("chat", "chat-h100")["spec"])]
    with pytest.raises(ConfigError) as exc:
        settings_of(spec, chat, str(tmp_path), {"r": (0, 1, 2, 3)})
    assert exc.value.where == "power.domains[r].limit_w"
    assert policy_field(exc.value.where) == "spec.domains[r].limit_w"
    assert policy_field("optimizer.solver") == "spec.optimizer.solver"


def test_the_queries_of_one_sample_share_one_timeout() -> None:
    """The fast loop waits on a sample: four slow queries fail it once their one timeout is spent, each asked with
    only what is left of it, rather than each taking a whole timeout of its own."""
    given: list[float] = []

    def slow(url: str, form: dict[str, str], timeout_s: float) -> bytes:
        given.append(timeout_s)
        time.sleep(0.08)
        return answer(DCGM[form["query"]])

    source = PrometheusGpuSource("http://prom", "dcgm", (200.0, 700.0), {}, timeout_s=0.2, fetch=slow)
    with pytest.raises(TelemetryError, match=r"longer than 0\.2 s"):
        source.sample(0.0)
    assert 2 <= len(given) <= 3 and given[0] <= 0.2 and all(b < a - 0.07 for a, b in itertools.pairwise(given))


Series = list[tuple[dict[str, str], str]]


def power_series(listed: Series) -> PrometheusGpuSource:
    """A dcgm source whose Prometheus answers `listed` (changed in place by the test) for power, nothing else."""

    def fetch(url: str, form: dict[str, str], timeout_s: float) -> bytes:
        return answer(listed if form["query"] == "DCGM_FI_DEV_POWER_USAGE" else [])

    return PrometheusGpuSource("http://prom:9090", "dcgm", (200.0, 700.0), {}, fetch=fetch)


def governed(source: PrometheusGpuSource, registry: CollectorRegistry | None = None) -> FastLoop:
    """The fast loop on `source`, 2,000 W, dry-run limits."""
    return FastLoop(PowerSettings(budget_w=2000.0), 3, source, DryRunPowerLimiter(),
                    OwnMetrics(registry or CollectorRegistry()), lambda kind, message: None)


def test_a_gpu_keeps_its_index_and_one_gone_for_good_departs() -> None:
    """Node n1 (two GPUs) is replaced by n3. Positions shifted: n2's GPU took n1's number while n1 was counted
    missing at its last limits (two GPUs under one number), and n1's GPUs were counted for ever, the site read
    over budget. Now each keeps its number, and after GONE_AFTER_S absent they depart and are not counted."""
    listed: Series = [(dcgm_gpu(node, uuid), "300") for node, uuid in (("n1", "GPU-a0"), ("n1", "GPU-a1"),
                                                                      ("n2", "GPU-b1"))]
    registry = CollectorRegistry()
    fast = governed(power_series(listed), registry)
    fast.tick(0.0)
    assert {g.uuid: g.index for g in fast.samples} == {"GPU-a0": 0, "GPU-a1": 1, "GPU-b1": 2}
    listed[:] = [(dcgm_gpu(node, uuid), "300") for node, uuid in (("n2", "GPU-b1"), ("n3", "GPU-c0"),
                                                                  ("n3", "GPU-c1"))]
    fast.tick(1.0)
    assert {g.uuid: g.index for g in fast.samples if g.power_w is not None} == {"GPU-b1": 2, "GPU-c0": 3,
                                                                                "GPU-c1": 4}
    assert fast.draw_w == 900.0 + 2 * 700.0  # n1's GPUs missing: counted at their last limits, for now
    fast.tick(GONE_AFTER_S + 2.0)
    assert fast.draw_w == 900.0 and {g.uuid for g in fast.samples} == {"GPU-b1", "GPU-c0", "GPU-c1"}
    assert registry.get_sample_value("wattscale_gpu_power_limit_watts", {"gpu": "0"}) is None


def test_no_gpu_departs_while_no_series_at_all_come_back() -> None:
    """The exporters' series all gone (an exporter or the scrape down, a fresh Prometheus) read as every GPU
    leaving: after 15 minutes the site read 0 W and the fail-safe never fired. Then they stayed missing, counted
    at their last limits, and unset whatever the budget did; now an empty listing is a lost sample: the GPUs
    stay, and the fail-safe fires."""
    listed: Series = [(dcgm_gpu("n1", "GPU-a0"), "300"), (dcgm_gpu("n1", "GPU-a1"), "300")]
    fast = governed(power_series(listed))
    fast.tick(0.0)
    listed.clear()
    for lost, t in enumerate((1.0, 2.0, 3.0, GONE_AFTER_S + 2.0, 2 * GONE_AFTER_S), start=1):
        fast.tick(t)
        assert fast.draw_w is None and len(fast.samples) == 2 and fast.blind.lost == lost
    assert fast.blind.failsafe_on


def test_a_dcgm_gpu_is_one_gpu_whatever_its_exporter_pod_is_called() -> None:
    """DCGM's Hostname is the exporter pod's name unless told the node's: a rollout gave each GPU a new key (and
    number), and the old key departed the live GPU 15 minutes later. Keyed by UUID, it keeps its number."""
    listed: Series = [(dcgm_gpu("dcgm-exporter-abc12", "GPU-a0"), "300")]
    source = power_series(listed)
    assert [g.index for g in source.sample(0.0)] == [0]
    listed[:] = [(dcgm_gpu("dcgm-exporter-xyz89", "GPU-a0"), "300")]
    assert [g.index for g in source.sample(1.0)] == [0]
    assert [g.index for g in source.sample(GONE_AFTER_S + 2.0)] == [0] and source.departed() == frozenset()


def test_an_outage_is_no_absence_when_the_series_come_back_one_exporter_at_a_time() -> None:
    """After an outage with no series at all, the first read that listed one exporter's GPUs took the whole
    outage as the others' absence and departed them at once (draw 1,400 -> 300 W). Absence counts only over reads
    that listed others."""
    both: Series = [(dcgm_gpu("n1", "GPU-a0"), "300"), (dcgm_gpu("n2", "GPU-b0"), "300")]
    listed = list(both)
    fast = governed(power_series(listed))
    fast.tick(0.0)
    listed.clear()
    fast.tick(500.0)
    fast.tick(1000.0)
    listed[:] = both[:1]  # n1's exporter scraped first after the outage
    fast.tick(1001.0)
    assert fast.draw_w == 300.0 + 700.0  # n2's GPU missing, counted at its last limit
    fast.tick(1000.0 + GONE_AFTER_S)
    assert fast.draw_w == 300.0 + 700.0  # absent GONE_AFTER_S exactly (from 1,000 s): still counted
    fast.tick(1001.0 + GONE_AFTER_S)
    assert fast.draw_w == 300.0


def test_a_service_without_variants_is_refused_as_such() -> None:
    """`variants: []` (the schema's minItems 1) passed the loader and was refused later as a Deployment name."""
    spec = service("chat", "chat-h100")["spec"]
    spec["variants"] = []
    with pytest.raises(ConfigError, match=r"^spec\.variants: must list at least one variant"):
        service_settings(NS, "chat", spec)
