"""`wattscale tune`: the tuner run offline over recorded observations (a CSV), as the daemon runs it online."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from controller import strict_json
from controller.cli_analyze import as_flags
from controller.config_loader import ConfigError
from queuemodels import ModelInputError, ServiceParams, default_delta_ms, default_prior_ms, get_model
from queuemodels.accelerators import profile
from queuemodels.params import NAMES
from tuner.observation_file import ObservationFileError

PROGRESS_S = 10.0
"""Seconds of wall time between two of `tune`'s progress lines."""


class TuneProgress:
    """Says on stderr how far `tune` is, every PROGRESS_S of wall time (200 rows far from the prior ran minutes
    without a word)."""

    def __init__(self) -> None:
        self.started = self.said = time.monotonic()
        self.lines = 0

    def __call__(self, done: int, rows: int) -> None:
        now = time.monotonic()
        if now - self.said >= PROGRESS_S and done < rows:
            why = "" if self.lines else " (rows far from the prior are each refitted)"  # said once
            self.said, self.lines = now, self.lines + 1
            print(f"wattscale: tune: {done} of {rows} rows fitted in {now - self.started:.0f} s{why}", file=sys.stderr)


def _median_errors(summary: dict[str, float], none: str) -> str:
    """`ttft X, itl Y` of an error summary, or `none` where it holds no window (NaN: JSON's null)."""
    t, i = summary["median_ttft"], summary["median_itl"]
    return none if t != t and i != i else f"ttft {t}, itl {i}"


def tune(args: argparse.Namespace) -> int:
    from controller.tune_input import queue_not_in_ttft, read_bounded
    from tuner import PairFilter
    from tuner.offline import run

    if args.fit_power and not args.accelerator:
        raise ConfigError("--fit-power", "needs --accelerator (the power profile it fits)")
    if args.family == "gen2" and args.delta_ms is not None:
        raise ConfigError("--delta-ms", "gen2 has no per-token prefill term (its gamma is per token); leave it out")
    delta_ms = default_delta_ms(args.family) if args.delta_ms is None else args.delta_ms
    beta_ms, gamma_ms = (default_prior_ms(args.family, name) if getattr(args, name) is None else getattr(args, name)
                         for name in ("beta_ms", "gamma_ms"))
    step_terms = {n: getattr(args, n) for n in NAMES["step"][len(NAMES["gen1"]):]}  # beyond gen1's four
    if args.family != "step" and any(step_terms.values()):
        raise ConfigError("--family", f"{args.family} has no "
                          f"{', '.join('--' + n.replace('_', '-') for n, v in step_terms.items() if v)}; they are "
                          "the step family's")
    if 0 < args.budget_tokens < 1:  # a step schedules whole tokens
        raise ConfigError("--budget-tokens", f"must be 0 or at least 1, got {args.budget_tokens!r}")
    try:
        prior = ServiceParams(args.family, args.alpha_ms, beta_ms, gamma_ms, delta_ms, kv_tokens=args.kv_tokens,
                              expert_weight_share=args.expert_weight_share,
                              expert_token_share=args.expert_token_share, **step_terms)
        get_model(args.model).check(prior)
    except ModelInputError as exc:
        raise as_flags(exc, args) from None
    prof = profile(args.accelerator) if args.accelerator else None
    observations = read_bounded(Path(args.observations), prof)
    if rows := queue_not_in_ttft(observations):  # a unit slip read whole, and said nothing
        print(f"wattscale: tune: queue_ms at or past ttft_ms in {len(rows)} row{'s' * (len(rows) > 1)} "
              f"({', '.join(rows[:3])}{', ...' if len(rows) > 3 else ''}): the queueing time is part of TTFT, so "
              "those rows are read whole, their queue_ms left out", file=sys.stderr)
    need = max((o.in_tokens + o.out_tokens for o in observations if o.problem() is None), default=0.0)  # a row the
    # filter skips (NaN, inf) says nothing of the requests
    if 0 < args.kv_tokens < need:  # the engine would have refused such a request
        raise ModelInputError(f"--kv-tokens: {args.kv_tokens:.15g} holds no whole request of the longest rows "
                              f"({need:g} tokens in and out)")
    if prof is None and any(o.power_cap_w is not None for o in observations):
        raise ModelInputError("--accelerator: the observations carry power caps; name the accelerator")
    if prof is None and any(o.power_w is not None for o in observations):
        raise ModelInputError("--accelerator: the observations carry power readings; name the accelerator to fit "
                              "its draw curve")
    pair = PairFilter(prior, prof, fit_power=args.fit_power, queue_model=args.model)
    report = run(pair, observations, TuneProgress())
    verdicts = ", ".join(f"{k} {v}" for k, v in report["verdicts"].items())
    usable = [o for o in observations if o.problem() is None]
    read = [o for o in usable if o.draft_tokens > 0] or usable  # both over the rows that read drafts, where some do:
    # over all rows, a row without either read its tokens a step as 1 and none as drafts (a pair no row saw)
    for name, unread in (("tokens_per_step", 1.0), ("draft_tokens", 0.0)):
        values = [getattr(o, name) for o in read]
        if any(v != unread for v in values):  # analyze is to be given them
            report[name] = {"mean": round(sum(values) / len(values), 4), "min": min(values), "max": max(values),
                            "rows": len(values)}
    if pair.accepted == 0:  # warm-up rows count: they are fitted
        raise ObservationFileError(f"{args.observations}: no observation was usable ({verdicts}); nothing was fitted")
    if args.json:
        print(strict_json.dumps(report, indent=2))
    else:
        params = ", ".join(f"{k} {v:g}" for k, v in report["params"].items())
        ahead, fit = report["error_one_step_ahead"], report["error_in_sample"]
        n = report["observations"]
        print(f"{n} observation{'' if n == 1 else 's'} ({verdicts}): {params}")
        if "tokens_per_step" in report:
            k = report["tokens_per_step"]
            print(f"tokens a step read: mean {k['mean']:g} ({k['min']:g}-{k['max']:g}; speculative decoding): give "
                  f"analyze --tokens-per-step {k['mean']:g} (ITL here and there is a step's, as vLLM records it)")
        if "draft_tokens" in report:
            k = report["draft_tokens"]
            print(f"tokens drafted a step read: mean {k['mean']:g} ({k['min']:g}-{k['max']:g}): give analyze "
                  f"--draft-tokens {k['mean']:g}")
        if args.kv_tokens:
            print(f"fitted at a KV cache of {args.kv_tokens:.15g} tokens (read, not fitted: give it again as analyze's "
                  "--kv-tokens, a config variant's kv_cache_tokens)")
        print(f"relative error of mean TTFT and ITL (|predicted - observed| / observed, the median over windows): "
              f"one step ahead {_median_errors(ahead, 'no row scored (warm-up)')}; "
              f"in sample {_median_errors(fit, '-')}")
        if "error_in_sample_law" in report:
            print(f"the law alone, fitted to TTFT less the queueing time (queue_ms): in sample "
                  f"{_median_errors(report['error_in_sample_law'], '-')}")
        if "draw" in report:
            d = report["draw"]
            print(f"draw curve: busy share {d['busy_share']} (of peak - idle, drawn at any batch), batch half "
                  f"{d['batch_half']} (the batch that draws half the rest), from {d['windows']} "
                  f"window{'' if d['windows'] == 1 else 's'}; median "
                  f"relative error {d['median_abs_err_power']}")
    for name in ("beta_ms", "gamma_ms", "delta_ms"):  # a zero prior fixes its term at 0: said, not found out
        if getattr(prior, name) == 0.0 and not (name == "delta_ms" and args.family == "gen2"):
            print(f"wattscale: tune: {name} is 0 in the prior: its term is left out of the model, not fitted (a "
                  "small positive prior fits it)", file=sys.stderr)
    points = len({(o.rate_rps, o.in_tokens, o.out_tokens, o.max_batch, o.power_cap_w) for o in observations})
    return _usable(report, points)


UNUSABLE_ERROR = 1.0
"""The in-sample median relative error of mean TTFT or ITL past which a fit is refused as unusable: off by more
than the windows it was fitted to measured (a sound fit reads 0.01-0.4); where a `queue_ms` column has the law
fitted to TTFT less the queueing, the law's own (the chain's queueing error is not the fit's)."""
UNDER_BIAS = 1.0 / (1.0 + UNUSABLE_ERROR) - 1.0
"""The median signed error under which a fit is refused likewise: its predictions under 1 / (1 + UNUSABLE_ERROR) of
what the windows measured, the same factor the other way (an error of |predicted / measured - 1| never passes 1 that
way: times in microseconds, or ITL per request, fitted to an error of 0.998 and passed)."""
UNUSABLE_DRAW_ERROR = 0.5
"""The draw curve's median relative error past which it is refused: the curve spans the GPU's idle to its peak
draw, so readings it misses by half are not one GPU's (a sum over GPUs, another unit; a sound fit reads 0.01-0.1)."""


def _usable(report: dict[str, Any], points: int) -> int:
    """0, or 1 with a line on stderr where the fit cannot be used (its parameters are printed all the same, to see
    why); a note where too few rows, or operating points (`points`: rows alike in rate, tokens, batch and cap say
    one thing), were there to move most parameters off the prior."""
    fit = report.get("error_in_sample_law", report["error_in_sample"])  # the law's, where TTFT was split
    worst = max((v for v in (fit["median_ttft"], fit["median_itl"]) if v == v), default=0.0)
    low = min((v for v in (fit["bias_ttft"], fit["bias_itl"]) if v == v), default=0.0)
    n, k = report["observations"], len(report["params"])
    few = f"{n} observation{'' if n == 1 else 's'} for {k} parameters" if n < k else \
        f"{n} observations at {points} operating point{'' if points == 1 else 's'} for {k} parameters"
    short = min(n, points) < k
    why = (f"; {few}" if short else "") + (
        "; a parameter held at a bound above says which prior to move nearer the observations"
        if report.get("bounds_hit") else "")
    if worst > UNUSABLE_ERROR:
        print(f"wattscale: tune: the fit does not explain its own windows (in-sample median error "
              f"{_median_errors(fit, '-')}, over {UNUSABLE_ERROR:g}): its parameters are not usable{why}",
              file=sys.stderr)
        return 1
    if low < UNDER_BIAS:  # times far over the model's reach (another unit, ITL per request) read an error under 1
        print(f"wattscale: tune: the fit does not explain its own windows: it predicts the median window's "
              f"{'TTFT' if fit['bias_ttft'] == low else 'ITL'} at {1.0 + low:.3g} of what it measured (are ttft_ms "
              "and itl_ms in milliseconds, itl_ms the mean gap between a request's tokens?): its parameters are not "
              f"usable{why}", file=sys.stderr)
        return 1
    draw = report.get("draw", {}).get("median_abs_err_power")
    if draw is not None and draw > UNUSABLE_DRAW_ERROR:
        print(f"wattscale: tune: the draw curve does not explain the windows' power readings (median relative "
              f"error {draw}, over {UNUSABLE_DRAW_ERROR:g}): are power_w one GPU's mean draw in watts?",
              file=sys.stderr)
        return 1
    if short:
        print(f"wattscale: tune: {few}: they cannot pin most of them down (the values printed fit these rows, not "
              "necessarily the engine)", file=sys.stderr)
    return 0
