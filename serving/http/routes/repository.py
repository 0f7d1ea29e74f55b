"""Triton's model repository extension: the index (`POST /v2/repository/index`, Triton's
verb, what `tritonclient`'s `get_model_repository_index()` sends, and `GET`, same answer) and
runtime load and unload (`POST /v2/repository/models/{m}/load` and `/unload`, what its
`load_model()` and `unload_model()` send).

The index: every model version of the repository folder with its state, as Triton lists them:
READY when the gateway routes to it and its replicas answer ready; UNAVAILABLE otherwise, with
the reason (not ready yet, an LLM version other than the served one, or in the folder but not
loaded: unloaded, or imported since). `{"ready": true}` lists the READY ones only.

A load checks the model's files (checksums, graphs) and deploys its versions as the folder has
them now, then routes to them; an unload stops routing to the model and removes its replicas.
No other model's replica restarts (serving.topology.live). All of it for a tenant with
`admin: true` only, in the audit trail and logged with the tenant's name.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any, Literal, TypeVar

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from serving.errors import InvalidInput, ModelLoadError
from serving.http.auth import require_admin
from serving.http.body import read_body
from serving.http.gateway_api import GatewayAPI
from serving.http.request_metrics import note_model
from serving.repository.store import Repository, load_repository

log = logging.getLogger("ray.serve")
router = APIRouter(tags=["Model repository (admin)"])
NOT_DEPLOYED = "in the model repository, not loaded: POST /v2/repository/models/{name}/load"
NOT_SERVED = "not the LLM's served version"
NOT_READY = "deployed, its replicas not ready"
MAX_BODY = 1024
B = TypeVar("B", bound=BaseModel)


class IndexRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    ready: bool = Field(False, description="List only the versions that are READY.")


class LoadRequest(BaseModel):
    """Triton's load body. Its `parameters` (a config override, files sent inline) are
    refused: the repository folder is what is loaded, its files checked."""

    model_config = ConfigDict(extra="forbid")
    parameters: dict[str, Any] = Field(default_factory=dict, description="Must be empty.")


class UnloadParameters(BaseModel):
    model_config = ConfigDict(extra="forbid")
    unload_dependents: bool = Field(
        False, description="Triton's ensembles; Medserve models have no dependents.")


class UnloadRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    parameters: UnloadParameters = Field(default_factory=UnloadParameters)


class IndexEntry(BaseModel):
    name: str
    version: str
    state: Literal["READY", "UNAVAILABLE"]
    reason: str = ""


def _versions(repo: Repository) -> list[tuple[str, str]]:
    out = [(m.name, v.version) for m, v in repo.iter_versions()]
    return out + [(llm.name, v.version) for llm in repo.llms.values() for v in llm.versions]


async def _on_disk(gw: GatewayAPI) -> list[tuple[str, str]]:
    """The repository folder as it is now: a manifest imported since the deploy counts, one
    that no longer parses leaves the deployed versions listed as they are."""
    try:
        return _versions(await asyncio.to_thread(load_repository, gw.repo.root))
    except ModelLoadError:
        return []


async def _body(request: Request, gw: GatewayAPI, schema: type[B]) -> B:
    raw = b""  # tritonclient posts no body at all (Content-Length: 0)
    if request.headers.get("content-length") != "0":
        raw = await read_body(request, MAX_BODY, gw.config.limits.upload_timeout_s)
    try:
        return schema.model_validate(json.loads(raw) if raw.strip() else {})
    except (ValueError, ValidationError) as exc:
        raise InvalidInput(f"request body: {str(exc).splitlines()[0]}") from None


async def _entry(gw: GatewayAPI, name: str, version: str) -> IndexEntry:
    if name in gw.llm_manifests:
        if version != gw.llm_manifests[name].served_version:
            return IndexEntry(name=name, version=version, state="UNAVAILABLE", reason=NOT_SERVED)
        target = gw.resolve_llm(name)
        ready = await gw.ready(target)
    else:
        ready = await gw.ready(gw.resolve(name, version))
    if ready:
        return IndexEntry(name=name, version=version, state="READY")
    return IndexEntry(name=name, version=version, state="UNAVAILABLE", reason=NOT_READY)


@router.get("/v2/repository/index", response_model=list[IndexEntry], responses={403: {}})
@router.post("/v2/repository/index", response_model=list[IndexEntry],
             responses={400: {}, 403: {}, 408: {}, 413: {}})
async def repository_index(request: Request) -> list[IndexEntry]:
    require_admin(request, "the repository index")
    gw: GatewayAPI = request.app.state.gateway
    body = await _body(request, gw, IndexRequest) if request.method == "POST" else IndexRequest()
    deployed = [(n, v) for n, v in _versions(gw.repo)
                if n in gw.manifests or n in gw.llm_manifests]
    entries = list(await asyncio.gather(*(_entry(gw, n, v) for n, v in deployed)))
    served = set(deployed)
    entries += [IndexEntry(name=n, version=v, state="UNAVAILABLE",
                           reason=NOT_DEPLOYED.format(name=n))
                for n, v in await _on_disk(gw) if (n, v) not in served]
    entries.sort(key=lambda e: (e.name, e.version))
    return [e for e in entries if e.state == "READY"] if body.ready else entries


async def _admin_request(request: Request, what: str, schema: type[B]) -> tuple[GatewayAPI, B]:
    require_admin(request, what)
    gw: GatewayAPI = request.app.state.gateway
    note_model(request, request.path_params["model"])
    return gw, await _body(request, gw, schema)


@router.post("/v2/repository/models/{model}/load",
             responses={400: {}, 403: {}, 404: {}, 408: {}, 413: {}})
async def load_model(model: str, request: Request) -> dict[str, str]:
    gw, body = await _admin_request(request, "loading models", LoadRequest)
    if body.parameters:
        raise InvalidInput("parameters: not supported; the repository folder is what is loaded "
                           "(import a model with `medserve models import`)")
    try:
        await gw.load_model(model)
    except ModelLoadError as exc:  # Triton's answer to a model that fails to load: a 400
        raise InvalidInput(exc.message) from None
    log.info("model %s loaded at run time by tenant %s", model, request.state.tenant.name)
    return {}


@router.post("/v2/repository/models/{model}/unload",
             responses={400: {}, 403: {}, 404: {}, 408: {}, 413: {}})
async def unload_model(model: str, request: Request) -> dict[str, str]:
    gw, _ = await _admin_request(request, "unloading models", UnloadRequest)
    await gw.unload_model(model)
    log.info("model %s unloaded at run time by tenant %s", model, request.state.tenant.name)
    return {}
