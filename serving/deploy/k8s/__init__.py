"""Kubernetes (KubeRay) deployment generated from the repository and the cluster config.

`settings` is imported by `serving.config`, so this package's `__init__` stays empty of
imports: the generators (which import Ray through `serving.app`) load only when used.
"""
