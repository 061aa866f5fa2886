"""Replica scaling of Kubernetes Deployments through the scale subresource, with the official client.

Only two calls are made: GET and PATCH `/apis/apps/v1/namespaces/{ns}/deployments/{name}/scale`, which is
all the Role in deploy/kubernetes/ grants. API errors are translated at this boundary through one map.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from typing import Any

from actuators.base import ActuatorError, MissingTargetError, PermanentActuatorError, TransientActuatorError
from actuators.kubernetes_calls import within

log = logging.getLogger(__name__)

# HTTP status -> (the error it is, retry delay s where transient, what it means)
STATUS: dict[int, tuple[type[ActuatorError], float, str]] = {
    401: (PermanentActuatorError, 0.0, "unauthorised: the credentials were refused (the kubeconfig's, or the pod's "
                                       "service account token)"),
    403: (PermanentActuatorError, 0.0, "forbidden: the Role does not allow this request"),
    404: (MissingTargetError, 0.0, "no such object"),
    409: (TransientActuatorError, 1.0, "conflict: the object changed meanwhile"),
    422: (PermanentActuatorError, 0.0, "the API server refused the object as invalid"),
    429: (TransientActuatorError, 5.0, "rate-limited by the API server"),
}


SCALE = "get and patch on deployments/scale"
"""What the replica scaler's Role grants (deploy/kubernetes/role.yaml)."""


@dataclass(frozen=True)
class DeploymentRef:
    namespace: str
    """Namespace of the Deployment."""
    name: str
    """Deployment name."""


def translate(exc: Exception, target: str, needs: str = "") -> ActuatorError:
    """One map from client failures to the error tree: statuses above (404 a missing target); 5xx, no answer at all
    (status 0), timeouts and refused connections are transient; anything else permanent. `target` names the
    object (every resource the operator, the agent and the actuators call goes through here), `needs` what the Role
    must grant for it, said with a 403."""
    from kubernetes.client.exceptions import ApiException
    from urllib3.exceptions import HTTPError

    if isinstance(exc, ApiException):
        status = int(exc.status or 0)
        if status in STATUS:
            kind, delay_s, meaning = STATUS[status]
            if status == 403 and needs:
                meaning = f"forbidden: the Role must allow {needs}"
            msg = f"{target}: {meaning} (HTTP {status})"
            return TransientActuatorError(msg, delay_s) if kind is TransientActuatorError else kind(msg)
        if status >= 500 or status == 0:  # 0: no answer came (the client's own failure, a TLS error among them)
            return TransientActuatorError(f"{target}: API server error (HTTP {status} {exc.reason})", 10.0)
        return PermanentActuatorError(f"{target}: HTTP {status} {exc.reason}")
    if isinstance(exc, TransientActuatorError):  # `within`'s: past its deadline or bound, or no JSON
        return TransientActuatorError(f"{target}: {exc}", exc.delay_s)
    if isinstance(exc, (HTTPError, OSError)):
        return TransientActuatorError(f"{target}: API server unreachable or too slow ({type(exc).__name__})", 10.0)
    return PermanentActuatorError(f"{target}: {type(exc).__name__}: {exc}")


def api_client(kubeconfig: str = "") -> Any:
    """In-cluster credentials inside a pod (unless a kubeconfig is named), else the kubeconfig file. urllib3's own
    retries are off: it tried a GET that timed out three more times, so a call could take four times its timeout
    (the operator's fast tick reads the plans by one), and every caller already retries on its own backoff."""
    import yaml
    from kubernetes import client, config

    cfg = client.Configuration()
    if kubeconfig or "KUBERNETES_SERVICE_HOST" not in os.environ:
        _plain_files(kubeconfig)
    try:
        if not kubeconfig and "KUBERNETES_SERVICE_HOST" in os.environ:
            config.load_incluster_config(client_configuration=cfg)
        else:
            config.load_kube_config(config_file=kubeconfig or None, client_configuration=cfg)
    except config.ConfigException as exc:  # its message names no file: which one was read (a missing one reads empty)
        read = _read(kubeconfig)
        missing = "" if read == "in-cluster" or os.path.exists(os.path.expanduser(read.split(os.pathsep)[0])) \
            else ", which does not exist"
        raise PermanentActuatorError(f"kubernetes: no usable credentials in {read}{missing}: {exc}") from exc
    except yaml.YAMLError as exc:  # the client's parser error spans lines: one line here, with where it broke
        mark = getattr(exc, "problem_mark", None)
        at = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        problem = getattr(exc, "problem", None) or type(exc).__name__
        raise PermanentActuatorError(f"kubernetes: kubeconfig {_read(kubeconfig)} is not valid YAML: {problem}{at}") \
            from None
    except (TypeError, AttributeError, KeyError, ValueError) as exc:  # YAML, but no kubeconfig's structure (a list,
        # a string, `clusters: 5`): the client's own TypeError was a traceback out of `operator` and `agent`
        raise PermanentActuatorError(f"kubernetes: {_read(kubeconfig)} is not a kubeconfig "
                                     f"({type(exc).__name__}: {str(exc)[:200]})") from None
    cfg.retries = 0
    return client.ApiClient(cfg)


def _read(kubeconfig: str) -> str:
    """Which credentials `api_client` read: in-cluster, the kubeconfig named, $KUBECONFIG's, or ~/.kube/config."""
    if not kubeconfig and "KUBERNETES_SERVICE_HOST" in os.environ:
        return "in-cluster"
    return kubeconfig or os.environ.get("KUBECONFIG", "~/.kube/config") or "$KUBECONFIG (empty)"


def _plain_files(kubeconfig: str) -> None:
    """Refuse a kubeconfig the client would read that is there but no regular file: a FIFO blocked the operator
    and the agent for ever (`--duration` too), a device read without end."""
    paths = [kubeconfig] if kubeconfig else os.environ.get("KUBECONFIG", "~/.kube/config").split(os.pathsep)
    for path in (os.path.expanduser(p) for p in paths if p):
        if os.path.exists(path) and not os.path.isfile(path):
            raise PermanentActuatorError(f"kubernetes: kubeconfig {path} is not a regular file")


def reach(api_client: Any, timeout_s: float = 5.0) -> None:
    """One GET /version within `timeout_s`: an API server that cannot be reached (or refuses the credentials) is
    one error now, before kopf starts, not kopf's nine tries over a minute ending in tracebacks."""
    from kubernetes.client import VersionApi
    from kubernetes.client.exceptions import ApiException

    host = api_client.configuration.host
    try:
        # read as JSON, not into the client's model, which refuses a server's document that lacks a field it calls
        # required; but a version there must be: any web server answers 200 (a wrong URL, a proxy), and kopf then
        # failed on its discovery documents with a page of tracebacks
        answer = VersionApi(api_client).get_code(_request_timeout=timeout_s, _preload_content=False)
        try:
            body = answer.read(1 << 16)
        finally:
            answer.release_conn()
    except ApiException as exc:
        meaning = STATUS[401][2] if exc.status == 401 else f"{exc.reason}"
        raise PermanentActuatorError(f"kubernetes API {host} answered HTTP {exc.status}: {meaning}") from None
    except Exception as exc:
        raise PermanentActuatorError(unreachable(host, exc)) from None
    try:
        version = json.loads(body)
    except ValueError:
        version = None
    if not (isinstance(version, dict) and isinstance(version.get("gitVersion"), str)):
        raise PermanentActuatorError(f"kubernetes API {host} answered /version with no Kubernetes version "
                                     "(gitVersion): is it a Kubernetes API server?")


def unreachable(host: str, exc: BaseException) -> str:
    """`kubernetes API HOST unreachable (CAUSE)`: the innermost OS error's words (refused, timed out, no such
    host), not urllib3's or aiohttp's nested repr of a connection object."""
    cause: BaseException = exc
    for _ in range(8):  # a chain of wrapped errors, each depth bounded
        if isinstance(cause, OSError) and cause.strerror:
            break
        inner = getattr(cause, "reason", None)
        inner = inner if isinstance(inner, BaseException) else (cause.__cause__ or cause.__context__)
        if inner is None:
            break
        cause = inner
    words = cause.strerror if isinstance(cause, OSError) and cause.strerror else str(cause) or type(cause).__name__
    return f"kubernetes API {host} unreachable ({' '.join(str(words).split())[:200]})"


class KubernetesReplicaScaler:
    name = "kubernetes"

    def __init__(self, api_client: Any, targets: dict[tuple[str, str], DeploymentRef], timeout_s: float = 5.0) -> None:
        from kubernetes.client import AppsV1Api

        self.apps = AppsV1Api(api_client)
        self.targets, self.timeout_s = targets, timeout_s

    def _ref(self, service: str, variant: str) -> DeploymentRef:
        """The Deployment of one (service, variant)."""
        if (service, variant) not in self.targets:
            raise PermanentActuatorError(f"{service} on {variant}: no Deployment configured")
        return self.targets[service, variant]

    def get_replicas(self, service: str, variant: str) -> int:
        ref = self._ref(service, variant)
        try:
            scale = within(self.timeout_s, self.apps.read_namespaced_deployment_scale, ref.name, ref.namespace)
        except Exception as exc:
            raise translate(exc, f"{service} ({ref.namespace}/{ref.name})", SCALE) from exc
        return _replicas(scale, service)

    def set_replicas(self, service: str, variant: str, replicas: int) -> int:
        if replicas < 0:
            raise PermanentActuatorError(f"{service}: replicas must be >= 0, got {replicas}")
        ref = self._ref(service, variant)
        try:
            scale = within(self.timeout_s, self.apps.patch_namespaced_deployment_scale, ref.name, ref.namespace,
                           {"spec": {"replicas": replicas}})
        except Exception as exc:
            raise translate(exc, f"{service} ({ref.namespace}/{ref.name})", SCALE) from exc
        log.info("scaled %s/%s to %d replicas", ref.namespace, ref.name, replicas)
        return _replicas(scale, service)


def _replicas(scale: Any, service: str) -> int:
    """A Scale's replicas (its JSON); an answer without a spec (a body that is no Scale) is the API server's
    fault, tried again later."""
    spec = scale.get("spec") if isinstance(scale, dict) else None
    replicas = spec.get("replicas") if isinstance(spec, dict) else None
    if spec is None or isinstance(replicas, bool) or not isinstance(replicas, int | None):
        raise TransientActuatorError(f"{service}: the API server's Scale holds no replica count", 10.0)
    return replicas or 0
