"""The domain routes: /v1/score, /v1/route, /v1/retry, /v1/outcomes (docs/serving.md).

Scores and retry advice come from the model within the deadline, else from the fallback
rules, flagged `fallback: true` with the reason; each route leaves its fallback answer on
`request.state` for the app's last-resort handler.
"""

# No `from __future__ import annotations`: the request models are built at run time (their
# batch limit is configured) and FastAPI must see them as objects, not as names to look up.
import logging
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from starlette.datastructures import State

from issuer_seq.serve import schemas as S
from issuer_seq.serve.advice import RetryAdvice
from issuer_seq.serve.api import ERRORS, ServiceDep, error
from issuer_seq.serve.service import Service, probabilities
from issuer_seq.serve.state import StateUnavailable

log = logging.getLogger(__name__)


def served(service: Service, reason: str) -> dict[str, Any]:
    """The fields every domain answer carries: whether the fallback answered, and why."""
    return {
        "fallback": bool(reason),
        "fallback_reason": reason or None,
        "model_version": service.model_version,
    }


def checked_advice(advice: RetryAdvice) -> RetryAdvice:
    probabilities(np.array(list(advice.curve.values())))
    if not np.isfinite(advice.expected_value):
        raise ValueError("non-finite expected value")
    return advice


async def score_answer(service: Service, body: S.ScoreRequestBase, state: State) -> Response:
    """POST /v1/score: approval probabilities of attempts about to be sent, in request order.
    Leaves its fallback answer on `state` (the request's) for the app's last-resort handler."""
    attempts = [a.as_mapping() for a in body.items()]
    service.metrics.batch_size.labels("score").observe(len(attempts))

    async def answer(reason: str = "unhandled_error") -> Response:
        service.count_fallback("score", reason)
        p = await service.fallback_scores(attempts)
        return JSONResponse({"p_approve": p, **served(service, reason)})

    state.fallback_answer = answer
    p, reason = await service.call_model("score", lambda s: probabilities(s.score_batch(attempts)))
    if p is None:
        return await answer(reason)
    return JSONResponse({"p_approve": p.tolist(), **served(service, "")})


async def route_answer(service: Service, body: S.RouteRequest, state: State) -> Response:
    """POST /v1/route: the attempt's candidate routes ranked by expected value (p_approve x
    amount x margin - fee), and the route to send it through."""
    attempt = body.attempt.as_mapping()
    names = [r.route for r in body.routes]
    fees = np.array([r.fee for r in body.routes])
    service.metrics.batch_size.labels("route").observe(len(names))

    def response(p: np.ndarray, static: bool, reason: str) -> JSONResponse:
        choice, rule = service.choose_route(p, float(attempt["amount"]), fees, static)
        value = choice.value[0]
        order = sorted(range(len(names)), key=lambda i: (-value[i], i))
        chosen = int(choice.route[0])
        return JSONResponse(
            {
                "routes": [
                    {
                        "route": names[i],
                        "p_approve": float(p[i]),
                        "expected_value": float(value[i]),
                    }
                    for i in order
                ],
                "choice": names[chosen],
                "propensity": float(choice.propensity[0]),
                "rule": rule,
                **served(service, reason),
            }
        )

    async def answer(reason: str = "unhandled_error") -> Response:
        service.count_fallback("route", reason)
        (p,) = await service.fallback_scores([attempt])
        return response(np.full(len(names), p), True, reason)

    state.fallback_answer = answer
    p, reason = await service.call_model(
        "route", lambda s: probabilities(s.score_routes(attempt, names))
    )
    if p is None:
        return await answer(reason)
    return response(p, False, "")


#: the routes the hot path answers without FastAPI (serve/hot_path.py): path -> handler
HOT: dict[str, Callable[[Service, Any, State], Awaitable[Response]]] = {
    "/v1/score": score_answer,
    "/v1/route": route_answer,
}


def router(models: S.RequestModels) -> APIRouter:
    """The /v1 routes, over request models with the configured batch limit."""
    ScoreRequest, OutcomesRequest = models.score, models.outcomes
    # Full paths, no router prefix: a route's path is the template metrics label it by.
    api = APIRouter(tags=["domain"], responses=ERRORS)

    @api.post("/v1/score", response_model=S.ScoreResponse)
    async def score(request: Request, body: ScoreRequest, service: ServiceDep) -> Any:  # type: ignore[valid-type]
        """Approval probabilities of attempts about to be sent, in request order."""
        return await score_answer(service, body, request.state)

    @api.post("/v1/route", response_model=S.RouteResponse)
    async def route(request: Request, body: S.RouteRequest, service: ServiceDep) -> Any:
        """The attempt's candidate routes ranked by expected value (p_approve x amount x
        margin - fee), and the route to send it through."""
        return await route_answer(service, body, request.state)

    @api.post("/v1/retry", response_model=S.RetryResponse)
    async def retry(request: Request, body: S.RetryRequest, service: ServiceDep) -> Any:
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
                "route": advice.route,
                **served(service, reason),
            }

        async def answer(reason: str = "unhandled_error") -> Response:
            service.count_fallback("retry", reason)
            advice = await service.fallback_retry(decline)
            if advice.action.delay_s is not None:  # the decline's route, if still a candidate
                names = [r.route for r in body.routes or []]
                own = decline.get("route")
                advice.route = own if not names or own in names else names[0]
            return JSONResponse(S.RetryResponse(**response(advice, reason)).model_dump(mode="json"))

        request.state.fallback_answer = answer
        routes = [(r.route, r.fee) for r in body.routes] if body.routes else None
        advice, reason = await service.call_model(
            "retry", lambda s: checked_advice(s.advise_retry(decline, routes))
        )
        if advice is None:
            return await answer(reason)
        return response(advice, "")

    @api.post(
        "/v1/outcomes",
        response_model=S.OutcomesResponse,
        responses={
            503: {"model": S.ErrorResponse, "description": "not ready, or the store failed"},
        },
    )
    async def outcomes(body: OutcomesRequest, service: ServiceDep) -> Any:  # type: ignore[valid-type]
        """Attempts with their answers, appended to their card's and issuer's histories."""
        rows = [o.as_mapping() for o in body.outcomes]  # type: ignore[attr-defined]
        service.metrics.batch_size.labels("outcomes").observe(len(rows))
        scorer = service.scorer
        if scorer is None:
            return error(503, f"not ready ({service.not_ready_reason()}); send them again")
        done = 0

        def observe_all() -> int:
            nonlocal done
            for row in rows:
                scorer.observe(row)
                done += 1
            return done

        try:
            n = await service.in_store_pool(observe_all, service.settings.outcomes_timeout_ms)
        except Exception as exc:
            service.metrics.store_errors.labels("write").inc()
            # what the store raised (the scorer names it StateUnavailable)
            cause = exc.__cause__ if isinstance(exc, StateUnavailable) else exc
            log.warning("outcomes: the state store failed: %r", cause)
            return error(503, f"state store failed after {done} of {len(rows)} outcomes: {cause!r}")
        return {"observed": n}

    return api
