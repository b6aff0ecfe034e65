"""Property-based fuzzing of the OpenAPI schema (schemathesis + hypothesis): no generated request gets a 500.

Each operation of the schema (the write routes included: the app is built with a write token) is called with
EXAMPLES generated requests in each of schemathesis' positive (schema-valid) and negative (schema-violating)
modes, through the ASGI app over the store made by real jobs.
"""
from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

from bitsmith.platform.ui.app import create_app
from bitsmith.platform.ui.auth import WRITE_HEADER, Access

EXAMPLES = 15
WRITE = "fuzz-write-token"


@pytest.fixture(scope="module")
def api_schema(ui_store, ui_db):
    app = create_app(ui_store.settings(), Access(write_token=WRITE), db=ui_db)
    return schemathesis.openapi.from_asgi("/api/openapi.json", app)


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=["positive", "negative"])
def test_no_generated_request_is_a_server_error(api_schema, mode) -> None:
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) >= 15 and any(op.method == "post" for op in operations)
    failures: list[str] = []
    calls = 0
    for op in operations:
        # reproduce/resume would start real background jobs: they get a wrong write token (still fuzzed up to auth)
        spawns = op.path.endswith(("/reproduce", "/resume"))
        headers = {"host": "127.0.0.1", WRITE_HEADER: "wrong" if spawns else WRITE}

        @given(case=op.as_strategy(generation_mode=mode))
        @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None,
                  derandomize=True)
        def call(case) -> None:
            nonlocal calls
            response = case.call(headers={**(case.headers or {}), **headers})
            calls += 1
            if response.status_code >= 500:
                failures.append(f"{op.method.upper()} {op.path} {case.path_parameters} {case.query} "
                                f"{case.body!r:.200} -> {response.status_code} {response.text[:200]}")

        try:
            call()
        except Unsatisfiable:  # nothing in this operation can violate the schema (e.g. no parameters at all)
            assert mode == GenerationMode.NEGATIVE, f"{op.method} {op.path}: no valid request generated"
    assert calls >= len(operations) * (5 if mode == GenerationMode.POSITIVE else 2)
    assert not failures, "\n".join(failures[:20])
