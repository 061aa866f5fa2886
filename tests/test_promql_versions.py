"""The `prometheus` source's queries evaluated by Prometheus' own engine (`promtool test rules`) on engines of two
vLLM versions behind one model: ITL under its old name on one, its new one on the other (a rolling upgrade, or two
variants on two images)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from controller.telemetry.prometheus import queries

SERIES = {  # per engine, 15-s scrapes: 1 request a second, 100 tokens each, ITL 20 ms on a, 30 ms on b
    "a": {"vllm:generation_tokens_total": 1500, "vllm:time_to_first_token_seconds_count": 15,
          "vllm:time_per_output_token_seconds_count": 1485, "vllm:time_per_output_token_seconds_sum": 29.7},
    "b": {"vllm:generation_tokens_total": 1500, "vllm:time_to_first_token_seconds_count": 15,
          "vllm:inter_token_latency_seconds_count": 1485, "vllm:inter_token_latency_seconds_sum": 44.55},
}


def evaluated(tmp_path: Path, figures: dict[str, float], series: dict[str, dict[str, float]]) -> str:
    binary = shutil.which("promtool")
    if binary is None:
        pytest.fail("Debian's prometheus (promtool) is missing: bash tests/run.sh installs it")
    q = queries(["m"], "60s")
    test = {"rule_files": [], "evaluation_interval": "15s", "tests": [{
        "interval": "15s",
        "input_series": [{"series": f'{name}{{model_name="m",instance="{engine}"}}', "values": f"0+{step}x8"}
                         for engine, table in series.items() for name, step in table.items()],
        "promql_expr_test": [{"expr": q[f], "eval_time": "2m", "exp_samples": [
            {"labels": '{model_name="m"}', "value": v}]} for f, v in figures.items()]}]}
    path = tmp_path / "test.yml"
    path.write_text(json.dumps(test))  # YAML reads JSON
    run = subprocess.run([binary, "test", "rules", str(path)], capture_output=True, text=True, timeout=60)
    return run.stdout + run.stderr


def test_engines_of_two_versions_count_their_itl_under_either_name(tmp_path: Path) -> None:
    """Summed by model before the `or`, the old name's engines were left out: one token a step read as 2, and the
    mean ITL as the new version's engines' alone."""
    out = evaluated(tmp_path, {"tokens_per_step": 1.0, "itl_s": 0.025}, SERIES)
    assert "SUCCESS" in out, out


def test_speculative_engines_read_their_tokens_a_step(tmp_path: Path) -> None:
    """2.5 tokens a step: 99 tokens after the first in 39.6 ITL samples a request."""
    spec = {engine: {**table, **{k: v / 2.5 for k, v in table.items() if "output" in k or "inter_token" in k}}
            for engine, table in SERIES.items()}
    out = evaluated(tmp_path, {"tokens_per_step": 2.5}, spec)
    assert "SUCCESS" in out, out


def test_speculative_engines_read_the_tokens_they_draft(tmp_path: Path) -> None:
    """vllm:spec_decode_num_draft_tokens over the ITL samples of either name, summed over the engines: 3 a step on
    one, 5 on the other; and no sample at all where no engine drafts (no speculative decoding)."""
    drafting = {"a": {**SERIES["a"], "vllm:spec_decode_num_draft_tokens_total": 3 * 1485},
                "b": {**SERIES["b"], "vllm:spec_decode_num_draft_tokens_total": 5 * 1485}}
    assert "SUCCESS" in (out := evaluated(tmp_path, {"draft_tokens": 4.0}, drafting)), out
    plain = evaluated(tmp_path, {"draft_tokens": 4.0}, SERIES)
    assert "got: nil" in plain, plain
