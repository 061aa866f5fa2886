"""`wattscale analyze`: the queue model's figures at one operating point, from the command line's numbers."""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys

from controller import strict_json
from controller.cli_args import FITTED_PROFILE_HELP
from controller.service_settings import MAX_RHO, MAX_STEP_MS, MAX_TOKENS
from queuemodels import (
    BatchChoice,
    Load,
    ModelInputError,
    PowerProfile,
    QueueModel,
    ServerShape,
    ServiceParams,
    Targets,
    best_batch_for_power,
    best_batch_for_rate,
    get_model,
)
from queuemodels.accelerators import profile
from queuemodels.operating_point import BLOCK_LIMIT
from queuemodels.params import NAMES
from queuemodels.types import kept_past_drafts
from tuner.draw import BUSY_BOUNDS, HALF_BOUNDS

ANALYZE_BOUNDS = {"alpha_ms": MAX_STEP_MS, "beta_ms": MAX_STEP_MS, "gamma_ms": MAX_STEP_MS, "delta_ms": MAX_STEP_MS,
                  "kappa_ms": MAX_STEP_MS, "epsilon_ms": MAX_STEP_MS, "rho": MAX_RHO, "budget_tokens": MAX_TOKENS,
                  "kv_tokens": 1e9, "in_tokens": MAX_TOKENS, "out_tokens": MAX_TOKENS, "rate_rps": 1e6,
                  "in_cv": 10.0, "out_cv": 10.0}
"""analyze's numbers: past these the models' arithmetic overflows (1e308 tokens), and no server is there."""
ANALYZE_FLOORS = {"alpha_ms": (0.0, False), "in_tokens": (1.0, True), "out_tokens": (1.0, True)}
"""Lower bounds other than 0 allowed (the bound, whether it is allowed), as the model's own checks hold them."""
FITTED_BOUNDS = {"prefill_sensitivity": (0.0, 100.0), "busy_share": BUSY_BOUNDS, "batch_half": HALF_BOUNDS}
"""The fitted profile's flags' ranges: the draw curve's are those `tune --fit-power` fits within."""


def analyze(args: argparse.Namespace) -> int:
    """`wattscale analyze`: one operating point's figures, after checking every number it is given. The model's
    messages name its fields (`rate_rps: ...`); the user typed flags, so they are named as flags."""
    try:
        return _analyze(args)
    except ModelInputError as exc:
        raise as_flags(exc, args) from None


def as_flags(exc: ModelInputError, args: argparse.Namespace) -> ModelInputError:
    """The model's error (`field: why`) with its field named as the flag the user typed, where it is one."""
    field, sep, rest = str(exc).partition(": ")
    return type(exc)(f"--{field.replace('_', '-')}: {rest}") if sep and field in vars(args) else exc


def _analyze(args: argparse.Namespace) -> int:
    for name, high in ANALYZE_BOUNDS.items():
        value = getattr(args, name)
        low, allowed = ANALYZE_FLOORS.get(name, (0.0, True))
        if value is None or not math.isfinite(value) or not (low <= value if allowed else low < value) or value > high:
            raise ModelInputError(f"--{name.replace('_', '-')}: must be a finite number {'>=' if allowed else '>'} "
                                  f"{low:g} and <= {high:g}, got {value}")
    if 0 < args.budget_tokens < 1:  # a step schedules whole tokens: 1e-9 answered a TTFT of 7e16 ms
        raise ModelInputError(f"--budget-tokens: must be 0 or at least 1, got {args.budget_tokens!r}")
    if 0 < args.kv_tokens < args.in_tokens + args.out_tokens:
        raise ModelInputError(f"--kv-tokens: {args.kv_tokens:g} holds no whole request of this load ({args.in_tokens:g}"
                              f" + {args.out_tokens:g} tokens); 0 leaves the cache unbounded")
    step_terms = NAMES["step"][len(NAMES["gen1"]):]  # the step family's terms beyond gen1's four
    if args.family != "step" and any(getattr(args, n) for n in step_terms):
        flags = ", ".join("--" + n.replace("_", "-") for n in step_terms)
        raise ModelInputError(f"--family: {args.family} has no {flags}; they are the step family's")
    params = ServiceParams(args.family, args.alpha_ms, args.beta_ms, args.gamma_ms, args.delta_ms,
                           **{n: getattr(args, n) for n in (*step_terms, "kv_tokens", "expert_weight_share",
                                                            "expert_token_share")})
    get_model(args.model).check(params)
    if why := kept_past_drafts(args.tokens_per_step, args.draft_tokens):
        raise ModelInputError(f"--tokens-per-step: {why}")
    load = Load(args.rate_rps, args.in_tokens, args.out_tokens, args.in_cv, args.out_cv, args.tokens_per_step,
                args.draft_tokens)
    shape = ServerShape(args.max_batch, None if args.max_queue < 0 else args.max_queue, args.power_cap_w)
    prof = profile(args.accelerator) if args.accelerator else None
    fitted = {flag.replace("-", "_"): value for flag in FITTED_PROFILE_HELP
              if (value := getattr(args, flag.replace("-", "_"))) is not None}
    if fitted and prof is None:
        raise ModelInputError(f"--{next(iter(fitted)).replace('_', '-')}: needs --accelerator, whose profile it sets")
    if fitted and prof is not None:
        prof = dataclasses.replace(prof, **fitted)  # checked as the profile checks its own (a NaN, a share of 1)
        for name, value in fitted.items():
            low, high = FITTED_BOUNDS[name]
            if not low <= value <= high:
                raise ModelInputError(f"--{name.replace('_', '-')}: must be in [{low:g}, {high:g}], got {value:g}")
    if args.power_cap_w is not None and prof is None:
        raise ModelInputError("--power-cap-w: needs --accelerator to know the power envelope")
    if args.power_cap_w is not None and prof is not None and not (
            prof.min_power_w <= args.power_cap_w <= prof.max_power_w):
        raise ModelInputError(f"--power-cap-w: must be within {args.accelerator}'s limits, {prof.min_power_w:g}-"
                              f"{prof.max_power_w:g} W, got {args.power_cap_w:g}")
    perf = get_model(args.model).analyze(params, load, shape, prof)
    out: dict[str, object] = {
        "ttft_ms": perf.ttft_ms, "itl_ms": perf.itl_ms, "ttft_p95_ms": perf.ttft_p95_ms, "itl_p95_ms": perf.itl_p95_ms,
        "ttft_p99_ms": perf.ttft_p99_ms, "itl_p99_ms": perf.itl_p99_ms, "throughput_rps": perf.throughput_rps,
        "mean_batch": perf.mean_batch, "utilization": perf.utilization, "block_probability": perf.block_probability,
        "power_w": None if math.isnan(perf.power_w) else perf.power_w,
        "saturation_rps": get_model(args.model).saturation_rps(params, load, shape, prof),
    }
    if args.ttft_slo_ms is not None or args.itl_slo_ms is not None:
        if args.ttft_slo_ms is None or args.itl_slo_ms is None:
            raise ModelInputError("--ttft-slo-ms and --itl-slo-ms: give both for sizing")
        targets = Targets(args.ttft_slo_ms, args.itl_slo_ms, args.slo_statistic)
        out["max_rate_rps"] = get_model(args.model).max_rate(params, load, shape, targets, prof)
        if args.batch_sizes:
            out.update(_batch_choices(args, params, load, shape, targets, prof))
    elif args.batch_sizes:
        raise ModelInputError("--batch-sizes: needs --ttft-slo-ms and --itl-slo-ms to choose by")
    print(strict_json.dumps(out, indent=2))
    if args.tokens_per_step > 1.0:  # the JSON's ITL figures, read as a token's, were 2.5 x too slow
        print(f"wattscale: analyze: itl_ms and its percentiles are a step's gap between outputs, of "
              f"{args.tokens_per_step:g} tokens (as vLLM's ITL histogram reads it); a token's is that over "
              f"{args.tokens_per_step:g}", file=sys.stderr)
    return 0


def _batch_choices(args: argparse.Namespace, params: ServiceParams, load: Load, shape: ServerShape,
                   targets: Targets, prof: PowerProfile | None) -> dict[str, object]:
    """Among --batch-sizes: the max batch that takes the most load within the targets, and (with an
    accelerator) the one that serves --rate-rps within them at the lowest draw (null when none does)."""
    model = get_model(args.model)
    by_rate = best_batch_for_rate(model, params, load, args.batch_sizes, shape.max_queue, targets, prof,
                                  shape.power_cap_w)
    out: dict[str, object] = {"best_batch_for_rate": {"max_batch": by_rate.max_batch or None,
                                                      "max_rate_rps": by_rate.max_rate_rps}}
    if prof is not None:
        by_power = best_batch_for_power(model, params, load, args.batch_sizes, shape.max_queue, targets, prof,
                                        shape.power_cap_w)
        out["best_batch_for_power"] = None if by_power is None or by_power.performance is None else {
            "max_batch": by_power.max_batch, "power_w": by_power.performance.power_w}
        if out["best_batch_for_power"] is None:  # a bare null had said nothing of why
            out["best_batch_for_power_why"] = _why_none(args, model, params, load, shape, targets, prof, by_rate)
    return out


def _why_none(args: argparse.Namespace, model: QueueModel, params: ServiceParams, load: Load, shape: ServerShape,
              targets: Targets, prof: PowerProfile, by_rate: BatchChoice) -> str:
    """Why no batch size serves --rate-rps within the targets: the best of them meets the latency targets there but
    turns more than BLOCK_LIMIT of requests away (its queue is full), or the rate is past what any takes."""
    sizes = f"no batch size of {sorted(args.batch_sizes)} serves {load.rate_rps:g} rps within the targets"
    if not by_rate.max_batch:
        return f"{sizes}: none meets them at any rate"
    at_rate = model.analyze(params, load, dataclasses.replace(shape, max_batch=by_rate.max_batch), prof)
    if at_rate.block_probability > BLOCK_LIMIT and at_rate.meets(targets):  # the latencies met, the rest turned away
        return (f"{sizes} without turning requests away: batch {by_rate.max_batch} meets them but turns "
                f"{at_rate.block_probability:.2%} away (a full queue of {shape.max_queue}; at most {BLOCK_LIMIT:.1%})")
    return f"{sizes}: the most any takes is {by_rate.max_rate_rps:.3g} rps (batch {by_rate.max_batch})"
