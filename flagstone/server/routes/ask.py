"""``/ask``: answer a question from a collection with one of the RAG pipelines and the generator."""
from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Depends
from pydantic import Field

from flagstone.server.service import HTTPProblem, Service, authorised, get_service
from flagstone.server.validation import StrictJSONRoute, StrictModel, StrictText

router = APIRouter(dependencies=[Depends(authorised)], route_class=StrictJSONRoute)


class AskRequest(StrictModel):
    question: StrictText
    collection: StrictText
    pipeline: Literal["rag", "memorag", "search_o1", "lc_boost", "full_context", "no_retrieval"] = "rag"
    k: int = Field(default=3, ge=1, le=20)
    max_new_tokens: int = Field(default=64, ge=1, le=512)
    # the trace (every step, query, chosen action and how it was chosen) is large: sent only when asked for
    trace: bool = False


@router.post("/ask")
async def ask(body: AskRequest, service: Service = Depends(get_service)) -> dict:
    service.check_texts([body.question], "question")
    # retrieval and generation run in the bounded model pool (see server.pool): a full pool answers 503 at once
    return await service.model_pool.run(_ask, service, body)


def _ask(service: Service, body: AskRequest) -> dict:
    from flagstone.rag import PIPELINES
    from flagstone.rag.base import ContextIndex
    from flagstone.rag.chunking import Chunk

    collection = service.collections.get(body.collection)
    retriever, docs = collection.retriever()
    if retriever is None:
        raise HTTPProblem(400, "invalid_request", f"collection {body.collection!r} is empty")
    chunks = [Chunk(d.id, d.id, n, 0, d.text, 0, len(d.text)) for n, d in enumerate(docs.values())]
    context = ContextIndex([(d.id, d.text) for d in docs.values()], chunks, retriever, "hybrid")
    generator = service.load_generator()
    options: dict[str, Any] = {"max_new_tokens": body.max_new_tokens}
    if body.pipeline in ("rag", "memorag", "search_o1"):
        options["k"] = body.k
    with service.generate_lock:  # one generation at a time: the model is shared
        answer = PIPELINES[body.pipeline](generator, **options).ask(body.question, context)
    data = answer.to_dict()
    if not body.trace:
        del data["trace"]
    return data
