"""Triton's model repository extension, its index: `POST /v2/repository/index` (Triton's
verb, what `tritonclient`'s `get_model_repository_index()` sends) and `GET` (same answer).

Every model version of the repository folder with its state, as Triton lists them: READY when
the gateway routes to it and its replicas answer ready; UNAVAILABLE otherwise, with the reason
(not ready yet, an LLM version other than the served one, or in the folder but not part of the
deployed application: imported since the last deploy). `{"ready": true}` lists the READY ones
only. For a tenant with `admin: true` only: the list is the site's model inventory.
"""

from __future__ import annotations

import asyncio
import json
from typing import Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from serving.errors import InvalidInput, ModelLoadError
from serving.http.auth import require_admin
from serving.http.body import read_body
from serving.http.gateway_api import GatewayAPI
from serving.repository.store import Repository, load_repository

router = APIRouter(tags=["Model repository (admin)"])
NOT_DEPLOYED = "in the model repository, not in the deployed application: re-deploy to serve it"
NOT_SERVED = "not the LLM's served version"
NOT_READY = "deployed, its replicas not ready"
MAX_BODY = 1024


class IndexRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    ready: bool = Field(False, description="List only the versions that are READY.")


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
    raw = b""  # tritonclient posts no body at all (Content-Length: 0)
    if request.method == "POST" and request.headers.get("content-length") != "0":
        raw = await read_body(request, MAX_BODY, gw.config.limits.upload_timeout_s)
    try:
        body = IndexRequest.model_validate(json.loads(raw) if raw.strip() else {})
    except (ValueError, ValidationError) as exc:
        raise InvalidInput(f"index request: {str(exc).splitlines()[0]}") from None
    deployed = _versions(gw.repo)
    entries = list(await asyncio.gather(*(_entry(gw, n, v) for n, v in deployed)))
    served = set(deployed)
    entries += [IndexEntry(name=n, version=v, state="UNAVAILABLE", reason=NOT_DEPLOYED)
                for n, v in await _on_disk(gw) if (n, v) not in served]
    entries.sort(key=lambda e: (e.name, e.version))
    return [e for e in entries if e.state == "READY"] if body.ready else entries
