"""NVIDIA Triton Inference Server as an imaging backend.

`build` turns the model repository into a Triton model repository (config.pbtxt plus a
Python-backend model or an ONNX export per model), `server` runs the `tritonserver` binary
that the `nvidia-pytriton` wheel ships, and `serving.backends.triton_backend` sends the
preprocessed batches to it over gRPC.
"""
