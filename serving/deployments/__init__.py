"""Thin Ray Serve deployments that delegate: the gateway (ingress), one per imaging model,
one per LLM."""
