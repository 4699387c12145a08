"""Collections: create, list, describe, delete; add (upsert), delete and get documents; search."""
from __future__ import annotations

import logging
from typing import Any, Literal

from fastapi import APIRouter, Depends
from pydantic import Field
from starlette.concurrency import run_in_threadpool

from flagstone.errors import IdError
from flagstone.server.service import HTTPProblem, Service, authorised, get_service
from flagstone.server.validation import Filter, Metadata, StrictJSONRoute, StrictModel, StrictText, readable_metadata
from flagstone.server.sharded import ShardedCollection, ShardedSearch
from flagstone.server.store import Document

router = APIRouter(dependencies=[Depends(authorised)], route_class=StrictJSONRoute)
_log = logging.getLogger(__name__)


class CreateCollection(StrictModel):
    name: StrictText = Field(min_length=1, max_length=64)
    index: Literal["flat", "ivf", "hi2"] = "flat"
    description: StrictText = Field(default="", max_length=1000)


class DocumentIn(StrictModel):
    id: StrictText = Field(min_length=1, max_length=512)
    text: StrictText
    metadata: Metadata = Field(default_factory=dict)


class AddDocuments(StrictModel):
    documents: list[DocumentIn]
    upsert: bool = True  # False: an id that exists already is an error


class DeleteDocuments(StrictModel):
    ids: list[StrictText] = Field(min_length=1)
    missing_ok: bool = False


class SearchRequest(StrictModel):
    query: StrictText
    mode: StrictText = "hybrid"
    k: int = Field(default=10, ge=1)
    filter: Filter | None = None
    rerank: bool = False
    rerank_depth: int = Field(default=50, ge=1)
    # sharded collections (serve --ray): return the answering shards' hits, flagged, when a shard is down,
    # instead of 503; unsharded collections always answer whole
    allow_partial: bool = False


@router.get("/collections")
def list_collections(service: Service = Depends(get_service)) -> dict:
    collections = service.collections
    return {"collections": [collections.get(n).describe() for n in collections.names()]}


@router.post("/collections", status_code=201)
def create_collection(body: CreateCollection, service: Service = Depends(get_service)) -> dict:
    return service.collections.create(body.name, index=body.index, description=body.description).describe()


@router.get("/collections/{name}")
def describe_collection(name: str, service: Service = Depends(get_service)) -> dict:
    return service.collections.get(name).describe()


@router.delete("/collections/{name}")
def delete_collection(name: str, service: Service = Depends(get_service)) -> dict:
    service.collections.delete(name)
    return {"deleted": name}


@router.post("/collections/{name}/documents")
def add_documents(name: str, body: AddDocuments, service: Service = Depends(get_service)) -> dict:
    collection = service.collections.get(name)
    service.check_texts([d.text for d in body.documents], "documents", allow_empty=True)
    ids = [d.id for d in body.documents]
    if len(set(ids)) != len(ids):
        raise HTTPProblem(400, "invalid_request", "the same id appears twice in one request")
    docs = [Document(d.id, d.text, d.metadata) for d in body.documents]
    try:
        count = collection.add(docs, overwrite=body.upsert)
    except IdError as exc:
        raise HTTPProblem(409, "conflict", str(exc)) from None
    return {"collection": name, "written": count, "documents": collection.count()}


@router.post("/collections/{name}/documents/delete")
def delete_documents(name: str, body: DeleteDocuments, service: Service = Depends(get_service)) -> dict:
    collection = service.collections.get(name)
    try:
        count = collection.delete(body.ids, missing_ok=body.missing_ok)
    except IdError as exc:
        raise HTTPProblem(404, "not_found", str(exc)) from None
    return {"collection": name, "deleted": count, "documents": collection.count()}


@router.get("/collections/{name}/documents/{doc_id:path}")  # ":path": an id may contain "/" (sent as %2F)
def get_document(name: str, doc_id: str, service: Service = Depends(get_service)) -> dict:
    try:
        doc = service.collections.get(name).get(doc_id)
    except IdError as exc:
        raise HTTPProblem(404, "not_found", str(exc)) from None
    return _with_metadata({"id": doc.id, "text": doc.text}, doc.metadata)


# not a response_model (that would drop fields such as metadata_error): a schema that documents the answer
_HIT_SCHEMA = {"type": "object", "properties": {
    "id": {"type": "string"}, "score": {"type": "number"}, "text": {"type": "string"},
    "metadata": {"type": ["object", "null"]},
    "metadata_error": {"type": "string", "description": "why stored metadata could not be sent (then null)"},
    "signals": {"type": "object", "additionalProperties": {"type": "number"}},
    "highlights": {"type": "array", "items": {"type": "array", "items": {"type": "integer"}, "minItems": 2,
                                              "maxItems": 2},
                   "description": "[start, end) spans of words matching a query term, as offsets in Unicode code "
                                  "points of text (Python's text[start:end]), not UTF-16 units: in JavaScript "
                                  "slice Array.from(text), since a character outside the BMP (an emoji) is one "
                                  "code point but two UTF-16 units"}}}
_SEARCH_RESPONSES: dict[int | str, dict[str, Any]] = {200: {"content": {"application/json": {"schema": {
    "type": "object", "properties": {"collection": {"type": "string"}, "mode": {"type": "string"},
                                     "results": {"type": "array", "items": _HIT_SCHEMA},
                                     "shards": {"type": "object", "description": "sharded collections only: "
                                                "shards in all, which answered, which did not (then complete "
                                                "is false and their documents are absent), retries on replicas",
                                                "properties": {"total": {"type": "integer"},
                                                               "answered": {"type": "array",
                                                                            "items": {"type": "integer"}},
                                                               "missing": {"type": "array",
                                                                           "items": {"type": "integer"}},
                                                               "complete": {"type": "boolean"},
                                                               "retries": {"type": "integer"}}}}}}}}}


@router.post("/collections/{name}/search", responses=_SEARCH_RESPONSES)
async def search(name: str, body: SearchRequest, service: Service = Depends(get_service)) -> dict:
    def run() -> list:
        collection = service.collections.get(name)  # on a thread: the manager's lock may be held by a delete
        service.check_texts([body.query], "query")
        service.check_k(body.k)
        service.check_k(body.rerank_depth)
        reranker = service.load_reranker() if body.rerank else None
        if isinstance(collection, ShardedCollection):
            return collection.search(body.query, mode=body.mode, k=body.k, where=body.filter, reranker=reranker,
                                     rerank_depth=body.rerank_depth, allow_partial=body.allow_partial)
        return collection.search(body.query, mode=body.mode, k=body.k, where=body.filter, reranker=reranker,
                                 rerank_depth=body.rerank_depth)

    # reranking is slow model work: the bounded model pool (503 at once when full); plain search stays on the
    # ordinary worker threads
    found = await (service.model_pool.run(run) if body.rerank else run_in_threadpool(run))
    hits = found.hits if isinstance(found, ShardedSearch) else found
    response = {"collection": name, "mode": body.mode, "results": [
        _with_metadata({"id": h.id, "score": h.score, "text": h.text}, h.metadata,
                       signals=h.signals, highlights=[list(s) for s in h.highlights]) for h in hits]}
    if isinstance(found, ShardedSearch):  # which shards answered: a partial result is never silent
        response["shards"] = found.status()
    return response


def _with_metadata(entry: dict[str, Any], metadata: dict[str, Any], **rest: Any) -> dict[str, Any]:
    """``entry`` with the document's metadata; metadata stored before it was checked on write that cannot be
    sent is ``null`` with a ``metadata_error`` saying why, so one such document does not fail the response."""
    shown, error = readable_metadata(metadata)
    if error is not None:
        _log.warning("document %r: stored metadata cannot be sent (%s)", entry["id"], error)
        entry.update(metadata=None, metadata_error=error)
    else:
        entry["metadata"] = shown
    entry.update(rest)
    return entry
