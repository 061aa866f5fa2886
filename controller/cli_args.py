"""The command line's argument types and the options of `analyze`, `tune` and `plan`: every option bounded
where it is read and helped with its unit, and a bad one is one line (`wattscale: error: ...`), exit 2."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from typing import NoReturn

from actuators.vllm_servers import MAX_BATCH
from controller.planner.packing_spec import MAX_REQUESTS
from controller.service_settings import MAX_RHO, MAX_SLO_MS, MAX_STEP_MS, MAX_TOKENS
from controller.settings_checks import MAX_QUEUE
from controller.telemetry.base import shortened
from queuemodels import (
    DEFAULT_MAX_QUEUE,
    DEFAULT_MODEL,
    FAMILIES,
    MODELS,
    MOST_WEIGHT_SHARE,
    default_delta_ms,
    default_prior_ms,
)
from queuemodels.accelerators import CATALOG
from tuner.observation_file import plain

PARAMS_HELP = {
    "alpha-ms": "decode step base time (ms)",
    "beta-ms": "decode step time per sequence in the batch (ms; gen2: per token of a sequence)",
    "gamma-ms": "prefill base time (ms; gen2: per sequence per token of context)",
    "delta-ms": "prefill time per prompt token (ms; gen1 and step)",
}
STEP_HELP = {
    "kappa-ms": "decode time per sequence per token of context (ms)",
    "epsilon-ms": "fixed time of a step that carries a prompt (ms)",
    "rho": "decode compute per sequence relative to a prompt token's (0: affine decode)",
    "budget-tokens": "tokens one step schedules, vLLM's max_num_batched_tokens (0: no limit)",
}
"""The step family's terms beyond gen1's four, as `tune` prints them (docs/queue-models.md)."""
ACCELERATORS = ", ".join(sorted(CATALOG))


class Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line (usage is on --help)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def number(low: float, high: float, low_open: bool = False) -> Callable[[str], float]:
    """An argparse type: a finite number in [low, high] ((low, high] with low_open), refused as written (1e999 parses
    as inf); with both bounds infinite, any finite number (`finite`)."""

    def parse(text: str) -> float:
        try:
            value = float(plain(text))
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
        if not (math.isfinite(value) and (low < value if low_open else low <= value) and value <= high):
            bounded = math.isfinite(low) or math.isfinite(high)
            bounds = f" in {'(' if low_open else '['}{low:g}, {high:g}]" if bounded else ""
            raise argparse.ArgumentTypeError(f"must be a finite number{bounds}, got {text!r}")
        return value

    return parse


finite = number(-math.inf, math.inf)
"""An argparse type: a finite number (its range is checked later, by the command)."""


def directory(text: str) -> str:
    """An argparse type: a directory to write into, named (an empty name wrote into the working directory)."""
    if not text.strip():
        raise argparse.ArgumentTypeError(f"must name a directory, got {text!r}")
    return text


def file(text: str) -> str:
    """An argparse type: a file to read, named (an empty name read as the working directory, "'.': not a
    regular file")."""
    if not text.strip():
        raise argparse.ArgumentTypeError(f"must name a file, got {text!r}")
    return text


def accelerator(text: str) -> str:
    """An argparse type: an accelerator of the catalogue, by name in any case (h100-sxm is H100-SXM)."""
    named = {name.lower(): name for name in CATALOG}.get(text.lower())
    if named is None:
        raise argparse.ArgumentTypeError(f"unknown {text!r}, expected one of {ACCELERATORS}")
    return named


def whole(low: int, high: int) -> Callable[[str], int]:
    """An argparse type: a whole number in low..high."""

    def parse(text: str) -> int:
        try:
            value = int(plain(text))
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a whole number, got {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be in {low}..{high}, got {text!r}")
        return value

    return parse


def seconds(text: str) -> float:
    """--duration: a finite number of seconds > 0 (nan or inf would never stop)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number of seconds, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a finite number of seconds > 0, got {text!r}")
    return value


def batch_sizes(text: str) -> list[int]:
    """--batch-sizes: a comma-separated list of whole numbers in 1..MAX_BATCH."""
    given = shortened(repr(text), 80)  # a list of thousands was echoed whole
    try:
        sizes = [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be whole numbers separated by commas, got {given}") from None
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"every batch size must be >= 1, got {given}")
    if max(sizes) > MAX_BATCH or len(sizes) > 64:
        raise argparse.ArgumentTypeError(f"at most 64 batch sizes, each <= {MAX_BATCH}, got {given}")
    if len(set(sizes)) < len(sizes):  # as a config's and a spec's batch_sizes are
        raise argparse.ArgumentTypeError(f"each batch size once, got {given}")
    return sizes


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=DEFAULT_MODEL, choices=sorted(MODELS),
                   help="queue model: mm1k-cb (continuous batching, vLLM) or mm1k-batch (llm-inferno)")
    p.add_argument("--family", default="step", choices=list(FAMILIES),
                   help="service-time family of the parameters: step (the default: gen1 in vLLM's tokens per step, "
                        "with a context cost, a per-prefill-step cost, a convex decode and a token budget), gen1 or "
                        "gen2 (llm-inferno's; docs/queue-models.md)")


def add_expert_args(p: argparse.ArgumentParser) -> None:
    """A mixture of experts' routing, read off its model card (step family, mm1k-cb; not fitted)."""
    p.add_argument("--expert-weight-share", type=number(0.0, MOST_WEIGHT_SHARE), default=0.0, metavar="SHARE",
                   help="mixture of experts: share of the parameters in routed experts, at most 0.99; off the card, "
                        "(total - active) / (total x (1 - token share)): OLMoE's 6.9B, 1.3B active, 8 of 64 experts "
                        "give 0.93; default 0, a dense model")
    p.add_argument("--expert-token-share", type=number(0.0, 1.0), default=0.0, metavar="SHARE",
                   help="with --expert-weight-share: share of routed experts one token runs, experts per token / "
                        "experts (8/64 = 0.125 for OLMoE, 2/8 for Mixtral), at least 1/4096")


FITTED_PROFILE_HELP = {
    "prefill-sensitivity": "how much a power cap slows a prompt's compute (prefill_sensitivity)",
    "busy-share": "share of the peak's dynamic draw a busy GPU draws at any batch (the draw curve's busy share)",
    "batch-half": "batch that draws half the rest of the dynamic draw (the draw curve's batch half)",
}
"""`analyze`'s flags for the parts of an accelerator's profile that `tune --fit-power` fits."""


def add_analyze_args(a: argparse.ArgumentParser) -> None:
    _model_args(a)
    for name in ("alpha-ms", "beta-ms", "gamma-ms"):
        a.add_argument(f"--{name}", type=finite, required=True, metavar="MS", help=PARAMS_HELP[name])
    a.add_argument("--delta-ms", type=finite, default=0.0, metavar="MS",
                   help=PARAMS_HELP["delta-ms"] + ", default 0 (as every term not given: analyze evaluates the "
                        "parameters it is given, e.g. those tune prints; tune's prior starts at 0.05)")
    for name, text in STEP_HELP.items():
        a.add_argument(f"--{name}", type=finite, default=0.0, metavar="MS" if name.endswith("-ms") else "N",
                       help=f"step family: {text}, default 0 (with all four 0 the step family is gen1)")
    a.add_argument("--kv-tokens", type=finite, default=0.0, metavar="N",
                   help="one replica's KV-cache tokens (num_gpu_blocks x block_size): bounds the batch; default 0, "
                        "unbounded")
    add_expert_args(a)
    a.add_argument("--in-tokens", type=finite, required=True, metavar="N", help="mean prompt length (tokens)")
    a.add_argument("--out-tokens", type=finite, required=True, metavar="N", help="mean output length (tokens)")
    a.add_argument("--rate-rps", type=finite, required=True, metavar="RPS", help="arrival rate (requests/s)")
    a.add_argument("--in-cv", type=finite, default=1.0, metavar="CV", help="spread of prompt lengths (std / mean)")
    a.add_argument("--out-cv", type=finite, default=1.0, metavar="CV", help="spread of output lengths (std / mean)")
    a.add_argument("--tokens-per-step", type=finite, default=1.0, metavar="X",
                   help="tokens a decoding request gains per engine step, a number in [1, 64] (a mean: 2.52 is one): "
                        "1 (the default) without speculative "
                        "decoding; with it, 1 + the drafts accepted per step, as `tune` reads it from the windows "
                        "(the ITL figures are then per step, as vLLM's histogram records them)")
    a.add_argument("--draft-tokens", type=finite, default=0.0, metavar="K",
                   help="tokens drafted a step for a decoding request, a number in [0, 63]: 0 (the default) "
                        "without speculative decoding or where not read; with it vLLM's "
                        "spec_decode_num_draft_tokens over its ITL samples, as `tune` reads it (num_speculative_tokens "
                        "for a draft head; each is verified, kept or not, and takes a token of the step's budget); "
                        "give --tokens-per-step with it (at its default, 1, every draft is refused), at most 1 + K")
    a.add_argument("--max-batch", type=whole(1, MAX_BATCH), default=64, metavar="N",
                   help=f"vLLM --max-num-seqs (sequences), 1..{MAX_BATCH}, default 64")
    a.add_argument("--max-queue", type=whole(-1, MAX_QUEUE), default=DEFAULT_MAX_QUEUE, metavar="N",
                   help=f"waiting requests a server holds (requests), default {DEFAULT_MAX_QUEUE} as in configs "
                        "and observation files; -1: unbounded")
    a.add_argument("--power-cap-w", type=number(0.0, 10_000.0, low_open=True), default=None, metavar="W",
                   help="GPU power cap (W); needs --accelerator")
    a.add_argument("--accelerator", type=accelerator, default=None, metavar="NAME",
                   help=f"power profile: {ACCELERATORS}")
    for flag, text in FITTED_PROFILE_HELP.items():
        a.add_argument(f"--{flag}", type=finite, default=None, metavar="X",
                       help=f"{text}, as `tune --fit-power` prints it, in place of the accelerator's catalogue figure")
    a.add_argument("--ttft-slo-ms", type=number(0.0, MAX_SLO_MS, low_open=True), default=None, metavar="MS",
                   help="time-to-first-token objective (ms); with --itl-slo-ms, max_rate_rps is reported")
    a.add_argument("--itl-slo-ms", type=number(0.0, MAX_SLO_MS, low_open=True), default=None, metavar="MS",
                   help="inter-token-latency objective (ms)")
    a.add_argument("--slo-statistic", default="mean", choices=["mean", "p95", "p99"],
                   help="statistic the objectives apply to")
    a.add_argument("--batch-sizes", type=batch_sizes, default=None, metavar="N,N,...",
                   help="with SLOs: the max batch among these taking the most load, and the one serving "
                        "--rate-rps at the lowest draw (with --accelerator)")


def add_tune_args(t: argparse.ArgumentParser) -> None:
    t.add_argument("observations", type=file, metavar="CSV", help="observations, one row per window (config/examples/"
                                                       "observations.csv; columns in tuner/observation_file.py)")
    _model_args(t)
    by_family = {n: f"{default_prior_ms('step', n):g} (gen2: {default_prior_ms('gen2', n):g})"
                 for n in ("beta_ms", "gamma_ms")}
    alpha_ms = default_prior_ms("step", "alpha_ms")  # every family's
    for name, default in (("alpha-ms", f"{alpha_ms:g}"), ("beta-ms", by_family["beta_ms"]),
                          ("gamma-ms", by_family["gamma_ms"]), ("delta-ms", f"{default_delta_ms('step'):g}")):
        low_open = name == "alpha-ms"
        t.add_argument(f"--{name}", type=number(0.0, 60_000.0, low_open=low_open), metavar="MS",
                       default=alpha_ms if name == "alpha-ms" else None,  # the others' default is the family's
                       help=f"prior {PARAMS_HELP[name]}, default {default}")
    bounds = {"kappa-ms": MAX_STEP_MS, "epsilon-ms": MAX_STEP_MS, "rho": MAX_RHO, "budget-tokens": MAX_TOKENS}
    for name, text in STEP_HELP.items():  # where the fit starts (and is bounded, a decade either side)
        t.add_argument(f"--{name}", type=number(0.0, bounds[name]), default=0.0,
                       metavar="MS" if name.endswith("-ms") else "N",
                       help=f"step family's prior {text}; default 0, the tuner's own start (a token budget you run "
                            "vLLM with is worth giving; so is a rho past 1 under speculative decoding without a "
                            "draft_tokens column, where the kept tokens' compute holds the refused drafts')")
    t.add_argument("--kv-tokens", type=number(0.0, 1e9), default=0.0, metavar="N",
                   help="the replicas' KV-cache tokens (num_gpu_blocks x block_size, vllm:cache_config_info): bounds "
                        "the batch the law is fitted at, as it bounds the engine's; default 0, not known (unbounded)")
    add_expert_args(t)
    t.add_argument("--accelerator", type=accelerator, default=None, metavar="NAME",
                   help=f"power profile, needed when rows carry power caps or draws: {ACCELERATORS}")
    t.add_argument("--fit-power", action="store_true",
                   help="also fit the prefill power sensitivity (needs --accelerator)")
    t.add_argument("--json", action="store_true", help="print the report as JSON")


def add_plan_args(pl: argparse.ArgumentParser) -> None:
    pl.add_argument("spec", type=file, metavar="SPEC",
                    help="TOML planning spec, kind packing or allocation (docs/plan.md)")
    pl.add_argument("--solver", default=None, choices=["milp", "greedy", "homogeneous"],
                    help="packing: milp (the default), greedy or homogeneous (one GPU type); allocation: milp only")
    pl.add_argument("--compare", action="store_true", help="packing: every scenario x trace x scale, every solver")
    pl.add_argument("--plots", type=directory, default=None, metavar="DIR",
                    help="packing --compare: one PNG per scenario into DIR (created, with any folder above it missing)")
    pl.add_argument("--scenario", default=None, help="packing: availability scenario (default: the first)")
    pl.add_argument("--trace", default=None, help="packing: trace (default: the first)")
    pl.add_argument("--requests", type=whole(0, MAX_REQUESTS), default=None, metavar="N",
                    help=f"packing: workload size (requests), 0..{MAX_REQUESTS} (default: the largest scale)")
    pl.add_argument("--gamma", type=number(0.0, 1e6), default=None, metavar="ROUTES",
                    help="allocation: robust budget of uncertainty (routes of a query type that may deviate at once)")
    pl.add_argument("--protection", type=number(0.0, 1.0), default=None, metavar="SHARE",
                    help="allocation: robust budget as a share of the routes a query type uses, in [0, 1]")
    pl.add_argument("--json", action="store_true", help="print the result as JSON")
