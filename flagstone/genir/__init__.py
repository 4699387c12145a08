"""Generative retrieval (DSI / NCI style): a small language model maps a query straight to a document identifier.

- :mod:`~flagstone.genir.docids`: atomic ids (one new token per document) and semantic ids (digits of a
  hierarchical k-means over document embeddings, one position-specific token per digit);
- :mod:`~flagstone.genir.trie`: the prefix trie of docid token sequences that constrains decoding;
- :mod:`~flagstone.genir.model`: :class:`GenerativeRetriever` (constrained beam search, ``search`` returns
  :class:`~flagstone.retrieval.retriever.Hits`, save / load through a folder);
- :mod:`~flagstone.genir.training`: training = indexing (document text -> docid) plus retrieval (pseudo-queries
  and training queries -> docid);
- :mod:`~flagstone.genir.query_generation`: pseudo-queries written by a chat LM (doc2query / DSI-QG style), cached
  on disk, for training with ``pseudo_query_source="llm"``;
- :mod:`~flagstone.genir.evaluation`: scoring a trained model on a BEIR data set.
"""
