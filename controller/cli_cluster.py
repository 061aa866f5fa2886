"""`wattscale schema`, `wattscale operator` and `wattscale agent`: registered by controller/cli.py."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import time
from pathlib import Path
from typing import Any

from controller import log_writer, strict_json
from controller.bounded_server import serve_metrics
from controller.cli_args import number, seconds, whole
from controller.config_loader import ConfigError, check_http_url, quoted
from controller.own_metrics import process_registry
from controller.preflight import check_metrics_bind, unwritable
from controller.startup import STOP_ASKED, Asked

PROBE_TIMEOUT_S = 5.0
"""How long the operator waits for the API server's /version before it refuses to start."""
PLAN_KEY = "/etc/wattscale/plan-key/plan.key"
VERIFY_KEY = "/etc/wattscale/plan-verify/plan.pub"
"""Where deploy/kubernetes mounts the operator's plan key (a Secret) and the agents' public key (a ConfigMap)."""


def _schema(args: argparse.Namespace) -> int:
    from controller.schema_catalog import schemas

    if args.crds and args.name:
        raise ConfigError("schema --crds", f"prints every CustomResourceDefinition: no name, got {quoted(args.name)}")
    if args.crds:
        try:
            import yaml
        except ImportError:
            raise ConfigError("schema --crds", "needs: pip install 'wattscale[cluster]'") from None
        from controller.cluster.crds import crds

        print(yaml.safe_dump_all(crds(), sort_keys=False, width=120), end="")
        return 0
    every = schemas()
    if args.name is None:
        print(strict_json.dumps(every, indent=2))
        return 0
    if args.name not in every:
        raise ConfigError("schema", f"unknown {quoted(args.name)}, expected one of {sorted(every)}")
    print(strict_json.dumps(every[args.name], indent=2))
    return 0


class _NoConnectionTracebacks(logging.Filter):
    """A connection error (refused, reset, timed out: an OSError) logged by kopf or asyncio with its traceback
    keeps its one-line message; the traceback, the same dozens of lines through aiohttp each time, goes."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], OSError):
            record.exc_info, record.exc_text = None, None
        return True


class _NoRepeatedStopSignals(logging.Filter):
    """kopf stops on the first SIGTERM by setting a future's result; every further signal before it is done sets
    it again, and asyncio logs each with a traceback (InvalidStateError): a storm of signals printed a dozen."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.name == "asyncio" and record.exc_info
                    and isinstance(record.exc_info[1], asyncio.InvalidStateError)
                    and "Future.set_result(<Signals." in record.getMessage())


def _logging(level: str) -> None:
    log_writer.install(level, "%(asctime)s %(levelname)s %(name)s: %(message)s",
                       filters=(_NoConnectionTracebacks(), _NoRepeatedStopSignals()))
    # kopf.objects: a line per handler run ("Handler 'seen' succeeded") at INFO, for every resource every event; its
    # retries and failures are warnings and errors, kept (an operator trial read the successes as noise)
    for library in ("urllib3", "kubernetes", "aiohttp", "kopf.objects"):
        logging.getLogger(library).setLevel(logging.WARNING)


def _nap(stop: Asked, seconds: float, deadline: float | None) -> None:
    """Wait `seconds` in short naps, waking early for a stop a signal asked (a handler records it without a
    lock: startup.Asked) or at `deadline` (monotonic)."""
    end = time.monotonic() + seconds if deadline is None else min(time.monotonic() + seconds, deadline)
    while not stop.asked and (left := end - time.monotonic()) > 0:
        time.sleep(min(0.2, left))


def _ports(args: argparse.Namespace, *ports: tuple[str, int]) -> None:
    """Each endpoint's port free on its address (bound and closed) and no other endpoint's, refused by option
    name otherwise."""
    taken: dict[int, str] = {}
    for name, port in ports:
        if port and taken.setdefault(port, name) != name:
            raise ConfigError(f"--{name}-port", f"{port} is also --{taken[port]}-port: each endpoint needs its own")
    for name, port in ports:
        listen = args.plan_listen if name == "plan" else args.metrics_listen
        where = "--plan-listen" if name == "plan" else "--metrics-listen"
        check_metrics_bind(listen, port, (where, f"--{name}-port"))


def _operator_url(url: str) -> None:
    """The agent's --operator-url, an http(s) URL with a host: a typo started an agent whose every fetch failed,
    its GPUs dropping to their safe caps once the plan's TTL ran out."""
    check_http_url(url, "--operator-url")


def _operator(args: argparse.Namespace) -> int:
    try:
        import kopf

        from controller.cluster.plan_signing import load_signing_key
    except ImportError:
        raise ConfigError("operator", "needs: pip install 'wattscale[cluster]'") from None
    _ports(args, ("metrics", args.metrics_port), ("health", args.health_port), ("plan", args.plan_port))
    if args.plan_port:  # the agents read no plan it does not sign: a key that does not read is the flag's error now
        try:
            load_signing_key(args.plan_signing_key)
        except ValueError as exc:
            raise ConfigError("--plan-signing-key", str(exc).removeprefix("--plan-signing-key ")) from None
    from actuators import ActuatorError
    from actuators.kubernetes import api_client, reach, unreachable

    try:  # the credentials kopf will log in with, and the API they reach: an error now, not kopf's retries
        client = api_client(args.kubeconfig)
        reach(client, PROBE_TIMEOUT_S)
    except ActuatorError as exc:
        raise ConfigError("operator", str(exc)) from None
    problem = unwritable(Path(args.state_dir))
    if problem is not None:  # every leading step would fail on it while the Lease is held
        raise ConfigError("--state-dir", str(problem))
    _logging(args.log_level)
    os.environ.update(WATTSCALE_POLICY=args.policy, WATTSCALE_STATE_DIR=args.state_dir,
                      WATTSCALE_PLAN_LISTEN=args.plan_listen, WATTSCALE_PLAN_PORT=str(args.plan_port),
                      WATTSCALE_PLAN_KEY=args.plan_signing_key, WATTSCALE_AGENT_ACCOUNT=args.agent_account)
    if args.namespace:
        os.environ["WATTSCALE_NAMESPACE"] = args.namespace
    if args.kubeconfig:
        os.environ["KUBECONFIG"] = args.kubeconfig
    import controller.cluster.handlers  # noqa: F401  (registers the handlers)

    registry = process_registry()
    if args.metrics_port:
        serve_metrics(args.metrics_listen, args.metrics_port, registry)

    async def operate() -> None:
        # --duration ends the run as a SIGTERM does (kopf's own handler), not through a stop flag: kopf leaves
        # the flag's waiter behind when a signal stops it, and the exit then waits for that waiter (a
        # threading.Event's forever, an asyncio one's 5 s)
        if args.duration is not None:
            asyncio.get_running_loop().call_later(args.duration, signal.raise_signal, signal.SIGTERM)
        await kopf.operator(standalone=True, clusterwide=True, memo=kopf.Memo(registry=registry),
                            liveness_endpoint=f"http://{args.metrics_listen}:{args.health_port}/healthz"
                            if args.health_port else None)

    STOP_ASKED.check()  # a stop whose raise an import swallowed, before kopf's own handlers (controller/startup.py)
    try:
        asyncio.run(operate())
    except OSError as exc:  # kopf gave up on the API (some 11 minutes of tries: handlers.API_RETRIES_S; aiohttp's
        # connection errors are OSErrors)
        raise ConfigError("operator", unreachable(client.configuration.host, exc)) from None
    return 0


def _agent(args: argparse.Namespace) -> int:
    from actuators import ActuatorError
    from actuators.kubernetes import api_client
    from actuators.nvml import NvmlDevices
    try:
        from controller.cluster.agent import NodeAgent
        from controller.cluster.plan_signing import PlanKeys
    except ImportError:  # cryptography (the plans' signatures) comes with the cluster extra, not the kubernetes one
        raise ConfigError("agent", "needs: pip install 'wattscale[cluster]'") from None

    _logging(args.log_level)
    node = args.node or os.environ.get("NODE_NAME", "")
    if not node:
        raise ConfigError("--node", "needs the node's name (or NODE_NAME from the downward API)")
    _operator_url(args.operator_url)
    _ports(args, ("metrics", args.metrics_port))  # the flags first: NVML's error hid them, and a GPU node ran on
    client = None
    try:
        client = api_client(args.kubeconfig)
        devices = NvmlDevices()
    except ActuatorError as exc:  # NVML's: the agent has no simulated GPUs, it belongs on GPU nodes only
        raise ConfigError("agent", str(exc) if client is None else f"{exc}; the agent sets this node's GPUs through "
                          "NVML, so it runs on GPU nodes only (deploy/kubernetes/base/agent.yaml selects "
                          "nvidia.com/gpu.present=true)") from exc
    except ImportError:
        raise ConfigError("agent", "needs: pip install 'wattscale[cluster]'") from None
    registry = process_registry()
    stop = Asked()
    for sig in (signal.SIGTERM, signal.SIGINT):  # before anything is served: a stop while it comes up is a stop
        signal.signal(sig, stop)
    STOP_ASKED.check()  # one before them whose raise was swallowed (controller/startup.py)
    last_step_end = [time.monotonic()]  # /healthz: a step within 60 s (its network waits: 10 s, a DNS outage's 20 more)
    if args.metrics_port:
        serve_metrics(args.metrics_listen, args.metrics_port, registry,
                      lambda: time.monotonic() - last_step_end[0] < max(60.0, 3 * args.interval_s))
    # a key file that does not read is no exit: the agent runs, every plan unverified, the GPUs at their safe caps
    agent = NodeAgent(node, devices, client, args.operator_url, args.token_file, PlanKeys(args.plan_verify_key),
                      registry, args.safe_cap_share, args.default_ttl_s,
                      report_timeout_s=min(5.0, max(1.0, args.interval_s)),  # a cut waits a step
                      restore_on_exit=args.restore_defaults_on_exit)
    deadline = None if args.duration is None else time.monotonic() + args.duration
    try:
        gpus = f"{devices.count()} GPUs"
    except ActuatorError as exc:  # the loop says it again, counted, and goes on: this line alone ended the agent
        gpus = f"no GPU count ({exc})"
    logging.getLogger("wattscale.agent").info("agent on node %s: %s", node, gpus)
    try:
        while not stop.asked and (deadline is None or time.monotonic() < deadline):
            try:
                plan = agent.fetch()
                agent.act(time.monotonic(), plan)  # the time after the fetch: its wait is the plan's age too
            except Exception as exc:  # a bug: the limits hold
                agent.failed("step", repr(exc))
            else:
                agent.failing.discard("step")
            if dropped := log_writer.take_dropped():  # standard error's reader stopped: the limits went on
                agent.metrics.errors.labels("log_dropped").inc(dropped)
            last_step_end[0] = time.monotonic()
            _nap(stop, args.interval_s, deadline)
    finally:
        agent.close()
    return 0


def add_cluster_commands(sub: Any) -> None:
    s = sub.add_parser("schema", help="JSON Schemas of the config, the specs and the custom resources, generated "
                       "from the settings' own classes")
    s.add_argument("name", nargs="?", help="one schema (config, optimize-spec, plan-packing, plan-allocation, "
                   "crd-powerpolicy, crd-llmservice, crd-nodepowerplan); default: all")
    s.add_argument("--crds", action="store_true", help="print the CustomResourceDefinitions as YAML")
    s.set_defaults(func=_schema)
    levels = ["DEBUG", "INFO", "WARNING", "ERROR"]
    o = sub.add_parser("operator", help="the Kubernetes operator: the control loop on the custom resources (kopf)")
    o.add_argument("--policy", default="default", help="the PowerPolicy acted on (default: default)")
    o.add_argument("--namespace", default="", help="the Lease's and cluster Events' namespace (default: "
                   "POD_NAMESPACE)")
    o.add_argument("--state-dir", default="/var/lib/wattscale", help="tuner state and the decision log (default "
                   "/var/lib/wattscale)")
    o.add_argument("--kubeconfig", default="", help="kubeconfig (default: in-cluster credentials in a pod, else "
                   "~/.kube/config)")
    o.add_argument("--metrics-listen", default="127.0.0.1", help="address of /metrics (default 127.0.0.1)")
    o.add_argument("--metrics-port", type=whole(0, 65535), default=9464, help="port of /metrics; 0: none (default "
                   "9464)")
    o.add_argument("--health-port", type=whole(0, 65535), default=0, help="port of kopf's /healthz; 0: none "
                   "(default 0)")
    o.add_argument("--plan-listen", default="127.0.0.1", help="address of the agents' plan endpoint and its "
                   "/readyz (default 127.0.0.1; in a pod 0.0.0.0, behind the operator's Service)")
    o.add_argument("--plan-port", type=whole(0, 65535), default=9466, help="port of the agents' plan "
                   "endpoint; 0: none (default 9466)")
    o.add_argument("--plan-signing-key", default=PLAN_KEY, metavar="FILE",
                   help="the Ed25519 private key (PEM) every plan served is signed with; needed with a plan port "
                   f"(default {PLAN_KEY})")
    o.add_argument("--agent-account", default="wattscale-agent", help="the node agents' ServiceAccount in the "
                   "operator's namespace: the only one served plans (default wattscale-agent)")
    o.add_argument("--log-level", choices=levels, default="INFO", help="log verbosity (default INFO)")
    o.add_argument("--duration", type=seconds, default=None, metavar="S", help="stop after S seconds, as on SIGTERM")
    o.set_defaults(func=_operator, daemon=True)
    a = sub.add_parser("agent", help="the node agent: applies this node's NodePowerPlan through NVML")
    a.add_argument("--node", default="", help="this node's name (default: NODE_NAME)")
    a.add_argument("--kubeconfig", default="", help="kubeconfig (default: in-cluster credentials in a pod, else "
                   "~/.kube/config)")
    a.add_argument("--operator-url", default="http://wattscale-operator.wattscale.svc:9466",
                   help="the operator's Service, which serves this node's plan (default "
                   "http://wattscale-operator.wattscale.svc:9466)")
    a.add_argument("--token-file", default="/var/run/secrets/wattscale/token",
                   help="the projected ServiceAccount token with the audience wattscale-operator, re-read at "
                   "every request (default /var/run/secrets/wattscale/token)")
    a.add_argument("--plan-verify-key", default=VERIFY_KEY, metavar="FILE",
                   help="the operator's Ed25519 public key (PEM; several, any one verifying, while a key is "
                   "rotated), read again when it changes: a plan that does not verify is not applied, and while "
                   f"no key reads the GPUs hold their safe caps (default {VERIFY_KEY})")
    a.add_argument("--interval-s", type=number(0.1, 60.0), default=2.0, help="seconds between steps (default 2)")
    a.add_argument("--safe-cap-share", type=number(0.0, 1.0), default=0.6,
                   help="safe cap where the plan has none: this share of each GPU's maximum limit (default 0.6)")
    a.add_argument("--default-ttl-s", type=number(1.0, 86400.0), default=60.0,
                   help="TTL of a plan that names none (default 60)")
    a.add_argument("--restore-defaults-on-exit", action="store_true",
                   help="put every GPU back at its default limit on exit (default: keep the limits, which the "
                   "budget counts, while the GPUs serve on: a rollout or an eviction lifted them unseen)")
    a.add_argument("--metrics-listen", default="127.0.0.1", help="address of /metrics and /healthz (default "
                   "127.0.0.1)")
    a.add_argument("--metrics-port", type=whole(0, 65535), default=9465, help="port of /metrics and /healthz (503 "
                   "once no step has ended in 60 s or 3 intervals); 0: none (default "
                   "9465)")
    a.add_argument("--log-level", choices=levels, default="INFO", help="log verbosity (default INFO)")
    a.add_argument("--duration", type=seconds, default=None, metavar="S", help="stop after S seconds")
    a.set_defaults(func=_agent, daemon=True)



