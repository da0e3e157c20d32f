"""The routes a caller waits on before each authorization, answered without FastAPI's
request machinery: POST /v1/score and POST /v1/route as plain ASGI.

FastAPI's route matching, dependency solving and request objects cost about 1 ms a request
on a 2-core host, more than the rest of the request's Python (docs/serving.md, "HTTP
overhead and load", the hot path). For these two routes this middleware reads the body,
validates it with the route's own request model (pydantic, straight from the JSON bytes)
and answers with the route's own handler (api_v1.py `HOT`), the one FastAPI's route calls
too: the same answers, fallbacks and metrics.

Whatever it would not answer exactly as FastAPI does goes on to FastAPI untouched: another
method or path, a body not sent as JSON, a body that fails validation (FastAPI then answers
its usual 400 or 422 from the same bytes, replayed). An error in the handler propagates as
from FastAPI's route, to the app's last-resort handler, which answers with the fallback the
handler left on the request's state.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from pydantic import BaseModel, ValidationError
from starlette.datastructures import Headers, State
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from issuer_seq.serve.api import error
from issuer_seq.serve.service import Service

Handler = Callable[[Service, Any, State], Awaitable[Response]]


def is_json(scope: Scope) -> bool:
    """Does the request declare a JSON body, as FastAPI reads it (application/json or
    application/<anything>+json)?"""
    kind = Headers(scope=scope).get("content-type", "").split(";")[0].strip().lower()
    main, _, sub = kind.partition("/")
    return main == "application" and (sub == "json" or sub.endswith("+json"))


def replay(body: bytes, receive: Receive) -> Receive:
    """A `receive` that hands over the already read body once, then the client's own."""
    sent = False

    async def again() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return again


class HotPath:
    """POST to a path of `handlers` with a valid JSON body: the handler's answer; anything
    else: the app. `models`: each path's request model; `routes`: each path's FastAPI route,
    set as the request's `route` as FastAPI's routing would (the metrics label by it)."""

    def __init__(
        self,
        app: ASGIApp,
        service: Service,
        handlers: Mapping[str, Handler],
        models: Mapping[str, type[BaseModel]],
        routes: Mapping[str, Any],
    ) -> None:
        self.app = app
        self.service = service
        self.hot = {path: (models[path], handlers[path], routes[path]) for path in handlers}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        hot = self.hot.get(scope.get("path", "")) if scope["type"] == "http" else None
        if hot is None or scope["method"] != "POST" or not is_json(scope):
            await self.app(scope, receive, send)
            return
        model, handler, route = hot
        chunks = []
        more = True
        try:
            while more:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return  # the client left before sending its body: nobody to answer
                chunks.append(message.get("body", b""))
                more = message.get("more_body", False)
        except HTTPException as exc:  # the body limit, for a body that announced no length
            await error(exc.status_code, str(exc.detail))(scope, receive, send)
            return
        body = b"".join(chunks)
        try:
            request = model.model_validate_json(body)
        except ValidationError:
            await self.app(scope, replay(body, receive), send)  # FastAPI names what is wrong
            return
        scope["route"] = route
        response = await handler(self.service, request, Request(scope).state)
        await response(scope, receive, send)
