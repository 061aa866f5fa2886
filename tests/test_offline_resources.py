"""`wattscale check-config FILE.yaml`: a PowerPolicy and LLMServices checked as the operator reads them, offline."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import ROOT

from controller.cli import main

EXAMPLES = ROOT / "deploy" / "kubernetes" / "examples"


def resources(tmp_path: Path, *edits: tuple[str, str]) -> Path:
    """The shipped example PowerPolicy and LLMService in one file, each `(old, new)` text edit made."""
    text = (EXAMPLES / "powerpolicy.yaml").read_text() + "---\n" + (EXAMPLES / "llmservice.yaml").read_text()
    for old, new in edits:
        assert old in text, old
        text = text.replace(old, new)
    path = tmp_path / "resources.yaml"
    path.write_text(text)
    return path


def test_the_shipped_examples_pass_as_the_operator_reads_them(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    """An operator trial: nothing checked a resource before `kubectl apply`; its status said what was wrong after."""
    assert main(["check-config", str(resources(tmp_path))]) == 0
    assert "ok (1 PowerPolicy, 1 LLMService, as the operator reads them" in capsys.readouterr().out


@pytest.mark.parametrize(("edits", "said"), [
    ([("budget_w: 20000", "budget_w: -5")], ["PowerPolicy default: spec.power.budget_w: must be in (0, 1e+08], got "
                                            "-5.0"]),
    ([("min_replicas: 1", "min_replicas: 40")], ["LLMService llm/chat: spec.min_replicas: must be between 0 and "
                                                 "max_replicas (16), got 40"]),
    # each resource says its own: the policy's and the service's, on a line each
    ([("budget_w: 20000", "budget_w: -5"), ("ttft_ms: 300", "ttft_ms: 0")], [
        "PowerPolicy default: spec.power.budget_w: must be in (0, 1e+08], got -5.0",
        "LLMService llm/chat: spec.ttft_ms: must be in (0, 1e+07], got 0.0"]),
    # a cross-field refusal falls on the service, as on the cluster: its min_replicas past the inventory
    ([("count: 32", "count: 2"), ("min_replicas: 1", "min_replicas: 4")], [
        "LLMService llm/chat: spec.min_replicas"]),
])
def test_a_refusal_names_its_resource_and_field(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                edits: list[tuple[str, str]], said: list[str]) -> None:
    assert main(["check-config", str(resources(tmp_path, *edits))]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == len(said) and all(line.startswith(f"wattscale: {s}") for line, s in zip(err, said, strict=True))


@pytest.mark.parametrize(("text", "said"), [
    ("", "holds no PowerPolicy or LLMService"),
    ("kind: Pod\nmetadata: {name: x}\n", "document 1: kind must be one of ['PowerPolicy', 'LLMService'], got 'Pod'"),
    ("- a\n", "document 1: kind must be one of ['PowerPolicy', 'LLMService'], got None"),
    (":: bad: [\n", "is not YAML: "),
    ("kind: LLMService\nspec: {}\n", "document 1.metadata.name: must name the resource"),
    ("kind: LLMService\nmetadata: {name: x}\nspec: 5\n", "LLMService default/x: spec: must be an object, got int"),
    # two resources pasted without `---`: PyYAML kept the last of each key, the second's fields over the first's
    ("kind: PowerPolicy\nmetadata: {name: p}\nkind: LLMService\n", "is not YAML: 'kind' given twice in one mapping"),
])
def test_a_file_that_holds_no_resources_of_ours_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                             text: str, said: str) -> None:
    path = tmp_path / "r.yaml"
    path.write_text(text)
    assert main(["check-config", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and said in err, err
