"""The jobs API: ``/jobs`` and ``/jobs/{id}[/pause|/resume|/run|/runs]``.

Reads are open. A mutating call (POST, PATCH, DELETE) needs ``Authorization: Bearer <token>``
exactly (the scheme spelled ``Bearer``), compared in constant time; without WATCHER_API_TOKEN every
mutating call answers 403. Then, in this order: the Content-Type must be application/json (415),
the body at most 64 KiB as it is read, whatever Content-Length claims (413), valid JSON (400), and
valid fields (422, the message naming each).
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from functools import wraps
from typing import Any

from pydantic import SecretStr, ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from watcher.http.auth import BearerAuth
from watcher.http.bodies import read_json
from watcher.http.errors import ApiError, unprocessable
from watcher.http.openapi import ApiRoute, Endpoint, Operation, Reply, errors
from watcher.jobs.errors import InvalidJob, JobConflict, JobNotFound, SchedulerUnavailable
from watcher.jobs.service import JobService
from watcher.jobs.specs import (
    JOB_ID_PATTERN,
    JOB_ID_SCHEMA_PATTERN,
    JobCreate,
    JobList,
    JobOut,
    JobPatch,
    RunList,
    field_errors,
)

_ID = re.compile(JOB_ID_PATTERN)
_ID_PARAM = {"id": {"type": "string", "pattern": JOB_ID_SCHEMA_PATTERN}}


def _object(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise unprocessable("body: must be a JSON object")
    return body


# ---- routes --------------------------------------------------------------------------------------


def _translated(handler: Endpoint) -> Endpoint:
    """Map the job service's errors to their answers."""

    @wraps(handler)
    async def wrapper(request: Request) -> Response:
        try:
            return await handler(request)
        except InvalidJob as exc:
            raise unprocessable(str(exc)) from None
        except JobNotFound as exc:
            raise ApiError(404, "not_found", str(exc)) from None
        except JobConflict as exc:
            raise ApiError(409, "conflict", str(exc)) from None
        except SchedulerUnavailable as exc:
            raise ApiError(503, "unavailable", str(exc), {"Retry-After": "5"}) from None

    return wrapper


def _op(operation_id: str, summary: str, replies: dict[int, Reply], **kwargs: Any) -> Operation:
    return Operation(operation_id, summary, replies, **kwargs)


def job_routes(jobs: JobService, token: SecretStr | None) -> list[ApiRoute]:
    """The jobs API routes, bound to `jobs`; mutating calls check `token`."""
    auth = BearerAuth(token)
    Handler = Callable[[Request], Awaitable[Response]]

    def mutating(handler: Handler) -> Handler:
        @wraps(handler)
        async def wrapper(request: Request) -> Response:
            auth.check(request)
            return await handler(request)

        return _translated(wrapper)

    def job_id(request: Request) -> str:
        value = str(request.path_params["id"])
        # No job can have another id; checked before any database sees it (PostgreSQL, for one,
        # refuses a NUL in a query parameter, which must be a 404 and not a 500).
        if not _ID.fullmatch(value):
            raise ApiError(404, "not_found", f"no job with id {value!r}")
        return value

    @_translated
    async def list_jobs(_: Request) -> Response:
        listed = await jobs.list_jobs()
        return JSONResponse({"total": len(listed), "jobs": listed})

    @mutating
    async def create_job(request: Request) -> Response:
        body = _object(await read_json(request, required=True))
        try:
            new = JobCreate.model_validate(body).root
        except ValidationError as exc:
            raise InvalidJob(field_errors(exc)) from None
        job = await jobs.create(new)
        return JSONResponse(job, status_code=201, headers={"Location": f"/jobs/{job['id']}"})

    @_translated
    async def get_job(request: Request) -> Response:
        return JSONResponse(await jobs.get(job_id(request)))

    @mutating
    async def patch_job(request: Request) -> Response:
        body = _object(await read_json(request, required=True))
        try:
            patch = JobPatch.model_validate(body)
        except ValidationError as exc:
            raise InvalidJob(field_errors(exc)) from None
        return JSONResponse(await jobs.patch(job_id(request), patch))

    @mutating
    async def delete_job(request: Request) -> Response:
        await read_json(request, required=False)
        await jobs.delete(job_id(request))
        return Response(status_code=204)

    def action(method: Callable[[str], Awaitable[dict[str, Any]]]) -> Handler:
        async def handler(request: Request) -> Response:
            await read_json(request, required=False)  # no body expected; one that is sent must be sane
            return JSONResponse(await method(job_id(request)))

        return mutating(handler)

    @_translated
    async def job_runs(request: Request) -> Response:
        return JSONResponse({"runs": await jobs.runs(job_id(request))})

    job = Reply("The job.", JobOut)
    path = {"path_params": _ID_PARAM}
    write = (401, 403, 503)
    return [
        ApiRoute(
            "/jobs",
            {
                "GET": (
                    list_jobs,
                    _op("listJobs", "List every job.", {200: Reply("The jobs.", JobList), **errors(503)}),
                ),
                "POST": (
                    create_job,
                    _op(
                        "createJob",
                        "Create a job: a kind from the closed registry, its args and a trigger.",
                        {201: job, **errors(400, *write, 409, 413, 415, 422)},
                        request=JobCreate,
                        auth=True,
                    ),
                ),
            },
        ),
        ApiRoute(
            "/jobs/{id}",
            {
                "GET": (get_job, _op("getJob", "One job.", {200: job, **errors(404, 503)}, **path)),
                "PATCH": (
                    patch_job,
                    _op(
                        "patchJob",
                        "Replace a job's trigger and/or args (a paused job stays paused).",
                        {200: job, **errors(400, *write, 404, 413, 415, 422)},
                        request=JobPatch,
                        auth=True,
                        **path,
                    ),
                ),
                "DELETE": (
                    delete_job,
                    _op(
                        "deleteJob",
                        "Delete a job and its run history.",
                        {204: Reply("Deleted."), **errors(400, *write, 404, 413, 415)},
                        auth=True,
                        **path,
                    ),
                ),
            },
        ),
        *(
            ApiRoute(
                f"/jobs/{{id}}/{verb}",
                {
                    "POST": (
                        action(handler),
                        _op(
                            op_id, summary, {200: job, **errors(400, *write, 404, *extra, 413, 415)}, auth=True, **path
                        ),
                    )
                },
            )
            for verb, handler, op_id, summary, extra in (
                ("pause", jobs.pause, "pauseJob", "Stop scheduling a job until it is resumed.", ()),
                ("resume", jobs.resume, "resumeJob", "Schedule a paused job again from now.", (409,)),
                (
                    "run",
                    jobs.run_now,
                    "runJob",
                    "Start one run now, beside the schedule; its outcome appears in /runs.",
                    (),
                ),
            )
        ),
        ApiRoute(
            "/jobs/{id}/runs",
            {
                "GET": (
                    job_runs,
                    _op(
                        "listJobRuns",
                        "The job's runs, newest first (at most 100).",
                        {200: Reply("The runs.", RunList), **errors(404, 503)},
                        **path,
                    ),
                )
            },
        ),
    ]
