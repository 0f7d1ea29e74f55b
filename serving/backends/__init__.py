"""Inference backends (torch in-process, Triton over gRPC) and the dynamic batching in
front of them."""
