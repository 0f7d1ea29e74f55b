"""Tenants file schema, key hashing and lookup, token buckets, and `medserve tenants`."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError
from typer.testing import CliRunner

from serving.cli.main import app
from serving.errors import ModelLoadError
from serving.gateway import tenants as tenants_mod
from serving.gateway.tenants import (
    Keyring,
    RateLimiter,
    Tenant,
    TenantsFile,
    TokenBucket,
    key_sha256,
    load_tenants,
    new_key,
)

ROOT = Path(__file__).resolve().parents[2]
MODEL_REPO = ROOT / "model_repo"
HASH = "ab" * 32


def tenant(name: str = "clinic-a", key: str | None = None, **kw: object) -> Tenant:
    digest = key_sha256(key) if key else HASH
    return Tenant.model_validate({"name": name, "key_sha256": digest, "models": ["*"], **kw})


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


# --- file schema --------------------------------------------------------------------------

def test_file_schema_defaults_and_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "tenants.yaml"
    path.write_text(yaml.safe_dump({"tenants": [
        {"name": "clinic-a", "key_sha256": HASH, "models": ["cxr-triage"]},
    ]}))
    (t,) = load_tenants(path).tenants
    assert (t.rate_per_s, t.burst, t.max_priority) == (None, None, "stat")
    assert HASH not in repr(t)  # the hash stays out of reprs (and so out of tracebacks)


@pytest.mark.parametrize("entry, words", [
    ({"key_sha256": "not-hex"}, "key_sha256"),
    ({"name": "Clinic A"}, "name"),
    ({"models": []}, "models"),
    ({"models": ["cxr triage"]}, "models"),
    ({"rate_per_s": 0}, "rate_per_s"),
    ({"max_priority": "emergency"}, "max_priority"),
    ({"api_key": "plain"}, "api_key"),  # extra keys are errors: a key never sits in the file
])
def test_file_schema_rejects(tmp_path: Path, entry: dict[str, object], words: str) -> None:
    base = {"name": "clinic-a", "key_sha256": HASH, "models": ["*"]}
    path = tmp_path / "tenants.yaml"
    path.write_text(yaml.safe_dump({"tenants": [{**base, **entry}]}))
    with pytest.raises(ModelLoadError, match=words) as info:
        load_tenants(path)
    assert HASH not in info.value.message


def test_file_schema_rejects_duplicates() -> None:
    with pytest.raises(ValidationError, match="unique"):
        TenantsFile(tenants=[tenant("a"), tenant("a", key="other")])
    with pytest.raises(ValidationError, match="share one API key"):
        TenantsFile(tenants=[tenant("a"), tenant("b")])


def test_k8s_secret_template_is_a_valid_tenants_file() -> None:
    assert load_tenants(ROOT / "k8s" / "base" / "tenants.yaml").tenants == []


def test_allow_list() -> None:
    t = tenant(models=["cxr-triage", "clinical-llm:lung-oncology"])
    assert t.allows("cxr-triage")
    assert t.allows("clinical-llm:lung-oncology")
    assert not t.allows("clinical-llm")
    assert not t.allows("clinical-llm:breast-oncology")
    assert not t.allows("lung-nodule-ct")
    base = tenant(models=["clinical-llm"])
    assert base.allows("clinical-llm") and base.allows("clinical-llm:breast-oncology")
    assert tenant(models=["*"]).allows("anything-at-all")


# --- keys ---------------------------------------------------------------------------------

def test_keys_are_random_and_stored_as_sha256() -> None:
    key = new_key()
    assert len(key) >= 43 and key != new_key()
    assert key_sha256(key) == hashlib.sha256(key.encode()).hexdigest()


def test_keyring_finds_the_tenant_of_a_key() -> None:
    keys = [new_key() for _ in range(3)]
    ring = Keyring([tenant(f"t{i}", key=k) for i, k in enumerate(keys)])
    assert [ring.authenticate(k).name for k in keys] == ["t0", "t1", "t2"]  # type: ignore[union-attr]
    assert ring.authenticate("wrong") is None
    assert ring.authenticate(keys[0] + "x") is None
    assert ring.authenticate("") is None and ring.authenticate(None) is None


def test_keyring_compares_every_hash_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    keys = [new_key() for _ in range(4)]
    ring = Keyring([tenant(f"t{i}", key=k) for i, k in enumerate(keys)])
    calls: list[tuple[bytes, bytes]] = []
    real = tenants_mod.hmac.compare_digest

    def counting(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(tenants_mod.hmac, "compare_digest", counting)
    for key in (keys[0], keys[3], "wrong"):
        calls.clear()
        ring.authenticate(key)
        # no early exit on the first match: the same work whichever tenant (if any) it is
        assert len(calls) == 4
        assert all(len(a) == len(b) == 32 for a, b in calls)


# --- rate limits --------------------------------------------------------------------------

def test_token_bucket_with_an_injected_clock() -> None:
    clock = Clock()
    bucket = TokenBucket(rate=2.0, size=3, clock=clock)
    assert [bucket.take() for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.take() == pytest.approx(0.5)  # one token every 1/rate s
    clock.now += 0.25
    assert bucket.take() == pytest.approx(0.25)  # a refused request takes nothing
    clock.now += 0.25
    assert bucket.take() == 0.0
    clock.now += 3600  # idling refills up to the bucket size, no further
    assert [bucket.take() for _ in range(4)][-1] > 0


def test_rate_limiter_splits_rates_among_gateway_replicas() -> None:
    clock = Clock()
    limited = tenant("a", rate_per_s=10, burst=20)
    default_burst = tenant("b", key="b", rate_per_s=2.5)
    free = tenant("c", key="c")
    limiter = RateLimiter([limited, default_burst, free], replicas=2, clock=clock)
    a = limiter.buckets["a"]
    assert (a.rate, a.size) == (5.0, 10.0)
    assert limiter.buckets["b"].size == 1.5  # one second's worth (3), halved
    assert "c" not in limiter.buckets
    assert [limiter.wait_s(limited) for _ in range(10)] == [0.0] * 10
    assert limiter.wait_s(limited) == pytest.approx(0.2)
    assert all(limiter.wait_s(free) == 0.0 for _ in range(1000))


# --- CLI ----------------------------------------------------------------------------------

def _add(file: Path, name: str, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["tenants", "add", name, "--file", str(file),
                                      "--repo", str(MODEL_REPO), *args])
    return result.exit_code, result.output


def test_cli_add_prints_the_key_once_and_stores_only_its_hash(tmp_path: Path) -> None:
    file = tmp_path / "secrets" / "tenants.yaml"
    code, out = _add(file, "clinic-a", "--models", "cxr-triage,clinical-llm:lung-oncology",
                     "--rate", "2", "--burst", "4", "--max-priority", "urgent")
    assert code == 0, out
    key = out.rstrip("\n").splitlines()[-1]
    assert len(key) >= 43 and " " not in key and out.count(key) == 1
    text = file.read_text()
    assert key not in text and key_sha256(key) in text
    assert file.stat().st_mode & 0o077 == 0  # owner only
    (t,) = load_tenants(file).tenants
    assert (t.name, t.models, t.rate_per_s, t.burst, t.max_priority) == (
        "clinic-a", ["cxr-triage", "clinical-llm:lung-oncology"], 2.0, 4, "urgent")
    assert Keyring([t]).authenticate(key) == t

    code, out = _add(file, "clinic-b", "--models", "*")
    assert code == 0
    assert [t.name for t in load_tenants(file).tenants] == ["clinic-a", "clinic-b"]

    listing = CliRunner().invoke(app, ["tenants", "list", "--file", str(file)])
    assert listing.exit_code == 0 and "clinic-b" in listing.output and "urgent" in listing.output
    assert key_sha256(key) not in listing.output


@pytest.mark.parametrize("name, args, words", [
    ("clinic-a", ["--models", "*"], "already exists"),
    ("clinic-c", ["--models", "cxr-triage,no-such-model"], "no-such-model"),
    ("clinic-c", ["--models", "clinical-llm:no-such-adapter"], "no-such-adapter"),
    ("Clinic C", ["--models", "*"], "name"),
    ("clinic-c", ["--models", "*", "--max-priority", "asap"], "max-priority"),
])
def test_cli_add_refuses(tmp_path: Path, name: str, args: list[str], words: str) -> None:
    file = tmp_path / "tenants.yaml"
    assert _add(file, "clinic-a", "--models", "*")[0] == 0
    before = file.read_text()
    code, out = _add(file, name, *args)
    assert code == 1 and words in out.replace("\n", " ")
    assert file.read_text() == before
