"""Load-test profiles, plans and workloads (payloads, chat turns, SSE parsing)."""

from __future__ import annotations

import json
import random
from io import BytesIO
from pathlib import Path
from types import SimpleNamespace

import pydicom
import pytest
from pydantic import ValidationError

from loadtests.generator.workloads import (
    API_KEY_ENV,
    Mix,
    Requests,
    auth_headers,
    chat_body,
    imaging_bodies,
    path_of,
    sse_data,
    token_times,
)
from loadtests.traffic.profiles import (
    PROFILES,
    Payloads,
    Profile,
    Tenant,
    build_plan,
    kind_of,
    load_profile,
)
from serving.repository.store import load_manifest

REPO = Path(__file__).resolve().parents[2] / "model_repo"


@pytest.mark.parametrize("path", sorted(PROFILES.glob("*.yaml")), ids=lambda p: p.stem)
def test_shipped_profiles_load_with_positive_rates(path: Path) -> None:
    profile = load_profile(path.stem)
    assert all(rate > 0 for rate in profile.base_rates().values())
    assert set(profile.slo_overrides) <= set(profile.models)


def test_only_the_smoke_profile_loosens_slos() -> None:
    loosened = {p.stem for p in PROFILES.glob("*.yaml") if load_profile(p.stem).slo_overrides}
    assert loosened == {"smoke"}


def test_rollout_rates_are_its_peak_times_the_share() -> None:
    profile = Profile.model_validate({
        "name": "t", "duration_s": 10, "rollout": "pilot", "share": 0.5,
        "models": {"cxr-triage": {}, "lung-nodule-ct": {"rate_rps": 0.3}},
    })
    rollout = profile.load_rollout()
    assert rollout is not None
    assert profile.base_rates() == {"cxr-triage": pytest.approx(rollout.peak_rps("cxr-triage") / 2),
                                    "lung-nodule-ct": 0.3}


def test_profiles_reject_missing_rates_and_unknown_priorities() -> None:
    with pytest.raises(ValidationError, match="rate_rps"):
        Profile.model_validate({"name": "t", "duration_s": 1, "models": {"m": {}}})
    with pytest.raises(ValidationError, match="priorities"):
        Profile.model_validate({"name": "t", "duration_s": 1, "models": {"m": {"rate_rps": 1}},
                                "priorities": {"whenever": 1.0}})
    with pytest.raises(FileNotFoundError, match="smoke"):
        load_profile("no-such-profile")


def test_a_replay_period_needs_a_constant_rate_and_scales_with_the_run() -> None:
    soak = load_profile("soak")
    assert soak.repeat_s is not None and soak.duration_s % soak.repeat_s == 0
    repo = SimpleNamespace(models={"cxr-triage": load_manifest(REPO / "cxr-triage" /
                                                               "manifest.yaml")})
    plan, _ = build_plan(soak, repo, records="r.jsonl", duration_s=soak.duration_s / 10)
    assert plan.profile.repeat_s == pytest.approx(soak.repeat_s / 10)
    with pytest.raises(ValidationError, match="repeat_s replays a constant load"):
        Profile.model_validate({"name": "t", "duration_s": 10, "shape": {"kind": "step"},
                                "repeat_s": 5, "models": {"m": {"rate_rps": 1}}})


def test_plan_drives_models_in_the_repository_and_notes_the_rest() -> None:
    cxr = load_manifest(REPO / "cxr-triage" / "manifest.yaml")
    llm = SimpleNamespace(adapters=[SimpleNamespace(name="lung-oncology")])
    repo = SimpleNamespace(models={"cxr-triage": cxr}, llms={"clinical-llm": llm})
    plan, notes = build_plan(load_profile("smoke"), repo, records="r.jsonl", duration_s=7)
    assert plan.profile.duration_s == 7
    assert {m: s.kind for m, s in plan.models.items()} == {"cxr-triage": "radiograph",
                                                          "clinical-llm": "chat"}
    assert plan.models["clinical-llm"].adapters == ["lung-oncology"]
    assert notes == ["lung-nodule-ct: not in the model repository, not driven"]


def test_imaging_payloads_are_dicom_the_models_accept() -> None:
    p = Payloads(radiograph_px=128, ct_slices=5, ct_px=32)
    cxr = load_manifest(REPO / "cxr-triage" / "manifest.yaml")
    ct = load_manifest(REPO / "lung-nodule-ct" / "manifest.yaml")
    assert (kind_of(cxr), kind_of(ct)) == ("radiograph", "ct")
    bodies = imaging_bodies("radiograph", p)
    assert len({b for b, _ in bodies}) == len(bodies)  # distinct studies
    for body, ctype in bodies:
        ds = pydicom.dcmread(BytesIO(body))
        assert ctype in cxr.content_types and ds.Modality in cxr.modalities
        assert (ds.Rows, ds.Columns) == (128, 128)
    for body, ctype in imaging_bodies("ct", p):
        assert ctype in ct.content_types and body[:2] == b"PK"  # a zip of the series
    assert path_of("ct", "lung-nodule-ct") == "/v1/imaging/lung-nodule-ct/predict"


def test_chat_turns_are_openai_streaming_requests_with_history() -> None:
    p = Payloads(chat_max_tokens=16, chat_max_history=3)
    rng = random.Random(0)
    bodies = [json.loads(chat_body("clinical-llm", ["a", "b"], p, rng)) for _ in range(50)]
    for b in bodies:
        assert b["model"] in ("clinical-llm:a", "clinical-llm:b")
        assert b["stream"] is True and b["stream_options"] == {"include_usage": True}
        assert b["max_tokens"] == 16 and b["messages"][-1]["role"] == "user"
        assert len(b["messages"]) % 2 == 1 and len(b["messages"]) <= 1 + 2 * 3
    assert len({len(b["messages"]) for b in bodies}) > 1  # conversations of several lengths
    assert len({b["seed"] for b in bodies}) == 50  # each turn its own, replayed with it
    assert json.loads(chat_body("clinical-llm", [], p, rng))["model"] == "clinical-llm"
    assert path_of("chat", "clinical-llm") == "/v1/chat/completions"


def chunk(text: str | None) -> str:
    delta = {"content": text} if text is not None else {"role": "assistant"}
    return "data: " + json.dumps({"object": "chat.completion.chunk",
                                  "choices": [{"index": 0, "delta": delta}]})


def test_token_times_skip_role_and_usage_chunks_and_need_done() -> None:
    usage = "data: " + json.dumps({"choices": [], "usage": {"completion_tokens": 2}})
    lines = [chunk(None), "", chunk("Hel"), "", chunk("lo"), usage, "data: [DONE]"]
    stamped = list(enumerate(lines))
    assert token_times([(float(t), x) for t, x in stamped]) == [2.0, 4.0]
    assert list(sse_data([b"data: [DONE]"])) == []
    with pytest.raises(ConnectionError):
        token_times([(0.0, chunk("cut off"))])


def test_tenant_and_priority_mix_follows_the_weights() -> None:
    mix = Mix({"a": 3.0, "b": 1.0}, {"stat": 1.0, "routine": 9.0}, seed=1)
    draws = [mix.draw() for _ in range(4000)]
    share_a = sum(1 for t, _ in draws if t == "a") / len(draws)
    share_stat = sum(1 for _, p in draws if p == "stat") / len(draws)
    assert abs(share_a - 0.75) < 5 * (0.75 * 0.25 / 4000) ** 0.5
    assert abs(share_stat - 0.1) < 5 * (0.1 * 0.9 / 4000) ** 0.5


def test_requests_restart_draws_the_same_sequence() -> None:
    profile = Profile.model_validate({
        "name": "t", "duration_s": 10, "models": {"m": {"rate_rps": 1}},
        "priorities": {"stat": 1.0, "routine": 1.0},
        "tenants": [{"name": "a"}, {"name": "b", "weight": 2.0}]})
    chats = Requests("clinical-llm", "chat", ["x", "y"], profile, seed=4, env={})
    first = [chats.next() for _ in range(20)]
    more = [chats.next() for _ in range(20)]
    chats.restart()
    assert [chats.next() for _ in range(40)] == first + more
    assert len({r[0] for r in first}) > 1 and {r[2] for r in first} == {"a", "b"}
    assert {r[3] for r in first} == {"stat", "routine"}
    assert all(r[1]["x-priority"] == r[3] for r in first)
    assert [Requests("clinical-llm", "chat", ["x", "y"], profile, seed=5, env={}).next()
            for _ in range(20)] != first
    studies = Requests("cxr-triage", "radiograph", [], profile, seed=4, env={})
    sent = [studies.next()[0] for _ in range(12)]
    studies.restart()
    assert [studies.next()[0] for _ in range(12)] == sent and len(set(sent)) > 1


def test_tenants_authenticate_with_keys_from_the_environment() -> None:
    tenants = [Tenant(name="a", key_env="KEY_A"), Tenant(name="b")]
    env = {"KEY_A": "key-of-a", API_KEY_ENV: "shared-key"}
    assert auth_headers(tenants, env) == {"a": {"Authorization": "Bearer key-of-a"},
                                          "b": {"Authorization": "Bearer shared-key"}}
    # No key at all: a server without auth, no header.
    assert auth_headers([Tenant(name="b")], {}) == {"b": {}}
    # A named variable that is missing is an error before any request, naming the variable.
    with pytest.raises(ValueError, match=r"\$KEY_A"):
        auth_headers(tenants, {API_KEY_ENV: "shared-key"})
