"""Tenants, API keys, allow-lists, rate limits and the audit log against a real Medserve.

One extra server (module scope) runs with `--tenants`, bound to 0.0.0.0 (allowed only with
auth), its tenants made by the CLI: `clinic-a` may call cxr-triage only, at 1 request/s
(burst 5); `research` may call every model, unlimited; `platform` is an admin (it may load and
unload LLM adapters at run time). Its model repository is a linked copy, as the adapter test
changes it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from serving.net import free_port
from serving.polling import poll_until
from serving.testing.process import ServerProcess, running_server
from serving.testing.samples import make_radiograph
from tests.conftest import MODEL_REPO, ROOT, TEST_LIMITS, linked_repo
from tests.integration.harness import write_config

MARKER = "PHIMARKER-Q7Z"  # stands for patient data: must reach no audit line
A_RATE, A_BURST = 1, 5


class AuthServer:
    def __init__(self, server: ServerProcess, keys: dict[str, str], audit: Path,
                 repo: Path) -> None:
        self.server, self.keys, self.audit, self.repo = server, keys, audit, repo
        self.request_ids: list[str] = []

    def call(self, method: str, path: str, tenant: str | None = None, key: str | None = None,
             **kwargs: Any) -> httpx.Response:
        headers = dict(kwargs.pop("headers", {}))
        key = key or (self.keys[tenant] if tenant else None)
        if key:
            headers["Authorization"] = f"Bearer {key}"
        r = httpx.request(method, self.server.url + path, headers=headers, timeout=120, **kwargs)
        if "x-request-id" in r.headers and not path.startswith("/v2/health/"):
            self.request_ids.append(r.headers["x-request-id"])  # probes are not audited
        return r


def _add_tenant(file: Path, name: str, *args: str) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "serving.cli", "tenants", "add", name, "--file", str(file),
         "--repo", str(MODEL_REPO), *args],
        capture_output=True, text=True, check=True, cwd=ROOT, timeout=120,
    ).stdout
    return out.rstrip("\n").splitlines()[-1]  # what `| tail -n1` gets


@pytest.fixture(scope="module")
def auth(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AuthServer]:
    tmp = tmp_path_factory.mktemp("medserve-auth")
    tenants = tmp / "tenants.yaml"
    keys = {
        "clinic-a": _add_tenant(tenants, "clinic-a", "--models", "cxr-triage",
                                "--rate", str(A_RATE), "--burst", str(A_BURST)),
        "research": _add_tenant(tenants, "research", "--models", "*"),
        "platform": _add_tenant(tenants, "platform", "--models", "*", "--admin"),
    }
    assert not any(k in tenants.read_text() for k in keys.values())
    audit = tmp / "audit" / "audit.jsonl"
    config = write_config(tmp / "medserve.yaml", limits=TEST_LIMITS,
                          http={"request_timeout_s": 60, "docs": False},
                          audit={"path": str(audit)})
    repo = linked_repo(tmp / "repo")
    with running_server(
        "--repo", str(repo), "--config", str(config), "--tenants",
        str(tenants),
        "--host", "0.0.0.0", log=tmp / "server.log", cwd=ROOT,
    ) as srv:
        yield AuthServer(srv, keys, audit, repo)


def test_missing_or_wrong_key_is_401(auth: AuthServer) -> None:
    for key in (None, "not-a-key", auth.keys["clinic-a"] + "x"):
        r = auth.call("GET", "/v2/models/cxr-triage", key=key)
        assert r.status_code == 401, r.text
        assert r.headers["www-authenticate"].startswith("Bearer")
        assert isinstance(r.json()["error"], str)
    r = auth.call("POST", "/v1/chat/completions", key="not-a-key",
                  json={"model": "clinical-llm", "messages": [{"role": "user", "content": "x"}]})
    assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
    # a body FastAPI would refuse is still a 401 first: no key, no word on the body's rules
    r = auth.call("POST", "/v1/chat/completions", content=b"{not json",
                  headers={"Content-Type": "application/json"})
    assert r.status_code == 401, r.text
    # probes stay open; this server turned the OpenAPI pages off (`http.docs: false`): gone
    # for a tenant, and like any path, not even that much said to a caller without a key
    assert auth.call("GET", "/v2/health/ready").status_code == 200
    for path in ("/openapi.json", "/docs"):
        assert auth.call("GET", path, "research").status_code == 404
        assert auth.call("GET", path).status_code == 401


def test_forbidden_model_and_unknown_model_get_the_same_403(auth: AuthServer) -> None:
    dcm = {"content": make_radiograph(), "headers": {"Content-Type": "application/dicom"}}
    real = auth.call("POST", "/v1/imaging/lung-nodule-ct/predict", "clinic-a", **dcm)
    fake = auth.call("POST", "/v1/imaging/no-such-model/predict", "clinic-a", **dcm)
    assert real.status_code == fake.status_code == 403
    assert real.json() == fake.json()
    ask = [{"role": "user", "content": "hello"}]
    real = auth.call("POST", "/v1/chat/completions", "clinic-a",
                     json={"model": "clinical-llm:lung-oncology", "messages": ask})
    fake = auth.call("POST", "/v1/chat/completions", "clinic-a",
                     json={"model": "no-such-llm", "messages": ask})
    assert real.status_code == fake.status_code == 403
    assert real.json() == fake.json() and real.json()["error"]["type"] == "permission_error"
    # for a tenant allowed every model, an unknown one is a plain 404
    assert auth.call("GET", "/v2/models/no-such-model", "research").status_code == 404


def test_allowed_models_answer(auth: AuthServer) -> None:
    dicom = make_radiograph(phi={"PatientName": MARKER, "PatientID": MARKER})
    r = auth.call("POST", f"/v1/imaging/cxr-triage/predict?note={MARKER}", "clinic-a",
                  content=dicom, headers={"Content-Type": "application/dicom",
                                          "X-Note": MARKER})
    assert r.status_code == 200, r.text
    assert r.json()["model"] == "cxr-triage"
    r = auth.call("POST", "/v1/chat/completions", "research", json={
        "model": "clinical-llm", "max_tokens": 2, "temperature": 0,
        "messages": [{"role": "user", "content": f"Patient {MARKER}: next steps?"}],
    })
    assert r.status_code == 200, r.text


def test_model_list_is_filtered_by_tenant(auth: AuthServer) -> None:
    a = auth.call("GET", "/v1/models", "clinic-a")
    everything = auth.call("GET", "/v1/models", "research")
    assert a.status_code == everything.status_code == 200
    assert a.json()["data"] == []
    ids = {m["id"] for m in everything.json()["data"]}
    assert "clinical-llm" in ids and "clinical-llm:lung-oncology" in ids


def test_rate_limit_429_with_retry_after_then_serves_again(auth: AuthServer) -> None:
    codes = []
    for _ in range(4 * A_BURST):
        r = auth.call("GET", "/v2/models/cxr-triage", "clinic-a")
        codes.append(r.status_code)
        if r.status_code == 429:
            break
    assert codes[-1] == 429 and set(codes[:-1]) == {200}, codes
    assert r.headers["retry-after"] == "1"  # < 1 s to the next token, rounded up
    assert r.json()["error"] and "key" in r.json()["error"]
    # other tenants are not held back, and clinic-a is served again once a token is back
    assert auth.call("GET", "/v2/models/cxr-triage", "research").status_code == 200
    deadline = time.monotonic() + 30
    while auth.call("GET", "/v2/models/cxr-triage", "clinic-a").status_code == 429:
        assert time.monotonic() < deadline, "clinic-a still refused after 30 s"
        time.sleep(0.2)  # polling interval


def test_an_admin_loads_and_unloads_an_adapter_under_traffic(
    auth: AuthServer, tmp_path: Path
) -> None:
    """vLLM's runtime adapter API: no replica restarts and no request of the traffic around
    it fails; only an admin key may use it."""
    source = shutil.copytree(MODEL_REPO / "clinical-llm" / "1" / "adapters" / "gi-oncology",
                             tmp_path / "incoming")
    load = {"lora_name": "gi-runtime", "lora_path": str(source)}
    assert auth.call("POST", "/v1/load_lora_adapter", json=load).status_code == 401
    assert auth.call("POST", "/v1/load_lora_adapter", "research", json=load).status_code == 403

    def chat(model: str) -> httpx.Response:
        return auth.call("POST", "/v1/chat/completions", "research", json={
            "model": model, "max_tokens": 4,
            "messages": [{"role": "user", "content": "Staging of colon cancer?"}]})

    stop, codes = threading.Event(), []

    def traffic() -> None:
        while not stop.is_set():
            codes.extend(chat(m).status_code for m in ("clinical-llm",
                                                          "clinical-llm:lung-oncology"))

    thread = threading.Thread(target=traffic)
    thread.start()
    try:
        r = auth.call("POST", "/v1/load_lora_adapter", "platform", json=load)
        assert r.status_code == 200 and r.json()["model"] == "clinical-llm:gi-runtime", r.text
        assert chat("clinical-llm:gi-runtime").status_code == 200
        listed = {m["id"] for m in auth.call("GET", "/v1/models", "research").json()["data"]}
        assert "clinical-llm:gi-runtime" in listed
        again = auth.call("POST", "/v1/load_lora_adapter", "platform", json=load)
        assert again.status_code == 400 and "already" in again.text
        r = auth.call("POST", "/v1/unload_lora_adapter", "platform",
                      json={"lora_name": "gi-runtime"})
        assert r.status_code == 200, r.text
        assert chat("clinical-llm:gi-runtime").status_code == 404
    finally:
        stop.set()
        thread.join()
    assert codes and set(codes) == {200}, codes


class Traffic:
    """cxr-triage predictions, two at a time, until the block ends: every status kept."""

    def __init__(self, auth: AuthServer) -> None:
        self.auth, self.statuses, self.stop = auth, [], threading.Event()
        self.threads = [threading.Thread(target=self._run) for _ in range(2)]

    def _run(self) -> None:
        body = make_radiograph()
        while not self.stop.is_set():
            try:
                status = self.auth.call("POST", "/v1/imaging/cxr-triage/predict", "platform",
                                        content=body,
                                        headers={"Content-Type": "application/dicom"}).status_code
            except httpx.HTTPError as exc:
                status = type(exc).__name__
            self.statuses.append(status)

    def __enter__(self) -> Traffic:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=180)


def test_a_model_is_listed_loaded_and_unloaded_at_run_time_under_traffic(
    auth: AuthServer,
) -> None:
    """Triton's repository extension through tritonclient: a model put in the repository
    folder after the start is UNAVAILABLE until loaded; loading and unloading it fails no
    request to the other models and restarts none of their replicas."""
    from tritonclient.http import InferenceServerClient, InferenceServerException

    added = auth.repo / "cxr-second"
    shutil.copytree(auth.repo / "cxr-triage", added, copy_function=os.link)
    manifest = added / "manifest.yaml"
    raw = yaml.safe_load(manifest.read_text())
    manifest.unlink()  # a hard link to the test repository's file: write a new one
    manifest.write_text(yaml.safe_dump({**raw, "name": "cxr-second"}))
    client = InferenceServerClient(auth.server.host_port, network_timeout=300)
    others = ("Gateway", "cxr-triage-v1", "lung-nodule-ct-v1", "clinical-llm-v1")
    pids = {d: sorted(auth.server.replica_pids(d)) for d in others}
    assert all(pids.values()), pids
    admin = {"Authorization": f"Bearer {auth.keys['platform']}"}
    try:
        index = client.get_model_repository_index(headers=admin)
        states = {(e["name"], e["version"]): (e["state"], e.get("reason", "")) for e in index}
        assert states[("cxr-triage", "1")] == ("READY", "")
        assert states[("lung-nodule-ct", "1")] == ("READY", "")
        assert states[("clinical-llm", "1")] == ("READY", "")
        state, reason = states[("cxr-second", "1")]
        assert state == "UNAVAILABLE" and "not loaded" in reason
        ready = auth.call("POST", "/v2/repository/index", "platform", json={"ready": True})
        assert ready.status_code == 200
        assert {e["name"] for e in ready.json()} == {"cxr-triage", "lung-nodule-ct",
                                                    "clinical-llm"}
        assert auth.call("GET", "/v2/repository/index", "platform").json() == index
        bad = auth.call("POST", "/v2/repository/index", "platform", content=b"{not json")
        assert bad.status_code == 400
        for tenant in ("research", None):
            with pytest.raises(InferenceServerException) as refused:
                client.get_model_repository_index(
                    headers={"Authorization": f"Bearer {auth.keys[tenant]}"} if tenant else {})
            assert refused.value.status() == ("403" if tenant else "401")
            with pytest.raises(InferenceServerException) as refused:
                client.load_model("cxr-second", headers={"Authorization": f"Bearer "
                                                         f"{auth.keys[tenant]}"} if tenant else {})
            assert refused.value.status() == ("403" if tenant else "401")
        # What cannot be loaded says why, and changes nothing.
        for model, config, status in [("no-such-model", None, "404"),
                                      ("cxr-second", '{"backend": "onnx"}', "400")]:
            with pytest.raises(InferenceServerException) as refused:
                client.load_model(model, headers=admin, config=config)
            assert refused.value.status() == status
        assert not client.is_model_ready("cxr-second", headers=admin)

        with Traffic(auth) as traffic:
            client.load_model("cxr-second", headers=admin)
            assert client.is_model_ready("cxr-second", headers=admin)
            r = auth.call("POST", "/v1/imaging/cxr-second/predict", "platform",
                          content=make_radiograph(),
                          headers={"Content-Type": "application/dicom"})
            assert r.status_code == 200 and r.json()["model"] == "cxr-second", r.text
            states = {(e["name"], e["version"]): e["state"]
                      for e in client.get_model_repository_index(headers=admin)}
            assert states[("cxr-second", "1")] == "READY"
            client.unload_model("cxr-second", headers=admin)
            assert not client.is_model_ready("cxr-second", headers=admin)
            r = auth.call("POST", "/v1/imaging/cxr-second/predict", "platform",
                          content=make_radiograph(),
                          headers={"Content-Type": "application/dicom"})
            assert r.status_code == 404, r.text
            time.sleep(2)
        print(f"\n{len(traffic.statuses)} cxr-triage requests during load and unload")
        assert traffic.statuses and set(traffic.statuses) == {200}, traffic.statuses
        assert {d: sorted(auth.server.replica_pids(d)) for d in others} == pids
        poll_until(lambda: not auth.server.replica_pids("cxr-second-v1"), 60, every_s=1.0)
        with pytest.raises(InferenceServerException) as refused:
            client.unload_model("cxr-second", headers=admin)  # no longer loaded
        assert refused.value.status() == "404"
    finally:
        client.close()
        shutil.rmtree(added)


def test_audit_log_lines(auth: AuthServer) -> None:
    expected = set(auth.request_ids)
    assert expected
    deadline = time.monotonic() + 30
    while True:  # the gateway writes each line once the response is sent
        text = auth.audit.read_text() if auth.audit.exists() else ""
        lines = [json.loads(line) for line in text.splitlines()]
        if expected <= {x["request_id"] for x in lines} or time.monotonic() > deadline:
            break
        time.sleep(0.2)  # polling interval
    assert expected <= {x["request_id"] for x in lines}
    assert MARKER not in text
    assert not any(k in text for k in auth.keys.values())
    for x in lines:
        assert set(x) == {"ts", "tenant", "model", "version", "route", "method", "status",
                          "latency_ms", "request_id"}
        assert x["tenant"] in (None, "clinic-a", "research", "platform")
        # route templates only ("unmatched" for the docs, which are not API routes)
        assert x["route"].startswith(("/v1/", "/v2")) or x["route"] == "unmatched", x
        assert MARKER not in x["route"] and "?" not in x["route"]
        assert x["latency_ms"] >= 0
    seen = {(x["tenant"], x["model"], x["route"], x["status"]) for x in lines}
    assert ("clinic-a", "cxr-triage", "/v1/imaging/{model}/predict", 200) in seen
    assert ("clinic-a", "lung-nodule-ct", "/v1/imaging/{model}/predict", 403) in seen
    assert ("clinic-a", "unknown", "/v1/imaging/{model}/predict", 403) in seen
    assert ("research", "clinical-llm", "/v1/chat/completions", 200) in seen
    assert ("clinic-a", "cxr-triage", "/v2/models/{model}", 429) in seen
    assert (None, "cxr-triage", "/v2/models/{model}", 401) in seen
    assert not any(x["route"].startswith("/v2/health") for x in lines)
    predict = next(x for x in lines if x["status"] == 200 and x["model"] == "cxr-triage"
                   and x["route"].endswith("/predict"))
    assert predict["version"] == "1" and predict["method"] == "POST"


def test_only_a_well_formed_client_request_id_reaches_the_audit_trail(auth: AuthServer) -> None:
    """A bounded token is adopted (hospital apps correlate with it); free text that could
    forge an audit or log line, or bloat it, is replaced by a fresh id."""
    forged = '1", "tenant": "clinic-a"} FORGED ' + "A" * 3000
    adopted = "trace-7f3a9c.01"
    key = {"Authorization": f"Bearer {auth.keys['research']}"}
    for rid in (forged, adopted):
        r = httpx.get(auth.server.url + "/v2/models/cxr-triage", timeout=60,
                      headers={**key, "X-Request-ID": rid})
        assert r.status_code == 200
    deadline = time.monotonic() + 30
    while True:  # the gateway writes each line once the response is sent
        text = auth.audit.read_text() if auth.audit.exists() else ""
        if adopted in text or time.monotonic() > deadline:
            break
        time.sleep(0.2)  # polling interval
    ids = [json.loads(line)["request_id"] for line in text.splitlines()]
    assert adopted in ids
    assert "FORGED" not in text
    assert all(0 < len(i) <= 64 for i in ids)


def test_load_tests_authenticate_as_their_tenants(auth: AuthServer, tmp_path: Path) -> None:
    """`medserve loadtest` sends each profile tenant's key (from the environment only): its
    requests are served, and the audit trail names the tenant."""
    profile = tmp_path / "keyed.yaml"
    profile.write_text(yaml.safe_dump({
        "name": "keyed", "duration_s": 6, "models": {"cxr-triage": {"rate_rps": 2.0}},
        "payloads": {"radiograph_px": 128},
        "tenants": [{"name": "research", "key_env": "RESEARCH_KEY"}],
        "slo_overrides": {"cxr-triage": {"latency_threshold_s": 30, "latency_objective": 0.5}},
    }))
    out = tmp_path / "out"
    env = {**os.environ, "RESEARCH_KEY": auth.keys["research"]}
    run = subprocess.run(
        [sys.executable, "-m", "serving.cli", "loadtest", "--profile", str(profile),
         "--host", auth.server.url, "--out", str(out), "--repo", str(MODEL_REPO)],
        capture_output=True, text=True, cwd=ROOT, timeout=300, env=env, check=False,
    )
    rows = [json.loads(x) for x in (out / "records.jsonl").read_text().splitlines()]
    assert run.returncode == 0, run.stdout + run.stderr
    assert rows and all(r["ok"] and r["status"] == 200 for r in rows)
    assert auth.keys["research"] not in "".join(p.read_text(errors="replace")
                                                for p in out.iterdir() if p.is_file())
    deadline = time.monotonic() + 30
    while True:  # the gateway writes each line once the response is sent
        audited = [json.loads(line) for line in auth.audit.read_text().splitlines()]
        mine = [x for x in audited if x["tenant"] == "research" and x["model"] == "cxr-triage"
                and x["route"] == "/v1/imaging/{model}/predict" and x["status"] == 200]
        if len(mine) >= len(rows) or time.monotonic() > deadline:
            break
        time.sleep(0.2)  # polling interval
    assert len(mine) >= len(rows)
    # Without the key the run cannot start: a clear error, not a stream of 401s.
    missing = subprocess.run(
        [sys.executable, "-m", "serving.cli", "loadtest", "--profile", str(profile),
         "--host", auth.server.url, "--out", str(tmp_path / "none"), "--repo",
         str(MODEL_REPO)],
        capture_output=True, text=True, cwd=ROOT, timeout=120, check=False,
        env={k: v for k, v in os.environ.items() if k != "RESEARCH_KEY"},
    )
    assert missing.returncode == 2 and "RESEARCH_KEY" in missing.stderr


def test_refuses_non_loopback_without_tenants(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("MEDSERVE_TENANTS_FILE",)}
    env["RAY_TMPDIR"] = str(tmp_path)  # Ray would create its session here
    r = subprocess.run(
        [sys.executable, "-m", "serving.cli", "serve", "--host", "0.0.0.0",
         "--port", str(free_port()), "--repo", str(MODEL_REPO)],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=120, check=False,
    )
    assert r.returncode == 1
    assert "refusing to bind 0.0.0.0" in " ".join(r.stderr.split())
    assert "--tenants" in r.stderr
    assert list(tmp_path.iterdir()) == []  # it exited before starting Ray
