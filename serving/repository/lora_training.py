"""Specialist LoRA adapters trained on the base checkpoint, on CPU, in a short bounded run.

Each adapter is a real fine-tune: PEFT LoRA on the last `top_layers` decoder layers (backward
stops there, which keeps the run short on a CPU), causal-LM loss on its specialty's text with
every `holdout_every`-th line held out, AdamW for a fixed number of steps. The run writes a PEFT
folder (adapter_config.json, adapter_model.safetensors) that serving loads like any imported
adapter, and beside it `training.json`: what was trained on what (the recipe digest), the
held-out loss before and after, the time it took, and the sha256 of the file it wrote.

Float results differ between CPUs (kernel choice, thread count), so a trained adapter's digest
cannot be pinned in git the way the base checkpoint's is: the record holds it, the loads check
it, and a changed recipe (corpus, settings, base) makes the record stale, so `build-weights`
trains again.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from serving.repository.checksums import sha256_file
from serving.schema.llm import Adapter, LLMManifest

TRAINING_RECORD = "training.json"


@dataclass(frozen=True)
class TrainingJob:
    adapter: Adapter
    corpus: Path  # the adapter's own specialty text
    replay: tuple[Path, ...]  # the other trained adapters' texts
    base_sha256: str

    @classmethod
    def of(cls, manifest: LLMManifest, model_root: Path, adapter: Adapter,
           base_sha256: str) -> TrainingJob:
        assert adapter.train is not None
        replay = tuple(model_root / a.train.corpus for a in manifest.adapters
                       if a.train is not None and a.name != adapter.name)
        return cls(adapter, model_root / adapter.train.corpus, replay, base_sha256)

    def recipe(self) -> str:
        """What the trained adapter depends on: settings, texts and base, as one digest."""
        a = self.adapter
        assert a.train is not None
        texts = [sha256_file(p) if p.is_file() else None for p in (self.corpus, *self.replay)]
        recipe = {"train": a.train.model_dump(), "rank": a.rank, "alpha": a.alpha,
                  "target_modules": sorted(a.target_modules), "texts": texts,
                  "base_sha256": self.base_sha256}
        return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()


def recorded_sha256(weights: Path, recipe: str) -> str | None:
    """The digest the training run recorded for `weights`, if it ran this recipe."""
    try:
        record = json.loads((weights.parent / TRAINING_RECORD).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("recipe") != recipe:
        return None
    sha = record.get("sha256")
    return sha if isinstance(sha, str) else None


def split_corpus(corpus: Path, holdout_every: int) -> tuple[list[str], list[str]]:
    """(training lines, held-out lines): every `holdout_every`-th passage is held out."""
    lines = [line.strip() for line in corpus.read_text().splitlines()]
    lines = [line for line in lines if line and not line.startswith("#")]
    held = lines[holdout_every - 1 :: holdout_every]
    train = [line for i, line in enumerate(lines, 1) if i % holdout_every]
    return train, held


def text_loss(model: Any, tokenizer: Any, lines: Sequence[str]) -> float:
    """Mean next-token cross-entropy (nats per token) of the lines, each its own sequence
    ended by EOS, in one padded batch."""
    import torch
    import torch.nn.functional as F

    seqs = [[*tokenizer.encode(line), tokenizer.eos_token_id] for line in lines]
    width = max(len(s) for s in seqs)
    ids = torch.tensor([s + [tokenizer.eos_token_id] * (width - len(s)) for s in seqs])
    mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in seqs])
    labels = ids.masked_fill(mask == 0, -100)[:, 1:]
    with torch.inference_mode():
        logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1]
    total = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1),
                            ignore_index=-100, reduction="sum")
    return float(total) / int((labels != -100).sum())


def _sequences(tokenizer: Any, lines: Sequence[str], seq_len: int) -> list[list[int]]:
    """The training lines, each ended by EOS, packed into sequences of `seq_len` tokens."""
    stream: list[int] = []
    for line in lines:
        stream += [*tokenizer.encode(line), tokenizer.eos_token_id]
    chunks = [stream[i : i + seq_len] for i in range(0, len(stream), seq_len)]
    return [c for c in chunks if len(c) > 1]


def train_adapters(base_dir: Path, jobs: Sequence[TrainingJob]) -> list[Path]:
    """Train each job's adapter on the base in `base_dir` (loaded once) into the adapter's
    folder there; return the weights files written. Each batch mixes in a `replay_fraction`
    of the other adapters' training text, so what they all learn (the register of clinical
    text) is learnt alike and what sets one adapter apart is its own specialty."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(base_dir))
    model: Any = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=torch.float32)
    layers = int(model.config.num_hidden_layers)
    written: list[Path] = []
    for job in jobs:
        adapter, spec = job.adapter, job.adapter.train
        assert spec is not None
        out = (base_dir / adapter.weights.file).parent
        started = time.perf_counter()
        train, held = split_corpus(job.corpus, spec.holdout_every)
        replay = [line for p in job.replay for line in split_corpus(p, spec.holdout_every)[0]]
        model.eval()
        base_loss = text_loss(model, tokenizer, held)
        torch.manual_seed(spec.seed)
        config = LoraConfig(
            r=adapter.rank, lora_alpha=adapter.alpha, target_modules=list(adapter.target_modules),
            layers_to_transform=list(range(max(0, layers - spec.top_layers), layers)),
            lora_dropout=0.0, bias="none", task_type="CAUSAL_LM",
        )
        peft_model = get_peft_model(model, config)
        losses = _fit(peft_model, _sequences(tokenizer, train, spec.seq_len),
                      _sequences(tokenizer, replay, spec.seq_len), spec)
        peft_model.eval()
        adapter_loss = text_loss(peft_model, tokenizer, held)
        out.mkdir(parents=True, exist_ok=True)
        peft_model.save_pretrained(str(out))
        model = peft_model.unload()  # the base again, without the LoRA layers
        weights = out / "adapter_model.safetensors"
        record = {
            "adapter": adapter.name, "recipe": job.recipe(), "sha256": sha256_file(weights),
            "steps": spec.steps, "train_loss_first": losses[0], "train_loss_last": losses[-1],
            "heldout_loss_base": base_loss, "heldout_loss_adapter": adapter_loss,
            "train_lines": len(train), "heldout_lines": len(held),
            "seconds": round(time.perf_counter() - started, 1),
            "torch": torch.__version__, "threads": torch.get_num_threads(),
        }
        (out / TRAINING_RECORD).write_text(json.dumps(record, indent=2) + "\n")
        written.append(weights)
    return written


class _Cycle:
    """Sequences in a seeded order, reshuffled each time round."""

    def __init__(self, sequences: list[list[int]], generator: Any) -> None:
        self.sequences, self.generator, self.queue = sequences, generator, list[int]()

    def take(self) -> list[int]:
        import torch

        if not self.queue:
            self.queue = torch.randperm(len(self.sequences), generator=self.generator).tolist()
        return self.sequences[self.queue.pop()]


def _fit(model: Any, own: list[list[int]], replay: list[list[int]], spec: Any) -> list[float]:
    """`spec.steps` AdamW steps; each batch is the adapter's own sequences with a
    `replay_fraction` of replay sequences, in a seeded order. Returns the losses."""
    import torch

    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=spec.learning_rate, weight_decay=0.0)
    generator = torch.Generator().manual_seed(spec.seed)
    own_cycle, replay_cycle = _Cycle(own, generator), _Cycle(replay, generator)
    n_replay = round(spec.batch_size * spec.replay_fraction) if replay else 0
    losses = []
    for _ in range(spec.steps):
        batch = [own_cycle.take() for _ in range(spec.batch_size - n_replay)]
        batch += [replay_cycle.take() for _ in range(n_replay)]
        width = max(len(s) for s in batch)
        ids = torch.tensor([s + [0] * (width - len(s)) for s in batch])
        labels = torch.tensor([s + [-100] * (width - len(s)) for s in batch])
        mask = (labels != -100).long()
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(round(loss.item(), 4))
    return losses
