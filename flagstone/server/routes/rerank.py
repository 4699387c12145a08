"""``/rerank``: order documents for a query with the configured cross-encoder."""
from __future__ import annotations

from fastapi import APIRouter, Depends
from pydantic import Field

from flagstone.server.service import Service, authorised, get_service
from flagstone.server.validation import StrictJSONRoute, StrictModel, StrictText

router = APIRouter(dependencies=[Depends(authorised)], route_class=StrictJSONRoute)


class RerankRequest(StrictModel):
    query: StrictText
    documents: list[StrictText]
    top_n: int | None = Field(default=None, ge=1)


@router.post("/rerank")
async def rerank_documents(body: RerankRequest, service: Service = Depends(get_service)) -> dict:
    service.check_texts([body.query], "query")
    service.check_texts(body.documents, "documents")
    # the model runs in the bounded model pool: a full pool answers 503 at once, and the event loop and the
    # threads of the other endpoints stay free
    ranked = await service.model_pool.run(_rerank, service, body)
    return {"results": [{"index": int(i), "score": float(s), "document": body.documents[int(i)]}
                        for i, s in zip(ranked.order, ranked.scores)]}


def _rerank(service: Service, body: RerankRequest):
    from flagstone.models.reranker import rerank

    return rerank(service.load_reranker(), body.query, body.documents, body.top_n)
