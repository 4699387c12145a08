"""Service endpoints: ``/health``, Prometheus ``/metrics``, the search page at ``/`` and the API reference at
``/docs``."""
from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, PlainTextResponse

from flagstone.server.service import Service, get_service
from flagstone.server.validation import StrictJSONRoute

STATIC = Path(__file__).parent.parent / "static"

router = APIRouter(route_class=StrictJSONRoute)


@router.get("/health")
async def health(request: Request) -> dict:
    # on the event loop, with no dependency run on a worker thread and no lock: it must answer at once however
    # busy those threads are (issue 18: /health took 22 s while rerank and ask held them all)
    service = get_service(request)
    if service.settings.api_keys and not service.key_is_valid(request.headers.get("authorization", "")):
        return {"status": "ok"}  # without a key, only that the service is up: no model or collection count
    return {"status": "ok", "model": service.embedder.name, "outputs": list(service.embedder.available_outputs),
            "collections": service.collections.count()}


@router.get("/metrics", response_class=PlainTextResponse)
def prometheus_metrics(service: Service = Depends(get_service)) -> PlainTextResponse:
    body, content_type = service.metrics.render()
    return PlainTextResponse(body, media_type=content_type)


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
def page() -> HTMLResponse:
    return HTMLResponse((STATIC / "index.html").read_text(encoding="utf-8"))


@router.get("/docs", response_class=HTMLResponse, include_in_schema=False)
@router.get("/redoc", response_class=HTMLResponse, include_in_schema=False)  # the old ReDoc address
def api_reference(request: Request) -> HTMLResponse:
    from flagstone.server.docs import render_docs

    return HTMLResponse(render_docs(request.app.openapi()))
