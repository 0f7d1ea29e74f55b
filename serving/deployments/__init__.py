"""Ray Serve deployments: the gateway (FastAPI ingress) and one imaging deployment per model."""
