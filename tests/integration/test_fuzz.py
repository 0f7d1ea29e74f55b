"""Fuzz the HTTP API from its own OpenAPI schema (schemathesis): no 5xx, server stays up.

Every operation in the live `/openapi.json` is exercised, binary upload routes included (their
request bodies are declared in the schema). Examples are bounded and derandomized so a run
takes a minute or two on two cores and a failure reproduces. Nothing is excluded.
"""

from __future__ import annotations

from collections import Counter

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.schemas import APIOperation, BaseSchema

from tests.conftest import Server

# STOW-RS bodies: raw bytes, as for the other binary uploads (the route parses the parts).
schemathesis.serializer.alias("multipart/related", "application/octet-stream")
MAX_EXAMPLES = 40  # per operation and mode; about twenty operations: ~1 minute
SERVED = {"model": "cxr-triage", "version": "1"}


@pytest.fixture(scope="module")
def api_schema(server: Server) -> BaseSchema:
    return schemathesis.openapi.from_url(f"{server.url}/openapi.json", timeout=30)


def _served(case: schemathesis.Case) -> schemathesis.Case:
    """The case aimed at a served model. A random model name is a 404 before any body is
    read, so without this the body parsers (DICOM, zip, multipart, OIP, chat) would hardly be
    fuzzed; the chat reply is kept short so generation stays cheap."""
    if case.path_parameters:
        case.path_parameters = {**case.path_parameters,
                                **{k: v for k, v in SERVED.items() if k in case.path_parameters}}
    if isinstance(case.body, dict) and "messages" in case.body:
        case.body = {**case.body, "model": "clinical-llm", "max_tokens": 4,
                     "max_completion_tokens": 4}
    return case


def _fuzz(operation: APIOperation, mode: GenerationMode, seen: Counter[str]) -> None:
    # schemathesis' own pytest integration (`from_fixture`) needs a pytest internal that
    # pytest 9 removed, so each operation's strategy runs under an explicit `given`.
    cases = operation.as_strategy(mode)
    @given(case=st.one_of(cases, cases.map(_served)))
    @settings(max_examples=MAX_EXAMPLES, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck), phases=[Phase.explicit, Phase.generate])
    def fuzz(case: schemathesis.Case) -> None:
        response = case.call_and_validate(checks=[not_a_server_error], timeout=90)
        seen[f"{operation.method.upper()} {response.status_code}"] += 1

    fuzz()


def test_no_operation_answers_a_server_error(api_schema: BaseSchema) -> None:
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) >= 15
    failures = []
    seen: Counter[str] = Counter()  # "METHOD status" of every answer
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            try:
                _fuzz(operation, mode, seen)
            except Unsatisfiable:  # nothing to break, e.g. a route without parameters
                assert mode is GenerationMode.NEGATIVE, operation.label
            except Exception as exc:  # every operation runs; all failures are reported
                failures.append(f"{operation.label} ({mode.value}): {exc}")
    assert not failures, "\n\n".join(failures)
    print(f"fuzz answers: {dict(sorted(seen.items()))}")
    # It really ran: many requests, successes and refusals both, on POST routes too.
    assert sum(seen.values()) >= 20 * len(operations)
    assert seen["GET 200"] > 20 and seen["POST 200"] and seen["POST 400"] > 100


def test_every_operation_is_in_the_schema(api_schema: BaseSchema) -> None:
    paths = api_schema.raw_schema["paths"]
    for path in ("/v1/imaging/{model}/predict", "/v2/models/{model}/infer",
                 "/v1/chat/completions"):
        assert "requestBody" in paths[path]["post"], path


def test_server_is_up_and_ready_after_the_fuzz(server: Server) -> None:
    assert httpx.get(f"{server.url}/v2/health/live", timeout=30).status_code == 200
    assert httpx.get(f"{server.url}/v2/health/ready", timeout=30).status_code == 200
