"""What each workload sends: synthetic DICOM studies and multi-turn clinical chats.

Pure request building (no Locust), so the payloads can be checked in unit tests. Radiographs
and CT series come from serving.testing.samples (no patient data); sizes are set by the profile
because full-size studies (2-3k px radiographs, 300-slice CTs) would saturate a 2-core test
box on upload alone. Chats follow the OpenAI chat-completions contract (README, "Routes").
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Iterable, Iterator, Mapping, Sequence

from loadtests.traffic.profiles import Kind, Payloads, Profile, Tenant
from serving.protocol.headers import PRIORITY as PRIORITY_HEADER
from serving.testing.samples import make_ct_series, make_radiograph, zip_series

API_KEY_ENV = "MEDSERVE_API_KEY"  # the key of tenants that name no `key_env`

QUESTIONS = (
    "Summarise the work-up for a 62-year-old smoker with a 9 mm solid lung nodule.",
    "What follow-up interval does a 5 mm ground-glass nodule need?",
    "Which staging investigations are usual before treating early colorectal cancer?",
    "List red flags in a patient with new back pain and a history of prostate cancer.",
    "How should a raised PSA in a 58-year-old be followed up?",
    "What does BI-RADS 4 on a screening mammogram mean for the next steps?",
    "Outline first-line options for suspected community-acquired pneumonia in an adult.",
    "What should prompt urgent referral for a pigmented skin lesion?",
)
FOLLOW_UPS = (
    "And if the patient has chronic kidney disease?",
    "What if the lesion has grown on the follow-up scan?",
    "Which of those can a township health centre do on site?",
    "Please make that shorter.",
)
CANNED_REPLY = "Decision support only: consider guideline-based work-up and specialist review."


def imaging_bodies(kind: Kind, p: Payloads, variants: int = 4) -> list[tuple[bytes, str]]:
    """A few distinct studies per model, so caches and identical inputs flatter nothing."""
    if kind == "radiograph":
        styles = [("DX", "MONOCHROME2"), ("CR", "MONOCHROME1")]
        return [
            (make_radiograph(*styles[i % 2], rows=p.radiograph_px, cols=p.radiograph_px, seed=i),
             "application/dicom")
            for i in range(variants)
        ]
    return [
        (zip_series(make_ct_series(slices=p.ct_slices, rows=p.ct_px, cols=p.ct_px, seed=i)),
         "application/zip")
        for i in range(variants)
    ]


def chat_body(model: str, adapters: list[str], p: Payloads, rng: random.Random) -> bytes:
    """One turn of a consultation, with the earlier turns of the conversation as history. Its
    `seed` makes the reply's sampling a function of the request, so a replayed schedule
    (`Profile.repeat_s`) has the same tokens generated again, not replies of other lengths."""
    turns = rng.randint(0, p.chat_max_history)
    messages: list[dict[str, str]] = [{"role": "user", "content": rng.choice(QUESTIONS)}]
    for _ in range(turns):
        messages.append({"role": "assistant", "content": CANNED_REPLY})
        messages.append({"role": "user", "content": rng.choice(FOLLOW_UPS)})
    name = f"{model}:{rng.choice(adapters)}" if adapters else model
    return json.dumps({
        "model": name, "messages": messages, "max_tokens": p.chat_max_tokens,
        "stream": True, "stream_options": {"include_usage": True},
        "seed": rng.randrange(2**31),
    }).encode()


def sse_data(lines: Iterable[bytes | str]) -> Iterator[str]:
    """The `data:` payloads of a server-sent event stream, up to and excluding [DONE]."""
    for raw in lines:
        line = raw.decode() if isinstance(raw, bytes) else raw
        if not line.startswith("data:"):
            continue
        data = line[5:].strip()
        if data == "[DONE]":
            return
        yield data
    raise ConnectionError("stream ended before data: [DONE]")


def has_content(data: str) -> bool:
    """Does a chat.completion.chunk carry generated text (not just a role or usage)?"""
    chunk = json.loads(data)
    return any(c.get("delta", {}).get("content") for c in chunk.get("choices", []))


def token_times(stamped: Sequence[tuple[float, bytes | str]]) -> list[float]:
    """When each chunk with generated text arrived, from (arrival time, line) pairs; raises
    ConnectionError if the stream did not end with [DONE]."""
    times = []
    for when, raw in stamped:
        line = raw.decode() if isinstance(raw, bytes) else raw
        data = line[5:].strip() if line.startswith("data:") else ""
        if data and data != "[DONE]" and has_content(data):
            times.append(when)
    list(sse_data(line for _, line in stamped))
    return times


class Mix:
    """Tenant and priority of each request, drawn by the profile's weights."""

    def __init__(self, tenants: dict[str, float], priorities: dict[str, float], seed: int):
        self.rng = random.Random(seed)
        self.tenants, self.tenant_w = list(tenants), list(tenants.values())
        self.priorities, self.priority_w = list(priorities), list(priorities.values())

    def draw(self) -> tuple[str, str]:
        tenant = self.rng.choices(self.tenants, self.tenant_w)[0]
        return tenant, self.rng.choices(self.priorities, self.priority_w)[0]


Request = tuple[bytes, dict[str, str], str, str]  # body, headers, tenant, priority


class Requests:
    """One model's requests in order, every draw (payload, tenant, priority) from one seed:
    `restart()` draws the same sequence again, which is how a replayed schedule
    (`Profile.repeat_s`) sends each pass the same requests."""

    def __init__(self, model: str, kind: Kind, adapters: list[str], profile: Profile,
                 seed: int, env: Mapping[str, str] = os.environ) -> None:
        self.model, self.kind, self.adapters, self.seed = model, kind, adapters, seed
        self.payloads = profile.payloads
        self.weights = {t.name: t.weight for t in profile.tenants}, profile.priorities
        self.auth = auth_headers(profile.tenants, env)
        self.bodies = [] if kind == "chat" else imaging_bodies(kind, profile.payloads)
        self.restart()

    def restart(self) -> None:
        self.rng = random.Random(self.seed)
        self.mix = Mix(*self.weights, self.seed)

    def next(self) -> Request:
        tenant, priority = self.mix.draw()
        headers = {PRIORITY_HEADER: priority, **self.auth[tenant]}
        if self.kind == "chat":
            body = chat_body(self.model, self.adapters, self.payloads, self.rng)
            headers["Content-Type"] = "application/json"
        else:
            body, headers["Content-Type"] = self.rng.choice(self.bodies)
        return body, headers, tenant, priority


def auth_headers(
    tenants: Iterable[Tenant], env: Mapping[str, str] = os.environ
) -> dict[str, dict[str, str]]:
    """Tenant name -> the headers that authenticate its requests (none without a key).
    A tenant whose `key_env` is unset or empty is an error here, before any request."""
    headers = {}
    for tenant in tenants:
        key = env.get(tenant.key_env or API_KEY_ENV, "")
        if tenant.key_env and not key:
            raise ValueError(f"tenant {tenant.name}: ${tenant.key_env} holds no API key")
        headers[tenant.name] = bearer(key)
    return headers


def bearer(key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"} if key else {}


def path_of(kind: Kind, model: str) -> str:
    return "/v1/chat/completions" if kind == "chat" else f"/v1/imaging/{model}/predict"
