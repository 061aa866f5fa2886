"""Bounds and cross-field checks of the daemon's settings: what one field cannot say alone (inventory against
the simulated host, budget against idle draw, GPU indices, the simulator's work per wall second). Every limit here
keeps a cycle's work bounded; a value past one is a typo or an attack, never a fleet."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from actuators.vllm_servers import unit_file
from controller.budget.settings import CarbonSettings, FixedSettings, ScheduleSettings
from controller.config_loader import ConfigError, quoted, svc_path
from controller.endpoint_checks import check_endpoints
from controller.idle_floor import below_idle, idle_w
from controller.minimums import minimum_fits
from controller.simulator_checks import check_personalities, check_power_laws, check_service_fits
from queuemodels import ModelInputError, get_model
from queuemodels.accelerators import CATALOG
from simulator.llms import LLMS
from simulator.workload import CONTEXT_TOKENS

if TYPE_CHECKING:
    from controller.power_settings import PowerDomainSettings
    from controller.service_settings import ServiceSettings
    from controller.settings import Settings

MAX_QUEUE = 1_000_000
"""Largest waiting queue per replica a model or the simulator holds."""
MAX_GPUS = 1024
"""Largest GPU count of one host or inventory line."""
MAX_POWER_W = 1e8
"""The most watts any budget, domain limit or ramp may name: 100 MW is a unit mistake (mW for W)."""
MAX_REPLICAS = 1024
"""Largest replica bound of one service."""
MAX_CHOICES = 64
"""Longest list of candidate batch sizes or power levels (sizing work grows with their product)."""
MAX_SERVICES = 1000
"""Most services a config file or an optimize spec may list: a slow cycle's work and the fast tick's grow with them
(1,000 on the simulated host planned in 2.0 s with no fast tick late; 3,000 overran a 5-s slow period and held fast
ticks to 1.2 s, 20,000 to 2.4 s). A cluster's LLMServices are not held to it: one past it would refuse the whole
policy, where a bad LLMService is left out alone."""
MAX_SHAPES = 1024
"""Most (batch, power, clock) shapes the optimizer sizes per service and accelerator in one cycle."""
MAX_SIM_GPU_SECONDS = 1024.0
"""Most simulated GPU-seconds per wall-clock second (speed x num_gpus) the plant keeps up with in a fast tick:
measured on one core of a 2-core machine (`run --duration 30` on a config/sim.toml host scaled up), 128 GPUs at 8x
and 256 at 4x kept every tick, 256 GPUs at 8x skipped 23 of 30, and a stop took 6 s, at 8192 a minute."""
MAX_SIM_ARRIVALS = 8000.0
"""Most simulated arrivals per wall-clock second (speed x the services' rates): at 1,024 GPU-seconds a second,
8,000 kept every tick and 16,000 skipped 8 of 30."""
UNIT_NAME = re.compile(r"[A-Za-z0-9:_.\\][A-Za-z0-9:_.\\-]*(@[A-Za-z0-9:_\\-][A-Za-z0-9:_.\\-]*)?")
"""A systemd unit's name as `systemd_units` may give it: systemd.unit(5)'s characters, not '-' first (systemctl
reads it as an option), a template only with its instance (`vllm@1`, not `vllm@`)."""
MAX_UNIT_NAME = 240
"""Longest unit name with its type: the batch file's name (`<unit>.service.batch`) stays within 255 bytes."""

MAX_SIZINGS = 100_000
"""Most shapes a plan sizes in all: services x the accelerators each may run on x shapes. Each list is bounded on its
own, their product was not: 300 services at 1,024 shapes took 36 s and 560 MB, 200 on 7 accelerators past 2 minutes."""


def shape_count(batch_sizes: Sequence[int], power_levels: Sequence[float], clock_levels: Sequence[float]) -> int:
    """The (batch, power, clock) shapes a plan sizes per service and accelerator."""
    return len(batch_sizes) * len(power_levels) * len(clock_levels)


def check_sizings(services: list[tuple[str, int]], batch_sizes: Sequence[int], power_levels: Sequence[float],
                  clock_levels: Sequence[float], field: str) -> None:
    """A plan's sizing work, (service, accelerators it may run on) in order x its shapes each, at most MAX_SIZINGS;
    past it, the service that crosses the bound is named (`services[NAME].field`: a cluster's newest LLMService is
    left out alone, not the policy)."""
    shapes, pairs = shape_count(batch_sizes, power_levels, clock_levels), 0
    for name, accelerators in services:
        pairs += accelerators
        if pairs * shapes > MAX_SIZINGS:
            raise ConfigError(f"services[{name}].{field}", f"brings the shapes a plan sizes to {pairs * shapes} "
                              f"({pairs} service x accelerator pairs so far, {shapes} shapes each: batch_sizes x "
                              f"power_levels x clock_levels); at most {MAX_SIZINGS}: fewer services, accelerators, "
                              "batch sizes or levels")


def domain_idle_w(s: Settings, gpus: tuple[int, ...], empty_w: Mapping[str, float] | None = None) -> float:
    """What these GPUs draw with no replica, each as its type (`Settings.gpu_types`, else the first accelerator's), at
    `empty_w`'s draw for its type where given (read off free GPUs), else the catalogue's."""
    return sum((empty_w or {}).get(k, CATALOG[k].empty_draw_w) for k in s.gpu_types(gpus))


def domain_floor_w(s: Settings, gpus: tuple[int, ...], empty_w: Mapping[str, float] | None = None) -> float:
    """What these GPUs count for with no replica, as the plan counts a free GPU (optimizer.Problem.floor_w): their
    draw then (`domain_idle_w`), or in caps mode their lowest limits."""
    return domain_lowest_limits_w(s, gpus) if s.power.mode == "caps" else domain_idle_w(s, gpus, empty_w)


def domain_lowest_limits_w(s: Settings, gpus: tuple[int, ...]) -> float:
    """The sum of these GPUs' lowest power limits, each as its type: what they draw at least, busy, whatever the
    governor sets."""
    return sum(CATALOG[k].min_power_w for k in s.gpu_types(gpus))


def domain_room_w(s: Settings, d: PowerDomainSettings, empty_w: Mapping[str, float] | None = None) -> float:
    """What the plan may put in a domain: its line scaled as the site's budget is for planning (headroom, and in
    predicted mode the plan's margin: shares, so a budget source's value changes none of it), less what its GPUs
    count for with no replica (`domain_floor_w`)."""
    return d.limit_w * s.power.planned_w() / s.power.budget_w - domain_floor_w(s, d.gpus, empty_w)


def check_settings(s: Settings) -> None:
    """The cross-field checks; raises ConfigError naming the field (with its service path) and the values. A config
    file must name a service (`settings_from`); an operator whose LLMServices are all left out governs with none."""
    if not s.accelerators:
        raise ConfigError("accelerators", "at least one accelerator type is required")
    _unique(s)
    o = s.optimizer
    check_sizings([(svc.name, len(s.variants_of(svc))) for svc in s.services], o.batch_sizes, o.power_levels,
                  o.clock_levels, "variants")
    _one_prior_per_engine(s)
    _backends(s)
    check_endpoints(s)
    if s.optimizer.time_limit_s >= s.daemon.slow_interval_s:
        default = " (its default)" if s.optimizer.time_limit_s == type(s.optimizer).time_limit_s else ""
        raise ConfigError("optimizer.time_limit_s", f"{s.optimizer.time_limit_s:g} s{default} must be shorter than "
                          f"daemon.slow_interval_s ({s.daemon.slow_interval_s:g} s): lower the one or raise the other")
    if s.uses_sim:
        _simulated_host(s)
    minimum_fits(s.accelerators, s.services, [[v.accelerator for v in s.variants_of(svc)] for svc in s.services])
    idle = idle_w(s)
    if s.power.budget_w < idle:
        raise below_idle("power.budget_w", s.power.budget_w, idle)
    for d in s.power.domains:
        if (room_w := domain_room_w(s, d)) < 0:
            idle = domain_floor_w(s, d.gpus)
            what = "lowest limits (caps mode)" if s.power.mode == "caps" else "idle draw"
            raise ConfigError(f"power.domains[{d.name}].limit_w", f"{d.limit_w:g} W leaves {room_w + idle:.0f} W to "
                              f"plan with (less headroom and, in predicted mode, plan_margin), below its GPUs' {what}, "
                              f"{idle:g} W")


def check_budget_sources(s: Settings) -> None:
    """The budgets a config states outright (the safe budget, a fixed source's, a schedule's, a carbon curve's
    points) at or above the fleet's idle draw, as power.budget_w is: below it every plan is a power emergency from
    the first tick (a curve's 500-W point ran the site there with no word)."""
    if s.budget is None:
        return
    check_endpoints(s)  # again, with the budget's endpoints, which join the settings after check_settings
    idle, stated = idle_w(s), [("power.budget.safe_budget_w", s.budget.safe_budget_w)]
    for i, (_, src) in enumerate(s.budget.sources):
        at = f"power.budget.sources[{i}]"
        if isinstance(src, FixedSettings):
            stated.append((f"{at}.budget_w", src.budget_w))
        elif isinstance(src, ScheduleSettings):
            stated.append((f"{at}.default_budget_w", src.default_budget_w))
            stated += [(f"{at}.rules[{j}].budget_w", rule.budget_w) for j, rule in enumerate(src.rules)]
        elif isinstance(src, CarbonSettings):
            stated += [(f"{at}.curve[{j}]", watts) for j, (_, watts) in enumerate(src.curve)]
    for where, budget_w in stated:
        if budget_w < idle:
            raise below_idle(where, budget_w, idle)


def _unique(s: Settings) -> None:
    names = [a.name for a in s.accelerators]
    if dup := next((n for i, n in enumerate(names) if n in names[:i]), None):
        raise ConfigError(f"accelerators[{dup}].name", f"duplicate accelerator {quoted(dup)}")
    named: dict[str, str] = {}  # by the name in lower case: a Deployment's default name and the operator's objects
    owner: dict[int, str] = {}
    scaled: dict[str, str] = {}  # Deployment -> the variant that scales it (two: one drained takes the other's away)
    for svc in s.services:
        if svc.name.lower() in named:
            other = named[svc.name.lower()]
            raise ConfigError(f"{svc_path(svc.name)}.name", f"duplicate service name {quoted(svc.name)}" + (
                "" if other == svc.name else f" (as {quoted(other)}: names are compared in lower case, as the "
                "Kubernetes objects named after them are)"))
        named[svc.name.lower()] = svc.name
        _variants(s, svc)
        for v in s.variants_of(svc):
            where = f"{svc_path(svc.name)}" + (f".variants[{v.accelerator}]" if svc.variants else "")
            if (deployment := s.deployment_of(svc, v)) in scaled:
                raise ConfigError(f"{where}.deployment", f"{quoted(deployment)} is {scaled[deployment]}'s too: each "
                                  "variant scales a Deployment of its own")
            scaled[deployment] = where
            for g in v.gpus:
                if g in owner:
                    raise ConfigError(f"{where}.gpus", f"GPU {g} is listed twice" if owner[g] == where
                                      else f"GPU {g} is already {owner[g]}'s")
                owner[g] = where
            per = next((a.gpus_per_replica for a in s.accelerators if a.name == v.accelerator), 1)
            if v.gpus and len(v.gpus) < svc.min_replicas * per:  # its replicas take these in order: the others none
                raise ConfigError(f"{where}.gpus", f"{len(v.gpus)} listed, fewer GPUs than its min_replicas need "
                                  f"({svc.min_replicas} x {per} a replica)")


def _one_prior_per_engine(s: Settings) -> None:
    """Services that run one model on one accelerator type share its tuned model (the tuner keys it so): a second
    prior for it would be dropped without a word, nor may a term the queue model has not be (a routing, mm1k-batch)."""
    first: dict[tuple[str, str], ServiceSettings] = {}
    for svc in s.services:
        try:
            get_model(s.optimizer.queue_model).check(svc.prior.params())
        except ModelInputError as exc:
            name, _, why = str(exc).partition(": ")
            raise ConfigError(f"{svc_path(svc.name)}.prior.{name}", f"optimizer.queue_model {why}") from None
        for v in s.variants_of(svc):
            other = first.setdefault((svc.model, v.accelerator), svc)
            if other.prior != svc.prior:
                raise ConfigError(f"{svc_path(svc.name)}.prior", f"differs from {svc_path(other.name)}'s, which runs "
                                  f"{svc.model} on {v.accelerator} too: they share one tuned model, so one prior")


def _variants(s: Settings, svc: ServiceSettings) -> None:
    """Each variant on a configured accelerator, once; targets per variant, or for the service, not both."""
    where = f"{svc_path(svc.name)}.variants"
    kinds = [v.accelerator for v in svc.variants]
    if svc.variants and (svc.gpus or svc.deployment):
        raise ConfigError(where, "give `gpus` and `deployment` per variant, not for the service")
    known, domains = {a.name for a in s.accelerators}, [d.name for d in s.power.domains]
    types = s.simulator.host_types if s.uses_sim else []  # a real host's types per GPU only NVML tells
    for v in svc.variants:
        if v.accelerator not in known:
            raise ConfigError(where, f"accelerator {quoted(v.accelerator)} is not among the accelerators "
                                     f"{sorted(known)}")
        if kinds.count(v.accelerator) > 1:
            raise ConfigError(where, f"accelerator {quoted(v.accelerator)} twice")
        if v.domain and v.gpus:
            raise ConfigError(f"{where}[{v.accelerator}].domain", "give the variant's GPUs or its domain, not both "
                              "(its GPUs say which domains they are in)")
        if v.domain and v.domain not in domains:
            raise ConfigError(f"{where}[{v.accelerator}].domain", f"unknown domain {quoted(v.domain)}, expected one of "
                              f"power.domains {domains}")
        on = {types[g] for d in s.power.domains if d.name == v.domain for g in d.gpus if g < len(types)}
        if on and v.accelerator not in on:  # its replicas charged to a rack its GPUs are not in
            raise ConfigError(f"{where}[{v.accelerator}].domain", f"{quoted(v.domain)} holds {', '.join(sorted(on))} "
                              f"GPUs of the simulated host, no {v.accelerator}")


def _backends(s: Settings) -> None:
    for name in ("power", "clocks"):
        if getattr(s.actuators, name) == "nvml" and s.telemetry.gpu_source in ("dcgm", "kepler"):
            raise ConfigError(f"actuators.{name}", f'"nvml" sets this host\'s GPUs by NVML index, but gpu_source = '
                              f'"{s.telemetry.gpu_source}" numbers the cluster\'s GPUs by position; use gpu_source = '
                              '"nvml" on a host')
    locked = sorted(c for c in s.optimizer.clock_levels if c < 1.0)
    if locked and s.actuators.clocks == "none":
        raise ConfigError("optimizer.clock_levels", f"{locked} lock clocks below the maximum, but actuators.clocks "
                          '= "none"; name a clock backend ("nvml", "dry-run", "sim") or keep clock_levels = [1.0]')
    if s.actuators.batch == "vllm":
        for svc in s.services:
            where = svc_path(svc.name)
            if not svc.vllm_ports:
                raise ConfigError(f"{where}.vllm_ports", 'required with batch = "vllm"')
            if s.actuators.vllm_runner == "child" and not svc.vllm_command:
                raise ConfigError(f"{where}.vllm_command", 'required with vllm_runner = "child"')
            if s.actuators.vllm_runner == "systemd" and len(svc.systemd_units) != len(svc.vllm_ports):
                raise ConfigError(f"{where}.systemd_units", "needs one unit per entry of vllm_ports")
            for unit in svc.systemd_units:  # a name systemd takes: '/x' left the batch folder, '-x' an option
                if not UNIT_NAME.fullmatch(unit) or len(unit_file(unit)) > MAX_UNIT_NAME:
                    raise ConfigError(f"{where}.systemd_units", f"{quoted(unit)} is no unit name (letters, digits, "
                                      f"':', '_', '.', '\\' or '-', not '-' first, at most {MAX_UNIT_NAME} with its "
                                      "type; a template's with its instance after '@')")
    if s.telemetry.vllm_source == "scrape":
        for svc in s.services:
            if not svc.metrics_urls:
                raise ConfigError(f"{svc_path(svc.name)}.metrics_urls", 'required with vllm_source = "scrape"')


def _simulated_host(s: Settings) -> None:
    """The inventory is the simulated host's GPUs, the services' GPUs are among them, and the plant's work
    per wall-clock second stays within what a fast tick can do."""
    sim, types = s.simulator, s.simulator.host_types
    where = "simulator.gpu_types" if sim.gpu_types else "simulator.gpu_type"
    made_of = where if sim.gpu_types else f"{where} x num_gpus"
    unknown = sorted(set(types) - {a.name for a in s.accelerators})
    if unknown:
        raise ConfigError(where, f"{unknown[0]} must be one of the configured accelerators")
    for a in s.accelerators:
        host = types.count(a.name)
        if a.count != host:
            raise ConfigError(f"accelerators[{a.name}].count", f"{a.count} is not the simulated host's {host} "
                              f"{a.name} GPUs ({made_of}); the two must match")
    for svc in s.services:
        if svc.model not in LLMS:
            raise ConfigError(f"{svc_path(svc.name)}.model", f"{quoted(svc.model)} is not a model the simulator "
                              f"serves; expected one of {sorted(LLMS)} (a simulated host runs every service's "
                              "engines, whatever telemetry.vllm_source reads)")
        check_service_fits(svc_path(svc.name), svc.model, [v.accelerator for v in s.variants_of(svc)],
                           svc.in_tokens, svc.out_tokens)
        if svc.in_tokens + svc.out_tokens > CONTEXT_TOKENS:  # its engines cut there: a plan for requests never sent
            name = "in_tokens" if svc.in_tokens > CONTEXT_TOKENS else "out_tokens"
            raise ConfigError(f"{svc_path(svc.name)}.{name}", f"in_tokens + out_tokens is {svc.in_tokens:g} + "
                              f"{svc.out_tokens:g}, past the simulated engines' context of {CONTEXT_TOKENS} tokens")
    check_personalities("simulator.personalities", sim.personalities, {svc.model for svc in s.services}, set(types))
    check_power_laws("simulator.power_laws", sim.power_laws, set(types))
    n = len(types)
    for at, gpus in [*((f"{svc_path(svc.name)}.gpus", svc.gpus) for svc in s.services),
                     *((f"power.domains[{d.name}].gpus", d.gpus) for d in s.power.domains)]:
        if outside := [g for g in gpus if g >= n]:
            raise ConfigError(at, f"GPU {outside[0]} is not on the simulated host (GPUs 0..{n - 1})")
    if sim.speed * n > MAX_SIM_GPU_SECONDS:
        raise ConfigError("simulator.speed", f"{sim.speed:g} x {n} GPUs is more than "
                          f"{MAX_SIM_GPU_SECONDS:g} simulated GPU-seconds per second")
    arrivals = sim.speed * sum(svc.sim.rate_rps for svc in s.services)
    if arrivals > MAX_SIM_ARRIVALS:  # named where the most arrivals come from, unless the speed multiplies them
        top = max(s.services, key=lambda svc: svc.sim.rate_rps)
        at = "simulator.speed" if arrivals / sim.speed <= MAX_SIM_ARRIVALS else f"{svc_path(top.name)}.sim.rate_rps"
        raise ConfigError(at, f"{sim.speed:g} x the services' sim.rate_rps is {arrivals:g} simulated arrivals per "
                          f"second, more than {MAX_SIM_ARRIVALS:g} ({top.name}'s {top.sim.rate_rps:g} the most)")
