"""Kubernetes (KubeRay) deployment generated from the repository and the cluster config.

The `kubernetes:` config section it reads is serving/schema/kubernetes.py. This package's
`__init__` stays empty of imports: the generators (which import Ray through `serving.topology`)
load only when used.
"""
