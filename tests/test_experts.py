"""A mixture of experts: a decode step reads only the experts its tokens route to, so the step family's decode is
concave at small batches, a step that carries a prompt reads them all, and the routing, read off the model card,
travels with the parameters wherever they are fitted or held."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from queuemodels import Load, ModelInputError, ServerShape, ServiceParams, get_model
from queuemodels.accelerators import CATALOG
from queuemodels.continuous_law import continuous_law
from queuemodels.params import LEAST_TOKEN_SHARE, MOST_WEIGHT_SHARE
from queuemodels.roofline import Roofline
from tuner import Observation, PairFilter, Tuner

DENSE = ServiceParams("step", 11.0, 0.01, 6.0, 0.035).with_step_defaults()
MOE = dataclasses.replace(DENSE, expert_weight_share=0.9, expert_token_share=0.125)
LOAD = Load(2.0, 512, 256)
H100 = CATALOG["H100-SXM"]


def test_a_small_batch_skips_the_experts_none_of_its_tokens_route_to() -> None:
    trickle = LOAD.at_rate(1e-6)  # no prompt's share of the GPU: the two laws' affine parts are the same
    moe, dense = (continuous_law(p, trickle, None, ServerShape(256, None)) for p in (MOE, DENSE))
    batch = np.arange(1.0, 257.0)
    skipped = dense.decode(batch) - moe.decode(batch)
    read = 0.9 * 6.0  # the routed share of the weights' read, gamma
    assert skipped[0] == pytest.approx(read * 0.875, rel=1e-3)  # one token: 7 of 8 experts unread
    assert np.all(np.diff(skipped) < 0) and skipped[63] < 1e-3 * read  # 64 tokens route to nearly every expert
    step = moe.decode(batch[:32])
    assert np.all(np.diff(step, 2) < 0)  # concave where the dense step is affine
    assert np.allclose(moe.decode(batch[128:]), dense.decode(batch[128:]), rtol=1e-7)  # the trickle's share aside


def test_a_step_that_carries_a_prompt_reads_every_expert() -> None:
    moe, dense = Roofline.of(MOE, LOAD), Roofline.of(DENSE, LOAD)
    # a prompt alone at batch 1 adds the experts' read the decode step skipped, on top of its dense cost
    assert moe.prompt_ms(1.0) - dense.prompt_ms(1.0) == pytest.approx(float(moe.skipped_ms(1.0)), rel=0.02)
    assert moe.prompt_ms(128.0) == pytest.approx(dense.prompt_ms(128.0), rel=1e-6)  # 128 tokens read them all


@settings(max_examples=80, deadline=None)
@given(st.floats(0.5, 60.0), st.floats(0.0, 0.2), st.floats(0.01, MOST_WEIGHT_SHARE),
       st.floats(LEAST_TOKEN_SHARE, 1.0), st.sampled_from([None, 200.0, 350.0, 700.0]),
       st.sampled_from([1, 8, 64, 512]), st.floats(0.0, 20.0))
def test_no_batch_skips_more_than_the_step_reads(gamma_ms: float, beta_ms: float, weights: float, tokens: float,
                                                  cap_w: float | None, batch: int, rate: float) -> None:
    """The skipped read is at most the shares' part of the step's fixed time (a fit that put gamma above alpha
    reads alpha's, and some weights are in no expert), so no decode step, capped or not, reads as taking no time."""
    params = dataclasses.replace(MOE, alpha_ms=min(gamma_ms, 11.0), beta_ms=beta_ms, gamma_ms=gamma_ms,
                                 expert_weight_share=weights, expert_token_share=tokens)
    try:
        law = continuous_law(params, Load(rate, 512, 256), H100, ServerShape(batch, None, cap_w))
    except ModelInputError:
        return
    assert law.at_batches(batch).decode.min() > 0.0 and law.at_batches(batch).tau.min() > 0.0


@pytest.mark.parametrize(("changes", "message"), [
    ({"expert_weight_share": 1.0, "expert_token_share": 0.1}, "expert_weight_share: must be at most 0.99"),
    ({"expert_weight_share": 0.9}, r"expert_token_share: needed with expert_weight_share 0.9: the experts a token"),
    ({"expert_weight_share": 0.9, "expert_token_share": 1e-300}, r"expert_token_share: must be in \[1/4096, 1\]"),
    ({"expert_token_share": 0.125}, "expert_token_share: needs expert_weight_share"),
    ({"expert_weight_share": float("nan"), "expert_token_share": 0.1}, "expert_weight_share: must be a finite"),
    ({"family": "gen1", "rho": 0.0, "budget_tokens": 0.0, "kappa_ms": 0.0, "epsilon_ms": 0.0,
      "expert_weight_share": 0.9, "expert_token_share": 0.1}, "expert_weight_share: the gen1 family has no such term"),
])
def test_a_routing_that_cannot_be_is_refused_by_name(changes: dict[str, object], message: str) -> None:
    with pytest.raises(ModelInputError, match=message):
        dataclasses.replace(DENSE, **changes)  # type: ignore[arg-type]


def test_a_prior_without_the_roofline_reads_the_routing_at_its_starting_terms() -> None:
    """Routing is a roofline term: a prior that leaves rho and the budget 0 (the affine reading of a config's or a
    spec's prior) is read at their starting values, as the tuner starts from it; read with rho 0, a locked clock
    slowed no decode step at all."""
    raw = dataclasses.replace(MOE, rho=0.0, budget_tokens=0.0)
    started = dataclasses.replace(MOE, rho=1.0, budget_tokens=2048.0)
    locked = ServerShape(64, None, None, 0.5)
    got, want = (continuous_law(p, LOAD, H100, locked) for p in (raw, started))
    assert got.at_batches(64).decode.tolist() == want.at_batches(64).decode.tolist()
    assert want.at_batches(64).decode[-1] > continuous_law(started, LOAD, H100, ServerShape(64, None)).decode(64.0)


def test_the_tuner_fits_the_times_and_keeps_the_routing_it_was_given() -> None:
    truth = dataclasses.replace(MOE, alpha_ms=9.0, gamma_ms=5.0)
    model = get_model("mm1k-cb")
    rows = []
    for batch, rate in ((32, 2.0), (32, 6.0), (64, 4.0), (64, 10.0), (32, 4.0), (64, 7.0), (32, 1.0), (64, 2.0)):
        perf = model.analyze(truth, LOAD.at_rate(rate), ServerShape(batch, 1024), None, tails=False)
        rows.append(Observation(rate, 512, 256, batch, 1024, perf.ttft_ms, perf.itl_ms))
    pair = PairFilter(dataclasses.replace(MOE, alpha_ms=15.0, gamma_ms=10.0), None)
    for row in rows * 3:
        pair.update(row)
    fitted, _ = pair.params()
    assert (fitted.expert_weight_share, fitted.expert_token_share) == (0.9, 0.125)
    small = ServerShape(8, 1024)
    want = model.analyze(truth, LOAD.at_rate(0.5), small, None, tails=False).itl_ms
    assert model.analyze(fitted, LOAD.at_rate(0.5), small, None, tails=False).itl_ms == pytest.approx(want, rel=0.05)


def test_a_fit_saved_under_one_routing_is_not_restored_under_another(tmp_path: Path,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    """The routing is read, not fitted, but a law under another routing is another law: a dense fit restored into
    a mixture of experts' filter took the skipped read on top of times that had absorbed it, and moved slowly."""
    path, model = tmp_path / "tuner.json", get_model("mm1k-cb")
    tuner = Tuner(path)
    tuner.ensure("m", "gpu", DENSE, None)
    for rate in (2.0, 6.0, 4.0, 8.0):
        perf = model.analyze(DENSE, LOAD.at_rate(rate), ServerShape(64, 1024), None, tails=False)
        tuner.update("m", "gpu", Observation(rate, 512, 256, 64, 1024, perf.ttft_ms, perf.itl_ms))
    with caplog.at_level(logging.WARNING):
        assert Tuner(path).ensure("m", "gpu", MOE, None).accepted == 0
    assert ("saved state of m|gpu was fitted under another experts' routing (dense, now expert_weight_share 0.9, "
            "expert_token_share 0.125); starting from the prior") in caplog.text  # said, not "another prior"
    assert Tuner(path).ensure("m", "gpu", DENSE, None).accepted == 4


def test_held_parameters_keep_what_was_read(tmp_path: Path) -> None:
    held = dataclasses.replace(MOE, kv_tokens=90_000.0).with_vector([1.0] * len(MOE.as_vector()))
    assert held.as_vector() == (1.0,) * len(MOE.as_vector())
    assert (held.kv_tokens, held.expert_weight_share, held.expert_token_share) == (90_000.0, 0.9, 0.125)


def test_tune_and_analyze_take_the_routing_as_flags(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from controller.cli import main

    csv = tmp_path / "obs.csv"
    model = get_model("mm1k-cb")
    lines = ["rate_rps,in_tokens,out_tokens,max_batch,max_queue,ttft_ms,itl_ms"]
    for batch, rate in ((32, 2.0), (32, 6.0), (64, 4.0), (64, 10.0), (32, 4.0), (64, 7.0)):
        perf = model.analyze(MOE, LOAD.at_rate(rate), ServerShape(batch, 1024), None, tails=False)
        lines.append(f"{rate},512,256,{batch},1024,{perf.ttft_ms},{perf.itl_ms}")
    csv.write_text("\n".join(lines) + "\n")
    routing = ["--expert-weight-share", "0.9", "--expert-token-share", "0.125"]
    assert main(["tune", str(csv), "--json", *routing]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["error_in_sample"]["median_itl"] < 0.03
    # what the times hold under, with them: an optimize spec's params (and analyze's flags) take them as printed
    assert (report["params"]["expert_weight_share"], report["params"]["expert_token_share"]) == (0.9, 0.125)
    assert main(["tune", str(csv), "--family", "gen1", "--expert-weight-share", "0.9"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--expert-weight-share: the gen1 family has no such term" in err[0], err
    point = ["analyze", "--alpha-ms", "11", "--beta-ms", "0.01", "--gamma-ms", "6", "--rho", "1", "--in-tokens", "512",
             "--out-tokens", "256", "--rate-rps", "0.5", "--max-batch", "8"]
    assert main([*point, *routing]) == 0
    moe_itl = json.loads(capsys.readouterr().out)["itl_ms"]
    assert main(point) == 0
    assert moe_itl < 0.8 * json.loads(capsys.readouterr().out)["itl_ms"]  # a light load reads a few experts
    for command in ([*point, *routing, "--model", "mm1k-batch"], ["tune", str(csv), *routing, "--model", "mm1k-batch"]):
        assert main(command) == 2  # the batched reading has no experts' term: refused, not dropped
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "--expert-weight-share: mm1k-batch has no experts' term" in err[0], err
    assert main([*point, "--expert-weight-share", "0.9"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--expert-token-share: needed with expert_weight_share 0.9" in err[0], err
