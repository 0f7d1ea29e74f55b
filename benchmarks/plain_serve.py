"""The anchor of benchmarks/anchors.py: cxr-triage as a plain Ray Serve app, what a user would
write instead of Medserve.

A FastAPI ingress deployment decodes the OIP binary infer request (the same bytes tritonclient
sends Medserve and Triton, on the same path) and calls a model deployment whose `@serve.batch`
method runs the network on one worker thread. From Medserve it takes only what must be equal
for the comparison: the repository's weights and network (loaded and frozen as the torch backend
does), and the manifest's batching limits, replica counts or autoscaling, request limits, CPUs
and threads (`serving.topology.applications.deployment_options`). No gateway, admission
queue, retries, metrics, validation or error mapping.

    python benchmarks/plain_serve.py --repo DIR --port PORT [--model cxr-triage]

Runs its own Ray (local, private temp dir from RAY_TMPDIR) until SIGTERM or SIGINT.
"""

import argparse
import asyncio
import json
import logging
import math
import os
import signal
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, Request, Response
from ray import serve
from ray.serve.handle import DeploymentHandle

HEADER_LENGTH = "Inference-Header-Content-Length"
DTYPES = {"FP32": np.float32}
# What `medserve serve` gives Ray (medserve.yaml): logical CPU slots, not cores.
RAY_NUM_CPUS = 8

app = FastAPI()


@serve.deployment
class Model:
    def __init__(self, repo_root: str, model: str) -> None:
        import torch

        from serving.repository.networks import freeze_for_inference, load_network
        from serving.repository.store import load_repository

        repo = load_repository(Path(repo_root))
        m = repo.manifest(model)
        v = m.version(m.served_version)
        shape = [1 if d == -1 else d for d in m.inputs[0].shape]
        net = load_network(m.architecture, v.weights, repo.verify(model, v), "cpu")
        self.net = freeze_for_inference(net, torch.zeros(shape))
        threads = m.resources.threads or max(1, math.ceil(m.resources.cpus))
        self.executor = ThreadPoolExecutor(1, initializer=torch.set_num_threads,
                                           initargs=(threads,))
        self.predict.set_max_batch_size(m.batching.max_batch_size)  # type: ignore[attr-defined]
        self.predict.set_batch_wait_timeout_s(  # type: ignore[attr-defined]
            m.batching.batch_wait_timeout_ms / 1e3)

    def _forward(self, x: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            return self.net(torch.from_numpy(x)).numpy()

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.002)  # set from the manifest above
    async def predict(self, xs: list[np.ndarray]) -> list[np.ndarray]:
        batch = np.concatenate(xs) if len(xs) > 1 else xs[0]
        y = await asyncio.get_running_loop().run_in_executor(self.executor, self._forward, batch)
        return np.split(y, np.cumsum([len(x) for x in xs])[:-1])


@serve.deployment
@serve.ingress(app)
class Ingress:
    def __init__(self, model: DeploymentHandle, output: str) -> None:
        self.model = model
        self.output = output

    @app.get("/v2/health/live")
    async def live(self) -> dict[str, bool]:
        return {"live": True}

    @app.get("/v2/health/ready")
    async def ready(self) -> dict[str, bool]:
        return {"ready": True}

    @app.post("/v2/models/{name}/infer")
    async def infer(self, name: str, request: Request) -> Response:
        body = await request.body()
        n = int(request.headers.get(HEADER_LENGTH, len(body)))
        header = json.loads(body[:n])
        (spec,) = header["inputs"]
        x = np.frombuffer(body[n:], dtype=DTYPES[spec["datatype"]]).reshape(spec["shape"])
        y: np.ndarray = await self.model.predict.remote(x)
        data = y.astype(np.float32, copy=False).tobytes()
        out = json.dumps({
            "model_name": name,
            "outputs": [{"name": self.output, "datatype": "FP32", "shape": list(y.shape),
                         "parameters": {"binary_data_size": len(data)}}],
        }).encode()
        return Response(content=out + data, media_type="application/octet-stream",
                        headers={HEADER_LENGTH: str(len(out))})


def build(repo_root: str, model: str) -> Any:
    """The application, with the manifest's replicas, limits, batching and CPUs."""
    from serving.repository.store import load_repository
    from serving.topology.applications import deployment_options

    m = load_repository(Path(repo_root)).manifest(model)
    keep = ("num_replicas", "autoscaling_config", "max_ongoing_requests", "max_queued_requests",
            "ray_actor_options")
    opts = {k: v for k, v in deployment_options(m, gpu=False).items() if k in keep}
    handle = Model.options(name=model, **opts).bind(repo_root, model)  # type: ignore[attr-defined]
    # One ingress replica with a quarter CPU: Medserve's gateway (medserve.yaml).
    return Ingress.options(  # type: ignore[attr-defined]
        num_replicas=1, ray_actor_options={"num_cpus": 0.25}
    ).bind(handle, m.outputs[0].name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", required=True)
    parser.add_argument("--model", default="cxr-triage")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    # As `medserve serve` runs its Ray: same worker priority, no usage stats, logs kept out of
    # this process.
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_worker_niceness", "0")
    import ray

    ray.init(address="local", num_cpus=RAY_NUM_CPUS, include_dashboard=False,
             logging_level=logging.WARNING, log_to_driver=False)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": args.port})
        serve.run(build(str(Path(args.repo).resolve()), args.model), name="plain",
                  route_prefix="/")
        print(f"plain Serve app ready on http://127.0.0.1:{args.port}", flush=True)
        stop.wait()
    finally:
        serve.shutdown()
        ray.shutdown()


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # `serving`, from a checkout
    main()
