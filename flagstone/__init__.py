"""Flagstone: retrieval and retrieval-augmented LLM toolkit.

Heavy libraries (torch, transformers) load only when a model is built, so ``import flagstone`` is fast.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from flagstone._version import __version__

_EXPORTS = {
    "Embedder": "flagstone.models.embedder",
    "Embeddings": "flagstone.models.embeddings",
    "SparseWeights": "flagstone.models.embeddings",
    "MultiVectors": "flagstone.models.embeddings",
    "EmbeddingCache": "flagstone.models.cache",
    "CachedEmbedder": "flagstone.models.cache",
    "BM25": "flagstone.retrieval.bm25",
    "Retriever": "flagstone.retrieval.retriever",
    "HybridConfig": "flagstone.retrieval.retriever",
    "Hits": "flagstone.retrieval.retriever",
    "load_beir": "flagstone.evaluation.beir",
    "evaluate_retrieval": "flagstone.evaluation.retrieval",
    "evaluate_run": "flagstone.evaluation.metrics",
    "FlagstoneError": "flagstone.errors",
    "CrossEncoderReranker": "flagstone.models.reranker",
    "LLMReranker": "flagstone.models.reranker",
    "ColbertReranker": "flagstone.models.reranker",
    "rerank_hits": "flagstone.rerank",
    "CachedReranker": "flagstone.rerank",
    "load_causal_lm": "flagstone.models.causal_lm",
    "TaskSpec": "flagstone.evaluation.tasks",
    "run_suite": "flagstone.evaluation.suite",
    "LocalGenerator": "flagstone.models.generator",
    "OpenAIChatGenerator": "flagstone.models.generator",
    "ContextIndex": "flagstone.rag.base",
    "RAG": "flagstone.rag.plain",
    "MemoRAG": "flagstone.rag.memorag",
    "SearchO1": "flagstone.rag.search_o1",
    "LCBoost": "flagstone.rag.lc_boost",
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:
    from flagstone.errors import FlagstoneError
    from flagstone.evaluation.beir import load_beir
    from flagstone.evaluation.metrics import evaluate_run
    from flagstone.evaluation.retrieval import evaluate_retrieval
    from flagstone.evaluation.suite import run_suite
    from flagstone.evaluation.tasks import TaskSpec
    from flagstone.models.cache import CachedEmbedder, EmbeddingCache
    from flagstone.models.causal_lm import load_causal_lm
    from flagstone.models.embedder import Embedder
    from flagstone.models.embeddings import Embeddings, MultiVectors, SparseWeights
    from flagstone.models.generator import LocalGenerator, OpenAIChatGenerator
    from flagstone.models.reranker import ColbertReranker, CrossEncoderReranker, LLMReranker
    from flagstone.rag.base import ContextIndex
    from flagstone.rag.lc_boost import LCBoost
    from flagstone.rag.memorag import MemoRAG
    from flagstone.rag.plain import RAG
    from flagstone.rag.search_o1 import SearchO1
    from flagstone.rerank import CachedReranker, rerank_hits
    from flagstone.retrieval.bm25 import BM25
    from flagstone.retrieval.retriever import Hits, HybridConfig, Retriever


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'flagstone' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
