"""What every route of the HTTP app shares: the service, as a FastAPI dependency, and the
error body.

The app holds one `Service` (`app.state.service`, set by `create_app`); routes receive it as
`service: ServiceDep`, so that no route reaches for it any other way.
"""

# No `from __future__ import annotations`: FastAPI reads `ServiceDep` as an object.
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.responses import JSONResponse

from issuer_seq.serve import schemas as S
from issuer_seq.serve.service import Service


async def get_service(request: Request) -> Service:
    # async: FastAPI would run a plain function in its thread pool, a hop per request
    service: Service = request.app.state.service
    return service


ServiceDep = Annotated[Service, Depends(get_service)]

#: the 4xx answers every route with a JSON body may give (OpenAPI)
ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": S.ErrorResponse, "description": "malformed JSON or tensors"},
    413: {"model": S.ErrorResponse, "description": "body larger than max_body_bytes"},
    415: {"model": S.ErrorResponse, "description": "body not sent as application/json"},
    422: {"model": S.ErrorResponse, "description": "a field is missing, mistyped or invalid"},
}


def error(status: int, message: str, detail: list[dict[str, Any]] | None = None) -> JSONResponse:
    body: dict[str, Any] = {"error": message}
    if detail is not None:
        body["detail"] = detail
    return JSONResponse(body, status_code=status)
