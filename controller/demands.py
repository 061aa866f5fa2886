"""The analyzer's half of a plan: each service's demand as the optimizer reads it.

The fitted parameters and draw curve of each variant, the estimated load and the learnt SLO margin, each held
by the sizing basis while it only jitters, so the optimizer's caches (and the plan) hold from one cycle to the
next while nothing has really moved.
"""

from __future__ import annotations

from dataclasses import replace

from controller.optimizer import Assignment, ServiceDemand
from controller.service_settings import ServiceSettings
from controller.sizing_basis import SizingBasis
from queuemodels import Load, PowerProfile, ServiceParams, Targets
from queuemodels.power import natural_draw_w
from tuner import Tuner, pair_key


def service_demand(svc: ServiceSettings, load: Load, margin: float, current: Assignment, variants: tuple[str, ...],
                   kv_tokens: dict[str, float], tuner: Tuner, basis: SizingBasis,
                   gpus: dict[str, tuple[int, ...]], serving: int | None = None) -> ServiceDemand:
    """`svc`'s demand at `load` (its token mix held by `basis`) with its targets less `margin`, on `variants` (the
    types it has a replica target on, and no other), whose KV-cache tokens `kv_tokens` gives (read, not fitted);
    `gpus`: where its replicas run per type (domain_rooms.placements); `serving`: the replicas its last window
    read. The types it does not run on whose pair no
    window has measured are marked `untried`: their parameters are its one prior, written for whichever GPU."""
    params: dict[str, ServiceParams] = {}
    profiles: dict[str, PowerProfile] = {}
    for a in variants:
        key = pair_key(svc.model, a)
        fitted = tuner.params(svc.model, a)
        p = fitted[0] if fitted else svc.prior.params()
        held = p.with_vector(basis.hold(key, p.as_vector()))
        params[a] = replace(held, kv_tokens=kv_tokens[a])
        if fitted is not None and fitted[1] is not None:
            # The pair's draw curve (and cap sensitivity) as fitted, held while what it predicts holds.
            prof = fitted[1]
            signature = (*(natural_draw_w(prof, float(b)) for b in (16, 64, 256)), prof.prefill_sensitivity)
            profiles[a] = basis.keep(f"{key}|power", signature, prof)
    in_tokens, out_tokens, per_step, drafts = basis.hold(svc.name, (load.in_tokens, load.out_tokens,
                                                                    load.tokens_per_step, load.draft_tokens))
    untried = frozenset(a for a in variants if a != current.accelerator and not tuner.measured(svc.model, a))
    return ServiceDemand(svc.name, svc.priority, Targets(svc.ttft_ms, svc.itl_ms, svc.statistic, margin),
                         svc.load(load.rate_rps, in_tokens, out_tokens, per_step, drafts), params, svc.min_replicas,
                         svc.max_replicas, svc.max_queue, current, profiles, gpus, untried, serving=serving)
