"""``GET /cluster`` (cluster mode): this replica's id, the leader and the live replicas."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from watcher.http.errors import ApiError
from watcher.http.openapi import ApiRoute, Operation, Reply, errors


class ReplicaOut(BaseModel):
    """One live replica (its id lock is held in PostgreSQL)."""

    id: str
    leader: bool


class ClusterOut(BaseModel):
    """Body of ``GET /cluster``."""

    replica: str
    leader: str | None
    replicas: list[ReplicaOut]


def cluster_routes(view: Callable[[], Awaitable[dict[str, Any]]]) -> list[ApiRoute]:
    """The route of the cluster's view; `view` answers its body (from PostgreSQL)."""

    async def cluster(request: Request) -> Response:
        try:
            return JSONResponse(await view())
        except Exception as exc:  # noqa: BLE001 - any database error: the view cannot be given now
            raise ApiError(503, "unavailable", f"the cluster's database cannot be asked: {exc}") from None

    return [
        ApiRoute(
            "/cluster",
            {
                "GET": (
                    cluster,
                    Operation(
                        "cluster",
                        "This replica's id, the leader (which runs the schedule) and the live replicas.",
                        {200: Reply("The cluster.", ClusterOut), **errors(503)},
                        tag="cluster",
                    ),
                )
            },
        )
    ]
