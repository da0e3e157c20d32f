"""The HTTP app (FastAPI): one service, three routers, and the errors they share.

    POST /v1/score      one attempt or a batch -> approval probabilities      (api_v1.py)
    POST /v1/retry      a decline -> retry curve, action, rule, expected value
    POST /v1/outcomes   attempts with their answers -> appended to the histories
    GET  /v2/health/live, /v2/health/ready, /v2, /v2/models/{name}[/versions/{v}][/ready]
    POST /v2/models/{name}[/versions/{v}]/infer   named tensors in, p_approve and p_retry out
                                                                              (api_v2.py)
    GET  /metrics       Prometheus                                            (api_metrics.py)

Every route receives the `Service` as its one dependency (api.py `ServiceDep`). With
`hot_path` (the default), /v1/score and /v1/route are answered by the same handlers without
FastAPI's per-request machinery (hot_path.py).
docs/serving.md describes requests, responses and the fallback. `create_app` is all a test
or another ASGI server needs; `issuer-seq serve` runs it under uvicorn (server.py).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from issuer_seq import __version__
from issuer_seq.serve import api_metrics, api_v1, api_v2
from issuer_seq.serve import schemas as S
from issuer_seq.serve.api import error
from issuer_seq.serve.hot_path import HotPath
from issuer_seq.serve.metrics import MetricsMiddleware, all_routes
from issuer_seq.serve.scorer import Scorer
from issuer_seq.serve.service import ServeSettings, Service

log = logging.getLogger(__name__)


def _loc(loc: tuple[Any, ...] | list[Any]) -> str:
    parts = [str(p) for p in loc if p != "body"]
    return ".".join(parts) or "body"


async def validation_error(request: Request, exc: Exception) -> JSONResponse:
    """400 for unreadable JSON, 422 naming each bad field; never echoes the values."""
    assert isinstance(exc, RequestValidationError)
    # The raw input is left out: it may be large, non-finite (unrenderable as JSON) or
    # sensitive (card ids), and the location plus message already name the problem.
    detail = [
        {"loc": list(e.get("loc", ())), "msg": str(e.get("msg", "")), "type": str(e.get("type"))}
        for e in exc.errors()
    ]
    bad_json = [d for d in detail if d["type"] == "json_invalid"]
    if bad_json:
        at = bad_json[0]["loc"][-1]
        return error(400, f"request body is not valid JSON (error at character {at})", detail)
    content_type = request.headers.get("content-type", "")
    if "json" not in content_type.lower() and any(d["loc"] == ["body"] for d in detail):
        # FastAPI does not parse a body sent without a JSON content type (a CSRF guard).
        return error(
            415, f"send the body as JSON with Content-Type: application/json, not {content_type!r}"
        )
    message = "; ".join(f"{_loc(d['loc'])}: {d['msg']}" for d in detail[:5])
    if len(detail) > 5:
        message += f"; and {len(detail) - 5} more"
    return error(422, message or "invalid request", detail)


async def http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    headers = getattr(exc, "headers", None)  # e.g. Allow on a 405
    return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code, headers=headers)


async def last_resort(request: Request, exc: Exception) -> Response:
    """An unexpected error: the fallback answer if the route left one, else a plain 500."""
    log.error("unhandled error on %s", request.url.path, exc_info=exc)
    answer: Callable[[], Awaitable[Response]] | None = getattr(
        request.state, "fallback_answer", None
    )
    if answer is not None:
        try:
            return await answer()
        except Exception:
            log.exception("the fallback failed too")
    return error(500, "internal error; see the server log")


class BodyLimitMiddleware:
    """413 (as JSON, like every other error) for bodies over `max_bytes`, before parsing.

    FastAPI's own `max_body_size` answers in plain text and replaces whatever the app sends.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_bytes:
            response = error(413, f"request body over {self.max_bytes} bytes (max_body_bytes)")
            await response(scope, receive, send)
            return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:  # chunked bodies announce no length
                raise HTTPException(413, f"request body over {self.max_bytes} bytes")
            return message

        await self.app(scope, counted, send)


def create_app(
    settings: ServeSettings,
    scorer: Scorer | None = None,
    on_fatal: Callable[[], None] | None = None,
) -> FastAPI:
    """The app over `settings.artifact_dir`; `scorer`: an already loaded one (tests)."""
    service = Service(settings, scorer=scorer, on_fatal=on_fatal)
    models = S.request_models(settings.max_batch)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        service.start()
        yield
        service.close()

    app = FastAPI(
        title="issuer_seq scorer",
        version=__version__,
        summary="Approval probability and retry windows from card and issuer histories",
        lifespan=lifespan,
    )
    app.state.service = service  # what api.get_service hands every route
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(Exception, last_resort)
    app.include_router(api_v1.router(models))
    app.include_router(api_v2.router(models))
    app.include_router(api_metrics.router)
    # The last added is the outermost: metrics see every answer, the 413s included; the hot
    # path reads bodies within the limit.
    if settings.hot_path:
        routes = {
            r.path: r
            for r in all_routes(app.routes)
            if isinstance(r, APIRoute) and r.path in api_v1.HOT and "POST" in r.methods
        }
        request_models = {"/v1/score": models.score, "/v1/route": S.RouteRequest}
        app.add_middleware(
            HotPath, service=service, handlers=api_v1.HOT, models=request_models, routes=routes
        )
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(MetricsMiddleware, metrics=service.metrics)
    return app
