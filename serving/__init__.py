"""Medserve: inference serving for medical AI models on Ray Serve."""

__version__ = "0.1.0"
