"""`/openapi.json`: generated from the routes and models, complete, and true of the live server.

schemathesis generates requests for every operation from the live document (authenticated, so the
mutating routes get past the bearer check) and checks that no answer is a server error and every
answer matches its documented status, content type and schema.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from jsonschema import Draft202012Validator  # type: ignore[import-untyped]
from prometheus_client import CollectorRegistry
from pydantic import SecretStr
from schemathesis import BaseSchema, GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from starlette.routing import Route

from tests.support.process import AUTH, TOKEN, WatcherProcess
from watcher.config import load_settings
from watcher.http.app import Check, create_app
from watcher.http.jobs_api import job_routes
from watcher.http.openapi import REF_TEMPLATE as REF
from watcher.http.openapi import ApiRoute, build_openapi
from watcher.jobs import JobService
from watcher.jobs.specs import DateSpec, JobCreate, PurgeArgs, RescanArgs, RetryFailedArgs, SweepArgs
from watcher.metrics import create_metrics

pytestmark = pytest.mark.timeout(90)

EXPECTED_OPERATIONS = {
    ("/health/live", "get"),
    ("/health/ready", "get"),
    ("/metrics", "get"),
    ("/openapi.json", "get"),
    ("/jobs", "get"),
    ("/jobs", "post"),
    ("/jobs/{id}", "get"),
    ("/jobs/{id}", "patch"),
    ("/jobs/{id}", "delete"),
    ("/jobs/{id}/pause", "post"),
    ("/jobs/{id}/resume", "post"),
    ("/jobs/{id}/run", "post"),
    ("/jobs/{id}/runs", "get"),
}
RECORD_OPERATIONS = {("/files/{path}", "get"), ("/deliveries", "get"), ("/status", "get")}


def operations(document: dict[str, Any]) -> set[tuple[str, str]]:
    return {(path, method) for path, item in document["paths"].items() for method in item}


def test_the_document_covers_every_route_of_the_app(tmp_path: Path) -> None:
    env = {"WATCHER_INBOX": str(tmp_path / "in"), "WATCHER_OUTBOX": str(tmp_path / "out")}
    s = load_settings(environ=env)
    jobs = JobService(s, create_metrics(CollectorRegistry()), rescan=lambda: _zero())

    async def ready() -> dict[str, Check]:
        return {}

    app = create_app(CollectorRegistry(), ready, extra_routes=job_routes(jobs, SecretStr(TOKEN)))
    routed = {
        (route.path, method.lower())
        for route in app.routes
        if isinstance(route, Route)
        for method in route.methods or ()
        if method != "HEAD"
    }
    assert all(isinstance(route, ApiRoute) for route in app.routes)
    assert routed == EXPECTED_OPERATIONS
    # every route is an ApiRoute with an operation per method: the document is complete by construction
    assert operations(build_openapi(app.routes, title="t", version="v")) == EXPECTED_OPERATIONS


async def _zero() -> int:
    return 0


def test_the_live_document_is_openapi_3_1_from_the_models(watcher: WatcherProcess) -> None:
    document = watcher.http.get("/openapi.json").json()
    assert document["openapi"] == "3.1.0"
    assert operations(document) == EXPECTED_OPERATIONS | RECORD_OPERATIONS
    schemas = document["components"]["schemas"]
    for schema in schemas.values():
        Draft202012Validator.check_schema(schema)
    # the request schema is the validating model's own, not a copy kept by hand
    own = JobCreate.model_json_schema(ref_template=REF)
    own.pop("$defs")
    assert schemas["JobCreate"] == own
    for model in (PurgeArgs, SweepArgs, RescanArgs, RetryFailedArgs, DateSpec):
        assert schemas[model.__name__] == model.model_json_schema(ref_template=REF), model
    mutating = {(p, m) for p, m in EXPECTED_OPERATIONS if m in ("post", "patch", "delete")}
    for path, method in EXPECTED_OPERATIONS:
        op = document["paths"][path][method]
        assert ("security" in op) == ((path, method) in mutating), (path, method)
        if (path, method) in mutating:
            assert {"401", "403"} <= set(op["responses"]), (path, method)
        assert "500" in op["responses"]
    assert schemas["PurgeArgs"]["properties"]["target"]["enum"] == ["outbox", "failed"]


@pytest.fixture(scope="module")
def live_schema(watcher: WatcherProcess) -> BaseSchema:
    return schemathesis.openapi.from_url(f"{watcher.url}/openapi.json", headers=AUTH)


CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


# schemathesis' own pytest plugin (`from_fixture(...).parametrize()`) reads a private attribute that
# pytest 9 removed, so each operation is driven through its public `as_strategy` with hypothesis.
# Negative data needs something to break: a path parameter or a body. Routes of one job are driven
# both with generated ids (mostly 404) and with the id of a job that exists (re-created as needed).
OPS = sorted(EXPECTED_OPERATIONS | RECORD_OPERATIONS)
FUZZED = (
    [(p, m, GenerationMode.POSITIVE, False) for p, m in OPS]
    + [(p, m, GenerationMode.NEGATIVE, False) for p, m in OPS if "{id}" in p or m in ("post", "patch")]
    + [(p, m, GenerationMode.POSITIVE, True) for p, m in OPS if "{id}" in p]
    + [(p, m, GenerationMode.NEGATIVE, True) for p, m in OPS if "{id}" in p and m != "get"]
)
TARGET = {"id": "fuzz-target", "kind": "purge", "trigger": {"type": "cron", "expression": "0 3 1 1 *"}}
TARGET_ARGS = {"target": "failed", "older_than_seconds": 864000}


@pytest.mark.parametrize(("path", "method", "mode", "existing"), FUZZED)
def test_the_live_api_keeps_its_document(
    live_schema: BaseSchema, watcher: WatcherProcess, path: str, method: str, mode: GenerationMode, existing: bool
) -> None:
    operation = live_schema[path][method.upper()]
    fixed = {"id": TARGET["id"]} if existing else None

    @given(case=operation.as_strategy(generation_mode=mode, path_parameters=fixed))
    @settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    def check(case: schemathesis.Case[Any]) -> None:
        if existing and watcher.http.get(f"/jobs/{TARGET['id']}").status_code == 404:
            watcher.http.create({**TARGET, "args": TARGET_ARGS})
        case.call_and_validate(base_url=watcher.url, headers=AUTH, checks=CHECKS)

    check()
