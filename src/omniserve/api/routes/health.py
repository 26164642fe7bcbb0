"""Health, load, model info and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from omniserve.api.protocol.models import Health, Load, ModelInfo
from omniserve.api.routes.common import get_client, model_response

router = APIRouter()


@router.head("/health", include_in_schema=False)
@router.get("/health")
async def health(request: Request) -> Response:
    client = get_client(request)
    ok, reason = client.health()
    storage = request.app.state.data.problem  # the server serves, but cannot store jobs or images
    if ok:
        return model_response(Health(status="healthy", running=True, storage=storage))
    stages = {name: "healthy" if problem is None else problem for name, problem in client.stage_health().items()}
    return model_response(Health(status="unhealthy", running=False, reason=reason, stages=stages), 503)


@router.get("/get_model_info")
async def model_info(request: Request) -> Response:
    data = request.app.state.data
    return model_response(ModelInfo.model_validate(
        get_client(request).model_info() | {"data_dir": {"path": str(data.path), "problem": data.problem}}))


@router.get("/get_load")
async def load(request: Request) -> Response:
    return model_response(Load.model_validate(get_client(request).load()))


@router.get("/metrics", response_class=PlainTextResponse, responses={200: {
    "content": {"text/plain": {"schema": {"type": "string", "description": "Prometheus text exposition format"}}},
    "description": "Prometheus metrics"}})
async def metrics(request: Request) -> Response:
    return Response(generate_latest(get_client(request).metrics_registry()), media_type=CONTENT_TYPE_LATEST)
