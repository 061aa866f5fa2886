"""What the operator writes back: each resource's status (the decision, predicted against observed latency,
any shortfall and its reason, conditions that name a bad field) and an Event on the resource for every
decision that changes something (once per text: a plan held back cycle after cycle posts once). Failures
to write are logged once a run and never stop the loop."""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

from actuators.kubernetes import translate
from controller.cluster.resources import GROUP, POLICIES, SERVICES, VERSION
from controller.cluster.snapshot import Resources
from controller.decision_log import DecisionLog
from controller.optimizer.problem import Solution

log = logging.getLogger("wattscale.operator")
MERGE = "application/merge-patch+json"


def _stamp() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def condition(ok: bool, reason: str, message: str) -> dict[str, Any]:
    return {"type": "Ready", "status": "True" if ok else "False", "reason": reason, "message": message,
            "lastTransitionTime": _stamp()}


def emergency(record: dict[str, Any] | None) -> dict[str, Any] | None:
    """Ready False where the cycle's record says the governor is in a power emergency (it had read Ready True Acting
    with every limit at its floor and the site over the budget's threshold)."""
    if record is None or not (d := record.get("degradation") or {}).get("emergency"):
        return None
    drawn = f" drawing {record['draw_w']:g} W" if record.get("draw_w") is not None else ""
    floor = ", every limit at its floor: the budget is below what the GPUs draw at their lowest limits" \
        if d.get("urgent") else ""
    return condition(False, "OverBudget", f"power emergency:{drawn} over the {record.get('budget_w', 0):g}-W "
                     f"budget's threshold, the governor holds {d.get('gpus_held_below_plan', 0)} GPUs below the "
                     f"plan's caps{floor}")


def stored(obj: dict[str, Any]) -> dict[str, Any]:
    """The resource's stored condition ({} where it has none, or one that is no object)."""
    old = ((obj.get("status") or {}).get("conditions") or [{}])[0]
    return old if isinstance(old, dict) else {}


def since(conditions: list[dict[str, Any]], obj: dict[str, Any]) -> list[dict[str, Any]]:
    """`conditions` with the stored one's `lastTransitionTime` where its status has not changed: the time it last
    changed, as Kubernetes' conditions read (each write had stamped it anew)."""
    old = stored(obj)
    return [{**c, "lastTransitionTime": old["lastTransitionTime"]} if old.get("type") == c["type"] and
            old.get("status") == c["status"] and old.get("lastTransitionTime") else c for c in conditions]


def service_status(key: str, obj: dict[str, Any], record: dict[str, Any] | None,
                   solution: Solution | None) -> dict[str, Any]:
    """An LLMService's status from the cycle's decision record."""
    entry = (record or {}).get("services", {}).get(key)
    status: dict[str, Any] = {"observedGeneration": obj["metadata"].get("generation", 1)}
    if entry is None or "planned" not in entry:
        status["conditions"] = [condition(False, "NotPlanned", "no plan this cycle (see the operator's log)")]
        return status
    planned, in_force = entry["planned"], entry["in_force"]
    status.update(decision={"accelerator": planned["accelerator"], "replicas": planned["replicas"],
                            "max_batch": planned["max_batch"], "power_cap_w": planned["cap_w"]},
                  in_force={"accelerator": in_force["accelerator"], "replicas": in_force["replicas"],
                            "max_batch": in_force["max_batch"], "power_cap_w": in_force["cap_w"]},
                  running=dict(entry.get("running") or {}), short_rps=entry["short_rps"],
                  reason=entry["reason"] or "", held=list(entry.get("gate_held") or []) + list(
                      entry.get("actuator_held") or []))
    result = next((r for r in (solution.services if solution else []) if r.name == key), None)
    if result is not None and result.performance is not None:
        p = result.performance
        status["predicted"] = {"ttft_ms": round(p.ttft_ms, 2), "itl_ms": round(p.itl_ms, 2),
                               "ttft_p95_ms": round(p.ttft_p95_ms, 2), "itl_p95_ms": round(p.itl_p95_ms, 2)}
    seen = entry.get("observed")
    if seen:
        status["observed"] = {k: seen[k] for k in ("rate_rps", "ttft_ms", "itl_ms", "ttft_p95_ms", "itl_p95_ms")}
    short = f"short {entry['short_rps']} rps ({entry['reason']})" if entry["reason"] else "planned"
    status["conditions"] = [condition(not entry["reason"], "Short" if entry["reason"] else "Planned", short)]
    return status


def changed(record: dict[str, Any] | None, key: str) -> str | None:
    """The decision's text where it changes something (planned differs, or actuators were asked or held)."""
    e = (record or {}).get("services", {}).get(key) or {}
    if "planned" not in e:
        return None
    if e["planned"] == e["in_force"] and not e.get("asked") and not e.get("actuator_held"):
        return None
    p = e["planned"]
    held = f"; held: {', '.join(e['actuator_held'])}" if e.get("actuator_held") else ""
    return (f"planned {p['replicas']}x{p['accelerator']} batch {p['max_batch']} cap {p['cap_w']:.0f} W"
            f"{'; asked ' + ', '.join(map(str, e['asked'])) if e.get('asked') else ''}{held}"
            + (f"; short {e['short_rps']} rps ({e['reason']})" if e.get("reason") else ""))


def ns_name(namespace: str | None, name: str) -> str:
    return name if namespace is None else f"{namespace}/{name}"


class Reporter:
    def __init__(self, api_client: Any, namespace: str, identity: str, timeout_s: float = 5.0) -> None:
        from kubernetes.client import CoreV1Api, CustomObjectsApi

        self.custom, self.core = CustomObjectsApi(api_client), CoreV1Api(api_client)
        self.namespace, self.identity, self.timeout_s = namespace, identity, timeout_s
        self.failing: set[str] = set()
        """Writes failing now ("status of llmservices/ns/name", "events on LLMService ns/name"): each said once while
        it fails, and again once it has been written since (one flag for all had said a failure again at each other
        write's success)."""
        self.posted: dict[str, str | None] = {}
        """LLMService -> the decision text last seen: an Event only when it changes (a plan held back by the
        gate or an actuator reads the same every cycle)."""

    def _patch_status(self, namespace: str | None, plural: str, name: str, status: dict[str, Any]) -> None:
        body = {"status": status}
        try:
            if namespace is None:
                self.custom.patch_cluster_custom_object_status(GROUP, VERSION, plural, name, body,
                                                               _request_timeout=self.timeout_s, _content_type=MERGE)
            else:
                self.custom.patch_namespaced_custom_object_status(GROUP, VERSION, namespace, plural, name, body,
                                                                  _request_timeout=self.timeout_s,
                                                                  _content_type=MERGE)
            self.failing.discard(f"status of {plural}/{ns_name(namespace, name)}")
        except Exception as exc:
            self._failed(f"status of {plural}/{ns_name(namespace, name)}", exc,
                         f"patch on {plural}/status in group {GROUP}")

    def event(self, obj: dict[str, Any], kind: str, reason: str, message: str, warning: bool = False) -> None:
        """A core/v1 Event on the resource (cluster-scoped ones' in the operator's namespace)."""
        from kubernetes.client import CoreV1Event, V1EventSource, V1ObjectMeta, V1ObjectReference

        meta = obj["metadata"]
        ns = meta.get("namespace") or self.namespace
        ref = V1ObjectReference(api_version=f"{GROUP}/{VERSION}", kind=kind, name=meta["name"],
                                namespace=meta.get("namespace"), uid=meta.get("uid"))
        now = dt.datetime.now(dt.UTC)
        body = CoreV1Event(metadata=V1ObjectMeta(generate_name=f"{meta['name']}.", namespace=ns),
                           involved_object=ref, reason=reason, message=message[:1024],
                           type="Warning" if warning else "Normal", source=V1EventSource(component="wattscale"),
                           first_timestamp=now, last_timestamp=now, count=1)
        try:
            self.core.create_namespaced_event(ns, body, _request_timeout=self.timeout_s)
            self.failing.discard(f"events on {kind} {ns}/{meta['name']}")
        except Exception as exc:
            self._failed(f"events on {kind} {ns}/{meta['name']}", exc, "create on events")

    def _failed(self, what: str, exc: Exception, needs: str) -> None:
        """One line a run of failures, the client's error translated (the raw exception filled five lines, headers
        and body, on every decision)."""
        if what not in self.failing:
            log.warning("%s not written: %s", what, str(translate(exc, what, needs)).removeprefix(f"{what}: "))
        self.failing.add(what)

    def resources(self, res: Resources, record: dict[str, Any] | None = None,
                  solution: Solution | None = None, unowned: list[str] | None = None, acting: bool = True) -> None:
        """Every resource's status; an Event for every decision that changes something and every refusal;
        on the policy, the GPUs no service owns (`unowned`, where known), and whether this operator acts yet (not
        `acting`: it holds the Lease and starts to, its node plans not yet made; a start that failed at each try, a
        node listing forbidden, had read "Acting")."""
        self._forget(res)
        for key, obj in res.objects.items():
            ns, name = key.split("/", 1)
            err = res.errors.get(key)
            if err is not None:
                status = {"observedGeneration": obj["metadata"].get("generation", 1),
                          "conditions": [condition(False, "Invalid", str(err))]}
                if stored(obj).get("message") != str(err):
                    self.event(obj, "LLMService", "Invalid", str(err), warning=True)
            else:
                status = service_status(key, obj, record, solution)
                text = changed(record, key)
                if text is not None and text != self.posted.get(key):
                    self.event(obj, "LLMService", "Decision", text)
                self.posted[key] = text
            status["conditions"] = since(status["conditions"], obj)
            self._patch_status(ns, SERVICES, name, status)
        policy_err = res.errors.get("policy")
        budget = (record or {}).get("budget_w")
        ready = condition(policy_err is None and acting, "Invalid" if policy_err else "Acting" if acting
                          else "Starting", str(policy_err) if policy_err else "this operator holds the Lease and "
                          + ("acts" if acting else "starts to act (its node plans not made yet)"))
        if policy_err is None and acting:  # an invalid policy says so first: the field to mend
            ready = emergency(record) or ready
        pstatus: dict[str, Any] = {"leader": self.identity, "services": len(res.objects) - len(
            [k for k in res.errors if k != "policy"]), "conditions": [ready]}
        if budget is not None:
            pstatus.update(budget_w=budget, predicted_w=(record or {}).get("predicted_w"),
                           draw_w=(record or {}).get("draw_w"))
        if unowned is not None:
            pstatus["unowned_gpus"] = unowned
        policy = res.policy_obj
        pstatus["conditions"] = since(pstatus["conditions"], policy)
        if policy_err is not None and stored(policy).get("message") != str(policy_err):
            self.event(policy, "PowerPolicy", "Invalid", str(policy_err), warning=True)
        self._patch_status(None, POLICIES, policy["metadata"]["name"], pstatus)


    def _forget(self, res: Resources) -> None:
        """What was said of LLMServices deleted since: their decision texts and failing writes (kept, they grew with
        every LLMService a long-running operator ever saw)."""
        self.posted = {k: v for k, v in self.posted.items() if k in res.objects}

        def kept(what: str) -> bool:
            for prefix in (f"status of {SERVICES}/", "events on LLMService "):
                if what.startswith(prefix):
                    return what.removeprefix(prefix) in res.objects
            return True  # a policy's: few, and said once while they fail

        self.failing = {w for w in self.failing if kept(w)}

    def not_acted(self, policy: dict[str, Any], acted: str) -> None:
        """A PowerPolicy this operator leaves alone (not its `--policy`) says so on its status and in a Warning Event
        (once: a restart reads its status saying it already); it said so in the operator's log alone."""
        why = f"this operator acts on PowerPolicy {acted!r} (its --policy); this one is left alone"
        if stored(policy).get("message") != why:
            self.event(policy, "PowerPolicy", "NotActed", why, warning=True)
        self._patch_status(None, POLICIES, policy["metadata"]["name"],
                           {"conditions": since([condition(False, "NotActed", why)], policy)})


class KeptDecisions(DecisionLog):
    """The decision log, also keeping the last record: the resources' status is written from it."""

    last: dict[str, Any] | None = None

    def write(self, record: dict[str, Any]) -> bool:
        self.last = record
        return super().write(record)
