"""Clinical LLM benchmark: continuous batching through the HTTP API vs one-at-a-time generate().

In one run on this machine:
1. the baseline: the served checkpoint loaded with transformers in this process, generating
   the 16-stream run's requests one after another with plain `generate()` (greedy, same
   prompts and token budgets), before the server starts and again after it stops; the faster
   of the two counts, so a noisy neighbour cannot inflate the ratio. It runs twice each time:
   on transformers' stock layers, and on the engine's oneDNN-packed ones (which also speed up
   one-at-a-time decoding); the target ratio is taken over the faster, so it measures what
   batching adds;
2. a real Medserve on a free port, streamed through `/v1/chat/completions` at 1, 4 and 16
   concurrent closed-loop streams: aggregate generated tokens/s (whole run, ramp included),
   TTFT and inter-token latency p50/p99. Token budgets vary per request (48-80) so streams
   drift out of phase as real traffic does; TTFT percentiles leave out each stream's first
   request (the cold burst, printed separately).

Prints served throughput at 16 streams over the baseline (target >= 4x) and TTFT p99 at 16
streams (target < 1 s). Not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
import torch
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from loadtests.report.stats import percentile  # noqa: E402
from serving.llm.chat import ChatService  # noqa: E402
from serving.llm.transformers_engine import decoding_model, load_causal_lm  # noqa: E402
from serving.repository.store import load_repository  # noqa: E402
from serving.testing.process import memory_mib, running_server  # noqa: E402
from serving.topology.applications import deployment_name  # noqa: E402

MODEL = "clinical-llm"
QUESTIONS = [
    "A 64-year-old man presents with haemoptysis. What are the next steps?",
    "CT shows a 2.1 cm spiculated nodule in the right upper lobe. How should this be staged?",
    "Is a biopsy indicated for a PI-RADS 4 lesion in the left peripheral zone?",
    "A 58-year-old woman has painless jaundice and a pancreatic head mass. What follow-up?",
    "Which guideline applies to a 9 mm ground-glass opacity?",
    "What treatment options exist for TNM stage IIIA adenocarcinoma with an EGFR mutation?",
    "Should a gastric antral ulcer with raised margins go to the tumour board?",
    "A 71-year-old former smoker has mediastinal lymphadenopathy. What is the differential?",
]


Work = list[tuple[list[dict[str, str]], int]]  # (messages, max_tokens) per request


def workload(n: int, max_tokens: int) -> Work:
    spread = max_tokens // 2  # budgets from 3/4 to 5/4 of max_tokens
    return [([{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}],
             max_tokens - spread // 2 + (i * 37) % (spread + 1)) for i in range(n)]


def baseline(work: Work, threads: int, packed: bool) -> float:
    """Tokens/s of plain generate(), one request at a time, same prompts and budgets."""
    from transformers import AutoTokenizer

    repo = load_repository(ROOT / "model_repo")
    manifest = repo.llms[MODEL]
    model_dir = repo.version_dir(MODEL, manifest.served_version)
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    model = decoding_model(model_dir) if packed else load_causal_lm(model_dir)
    torch.set_num_threads(threads)
    chat = ChatService(manifest, tokenizer, engine=None)  # type: ignore[arg-type]
    jobs = [(chat.encode(m), n) for m, n in work]
    tokens, start = 0, 0.0
    with torch.inference_mode():
        for i, (ids, max_tokens) in enumerate([jobs[0], *jobs]):  # the first one warms up
            if i == 1:
                start = time.perf_counter()
            x = torch.tensor([ids])
            out = model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=max_tokens,
                                 do_sample=False, eos_token_id=tokenizer.eos_token_id,
                                 pad_token_id=tokenizer.pad_token_id)
            if i > 0:
                tokens += out.shape[1] - len(ids)
    return tokens / (time.perf_counter() - start)


def baselines(work: Work, threads: int, when: str) -> dict[bool, float]:
    out = {}
    for packed in (False, True):
        out[packed] = baseline(work, threads, packed)
        layers = "packed" if packed else "stock"
        print(f"baseline generate() {when}, {layers} layers: {out[packed]:.1f} tokens/s",
              flush=True)
    return out


async def one_stream(client: httpx.AsyncClient, messages: list[dict[str, str]],
                     max_tokens: int) -> tuple[float, list[float], int]:
    body = {"model": MODEL, "messages": messages, "max_tokens": max_tokens, "temperature": 0,
            "stream": True, "stream_options": {"include_usage": True}}
    start = time.perf_counter()
    ttft, last, gaps, tokens = None, 0.0, [], 0
    async with client.stream("POST", "/v1/chat/completions", json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            now = time.perf_counter()
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
            if chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                if ttft is None:
                    ttft = now - start
                else:
                    gaps.append(now - last)
                last = now
    return (ttft if ttft is not None else time.perf_counter() - start), gaps, tokens


async def load(url: str, work: Work, streams: int) -> dict[str, float]:
    """Stream k sends requests k, k + streams, ... back to back."""
    limits = httpx.Limits(max_connections=streams + 4)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:

        failed = 0

        async def user(k: int) -> list[tuple[float, list[float], int]]:
            nonlocal failed
            done = []
            for j in range(k, len(work), streams):
                try:
                    done.append(await one_stream(client, *work[j]))
                except httpx.HTTPError:  # counted and reported, not fatal to the run
                    failed += 1
            return done

        start = time.perf_counter()
        per_user = await asyncio.gather(*(user(k) for k in range(streams)))
        wall = time.perf_counter() - start
    per_user = [rs for rs in per_user if rs] or [[(float("nan"), [], 0)]]
    results = [r for rs in per_user for r in rs]
    steady = [r[0] for rs in per_user for r in rs[1:]] or [r[0] for r in results]
    gaps = [g for r in results for g in r[1]]
    return {
        "tokens_per_s": sum(r[2] for r in results) / wall,
        "ttft_p50": percentile(steady, 50), "ttft_p99": percentile(steady, 99),
        "ttft_cold_max": max(rs[0][0] for rs in per_user),
        "itl_p50": percentile(gaps, 50), "itl_p99": percentile(gaps, 99),
        "requests": len(results), "failed": failed,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--requests-per-stream", type=int, default=4)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads of the baseline (default: the replica's, from the "
                             "manifest, so both sides get the same cores)")
    parser.add_argument("--baseline-requests", type=int, default=16,
                        help="requests of the 16-stream run that the baseline generates")
    args = parser.parse_args()
    works = {n: workload(max(8, n * args.requests_per_stream), args.max_tokens)
             for n in (1, 4, 16)}

    manifest = load_repository(ROOT / "model_repo").llms[MODEL]
    resources, deployment = manifest.resources, deployment_name(MODEL, manifest.served_version)
    threads = args.threads or resources.threads or max(1, int(resources.cpus))
    base_work = works[16][: args.baseline_requests]
    print(f"baseline: generate() one at a time, {len(base_work)} requests, {threads} torch "
          "thread(s) ...", flush=True)
    before = baselines(base_work, threads, "before serving")

    tmp = Path(tempfile.mkdtemp(prefix="bench-llm-"))
    config = tmp / "medserve.yaml"
    # Serve's request timeout covers a whole stream: leave room for 80 tokens on a busy box.
    config.write_text(yaml.safe_dump({"ray": {"num_cpus": 8}, "http": {"request_timeout_s": 120}}))
    rows: dict[int, dict[str, float]] = {}
    with running_server("--repo", str(ROOT / "model_repo"), "--config", str(config),
                        log=tmp / "server.log", cwd=ROOT) as server:
        asyncio.run(load(server.url, works[16][:16], 16))  # warm-up
        for streams, work in works.items():
            rows[streams] = r = asyncio.run(load(server.url, work, streams))
            rss = {pid: memory_mib(pid) for pid in server.replica_pids(deployment)}
            print(f"{streams:>2} streams: {r['tokens_per_s']:7.1f} tokens/s  "
                  f"TTFT p50 {r['ttft_p50'] * 1e3:6.0f} ms p99 {r['ttft_p99'] * 1e3:6.0f} ms "
                  f"(cold burst max {r['ttft_cold_max'] * 1e3:5.0f} ms)  "
                  f"ITL p50 {r['itl_p50'] * 1e3:5.1f} ms p99 {r['itl_p99'] * 1e3:6.1f} ms  "
                  f"({int(r['requests'])} requests, {int(r['failed'])} failed)", flush=True)
    for pid, (now, peak) in rss.items():
        print(f"LLM replica {pid}: RSS {now:.0f} MiB, peak {peak:.0f} MiB (after 16 streams)")
    after = baselines(base_work, threads, "after serving")
    served = rows[16]["tokens_per_s"]
    stock, packed = (max(before[k], after[k]) for k in (False, True))
    print(f"\nserved at 16 streams / one-at-a-time generate(), stock layers: {served / stock:.2f}x")
    print(f"served at 16 streams / one-at-a-time generate(), packed layers: "
          f"{served / packed:.2f}x")
    print(f"served at 16 streams / the faster baseline: {served / max(stock, packed):.2f}x "
          "(target >= 4x)")
    print(f"TTFT p99 at 16 streams: {rows[16]['ttft_p99']:.3f} s (target < 1 s)")
    print(f"ITL p99 at 16 streams: {rows[16]['itl_p99']:.3f} s; median ITL p50 over levels "
          f"{statistics.median(r['itl_p50'] for r in rows.values()):.4f} s")


if __name__ == "__main__":
    main()
