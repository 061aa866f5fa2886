"""`wattscale check-config FILE.yaml`: custom resources checked as the operator reads them, before the cluster does.

A PowerPolicy and LLMServices as `kubectl apply -f` takes them (one YAML document each) go through the operator's own
reading (controller/cluster/snapshot.py `resources_of`): each resource on its own, then together, every refusal named
by resource and field as its status would say it. Offline, nothing the cluster holds is read: the Deployments the
services name, the budget sources' secrets and the nodes' GPUs (a domain's) are the operator's to check.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from controller.cluster.resources import service_settings
from controller.cluster.snapshot import resource_spec, resources_of
from controller.config_loader import ConfigError, quoted
from controller.toml_file import read_bounded

KINDS = ("PowerPolicy", "LLMService")


def documents(path: Path) -> list[dict[str, Any]]:
    """The file's YAML documents, each a resource of ours (ConfigError naming the document where one is not), read
    as a config is (`read_bounded`)."""
    import yaml

    data = read_bounded(path, "no resources are")
    try:
        docs = [d for d in yaml.load_all(data.decode("utf-8-sig"), Loader=_unique_keys(yaml)) if d is not None]
    except UnicodeDecodeError as exc:
        raise ConfigError(str(path), f"not UTF-8 text (byte {exc.start})") from None
    except yaml.YAMLError as exc:  # a key given twice too (two resources pasted without `---` read as one)
        raise ConfigError(str(path), f"is not YAML: {' '.join(str(exc).split())[:300]}") from None
    except RecursionError:
        raise ConfigError(str(path), "is not YAML: nested too deeply") from None
    if not docs:
        raise ConfigError(str(path), "holds no PowerPolicy or LLMService")
    for i, doc in enumerate(docs):
        kind = doc.get("kind") if isinstance(doc, dict) else None
        if kind not in KINDS:
            raise ConfigError(f"{path}: document {i + 1}", f"kind must be one of {list(KINDS)}, got {quoted(kind)}")
        meta = doc.get("metadata")
        if not isinstance(meta, dict) or not isinstance(meta.get("name"), str) or not meta["name"]:
            raise ConfigError(f"{path}: document {i + 1}.metadata.name", "must name the resource")
    return docs


def _unique_keys(yaml: Any) -> Any:
    """PyYAML's safe loader refusing a key given twice in one mapping, as kubectl does: it kept the last, so two
    resources pasted without `---` between them read as one, the second's fields over the first's."""

    class Loader(yaml.SafeLoader):  # type: ignore[misc]
        def construct_mapping(self, node: Any, deep: bool = False) -> Any:
            seen = set()
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=deep)
                if isinstance(key, str | int | float | bool) and key in seen:
                    raise yaml.constructor.ConstructorError(None, None, f"{key!r} given twice in one mapping",
                                                            key_node.start_mark)
                seen.add(key)
            return super().construct_mapping(node, deep)

    return Loader


def check_resources(path: Path) -> tuple[list[str], str]:
    """Each refusal, `Kind name: field: reason`, and what was read; ConfigError where the file is none of ours."""
    docs = documents(path)
    policies = [d for d in docs if d["kind"] == "PowerPolicy"]
    services = [d for d in docs if d["kind"] == "LLMService"]
    read = f"{len(policies)} PowerPolic{'y' if len(policies) == 1 else 'ies'}, {len(services)} LLMService" + (
        "s" * (len(services) != 1))
    refusals: list[str] = []
    with tempfile.TemporaryDirectory() as state_dir:
        for policy in policies:
            res = resources_of(policy, services, None, None, state_dir, environ=None)
            errors = dict(res.errors)
            if res.policy is None:  # refused on its own: the services' own checks still stand
                errors.update(_alone(services))
            for key, err in errors.items():
                line = f"PowerPolicy {policy['metadata']['name']}: {err}" if key == "policy" else (
                    f"LLMService {key}: {err}")
                if line not in refusals:
                    refusals.append(line)
    if not policies:  # the cross-field checks wait for a policy's inventory
        refusals += [f"LLMService {key}: {err}" for key, err in _alone(services).items()]
        read += " (no PowerPolicy: each service checked on its own)" if services else ""
    return refusals, read


def _alone(services: list[dict[str, Any]]) -> dict[str, ConfigError]:
    """Each LLMService's own refusal, by `namespace/name`, checked with no policy."""
    out = {}
    for obj in services:
        ns, name = obj["metadata"].get("namespace", "default"), obj["metadata"]["name"]
        try:
            service_settings(ns, name, resource_spec(obj))
        except ConfigError as exc:
            out[f"{ns}/{name}"] = exc
    return out
