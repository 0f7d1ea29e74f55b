"""API-key authentication, model allow-lists and per-tenant rate limits, before any handler.

On when the gateway has a tenants file (`auth.tenants_file` or $MEDSERVE_TENANTS_FILE). An
app-wide dependency, so it runs once the route is known (its template and path parameters)
and before the handler, its body read, and admission control:

- health probes and server metadata stay open (the OpenAPI docs are not API routes);
- every other route needs `Authorization: Bearer <key>`: missing or wrong, 401;
- a route naming a model in its path (`/v2/models/{model}/...`, `/v1/imaging/{model}/...`,
  `/v1/models/{model}`) is checked against the tenant's allow-list *before* the model is
  resolved, so an unknown model and a forbidden one get the same 403;
- then the tenant's token bucket: 429 with Retry-After once it is dry.

`POST /v1/chat/completions` names its model in the body: its handler calls `authorize`.
The tenant (None with auth off) is on `request.state.tenant` for the routes, admission
control (priority caps) and the audit log.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import Depends, FastAPI, Request

from serving.errors import Forbidden, MedserveError, RateLimited, Unauthorized
from serving.gateway.tenants import Keyring, RateLimiter, Tenant, load_tenants, tenants_path
from serving.http.gateway_api import GatewayAPI

OPEN_ROUTES = frozenset({"/v2/health/live", "/v2/health/ready", "/v2"})
UNAUTHORIZED = "missing or invalid API key: send `Authorization: Bearer <key>`"
# The same words whether or not the model exists: a tenant learns nothing outside its list.
FORBIDDEN = "this API key may not use the requested model"


class Auth:
    def __init__(self, tenants: list[Tenant], gateway_replicas: int) -> None:
        self.keyring = Keyring(tenants)
        self.limiter = RateLimiter(tenants, gateway_replicas)

    @classmethod
    def from_gateway(cls, gateway: GatewayAPI) -> Auth | None:
        path = tenants_path(gateway.config.auth.tenants_file)
        if path is None:
            return None
        return cls(load_tenants(Path(path)).tenants, gateway.config.gateway.num_replicas)

    def admit(self, tenant: Tenant) -> None:
        wait_s = self.limiter.wait_s(tenant)
        if wait_s > 0:
            raise RateLimited("rate limit of this API key exceeded", retry_after_s=wait_s)


def bearer_token(request: Request) -> str | None:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" else None


def allowed(request: Request, model: str) -> bool:
    tenant: Tenant | None = getattr(request.state, "tenant", None)
    return tenant is None or tenant.allows(model)


def authorize(request: Request, model: str) -> None:
    """For routes that find the model in the body; a no-op with auth off."""
    if not allowed(request, model):
        raise Forbidden(FORBIDDEN)


def require_admin(request: Request, what: str) -> Tenant:
    """The calling tenant, if it is an admin; 403 naming `what` otherwise (auth off: nobody)."""
    tenant: Tenant | None = getattr(request.state, "tenant", None)
    if tenant is None or not tenant.admin:
        raise Forbidden(f"{what} needs an admin API key (`admin: true` in tenants)")
    return tenant


async def authenticate(request: Request) -> None:
    request.state.tenant = None
    auth: Auth | None = getattr(request.app.state, "auth", None)
    route = request.scope.get("route")
    if auth is None or getattr(route, "path", None) in OPEN_ROUTES:
        return
    tenant = auth.keyring.authenticate(bearer_token(request))
    if tenant is None:
        raise Unauthorized(UNAUTHORIZED)
    request.state.tenant = tenant
    model = request.path_params.get("model")
    if model is not None and not tenant.allows(model):
        raise Forbidden(FORBIDDEN)
    auth.admit(tenant)


async def auth_error(request: Request) -> MedserveError | None:
    """The auth error a request gets, for errors found before the app's dependencies ran:
    FastAPI reads and validates a JSON body first, and without this a caller with no key
    would learn the body's rules (400, 413) before being told to authenticate (401)."""
    if hasattr(request.state, "tenant"):  # `authenticate` has run and let it through
        return None
    try:
        await authenticate(request)
    except MedserveError as exc:
        return exc
    return None


def install_auth(app: FastAPI, gateway: GatewayAPI) -> None:
    """Call before including the routers: they take the app's dependencies then."""
    app.state.auth = Auth.from_gateway(gateway)
    app.router.dependencies.append(Depends(authenticate))
