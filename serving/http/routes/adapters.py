"""vLLM's runtime LoRA adapter API: `POST /v1/load_lora_adapter` and `/v1/unload_lora_adapter`
(`lora_name`, `lora_path`), for a tenant with `admin: true` only.

A load is an import into the repository (the PEFT folder is checked, its sha256 recorded, its
fit to the base model tried) and the adapter is then served on its first request; an unload
takes it out of the manifest. No replica restarts. Both are in the audit trail like every
request, and logged with the tenant's name (never a path or a key).
"""

from __future__ import annotations

import logging

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from serving.errors import Forbidden, InvalidInput, ModelLoadError
from serving.http.auth import require_admin
from serving.http.gateway_api import GatewayAPI
from serving.http.request_metrics import note_model

log = logging.getLogger("ray.serve")
router = APIRouter(tags=["Runtime adapters (admin)"])
ERRORS: dict[int | str, dict[str, object]] = {c: {} for c in (400, 401, 403, 404)}
ADAPTERS = "loading and unloading adapters"


class UnloadLoRA(BaseModel):
    model_config = ConfigDict(extra="forbid")
    lora_name: str = Field(description="The adapter's name (lowercase letters, digits, '-').")
    model: str | None = Field(None, description="The base LLM; default: the only one served.")


class LoadLoRA(UnloadLoRA):
    lora_path: str = Field(description="Absolute path of a PEFT LoRA folder on the gateway.")


def _admin_model(request: Request, body: UnloadLoRA) -> tuple[GatewayAPI, str]:
    tenant = require_admin(request, ADAPTERS)
    gw: GatewayAPI = request.app.state.gateway
    llms = sorted(gw.llm_manifests)
    model = body.model or (llms[0] if len(llms) == 1 else None)
    if model is None or model not in llms:
        raise InvalidInput(f"model: name one of the served LLMs ({', '.join(llms)})")
    note_model(request, model)
    if not tenant.allows(model):
        raise Forbidden(f"{ADAPTERS} of {model} is not allowed for this API key")
    return gw, model


@router.post("/v1/load_lora_adapter", responses=ERRORS)
async def load_lora_adapter(request: Request, body: LoadLoRA) -> dict[str, str]:
    gw, model = _admin_model(request, body)
    try:
        await gw.load_adapter(model, body.lora_name, body.lora_path)
    except ModelLoadError as exc:  # the admin's own folder: its problem, said plainly
        raise InvalidInput(exc.message) from None
    log.info("adapter %s:%s loaded at run time by tenant %s", model, body.lora_name,
             request.state.tenant.name)
    return {"model": f"{model}:{body.lora_name}", "status": "loaded"}


@router.post("/v1/unload_lora_adapter", responses=ERRORS)
async def unload_lora_adapter(request: Request, body: UnloadLoRA) -> dict[str, str]:
    gw, model = _admin_model(request, body)
    await gw.unload_adapter(model, body.lora_name)
    log.info("adapter %s:%s unloaded at run time by tenant %s", model, body.lora_name,
             request.state.tenant.name)
    return {"model": f"{model}:{body.lora_name}", "status": "unloaded"}
