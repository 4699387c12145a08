"""Property-based fuzzing of every operation in the OpenAPI spec (schemathesis): no input gives a 5xx."""
from __future__ import annotations

import pytest

schemathesis = pytest.importorskip("schemathesis", reason="schemathesis is not installed (test extra)")
from hypothesis import HealthCheck, settings  # noqa: E402 -- after the skip

from tests.server.conftest import RunningServer  # noqa: E402


@pytest.fixture(scope="module")
def api_schema(minilm, tmp_path_factory):
    import httpx

    from flagstone.server.app import ServerSettings, create_app

    data = tmp_path_factory.mktemp("fuzz")
    server = RunningServer(create_app(ServerSettings(data_dir=str(data), max_texts=8, max_chars=500),
                                      embedder=minilm))
    httpx.post(f"{server.url}/collections", json={"name": "docs"})
    httpx.post(f"{server.url}/collections/docs/documents",
               json={"documents": [{"id": "a", "text": "zinc and colds"}, {"id": "b", "text": "neutron stars"}]})
    yield schemathesis.openapi.from_url(f"{server.url}/openapi.json")
    server.stop()


def test_no_input_gives_a_server_error(api_schema):
    from hypothesis import given

    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) >= 12
    calls = []
    for operation in operations:
        @given(case=operation.as_strategy())
        @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def no_5xx(case):
            response = case.call(timeout=60)
            calls.append(response.status_code)
            assert response.status_code < 500, (f"{case.method} {case.formatted_path} -> {response.status_code}: "
                                                 f"{response.text[:300]}")

        no_5xx()
    assert len(calls) > 10 * len(operations)  # hypothesis really generated requests for every operation
    assert any(200 <= status < 300 for status in calls)
