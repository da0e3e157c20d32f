"""GET /metrics: the service's Prometheus registry (serve/metrics.py), as text."""

from typing import Any

from fastapi import APIRouter
from fastapi.responses import Response

from issuer_seq.serve.api import ServiceDep

router = APIRouter(tags=["operations"])

_TEXT: dict[int | str, dict[str, Any]] = {
    200: {"content": {"text/plain": {}}, "description": "Prometheus text"}
}


@router.get("/metrics", response_class=Response, responses=_TEXT)
async def metrics(service: ServiceDep) -> Response:
    body, content_type = service.metrics.render()
    return Response(body, media_type=content_type)
