"""Fuzz the HTTP API with schemathesis against its own published OpenAPI spec: no 5xx on any input.

The server is real (uvicorn on 127.0.0.1, the real catalog); the pipeline runner is not started, so
the fuzzer exercises the API layer (alarms are committed but not processed). Examples per operation
are few so that the module stays well under a minute.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from alarmsieve.api.ingest import IngestLimits
from tests.test_api import Api, module_workspace, serve_api


@pytest.fixture(scope="module")
def fuzz_api(tmp_path_factory: pytest.TempPathFactory, model_dir: Path) -> Iterator[Api]:
    limits = IngestLimits(max_bytes=1_000_000, rate_per_minute=100_000)
    with serve_api(module_workspace(tmp_path_factory, model_dir), runner=False, limits=limits) as served:
        yield served


@pytest.fixture(scope="module")
def api_schema(fuzz_api: Api) -> schemathesis.BaseSchema:
    return schemathesis.openapi.from_url(f"{fuzz_api.url}/api/v1/openapi.json")


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_no_server_errors_with_an_operator_token(case: schemathesis.Case, fuzz_api: Api) -> None:
    response = case.call(headers={"Authorization": f"Bearer {fuzz_api.operator}"}, timeout=30)
    assert response.status_code < 500, f"{case.method} {case.formatted_path}: {response.status_code} {response.text}"
    if response.status_code >= 400:
        body = response.json()
        assert set(body) == {"error", "detail"}, body


@schema.parametrize()
@settings(max_examples=4, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_no_server_errors_with_a_camera_token(case: schemathesis.Case, fuzz_api: Api) -> None:
    response = case.call(headers={"Authorization": f"Bearer {fuzz_api.cam1}"}, timeout=30)
    assert response.status_code < 500, f"{case.method} {case.formatted_path}: {response.status_code} {response.text}"
