"""The Open Inference Protocol (KServe V2) routes: health, metadata and infer.

    GET  /v2/health/live, /v2/health/ready, /v2, /v2/models/{name}[/versions/{v}][/ready]
    POST /v2/models/{name}[/versions/{v}]/infer   named tensors in, p_approve and p_retry out

The tensors are checked and encoded by `serve/v2.py`; an infer the model cannot answer in
time is answered by the fallback rules, flagged in the response's `parameters`.
"""

# No `from __future__ import annotations`: the infer request model is built at run time.
from typing import Any

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from issuer_seq import __version__
from issuer_seq.serve import schemas as S
from issuer_seq.serve.api import ERRORS, ServiceDep
from issuer_seq.serve.scorer import Scorer
from issuer_seq.serve.service import Service, probabilities
from issuer_seq.serve.v2 import V2InputError

READY_RESPONSES: dict[int | str, dict[str, Any]] = {
    503: {"model": S.Ready, "description": "loading, failed to load, or shutting down"}
}
UNKNOWN_MODEL: dict[int | str, dict[str, Any]] = {
    404: {"model": S.V2Error, "description": "no such model or version"}
}
INFER_RESPONSES: dict[int | str, dict[str, Any]] = {
    **ERRORS,
    **UNKNOWN_MODEL,
    400: {"model": S.V2Error, "description": "tensors that do not fit the model"},
}


def check_model(service: Service, name: str, version: str | None) -> JSONResponse | None:
    """A 404 for a model or version this service does not serve; None for its own."""
    if name != service.model_name:
        return JSONResponse({"error": f"unknown model {name!r}"}, status_code=404)
    if version is not None and version != service.model_version:
        return JSONResponse(
            {"error": f"model {name!r} has version {service.model_version}, not {version!r}"},
            status_code=404,
        )
    return None


def readiness(service: Service) -> Any:
    reason = service.not_ready_reason()
    if reason is None:
        return {"ready": True}
    return JSONResponse({"ready": False, "reason": reason}, status_code=503)


async def run_infer(
    request: Request, service: Service, model_name: str, model_version: str | None, body: Any
) -> Any:
    wrong = check_model(service, model_name, model_version)
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
        p_approve, p_retry = s.run_whole(feeds)
        return {"p_approve": probabilities(p_approve), "p_retry": probabilities(p_retry)}

    arrays, reason = await service.call_model("infer", run)
    if arrays is None:
        return await answer(reason)
    return respond(arrays, "")


def router(models: S.RequestModels) -> APIRouter:
    """The /v2 routes, over an infer request model with the configured batch limit."""
    InferRequest = models.infer
    # Full paths, no router prefix: a route's path is the template metrics label it by.
    api = APIRouter(tags=["v2"])

    @api.get("/v2/health/live", response_model=S.Live)
    async def live() -> Any:
        return {"live": True}

    @api.get("/v2/health/ready", response_model=S.Ready, responses=READY_RESPONSES)
    async def ready(service: ServiceDep) -> Any:
        return readiness(service)

    @api.get("/v2", response_model=S.V2ServerMetadata)
    async def server_metadata() -> Any:
        return {"name": "issuer_seq", "version": __version__, "extensions": []}

    @api.get("/v2/models/{model_name}", response_model=S.V2ModelMetadata, responses=UNKNOWN_MODEL)
    async def model_metadata(model_name: str, service: ServiceDep) -> Any:
        return check_model(service, model_name, None) or service.v2.metadata()

    @api.get(
        "/v2/models/{model_name}/versions/{model_version}",
        response_model=S.V2ModelMetadata,
        responses=UNKNOWN_MODEL,
    )
    async def version_metadata(model_name: str, model_version: str, service: ServiceDep) -> Any:
        return check_model(service, model_name, model_version) or service.v2.metadata()

    @api.get(
        "/v2/models/{model_name}/ready",
        response_model=S.Ready,
        responses={**UNKNOWN_MODEL, **READY_RESPONSES},
    )
    async def model_ready(model_name: str, service: ServiceDep) -> Any:
        return check_model(service, model_name, None) or readiness(service)

    @api.post(
        "/v2/models/{model_name}/infer", response_model=S.V2InferResponse, responses=INFER_RESPONSES
    )
    async def infer(
        request: Request,
        model_name: str,
        body: InferRequest,  # type: ignore[valid-type]
        service: ServiceDep,
    ) -> Any:
        """Named tensors as in the manifest (KServe V2 JSON); outputs p_approve, p_retry."""
        return await run_infer(request, service, model_name, None, body)

    @api.post(
        "/v2/models/{model_name}/versions/{model_version}/infer",
        response_model=S.V2InferResponse,
        responses=INFER_RESPONSES,
    )
    async def infer_version(
        request: Request,
        model_name: str,
        model_version: str,
        body: InferRequest,  # type: ignore[valid-type]
        service: ServiceDep,
    ) -> Any:
        """As /v2/models/{model_name}/infer, for one version (the bundle's)."""
        return await run_infer(request, service, model_name, model_version, body)

    return api
