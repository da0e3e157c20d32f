"""The HTTP app (FastAPI): domain routes, Open Inference Protocol V2 routes, metrics.

    POST /v1/score      one attempt or a batch -> approval probabilities
    POST /v1/retry      a decline -> retry curve, action, rule, expected value
    POST /v1/outcomes   attempts with their answers -> appended to the histories
    GET  /v2/health/live, /v2/health/ready, /v2, /v2/models/{name}[/versions/{v}][/ready]
    POST /v2/models/{name}[/versions/{v}]/infer   named tensors in, p_approve and p_retry out
    GET  /metrics       Prometheus

docs/serving.md describes requests, responses and the fallback. `create_app` is all a test
or another ASGI server needs; `issuer-seq serve` runs it under uvicorn (server.py).
"""

# No `from __future__ import annotations`: the request models are built at run time (their
# batch limit is configured) and FastAPI must see them as objects, not as names to look up.
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from issuer_seq import __version__
from issuer_seq.serve import schemas as S
from issuer_seq.serve.advice import RetryAdvice
from issuer_seq.serve.metrics import MetricsMiddleware
from issuer_seq.serve.scorer import Scorer
from issuer_seq.serve.service import ServeSettings, Service, probabilities
from issuer_seq.serve.v2 import V2InputError

log = logging.getLogger(__name__)

_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": S.ErrorResponse, "description": "malformed JSON or tensors"},
    413: {"model": S.ErrorResponse, "description": "body larger than max_body_bytes"},
    415: {"model": S.ErrorResponse, "description": "body not sent as application/json"},
    422: {"model": S.ErrorResponse, "description": "a field is missing, mistyped or invalid"},
}


def _error(status: int, message: str, detail: list[dict[str, Any]] | None = None) -> JSONResponse:
    body: dict[str, Any] = {"error": message}
    if detail is not None:
        body["detail"] = detail
    return JSONResponse(body, status_code=status)


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
        return _error(400, f"request body is not valid JSON (error at character {at})", detail)
    content_type = request.headers.get("content-type", "")
    if "json" not in content_type.lower() and any(d["loc"] == ["body"] for d in detail):
        # FastAPI does not parse a body sent without a JSON content type (a CSRF guard).
        return _error(
            415, f"send the body as JSON with Content-Type: application/json, not {content_type!r}"
        )
    message = "; ".join(f"{_loc(d['loc'])}: {d['msg']}" for d in detail[:5])
    if len(detail) > 5:
        message += f"; and {len(detail) - 5} more"
    return _error(422, message or "invalid request", detail)


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
    return _error(500, "internal error; see the server log")


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
            response = _error(413, f"request body over {self.max_bytes} bytes (max_body_bytes)")
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


def _checked_advice(advice: RetryAdvice) -> RetryAdvice:
    probabilities(np.array(list(advice.curve.values())))
    if not np.isfinite(advice.expected_value):
        raise ValueError("non-finite expected value")
    return advice


def create_app(
    settings: ServeSettings,
    scorer: Scorer | None = None,
    on_fatal: Callable[[], None] | None = None,
) -> FastAPI:
    """The app over `settings.artifact_dir`; `scorer`: an already loaded one (tests)."""
    service = Service(settings, scorer=scorer, on_fatal=on_fatal)
    models = S.request_models(settings.max_batch)
    ScoreRequest, OutcomesRequest, InferRequest = models.score, models.outcomes, models.infer

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
    app.state.service = service
    # The last added is the outermost: metrics see every answer, the 413s included.
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(MetricsMiddleware, metrics=service.metrics)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(Exception, last_resort)

    def served(reason: str) -> dict[str, Any]:
        return {
            "fallback": bool(reason),
            "fallback_reason": reason or None,
            "model_version": service.model_version,
        }

    # -- domain ---------------------------------------------------------------------------
    @app.post("/v1/score", response_model=S.ScoreResponse, responses=_ERRORS, tags=["domain"])
    async def score(request: Request, body: ScoreRequest) -> Any:  # type: ignore[valid-type]
        """Approval probabilities of attempts about to be sent, in request order."""
        attempts = [a.as_mapping() for a in body.items()]  # type: ignore[attr-defined]
        service.metrics.batch_size.labels("score").observe(len(attempts))

        async def answer(reason: str = "unhandled_error") -> Response:
            service.count_fallback("score", reason)
            p = await service.fallback_scores(attempts)
            return JSONResponse({"p_approve": p, **served(reason)})

        request.state.fallback_answer = answer
        p, reason = await service.call_model(
            "score", lambda s: probabilities(s.score_batch(attempts))
        )
        if p is None:
            return await answer(reason)
        return {"p_approve": p.tolist(), **served("")}

    @app.post("/v1/retry", response_model=S.RetryResponse, responses=_ERRORS, tags=["domain"])
    async def retry(request: Request, body: S.RetryRequest) -> Any:
        """When to retry a declined attempt, if at all, within the network rules."""
        decline = body.decline.as_mapping()
        service.metrics.batch_size.labels("retry").observe(1)

        def response(advice: RetryAdvice, reason: str) -> dict[str, Any]:
            delay = advice.action.delay_s
            at = None if delay is None else body.decline.ts + timedelta(seconds=delay)
            return {
                "action": advice.action.name,
                "delay_s": delay,
                "retry_at": at,
                "expected_value": advice.expected_value,
                "rule": advice.rule,
                "curve": advice.curve,
                "allowed": advice.allowed,
                **served(reason),
            }

        async def answer(reason: str = "unhandled_error") -> Response:
            service.count_fallback("retry", reason)
            advice = await service.fallback_retry(decline)
            return JSONResponse(S.RetryResponse(**response(advice, reason)).model_dump(mode="json"))

        request.state.fallback_answer = answer
        advice, reason = await service.call_model(
            "retry", lambda s: _checked_advice(s.advise_retry(decline))
        )
        if advice is None:
            return await answer(reason)
        return response(advice, "")

    @app.post(
        "/v1/outcomes",
        response_model=S.OutcomesResponse,
        responses={
            **_ERRORS,
            503: {"model": S.ErrorResponse, "description": "not ready, or the store failed"},
        },
        tags=["domain"],
    )
    async def outcomes(body: OutcomesRequest) -> Any:  # type: ignore[valid-type]
        """Attempts with their answers, appended to their card's and issuer's histories."""
        rows = [o.as_mapping() for o in body.outcomes]  # type: ignore[attr-defined]
        service.metrics.batch_size.labels("outcomes").observe(len(rows))
        scorer = service.scorer
        if scorer is None:
            return _error(503, f"not ready ({service.not_ready_reason()}); send them again")
        done = 0

        def observe_all() -> int:
            nonlocal done
            for row in rows:
                scorer.observe(row)
                done += 1
            return done

        try:
            n = await service.in_store_pool(observe_all, settings.outcomes_timeout_ms)
        except Exception as exc:
            service.metrics.store_errors.labels("write").inc()
            log.warning("outcomes: the state store failed: %r", exc)
            return _error(503, f"state store failed after {done} of {len(rows)} outcomes: {exc!r}")
        return {"observed": n}

    # -- Open Inference Protocol V2 -------------------------------------------------------
    @app.get("/v2/health/live", response_model=S.Live, tags=["v2"])
    async def live() -> Any:
        return {"live": True}

    ready_responses: dict[int | str, dict[str, Any]] = {
        503: {"model": S.Ready, "description": "loading, failed to load, or shutting down"}
    }

    @app.get("/v2/health/ready", response_model=S.Ready, responses=ready_responses, tags=["v2"])
    async def ready() -> Any:
        reason = service.not_ready_reason()
        if reason is None:
            return {"ready": True}
        return JSONResponse({"ready": False, "reason": reason}, status_code=503)

    @app.get("/v2", response_model=S.V2ServerMetadata, tags=["v2"])
    async def server_metadata() -> Any:
        return {"name": "issuer_seq", "version": __version__, "extensions": []}

    unknown_model: dict[int | str, dict[str, Any]] = {
        404: {"model": S.V2Error, "description": "no such model or version"}
    }

    def check_model(name: str, version: str | None) -> JSONResponse | None:
        if name != service.model_name:
            return JSONResponse({"error": f"unknown model {name!r}"}, status_code=404)
        if version is not None and version != service.model_version:
            return JSONResponse(
                {"error": f"model {name!r} has version {service.model_version}, not {version!r}"},
                status_code=404,
            )
        return None

    @app.get(
        "/v2/models/{model_name}",
        response_model=S.V2ModelMetadata,
        responses=unknown_model,
        tags=["v2"],
    )
    async def model_metadata(model_name: str) -> Any:
        return check_model(model_name, None) or service.v2.metadata()

    @app.get(
        "/v2/models/{model_name}/versions/{model_version}",
        response_model=S.V2ModelMetadata,
        responses=unknown_model,
        tags=["v2"],
    )
    async def version_metadata(model_name: str, model_version: str) -> Any:
        return check_model(model_name, model_version) or service.v2.metadata()

    @app.get(
        "/v2/models/{model_name}/ready",
        response_model=S.Ready,
        responses={**unknown_model, **ready_responses},
        tags=["v2"],
    )
    async def model_ready(model_name: str) -> Any:
        return check_model(model_name, None) or await ready()

    infer_responses: dict[int | str, dict[str, Any]] = {
        **_ERRORS,
        **unknown_model,
        400: {"model": S.V2Error, "description": "tensors that do not fit the model"},
    }

    async def run_infer(
        request: Request, model_name: str, model_version: str | None, body: Any
    ) -> Any:
        wrong = check_model(model_name, model_version)
        if wrong is not None:
            return wrong
        v2 = service.v2
        try:
            feeds = v2.decode(body.inputs)
            names = v2.requested(body.outputs, body.parameters)
        except V2InputError as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        batch = len(next(iter(feeds.values())))
        service.metrics.batch_size.labels("infer").observe(batch)

        def respond(arrays: dict[str, np.ndarray], reason: str) -> dict[str, Any]:
            parameters = {"fallback": True, "fallback_reason": reason} if reason else {}
            return {
                "model_name": service.model_name,
                "model_version": service.model_version,
                "id": body.id,
                "parameters": parameters,
                "outputs": v2.encode(arrays, names),
            }

        async def answer(reason: str = "unhandled_error") -> Response:
            service.count_fallback("infer", reason)
            return JSONResponse(respond(await service.fallback_tensors(feeds), reason))

        request.state.fallback_answer = answer

        def run(s: Scorer) -> dict[str, np.ndarray]:
            p_approve, p_retry = s.run(feeds)
            return {"p_approve": probabilities(p_approve), "p_retry": probabilities(p_retry)}

        arrays, reason = await service.call_model("infer", run)
        if arrays is None:
            return await answer(reason)
        return respond(arrays, "")

    @app.post(
        "/v2/models/{model_name}/infer",
        response_model=S.V2InferResponse,
        responses=infer_responses,
        tags=["v2"],
    )
    async def infer(
        request: Request,
        model_name: str,
        body: InferRequest,  # type: ignore[valid-type]
    ) -> Any:
        """Named tensors as in the manifest (KServe V2 JSON); outputs p_approve, p_retry."""
        return await run_infer(request, model_name, None, body)

    @app.post(
        "/v2/models/{model_name}/versions/{model_version}/infer",
        response_model=S.V2InferResponse,
        responses=infer_responses,
        tags=["v2"],
    )
    async def infer_version(
        request: Request,
        model_name: str,
        model_version: str,
        body: InferRequest,  # type: ignore[valid-type]
    ) -> Any:
        """As /v2/models/{model_name}/infer, for one version (the bundle's)."""
        return await run_infer(request, model_name, model_version, body)

    # -- operations -----------------------------------------------------------------------
    @app.get(
        "/metrics",
        response_class=Response,
        responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text"}},
        tags=["operations"],
    )
    async def metrics() -> Response:
        body, content_type = service.metrics.render()
        return Response(body, media_type=content_type)

    return app
