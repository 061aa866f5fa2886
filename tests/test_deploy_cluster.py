"""deploy/kubernetes/base (cluster mode): the CRDs are what `wattscale schema` generates and structural, the
kustomize base renders (every resource parses, namespaces and accounts agree), RBAC is exactly what each
component calls, the examples are resources the operator accepts, and every metric the dashboard queries is
on the daemon's real /metrics exposition."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from kube_schema import CrdSchema
from prometheus_client import CollectorRegistry, generate_latest

from controller.cli import main
from controller.cluster.crds import crds
from controller.cluster.resources import policy_spec, service_settings, settings_of
from controller.config_loader import ConfigError
from controller.daemon import Daemon
from controller.schema_catalog import schemas
from controller.settings import load_settings
from queuemodels.accelerators import CATALOG

ROOT = Path(__file__).resolve().parents[1]
BASE = ROOT / "deploy" / "kubernetes" / "base"
EXAMPLES = ROOT / "deploy" / "kubernetes" / "examples"
DASHBOARD = ROOT / "deploy" / "kubernetes" / "grafana" / "wattscale-dashboard.json"


def render() -> list[dict[str, Any]]:
    """The kustomize base as `kubectl apply -k` reads it: every listed file, every document."""
    kustomization = yaml.safe_load((BASE / "kustomization.yaml").read_text())
    docs = []
    for name in kustomization["resources"]:
        docs += [d for d in yaml.safe_load_all((BASE / name).read_text()) if d]
    return docs


def structural(schema: dict[str, Any], where: str = "") -> list[str]:
    """What makes a CRD schema non-structural (every node typed; properties and additionalProperties apart)."""
    bad = []
    if "type" not in schema and not schema.get("x-kubernetes-preserve-unknown-fields"):
        bad.append(f"{where}: no type")
    if "properties" in schema and "additionalProperties" in schema:
        bad.append(f"{where}: properties with additionalProperties")
    for name, sub in schema.get("properties", {}).items():
        bad += structural(sub, f"{where}.{name}")
    for key in ("items", "additionalProperties"):
        if isinstance(schema.get(key), dict):
            bad += structural(schema[key], f"{where}[{key}]")
    return bad


def test_crds_in_deploy_are_what_wattscale_schema_generates(capsys: pytest.CaptureFixture[str]) -> None:
    shipped = list(yaml.safe_load_all((BASE / "crds.yaml").read_text()))
    assert shipped == crds()
    assert main(["schema", "--crds"]) == 0
    assert list(yaml.safe_load_all(capsys.readouterr().out)) == shipped
    for crd in shipped:
        version = crd["spec"]["versions"][0]
        assert version["subresources"] == {"status": {}} and version["additionalPrinterColumns"]
        assert structural(version["schema"]["openAPIV3Schema"]) == [], crd["metadata"]["name"]
    llm = shipped[1]["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    assert llm["properties"]["variants"]["items"]["properties"]["accelerator"]["enum"] == sorted(CATALOG)
    assert {"model", "ttft_ms", "itl_ms", "variants"} == set(llm["required"])


def test_schema_command_prints_every_schema_from_the_settings(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["schema"]) == 0
    every = json.loads(capsys.readouterr().out)
    assert set(every) == set(schemas()) == {"config", "optimize-spec", "plan-packing", "plan-allocation",
                                           "crd-powerpolicy", "crd-llmservice", "crd-nodepowerplan"}
    budget = every["config"]["properties"]["power"]["properties"]["budget_w"]
    assert budget["type"] == "number" and budget["description"].startswith("Site power budget")
    assert main(["schema", "nope"]) == 2
    capsys.readouterr()
    assert main(["schema", "config", "--crds"]) == 2  # the name was ignored: every CRD printed
    assert capsys.readouterr().err.strip() == ("wattscale: schema --crds: prints every CustomResourceDefinition: no "
                                               "name, got 'config'")


def keys_outside(schema: dict[str, Any], data: Any, where: str = "") -> list[str]:
    """Keys of a TOML document the schema does not describe (its drift, if the loader took them)."""
    if not isinstance(data, dict):
        if isinstance(data, list) and "items" in schema:
            items = schema["items"]
            return [k for v in data for k in keys_outside(next(
                (o for o in items["oneOf"] if o["properties"]["kind"]["const"] == v["kind"]), {})
                if "oneOf" in items else items, v, where)]
        return []
    props = schema.get("properties", {})
    out = []
    for k, v in data.items():
        if k not in props and not schema.get("additionalProperties"):
            out.append(f"{where}.{k}")
        elif k in props:
            out += keys_outside(props[k], v, f"{where}.{k}")
        else:
            out += keys_outside(schema["additionalProperties"], v, f"{where}.{k}")
    return out


def test_the_shipped_configs_and_specs_use_only_what_the_schemas_describe() -> None:
    every = schemas()
    for path in (ROOT / "config" / "sim.toml", ROOT / "config" / "examples" / "host.toml"):
        load_settings(path)
        assert keys_outside(every["config"], tomllib.loads(path.read_text())) == [], path.name
    spec = tomllib.loads((ROOT / "config" / "examples" / "optimize.toml").read_text())
    assert keys_outside(every["optimize-spec"], spec) == []
    for path in sorted((ROOT / "config" / "plans").glob("*.toml")):
        plan = tomllib.loads(path.read_text())
        assert keys_outside(every[f"plan-{plan['kind']}"], plan) == [], path.name


def _bounded(schema: Any, where: str = "") -> list[tuple[str, dict[str, Any]]]:
    """Every number schema with a bound, by its path."""
    if isinstance(schema, list):
        return [b for k, v in enumerate(schema) for b in _bounded(v, f"{where}[{k}]")]
    if not isinstance(schema, dict):
        return []
    here = [(where, schema)] if {"minimum", "exclusiveMinimum", "maximum", "exclusiveMaximum"} & schema.keys() else []
    return here + [b for k, v in schema.items() for b in _bounded(v, f"{where}.{k}")]


def test_the_schemas_carry_the_bounds_the_loaders_check_and_the_shipped_files_meet_them() -> None:
    """A spec that passed its schema could still be refused by the loader's ranges (1e308 W, a 0.01 s tick): the
    bounds a class's check() makes are in its schema, its defaults within them, and each shipped file valid."""
    from jsonschema import Draft202012Validator

    every = schemas()
    for name, schema in every.items():
        for where, node in _bounded(schema):
            if "default" in node:
                assert not list(Draft202012Validator({k: v for k, v in node.items() if k != "default"})
                                .iter_errors(node["default"])), (name, where)
    config = every["config"]["properties"]
    assert config["daemon"]["properties"]["fast_interval_s"] | {"description": ""} == {
        "type": "number", "minimum": 0.1, "maximum": 3600.0, "default": 1.0, "description": ""}
    assert {k: config["power"]["properties"]["budget_w"][k] for k in ("exclusiveMinimum", "maximum")} == {
        "exclusiveMinimum": 0.0, "maximum": 1e8}
    assert all(config["optimizer"]["properties"][k]["uniqueItems"] for k in ("batch_sizes", "power_levels",
                                                                            "clock_levels"))  # refused twice
    paths = {"config": [ROOT / "config" / "sim.toml", ROOT / "config" / "examples" / "host.toml"],
             "optimize-spec": [ROOT / "config" / "examples" / "optimize.toml"]}
    for plan in sorted((ROOT / "config" / "plans").glob("*.toml")):
        paths.setdefault(f"plan-{tomllib.loads(plan.read_text())['kind']}", []).append(plan)
    for name, files in paths.items():
        for path in files:
            errors = list(Draft202012Validator(every[name]).iter_errors(tomllib.loads(path.read_text())))
            assert not errors, (path.name, [e.message for e in errors])
    # and a value out of range fails both, naming the same field
    text = (ROOT / "config" / "sim.toml").read_text()
    assert "fast_interval_s = 1.0" in text
    data = tomllib.loads(text.replace("fast_interval_s = 1.0", "fast_interval_s = 0.01"))
    errors = list(Draft202012Validator(every["config"]).iter_errors(data))
    assert [list(e.absolute_path) for e in errors] == [["daemon", "fast_interval_s"]]


def test_the_base_renders_with_one_namespace_and_agreeing_accounts() -> None:
    docs = render()
    kinds = {(d["kind"], d["metadata"]["name"]) for d in docs}
    assert {("Deployment", "wattscale-operator"), ("DaemonSet", "wattscale-agent"), ("Namespace", "wattscale"),
            ("ValidatingAdmissionPolicy", "wattscale-agent-own-node")} <= kinds
    namespaced = [d for d in docs if d["kind"] in ("Deployment", "DaemonSet", "ServiceAccount", "Role", "RoleBinding",
                                                   "Service")]
    assert {d["metadata"]["namespace"] for d in namespaced} == {"wattscale"}
    by = {(d["kind"], d["metadata"]["name"]): d for d in docs}
    for workload, account, args0 in (("Deployment", "wattscale-operator", "operator"),
                                     ("DaemonSet", "wattscale-agent", "agent")):
        pod = by[workload, account]["spec"]["template"]["spec"]
        assert pod["serviceAccountName"] == account and pod["containers"][0]["args"][0] == args0
        bindings = [b for b in docs if b["kind"] in ("ClusterRoleBinding", "RoleBinding")
                    and b["subjects"][0]["name"] == account]
        assert bindings and all(b["subjects"][0]["namespace"] == "wattscale" for b in bindings)
    agent = by["DaemonSet", "wattscale-agent"]["spec"]["template"]["spec"]["containers"][0]["securityContext"]
    assert agent["capabilities"] == {"drop": ["ALL"], "add": ["SYS_ADMIN"]}  # NVML's setter, nothing more


def test_rbac_is_exactly_what_each_component_calls() -> None:
    rules = {d["metadata"]["name"]: d["rules"] for d in render() if d["kind"] in ("ClusterRole", "Role")}
    agent = {(r, v) for rule in rules["wattscale-agent"] for r in rule["resources"] for v in rule["verbs"]}
    assert agent == {("nodepowerplans/status", "patch")}  # no read of any plan: the operator serves its own
    operator = {(r, v) for rule in rules["wattscale-operator"] for r in rule["resources"] for v in rule["verbs"]}
    assert ("tokenreviews", "create") in operator  # the agents' tokens reviewed
    assert not any(v in ("delete", "deletecollection", "*", "escalate", "bind") for _, v in operator)
    assert not any(r in ("secrets", "*") for r, _ in operator)
    assert ("llmservices", "patch") not in operator and ("nodepowerplans", "delete") not in operator
    assert {(r, v) for rule in rules["wattscale-operator-lease"] for r in rule["resources"]
            for v in rule["verbs"]} == {("leases", "get"), ("leases", "create"), ("leases", "update")}


def test_the_agent_reaches_the_leaders_plan_endpoint_through_the_service_with_its_own_audience() -> None:
    """The agent's --operator-url is the operator's Service, whose port is the container's plans port; only
    the Lease holder is ready there (/readyz); the agent's projected token has the operator's audience, is
    mounted where --token-file reads it, and its ServiceAccount is the one the operator serves."""
    import itertools

    from controller.cluster.plan_server import AUDIENCE

    docs = render()
    by = {(d["kind"], d["metadata"]["name"]): d for d in docs}

    def flags(args: list[str]) -> dict[str, str]:
        return {a: b for a, b in itertools.pairwise(args) if a.startswith("--")}

    operator = by["Deployment", "wattscale-operator"]["spec"]["template"]
    agent = by["DaemonSet", "wattscale-agent"]["spec"]["template"]["spec"]
    op, ag = operator["spec"]["containers"][0], agent["containers"][0]
    service = by["Service", "wattscale-operator"]["spec"]
    assert service["selector"].items() <= operator["metadata"]["labels"].items()
    port = next(p for p in service["ports"] if p["name"] == "plans")
    assert {"name": "plans", "containerPort": port["port"]} in op["ports"] and port["targetPort"] == "plans"
    assert int(flags(op["args"])["--plan-port"]) == port["port"] and flags(op["args"])["--plan-listen"] == "0.0.0.0"
    assert op["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "plans"}
    # named through the pod's own namespace, as the kubelet expands it: a kustomize namespace override left the agents
    # asking `wattscale.svc` (a new user's trial)
    env = {e["name"]: e for e in ag["env"]}
    assert env["POD_NAMESPACE"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    namespace = by["Service", "wattscale-operator"]["metadata"]["namespace"]
    assert by["DaemonSet", "wattscale-agent"]["metadata"]["namespace"] == namespace
    assert flags(ag["args"])["--operator-url"].replace("$(POD_NAMESPACE)", namespace) == \
        f"http://wattscale-operator.{namespace}.svc:{port['port']}"
    assert flags(op["args"])["--agent-account"] == agent["serviceAccountName"]
    token = flags(ag["args"])["--token-file"]
    mount = next(m for m in ag["volumeMounts"] if token.startswith(m["mountPath"] + "/"))
    volume = next(v for v in agent["volumes"] if v["name"] == mount["name"])
    [source] = volume["projected"]["sources"]
    assert source["serviceAccountToken"]["audience"] == AUDIENCE and mount["readOnly"]
    assert token == f"{mount['mountPath']}/{source['serviceAccountToken']['path']}"


def test_the_plan_keys_are_mounted_where_the_flags_read_them_and_made_as_the_docs_say() -> None:
    """The operator's --plan-signing-key is the Secret's item, mounted into the operator alone; the agent's
    --plan-verify-key the ConfigMap's; docs/cluster.md's Install creates that Secret and that ConfigMap, in the
    manifests' namespace, from files named as their items."""
    import itertools

    by = {(d["kind"], d["metadata"]["name"]): d for d in render()}
    docs = (ROOT / "docs" / "cluster.md").read_text()

    def source(kind: str, name: str, flag: str, volume_kind: str) -> dict[str, Any]:
        pod = by[kind, name]["spec"]["template"]["spec"]
        container = pod["containers"][0]
        path = {a: b for a, b in itertools.pairwise(container["args"]) if a.startswith("--")}[flag]
        mount = next(m for m in container["volumeMounts"] if path.startswith(m["mountPath"] + "/"))
        volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])[volume_kind]
        assert mount["readOnly"] and volume["items"] == [{"key": Path(path).name, "path": Path(path).name}]
        return volume

    secret = source("Deployment", "wattscale-operator", "--plan-signing-key", "secret")
    config = source("DaemonSet", "wattscale-agent", "--plan-verify-key", "configMap")
    key, pub = secret["items"][0]["key"], config["items"][0]["key"]
    made = (f"openssl genpkey -algorithm ed25519 | kubectl -n wattscale create secret generic {secret['secretName']} "
            f"--from-file={key}=/dev/stdin\n")
    field = key.replace(".", "\\.")  # a key's dot escaped in a JSONPath
    read_back = (f"kubectl -n wattscale get secret {secret['secretName']} -o jsonpath='{{.data.{field}}}' "
                 f"| base64 -d | openssl pkey -pubout > {pub}\n")
    assert made in docs and read_back in docs, read_back
    assert f"kubectl -n wattscale create configmap {config['name']} --from-file={pub}\n" in docs
    agent = by["DaemonSet", "wattscale-agent"]["spec"]["template"]["spec"]
    assert not any("secret" in v for v in agent["volumes"])  # the agents hold no private key


def test_the_agent_is_probed_for_a_loop_that_steps() -> None:
    """The agent had no liveness probe: a step hung in NVML went unnoticed. Its metrics port serves /healthz (503
    once no step has ended in 60 s) and the DaemonSet probes it there."""
    import itertools

    by = {(d["kind"], d["metadata"]["name"]): d for d in render()}
    agent = by["DaemonSet", "wattscale-agent"]["spec"]["template"]["spec"]["containers"][0]
    port = int({a: b for a, b in itertools.pairwise(agent["args"]) if a.startswith("--")}["--metrics-port"])
    assert {"name": "metrics", "containerPort": port} in agent["ports"]
    probe = agent["livenessProbe"]
    assert probe["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert probe["periodSeconds"] * probe["failureThreshold"] >= 30  # no restart inside the agent's own bound


def test_only_the_agents_reach_the_plan_endpoint_and_any_scraper_the_metrics() -> None:
    """Slow clients from many pod addresses could hold the plan server's slots and fail its readiness probe. The
    base's NetworkPolicy admits to the operator's plans port the agents' pods alone (of its own namespace) and
    leaves the metrics port open; the operator's other ports take only the kubelet's probes."""
    by = {(d["kind"], d["metadata"]["name"]): d for d in render()}
    operator = by["Deployment", "wattscale-operator"]
    agent = by["DaemonSet", "wattscale-agent"]
    policy = by["NetworkPolicy", "wattscale-operator"]
    assert policy["metadata"]["namespace"] == agent["metadata"]["namespace"] == operator["metadata"]["namespace"]
    spec = policy["spec"]
    assert spec["podSelector"]["matchLabels"].items() <= operator["spec"]["template"]["metadata"]["labels"].items()
    assert spec["policyTypes"] == ["Ingress"]  # the operator's own calls (API server, carbon) untouched
    open_to: dict[str, list[Any]] = {}
    for rule in spec["ingress"]:
        for port in rule["ports"]:
            open_to.setdefault(port["port"], []).append(rule.get("from"))
    names = {p["name"] for p in operator["spec"]["template"]["spec"]["containers"][0]["ports"]}
    assert set(open_to) == {"plans", "metrics"} and set(open_to) <= names
    assert open_to["metrics"] == [None]
    [[source]] = open_to["plans"]
    assert set(source) == {"podSelector"}  # no namespaceSelector: the policy's own namespace only
    admitted = source["podSelector"]["matchLabels"].items()
    assert admitted <= agent["spec"]["template"]["metadata"]["labels"].items()
    assert not admitted <= operator["spec"]["template"]["metadata"]["labels"].items()


def test_the_own_node_policy_names_no_namespace_or_account_an_override_would_rename() -> None:
    """The agents' own-node admission policy matched `system:serviceaccount:wattscale:wattscale-agent`: a kustomize
    namespace (or name) override renamed the account and silently turned the policy off. It now holds every
    service account writing a plan's status to its own node."""
    by = {(d["kind"], d["metadata"]["name"]): d for d in render()}
    policy = by["ValidatingAdmissionPolicy", "wattscale-agent-own-node"]["spec"]
    [condition] = policy["matchConditions"]
    assert condition["expression"] == "request.userInfo.username.startsWith('system:serviceaccount:')"
    assert policy["matchConstraints"]["resourceRules"][0]["resources"] == ["nodepowerplans/status"]
    operator = {r for rule in by["ClusterRole", "wattscale-operator"]["rules"] for r in rule["resources"]}
    assert "nodepowerplans/status" not in operator  # the operator's own service account writes no plan's status


def test_the_examples_are_resources_the_operator_accepts(tmp_path: Path) -> None:
    policy = yaml.safe_load((EXAMPLES / "powerpolicy.yaml").read_text())
    svc = yaml.safe_load((EXAMPLES / "llmservice.yaml").read_text())
    s = settings_of(policy_spec(policy["spec"]), [service_settings(svc["metadata"]["namespace"],
                                                                    svc["metadata"]["name"], svc["spec"])],
                    str(tmp_path))
    assert s.services[0].name == "llm/chat" and s.power.budget_w == 20000
    admission = {c["spec"]["names"]["kind"]: CrdSchema(c["spec"]["versions"][0]["schema"]["openAPIV3Schema"])
               for c in yaml.safe_load_all((BASE / "crds.yaml").read_text())}
    for obj in (policy, svc):  # the API server admits them as they are: nothing refused, nothing pruned
        assert admission[obj["kind"]].admit(obj) == (obj, []), obj["kind"]


def test_a_policy_asking_for_locked_clocks_is_refused_as_cluster_mode_has_none() -> None:
    """A PowerPolicy has no actuators table: the refusal says clocks are not available, not how to set one."""
    policy = yaml.safe_load((EXAMPLES / "powerpolicy.yaml").read_text())
    policy["spec"].setdefault("optimizer", {})["clock_levels"] = [0.8, 1.0]
    with pytest.raises(ConfigError) as caught:
        policy_spec(policy["spec"])
    assert str(caught.value) == ("spec.optimizer.clock_levels: [0.8]: clocks are not available in cluster mode "
                                 "(the node agents set power limits only); keep clock_levels = [1.0]")


def test_every_dashboard_query_names_a_metric_the_daemon_exports(tmp_path: Path) -> None:
    exprs = [t["expr"] for p in json.loads(DASHBOARD.read_text())["panels"] for t in p["targets"]]
    names = {n for e in exprs for n in re.findall(r"\bwattscale_[a-z_]+", e)}
    assert len(names) >= 20 and all(re.search(r"\bwattscale_", e) for e in exprs)
    cfg = tmp_path / "wattscale.toml"
    cfg.write_text((ROOT / "config" / "sim.toml").read_text().replace('state_dir = "../var/state"',
                                                                       f'state_dir = "{tmp_path}"'))
    daemon = Daemon(cfg, load_settings(cfg), CollectorRegistry())
    assert daemon.parts.host is not None
    slow = daemon.settings.daemon.slow_interval_s
    for k in range(1, int(8 * slow) + 1):  # eight slow cycles of the simulated host, stepped
        daemon.parts.host.advance_to(float(k))
        daemon.controller.tick_fast(float(k))
        if k % int(slow) == 0:
            daemon.controller.tick_slow(float(k))
    page = generate_latest(daemon.registry).decode()  # what /metrics serves
    exported = set(re.findall(r"^(?:# HELP )?(wattscale_[a-z_]+)", page, re.M))  # a sample, or a family none fed yet
    assert names <= exported, f"not on /metrics: {sorted(names - exported)}"


def test_the_image_holds_every_package_the_wheel_ships_and_runs_what_the_manifests_ask() -> None:
    """The Dockerfile copies the packages pyproject.toml ships (one left out is an ImportError in the pod, not
    here), with nothing else, and its entry point is the command every manifest's args begin with."""
    dockerfile = (ROOT / "Dockerfile").read_text()
    shipped = {p.rstrip("*") for p in tomllib.loads((ROOT / "pyproject.toml").read_text())
               ["tool"]["setuptools"]["packages"]["find"]["include"]}
    copied = set(re.findall(r"^COPY (\w+) \./\1$", dockerfile, re.MULTILINE))
    assert copied == shipped
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {f"!{p}/" for p in shipped} <= set(ignored)
    assert 'ENTRYPOINT ["wattscale"]' in dockerfile
    subcommands = {c["args"][0] for d in render() if d["kind"] in ("Deployment", "DaemonSet")
                   for c in d["spec"]["template"]["spec"]["containers"]}
    assert subcommands == {"operator", "agent"}
    for name in subcommands:  # each is a subcommand of that entry point
        with pytest.raises(SystemExit) as done:
            main([name, "--help"])
        assert done.value.code == 0
