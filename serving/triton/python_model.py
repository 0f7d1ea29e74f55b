"""The model that Triton's Python backend runs (imported by the generated `model.py`).

It builds the same network as the torch backend from the manifest carried in config.pbtxt,
verifies the weights' sha256 and loads them through `serving.repository.networks`, then serves
Triton's dynamic batches: each `execute` call gets every request the batcher grouped, runs them
as one forward pass and answers each with its own rows.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from serving.errors import ModelLoadError
from serving.repository.checksums import sha256_file
from serving.repository.networks import freeze_for_inference, load_network
from serving.triton.model_config import THREADS_PARAM, manifest_from_parameters, triton_io

log = logging.getLogger(__name__)


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        config = json.loads(args["model_config"])
        params = config.get("parameters", {})
        manifest = manifest_from_parameters(params)
        version = manifest.version(args["model_version"])
        path = Path(args["model_repository"]) / args["model_version"] / version.weights.file
        if not path.is_file() or sha256_file(path) != version.weights.sha256:
            raise ModelLoadError(f"{path}: missing or does not match the manifest sha256")
        gpu = args.get("model_instance_kind") == "GPU"
        self.device = f"cuda:{args.get('model_instance_device_id', '0')}" if gpu else "cpu"
        # Execute runs on this (the stub's main) thread: size its OpenMP team once, here.
        torch.set_num_threads(int(params.get(THREADS_PARAM, {}).get("string_value", "1")))
        self.io = triton_io(manifest)
        net = load_network(manifest.architecture, version.weights, path, self.device)
        example = torch.zeros(1, *[1 if d == -1 else d for d in self.io.input_dims])
        self.net = freeze_for_inference(net, example.to(self.device))

    def execute(self, requests: list[Any]) -> list[Any]:
        import triton_python_backend_utils as pb_utils  # only inside Triton's stub

        try:
            inputs = [
                pb_utils.get_input_tensor_by_name(r, self.io.input_name).as_numpy()
                for r in requests
            ]
            outputs = self.forward(inputs)
        except Exception as exc:  # answer every request rather than kill the stub
            log.error("inference failed: %s", type(exc).__name__)
            error = pb_utils.TritonError(f"inference failed ({type(exc).__name__})")
            return [pb_utils.InferenceResponse(error=error) for _ in requests]
        return [
            pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(self.io.output_name, y)])
            for y in outputs
        ]

    @torch.inference_mode()
    def forward(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        sizes = [len(x) for x in inputs]
        batch = np.concatenate(inputs) if len(inputs) > 1 else inputs[0]
        t = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).to(self.device)
        out = self.net(t).float().cpu().numpy()
        return np.split(out, np.cumsum(sizes)[:-1])

    def finalize(self) -> None:
        del self.net
