"""The shipped specialists are real fine-tunes: each adapter that `build-weights` trained has a
lower loss on its own specialty's held-out text than the base model, and than every other
adapter on that text. Random or copied adapters cannot pass this. Also: SmolLM2, the shipped
base, answers a factual question (random weights cannot)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from transformers import AutoTokenizer
from typer.testing import CliRunner

from serving.cli.main import app
from serving.repository.hf_checkpoint import load_causal_lm
from serving.repository.lora_training import TRAINING_RECORD, split_corpus, text_loss
from serving.repository.store import load_repository
from tests.conftest import MODEL_REPO
from tests.integration.test_gguf_import import ask

LLM = "clinical-llm"


@pytest.fixture(scope="module")
def shipped() -> tuple[Any, Path]:
    repo = load_repository(MODEL_REPO)
    manifest = repo.llms[LLM]
    return manifest, repo.version_dir(LLM, manifest.served_version)


def test_each_adapter_is_best_on_its_own_specialty(shipped: tuple[Any, Path]) -> None:
    from peft import PeftModel

    manifest, model_dir = shipped
    trained = [a for a in manifest.adapters if a.train is not None]
    assert len(trained) >= 2
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    held = {a.name: split_corpus(MODEL_REPO / LLM / a.train.corpus, a.train.holdout_every)[1]
            for a in trained}
    base = load_causal_lm(model_dir)
    losses = {"(base)": {s: text_loss(base, tokenizer, lines) for s, lines in held.items()}}
    for adapter in trained:
        tuned = PeftModel.from_pretrained(base, str((model_dir / adapter.weights.file).parent))
        losses[adapter.name] = {s: text_loss(tuned, tokenizer, lines) for s, lines in held.items()}
        base = tuned.unload()
    print("\nheld-out loss (nats/token), rows: model, columns: specialty text")
    for row, values in losses.items():
        print(f"{row:>18} " + " ".join(f"{values[s]:.3f}" for s in held))
    for specialty in held:
        own = losses[specialty][specialty]
        others = {row: v[specialty] for row, v in losses.items() if row != specialty}
        assert own < min(others.values()), (specialty, own, others)


def test_the_training_record_matches_what_is_served(shipped: tuple[Any, Path]) -> None:
    """The record says what the run measured; the loss it reports is the adapter's own."""
    manifest, model_dir = shipped
    for adapter in manifest.adapters:
        record = json.loads(((model_dir / adapter.weights.file).parent / TRAINING_RECORD)
                            .read_text())
        assert record["adapter"] == adapter.name and record["steps"] == adapter.train.steps
        assert record["heldout_loss_adapter"] < record["heldout_loss_base"]
        assert record["train_loss_last"] < record["train_loss_first"]


def test_the_shipped_base_answers_in_coherent_english(shipped: tuple[Any, Path]) -> None:
    manifest, model_dir = shipped
    reply = ask(model_dir, manifest, "Which gas do plants absorb from the air?")
    print(f"\n{LLM}: gas plants absorb -> {reply!r}")
    assert "carbon dioxide" in reply.lower()


def test_cli_lists_checks_and_retrains_a_missing_adapter(tmp_path: Path) -> None:
    """`models` lists the adapters, `models check` names a missing one, and `build-weights`
    trains it again (only it) so that the check passes."""
    repo_copy = tmp_path / "model_repo"
    shutil.copytree(MODEL_REPO, repo_copy)
    runner = CliRunner()
    repo = load_repository(repo_copy)
    adapter = repo.llms[LLM].adapters[0]
    listed = runner.invoke(app, ["models", "--repo", str(repo_copy)], env={"COLUMNS": "200"})
    assert listed.exit_code == 0 and f"{LLM}:{adapter.name}" in listed.output
    ok = runner.invoke(app, ["models", "check", "--repo", str(repo_copy)])
    assert ok.exit_code == 0 and f"{len(repo.llms[LLM].adapters)} adapters" in ok.output
    (repo.version_dir(LLM, "1") / adapter.weights.file).unlink()
    bad = runner.invoke(app, ["models", "check", "--repo", str(repo_copy)])
    assert bad.exit_code == 1 and adapter.name in bad.output
    rebuilt = runner.invoke(app, ["build-weights", "--repo", str(repo_copy)])
    assert rebuilt.exit_code == 0, rebuilt.output
    assert rebuilt.output.count("built ") == 1  # the other adapters and the base are kept
    assert runner.invoke(app, ["models", "check", "--repo", str(repo_copy)]).exit_code == 0


def test_a_specialty_text_without_training_lines_is_refused_before_training(
    tmp_path: Path,
) -> None:
    repo_copy = tmp_path / "model_repo"
    shutil.copytree(MODEL_REPO, repo_copy)
    adapter = load_repository(repo_copy).llms[LLM].adapters[0]
    assert adapter.train is not None
    (repo_copy / LLM / adapter.train.corpus).write_text("# only a comment\n")
    result = CliRunner().invoke(app, ["build-weights", "--repo", str(repo_copy)])
    assert result.exit_code == 1
    assert "has no training lines" in result.output and adapter.name in result.output
