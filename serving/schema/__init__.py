"""Typed config: model manifests (imaging, LLM) on one shared base, and the cluster config."""
