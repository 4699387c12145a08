"""Retrieval-augmented generation: plain RAG, MemoRAG, Search-o1 and LC-Boost over a chunked, indexed context.

Every pipeline has ``ask(question, context) -> Answer``; the answer carries a trace of each generator call
and retrieval (prompts, outputs, chunk ids, token counts, time). Inside ``with listening(listener):`` every
step is also reported as it happens (progress output, or a local generator's answer text as it is written).
"""
from flagstone.rag.base import Answer, ContextIndex, Step, StepListener, Trace, listening
from flagstone.rag.chunking import Chunk, chunk_documents, chunk_text
from flagstone.rag.lc_boost import LCBoost
from flagstone.rag.memorag import MemoRAG, Memory
from flagstone.rag.plain import RAG, FullContext, NoRetrieval
from flagstone.rag.search_o1 import SearchO1

PIPELINES = {"no_retrieval": NoRetrieval, "full_context": FullContext, "rag": RAG, "memorag": MemoRAG,
             "search_o1": SearchO1, "lc_boost": LCBoost}

__all__ = ["PIPELINES", "RAG", "Answer", "Chunk", "ContextIndex", "FullContext", "LCBoost", "MemoRAG", "Memory",
           "NoRetrieval", "SearchO1", "Step", "StepListener", "Trace", "chunk_documents", "chunk_text", "listening"]
