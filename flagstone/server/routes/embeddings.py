"""Embeddings: ``/v1/embeddings`` (OpenAI-compatible, dense) and ``/v1/embed`` (dense, sparse, ColBERT)."""
from __future__ import annotations

import base64
from typing import Any, Literal

import numpy as np
from fastapi import APIRouter, Depends
from pydantic import Field

from flagstone.errors import MissingHeadError
from flagstone.server.responses import VectorJSONResponse
from flagstone.server.service import HTTPProblem, Service, authorised, get_service
from flagstone.server.validation import StrictJSONRoute, StrictModel, StrictText

router = APIRouter(dependencies=[Depends(authorised)], route_class=StrictJSONRoute)


class OpenAIEmbeddingRequest(StrictModel):
    input: StrictText | list[StrictText]
    model: StrictText | None = None
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(default=None, ge=1)
    user: StrictText | None = None


class EmbedRequest(StrictModel):
    texts: list[StrictText]
    dense: bool = True
    sparse: bool = False
    colbert: bool = False
    is_query: bool = False


_EMBEDDINGS_RESPONSES: dict[int | str, dict[str, Any]] = {200: {"content": {"application/json": {"schema": {
    "type": "object", "properties": {
        "object": {"const": "list"}, "model": {"type": "string"},
        "data": {"type": "array", "items": {"type": "object", "properties": {
            "object": {"const": "embedding"}, "index": {"type": "integer"},
            "embedding": {"oneOf": [{"type": "array", "items": {"type": "number"}},
                                    {"type": "string", "description": "base64 of little-endian float32"}]}}}},
        "usage": {"type": "object", "properties": {"prompt_tokens": {"type": "integer"},
                                                   "total_tokens": {"type": "integer"}}}}}}}}}
_EMBED_RESPONSES: dict[int | str, dict[str, Any]] = {200: {"content": {"application/json": {"schema": {
    "type": "object", "properties": {
        "model": {"type": "string"},
        "dense": {"type": "array", "items": {"type": "array", "items": {"type": "number"}}},
        "sparse": {"type": "array", "items": {"type": "object", "additionalProperties": {"type": "number"}}},
        "colbert": {"type": "array", "items": {"type": "array", "items": {"type": "array",
                                                                          "items": {"type": "number"}}}}}}}}}}


@router.post("/v1/embeddings", response_class=VectorJSONResponse, responses=_EMBEDDINGS_RESPONSES)
def openai_embeddings(body: OpenAIEmbeddingRequest, service: Service = Depends(get_service)) -> VectorJSONResponse:
    embedder = service.embedder
    texts = [body.input] if isinstance(body.input, str) else body.input
    service.check_texts(texts, "input")
    dense = service.batcher.encode(texts).dense
    if body.dimensions is not None:
        if body.dimensions > dense.shape[1]:
            raise HTTPProblem(400, "invalid_request", f"dimensions={body.dimensions} is more than the model's "
                                                      f"{dense.shape[1]}")
        dense = dense[:, : body.dimensions]
        dense = dense / np.maximum(np.linalg.norm(dense, axis=1, keepdims=True), 1e-12)
    data = []
    for i, row in enumerate(np.ascontiguousarray(dense, dtype=np.float32)):
        value = base64.b64encode(row.tobytes()).decode() if body.encoding_format == "base64" else row
        data.append({"object": "embedding", "index": i, "embedding": value})
    tokens = sum(len(ids) for ids in embedder.tokenize(texts))
    return VectorJSONResponse({"object": "list", "data": data, "model": embedder.name,
                               "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})


@router.post("/v1/embed", response_class=VectorJSONResponse, responses=_EMBED_RESPONSES)
def embed(body: EmbedRequest, service: Service = Depends(get_service)) -> VectorJSONResponse:
    embedder = service.embedder
    service.check_texts(body.texts)
    if not (body.dense or body.sparse or body.colbert):
        raise HTTPProblem(400, "invalid_request", "ask for at least one of dense, sparse, colbert")
    try:
        emb = service.batcher.encode(body.texts, is_query=body.is_query, dense=body.dense, sparse=body.sparse,
                                     colbert=body.colbert)
    except MissingHeadError as exc:
        raise HTTPProblem(400, "invalid_request", str(exc)) from None
    out: dict[str, Any] = {"model": embedder.name}
    if emb.dense is not None:
        out["dense"] = np.ascontiguousarray(emb.dense, dtype=np.float32)
    if emb.sparse is not None:
        out["sparse"] = [embedder.lexical_tokens(emb.sparse.row(i)) for i in range(len(emb.sparse))]
    if emb.colbert is not None:
        out["colbert"] = [np.ascontiguousarray(emb.colbert[i], dtype=np.float32) for i in range(len(emb.colbert))]
    return VectorJSONResponse(out)
