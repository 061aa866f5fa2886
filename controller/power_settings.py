"""The power settings: the site's budget, the governor's margins and ramps, and the power domains under the site
(racks, PDUs), with what they must say together: names once, limits under the site's, domains that nest."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from controller.config_loader import UNIQUE, ConfigError, check_name, check_range, quoted
from controller.settings_checks import MAX_GPUS, MAX_POWER_W

MIN_RAMP_W_PER_S = 1.0
"""The least ramp limit: a limit is set to the watt, and a site held to less than one a second is frozen."""


@dataclass(frozen=True)
class PowerDomainSettings:
    name: str
    """Names the domain (a rack, a PDU, a breaker) in logs and errors."""
    limit_w: float
    """What the domain's GPUs may draw together, in watts; the governor keeps its headroom under it too."""
    gpus: tuple[int, ...] = field(metadata={**UNIQUE, "schema": {"minItems": 1,
                                                                 "items": {"minimum": 0, "maximum": MAX_GPUS - 1}}})
    """GPU indices (NVML order) fed by this domain; a GPU may be in several only where they nest (a PDU inside
    its rack), never in two racks."""

    def check(self, where: str) -> None:
        check_name(self.name, where)
        check_range(self, where, ("limit_w",), 0.0, MAX_POWER_W, low_open=True)
        if not self.gpus or any(not 0 <= g < MAX_GPUS for g in self.gpus):
            raise ConfigError(f"{where}.gpus", f"must list GPU indices in 0..{MAX_GPUS - 1}, got {list(self.gpus)}")
        twice = sorted({g for g in self.gpus if self.gpus.count(g) > 1})
        if twice:  # each GPU's idle draw would be counted once a listing
            raise ConfigError(f"{where}.gpus", f"GPU {twice[0]} is listed more than once, got {list(self.gpus)[:16]}")


MAX_DOMAINS = 512
"""Most power domains a config or policy holds (a site's racks, PDUs and breakers): their nesting is checked pair
by pair, and 30,000 took check-config, `run` and each reload past two minutes."""


def check_domain_lines(names: Sequence[str], where: str) -> None:
    """At most MAX_DOMAINS domains, each named once. A limit above the site's budget is no error: the
    site's line binds there, and a breaker keeps its rating through a budget cut (refused, a reload that cut the
    budget under a rack's line failed unless the racks were rewritten too, where a budget source's cut went
    through)."""
    at = f"{where}.domains" if where else "domains"
    if len(names) > MAX_DOMAINS:
        raise ConfigError(at, f"at most {MAX_DOMAINS} domains, got {len(names)}")
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise ConfigError(f"{at}[{name}].name", f"duplicate domain {quoted(name)}")
        seen.add(name)


def check_domains_nest(domains: Sequence[PowerDomainSettings], where: str) -> None:
    """Domains form a tree under the site: two domains sharing a GPU only where one holds the other (a PDU inside
    its rack; a GPU in two racks is refused), and an inner domain's limit no higher than the one that holds it
    (two over the same GPUs hold each other: the lower line binds)."""
    at = f"{where}.domains" if where else "domains"
    sets = [set(d.gpus) for d in domains]
    for i, d in enumerate(domains):
        inner = sets[i]
        for other, outer in zip(domains[:i], sets[:i], strict=True):
            shared = sorted(inner & outer)
            if not shared or inner == outer:
                continue
            if not (inner <= outer or outer <= inner):
                raise ConfigError(f"{at}[{d.name}].gpus", f"GPU {shared[0]} is in domain {quoted(other.name)} "
                                  "too, and neither holds the other (a GPU is fed by one rack; domains may only nest)")
            small, big = (d, other) if inner <= outer else (other, d)
            if small.limit_w > big.limit_w:
                raise ConfigError(f"{at}[{small.name}].limit_w", f"{small.limit_w:g} W is above "
                                  f"{big.limit_w:g} W of domain {quoted(big.name)}, which holds it")


@dataclass(frozen=True)
class PowerSettings:
    budget_w: float
    """Site power budget for all managed GPUs, in watts."""
    mode: Literal["predicted", "caps"] = "predicted"
    """Budget the optimizer's predicted draw (each free GPU at its draw with no replica), or (conservative) the sum of
    the caps (each free GPU at its lowest limit, where the governor holds it)."""
    headroom: float = 0.03
    """Share of the budget the governor keeps free against measurement noise."""
    release_below: float = 0.85
    """The governor lifts emergency caps once measured draw is below this share of the budget."""
    plan_margin: float = 0.0
    """In predicted mode, the share of budget x (1 - headroom), where the governor starts cutting, that the
    plan's predicted mean draw leaves free (for a draw model known to read low). 0: the plan may reach the
    governor's threshold, which holds the budget tick by tick whatever the draw does; a margin sheds the
    lowest priorities' replicas for watts the site may never draw."""
    ramp_up_w_per_s: float = 0.0
    """Most the site's draw may rise per second (a utility's or a generator's ramp limit), held whatever the
    load does: the limits in force never sum above the draw read (a GPU at its cap counted at its limit) plus
    one tick's ramp. 0: no ramp limit; else at least 1 W a second (a limit is set to the watt)."""
    ramp_down_w_per_s: float = 0.0
    """Most the governor's own lowering of limits (a smaller cap planned, room taken back) may take off the
    site's draw per second; a budget drop (the site or a domain over its line) is cut at once all the same, and
    a load that falls cannot be held up. 0: no limit; else at least 1 W a second."""
    domains: tuple[PowerDomainSettings, ...] = ()
    """`[[power.domains]]`: groups of GPUs (a rack, a PDU) with limits of their own, each held by the governor
    as the site is, lowest priority first within the domain, even where the site has room."""

    def check(self, where: str) -> None:
        check_range(self, where, ("budget_w",), 0.0, MAX_POWER_W, low_open=True)
        check_range(self, where, ("ramp_up_w_per_s", "ramp_down_w_per_s"), 0.0, MAX_POWER_W)
        for name in ("ramp_up_w_per_s", "ramp_down_w_per_s"):  # 1e-300 held every GPU at its floor, said nowhere
            if 0 < (v := getattr(self, name)) < MIN_RAMP_W_PER_S:
                raise ConfigError(f"{where}.{name}", f"must be 0 (no ramp limit) or at least {MIN_RAMP_W_PER_S:g} W "
                                  f"a second (a limit is set to the watt), got {v:g}")
        check_domain_lines([d.name for d in self.domains], where)
        check_domains_nest(self.domains, where)
        if not 0 <= self.headroom < 0.5:
            raise ConfigError(f"{where}.headroom", f"must be in [0, 0.5), got {self.headroom}")
        if not 0 < self.release_below < 1:
            raise ConfigError(f"{where}.release_below", f"must be in (0, 1), got {self.release_below}")
        if not 0 <= self.plan_margin < 0.5:
            raise ConfigError(f"{where}.plan_margin", f"must be in [0, 0.5), got {self.plan_margin}")

    def line_w(self, limit_w: float) -> float:
        """The line the governor holds a limit to (the site's budget, a domain's): the limit less the headroom."""
        return limit_w * (1.0 - self.headroom)

    def planned_w(self) -> float:
        """The budget the optimizer plans against: the governor's threshold for caps (they cannot be passed,
        and the governor holds the limits' sum under it), and for predicted means that less the plan's margin."""
        return self.line_w(self.budget_w) * (1.0 if self.mode == "caps" else 1.0 - self.plan_margin)
