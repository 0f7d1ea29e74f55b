"""Deployment targets generated from the repository and the cluster config (KubeRay today)."""
