"""Prometheus metrics of the HTTP service, on a registry of its own.

One registry per app (not prometheus_client's global one) so that several apps in one process,
as in the tests, do not collide, and /metrics shows exactly this service.
Routes are labelled by their template (`/v2/models/{model_name}/infer`), never the raw path,
so that scanners and typos cannot blow up the label cardinality.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    generate_latest,
)
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

# Latency buckets from 1 ms to 2.5 s: the scorer's budget is milliseconds, deadlines tens.
LATENCY_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "issuer_seq_http_requests",
            "HTTP requests by route template and status code",
            ["method", "route", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "issuer_seq_http_request_duration_seconds",
            "HTTP request latency, first byte in to last byte out of the app",
            ["method", "route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge(
            "issuer_seq_http_requests_in_flight", "HTTP requests being handled", registry=r
        )
        self.model_latency = Histogram(
            "issuer_seq_model_duration_seconds",
            "Time of a model call (histories, features, ONNX, decision)",
            ["operation"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.fallbacks = Counter(
            "issuer_seq_fallbacks",
            "Answers given by the rule-based fallback instead of the model",
            ["operation", "reason"],
            registry=r,
        )
        self.late_answers = Counter(
            "issuer_seq_late_answers",
            "Model answers given after the deadline (workers=0: calls on the event loop cannot "
            "be cut short)",
            ["operation"],
            registry=r,
        )
        self.batch_size = Histogram(
            "issuer_seq_batch_size",
            "Rows per request",
            ["operation"],
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.store_errors = Counter(
            "issuer_seq_store_errors",
            "State store reads or writes that failed or timed out",
            ["operation"],
            registry=r,
        )
        self.pending = Gauge(
            "issuer_seq_model_calls_pending", "Model calls queued or running", registry=r
        )
        self.ready = Gauge("issuer_seq_ready", "1 when the service is ready", registry=r)
        self.recalibration_intercept = Gauge(
            "issuer_seq_recalibration_intercept",
            "The logit intercept recalibration to recent outcomes adds (0: off or too few)",
            registry=r,
        )
        self.recalibration_outcomes = Gauge(
            "issuer_seq_recalibration_outcomes",
            "Outcomes the recalibration intercept was last fitted to",
            registry=r,
        )
        self.route_recalibration_pairs = Gauge(
            "issuer_seq_route_recalibration_pairs",
            "Issuer x route pairs with an intercept at the last refit (0: off or no outcomes)",
            registry=r,
        )
        self.route_recalibration_outcomes = Gauge(
            "issuer_seq_route_recalibration_outcomes",
            "Outcomes the issuer x route intercepts were last fitted to",
            registry=r,
        )
        self.model = Info("issuer_seq_model", "The model being served", registry=r)

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


def _route_path(scope: Scope) -> str:
    """The route template of a request, also when it was answered before routing (a 413
    for an oversized body): matched against the app's routes; "unmatched" for none."""
    route = scope.get("route")
    if route is not None:
        return str(route.path)
    for candidate in all_routes(getattr(scope.get("app"), "routes", ())):
        match, _ = candidate.matches(scope)
        if match != Match.NONE:
            return str(candidate.path)
    return "unmatched"


def all_routes(routes: Iterable[BaseRoute]) -> Iterator[BaseRoute]:
    """The app's routes, those of included routers too: newer FastAPI versions keep an
    included router as one entry (`original_router`) instead of copying its routes."""
    for route in routes:
        inner = getattr(route, "original_router", None)
        if inner is not None:
            yield from all_routes(inner.routes)
        else:
            yield route


class MetricsMiddleware:
    """Counts and times every HTTP request (plain ASGI: no buffering of bodies)."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # what the client gets if the app raises before answering

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        self.metrics.in_flight.inc()
        try:
            await self.app(scope, receive, send_status)
        finally:
            self.metrics.in_flight.dec()
            path = _route_path(scope)
            method = str(scope.get("method", ""))
            self.metrics.requests.labels(method, path, str(status)).inc()
            self.metrics.latency.labels(method, path).observe(time.perf_counter() - started)
