"""The auth middleware and the audit log on a small FastAPI app (no Ray)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from fastapi import Depends, FastAPI, Request
from fastapi.testclient import TestClient
from pydantic import BaseModel, ConfigDict

from serving.errors import ModelNotFound
from serving.gateway.audit import AuditLog
from serving.gateway.tenants import Tenant, key_sha256
from serving.http.auth import FORBIDDEN, Auth, allowed, authenticate, authorize
from serving.http.error_map import install_error_handlers
from serving.http.request_metrics import RequestMetrics
from serving.observability.metrics import ModelLabels
from serving.protocol.headers import accepted_request_id

KNOWN = {"cxr-triage", "clinical-llm"}
A_KEY, B_KEY = "key-of-clinic-a", "key-of-research"


class Manifest:
    def __init__(self, name: str) -> None:
        self.name = name
        self.versions = [type("V", (), {"version": "1"})()]
        self.served_version = "1"


class Recorder:
    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    def record(self, **kwargs: Any) -> None:
        self.calls.append(kwargs)


class Analyze(BaseModel):
    model_config = ConfigDict(extra="forbid")
    models: list[str]


def make_app(auth: Auth | None, audit: AuditLog | None = None) -> FastAPI:
    app = FastAPI()
    install_error_handlers(app)

    app.state.auth = auth  # as install_auth does
    app.router.dependencies.append(Depends(authenticate))

    @app.middleware("http")
    async def request_id(request: Request, call_next):
        request.state.request_id = "rid-1"
        return await call_next(request)

    @app.get("/v2/health/live")
    async def live() -> dict[str, bool]:
        return {"live": True}

    @app.get("/v2/models/{model}")
    async def meta(request: Request, model: str) -> dict[str, Any]:
        if model not in KNOWN:
            raise ModelNotFound("unknown model")
        tenant = request.state.tenant
        return {"name": model, "tenant": tenant and tenant.name}

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> dict[str, Any]:
        body = await request.json()
        authorize(request, body["model"])
        return {"model": body["model"]}

    @app.post("/v1/studies/{study}/analyze")
    async def analyze(study: str, body: Analyze) -> dict[str, Any]:
        return {"study": study, "models": body.models}

    @app.get("/v1/models")
    async def models(request: Request) -> list[str]:
        return [m for m in ("clinical-llm", "clinical-llm:lung-oncology") if allowed(request, m)]

    app.add_middleware(RequestMetrics, metrics=Recorder(),  # type: ignore[arg-type]
                       labels=lambda: ModelLabels.from_manifests([Manifest(n) for n in KNOWN]),
                       audit=audit)
    return app


@pytest.fixture
def client() -> TestClient:
    tenants = [
        Tenant(name="clinic-a", key_sha256=key_sha256(A_KEY), models=["cxr-triage"],
               rate_per_s=0.001, burst=3),
        Tenant(name="research", key_sha256=key_sha256(B_KEY), models=["*"]),
    ]
    return TestClient(make_app(Auth(tenants, gateway_replicas=1)))


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_missing_or_wrong_key_is_401_in_each_error_shape(client: TestClient) -> None:
    for headers in ({}, bearer("nope"), {"Authorization": f"Basic {A_KEY}"}):
        r = client.get("/v2/models/cxr-triage", headers=headers)
        assert r.status_code == 401 and r.headers["WWW-Authenticate"].startswith("Bearer")
        assert isinstance(r.json()["error"], str)
    r = client.post("/v1/chat/completions", json={"model": "clinical-llm"})
    assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"


def test_a_body_is_judged_only_after_the_key(client: TestClient) -> None:
    """FastAPI validates a JSON body before the app's dependencies: a caller without a key
    must still hear 401 first, not the body's rules."""
    for content in (b"{not json", b'{"unknown": 1}'):
        r = client.post("/v1/studies/1.2.3/analyze", content=content,
                        headers={"Content-Type": "application/json"})
        assert r.status_code == 401, r.text
        r = client.post("/v1/studies/1.2.3/analyze", content=content,
                        headers={"Content-Type": "application/json", **bearer(B_KEY)})
        assert r.status_code == 400 and "unknown" not in r.text, r.text
    ok = client.post("/v1/studies/1.2.3/analyze", json={"models": ["m"]}, headers=bearer(B_KEY))
    assert ok.status_code == 200 and ok.json() == {"study": "1.2.3", "models": ["m"]}


def test_open_routes_need_no_key(client: TestClient) -> None:
    assert client.get("/v2/health/live").status_code == 200
    assert client.get("/openapi.json").status_code == 200


def test_allow_list_403_does_not_reveal_whether_a_model_exists(client: TestClient) -> None:
    ok = client.get("/v2/models/cxr-triage", headers=bearer(A_KEY))
    assert ok.status_code == 200 and ok.json()["tenant"] == "clinic-a"
    real = client.get("/v2/models/clinical-llm", headers=bearer(A_KEY))
    fake = client.get("/v2/models/no-such-model", headers=bearer(A_KEY))
    assert real.status_code == fake.status_code == 403
    assert real.json() == fake.json() == {"error": FORBIDDEN}
    chat = client.post("/v1/chat/completions", json={"model": "clinical-llm"},
                       headers=bearer(A_KEY))
    assert chat.status_code == 403 and chat.json()["error"]["type"] == "permission_error"
    # a tenant allowed everything sees the real answer
    assert client.get("/v2/models/no-such-model", headers=bearer(B_KEY)).status_code == 404
    assert client.get("/v1/models", headers=bearer(A_KEY)).json() == []
    assert len(client.get("/v1/models", headers=bearer(B_KEY)).json()) == 2


def test_rate_limit_is_429_with_retry_after(client: TestClient) -> None:
    codes = [client.get("/v2/models/cxr-triage", headers=bearer(A_KEY)).status_code
             for _ in range(3)]
    r = client.get("/v2/models/cxr-triage", headers=bearer(A_KEY))
    assert codes == [200] * 3 and r.status_code == 429
    assert int(r.headers["Retry-After"]) >= 900  # 1 token per 1000 s, rounded up
    assert client.get("/v2/models/cxr-triage", headers=bearer(B_KEY)).status_code == 200


def test_auth_off_lets_everything_through_with_no_tenant() -> None:
    client = TestClient(make_app(None))
    r = client.get("/v2/models/cxr-triage")
    assert r.status_code == 200 and r.json()["tenant"] is None
    assert client.post("/v1/chat/completions", json={"model": "x"}).status_code == 200


def test_audit_log_has_one_safe_line_per_request(tmp_path: Path) -> None:
    path = tmp_path / "audit" / "audit.jsonl"
    tenants = [Tenant(name="clinic-a", key_sha256=key_sha256(A_KEY), models=["cxr-triage"])]
    client = TestClient(make_app(Auth(tenants, 1), AuditLog(path)))
    marker = "PHI-MARKER-Jane-Doe"
    client.get(f"/v2/models/cxr-triage?patient={marker}",
               headers={**bearer(A_KEY), "X-Patient": marker})
    client.get(f"/v2/models/{marker}", headers=bearer(A_KEY))
    client.post("/v1/chat/completions", json={"model": "cxr-triage", "prompt": marker},
                headers=bearer(A_KEY))
    client.get("/v2/models/cxr-triage", headers=bearer(marker))
    client.get("/v2/health/live")  # probes are not audited
    text = path.read_text()
    assert marker not in text and A_KEY not in text
    lines = [json.loads(line) for line in text.splitlines()]
    assert [(x["tenant"], x["model"], x["route"], x["status"]) for x in lines] == [
        ("clinic-a", "cxr-triage", "/v2/models/{model}", 200),
        ("clinic-a", "unknown", "/v2/models/{model}", 403),
        ("clinic-a", None, "/v1/chat/completions", 200),  # this route notes no model
        (None, "cxr-triage", "/v2/models/{model}", 401),
    ]
    for x in lines:
        assert set(x) == {"ts", "tenant", "model", "version", "route", "method", "status",
                          "latency_ms", "request_id"}
        assert x["ts"].endswith("Z") and x["latency_ms"] >= 0 and x["request_id"] == "rid-1"


def test_request_ids_are_adopted_only_as_bounded_tokens() -> None:
    for good in ("3f2b6c1e-8d4a-4c1b-9a57-0e6d2f1c9b3a", "trace-7f3a9c.01", "a" * 64):
        assert accepted_request_id(good) == good
    for bad in (None, "", "a" * 65, "-starts-with-dash", 'x", "tenant": "forged', "a b",
                "line\nbreak", "é"):
        fresh = accepted_request_id(bad)
        assert fresh != bad and len(fresh) == 32 and fresh.isalnum()
    assert accepted_request_id(None) != accepted_request_id(None)
