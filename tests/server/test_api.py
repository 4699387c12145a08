"""The HTTP API through a real uvicorn server on a loopback port."""
from __future__ import annotations

import base64
import concurrent.futures
import json

import numpy as np
import pytest

DOCS = [
    {"id": "cold", "text": "Zinc lozenges shorten the common cold.", "metadata": {"lang": "en", "topic": "health"}},
    {"id": "stars", "text": "Neutron stars are the collapsed cores of massive stars.",
     "metadata": {"lang": "en", "topic": "space"}},
    {"id": "etoiles", "text": "Les étoiles à neutrons sont très denses.", "metadata": {"lang": "fr", "topic": "space"}},
    {"id": "tea", "text": "Green tea contains catechins and caffeine.", "metadata": {"lang": "en", "topic": "health"}},
]


def error_of(response) -> str:
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"type", "message"}
    return body["error"]["message"]


@pytest.fixture
def docs(client):
    assert client.post("/collections", json={"name": "docs"}).status_code == 201
    response = client.post("/collections/docs/documents", json={"documents": DOCS})
    assert response.status_code == 200 and response.json()["documents"] == 4
    return client


def test_health_and_openapi(client):
    assert client.get("/health").json()["status"] == "ok"
    spec = client.get("/openapi.json").json()
    assert {"/v1/embeddings", "/collections/{name}/search", "/rerank", "/ask"} <= set(spec["paths"])


def test_openai_embeddings_match_the_library(client, minilm):
    texts = ["hello world", "zinc and colds"]
    body = client.post("/v1/embeddings", json={"input": texts, "model": "anything"}).json()
    expected = minilm.encode(texts).dense
    got = np.array([d["embedding"] for d in body["data"]], dtype=np.float32)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert [d["index"] for d in body["data"]] == [0, 1] and body["object"] == "list"
    assert body["usage"]["prompt_tokens"] > 0
    one = client.post("/v1/embeddings", json={"input": "hello world", "encoding_format": "base64"}).json()
    decoded = np.frombuffer(base64.b64decode(one["data"][0]["embedding"]), dtype=np.float32)
    np.testing.assert_allclose(decoded, expected[0], atol=1e-5)
    short = client.post("/v1/embeddings", json={"input": "hello world", "dimensions": 64}).json()
    vec = np.array(short["data"][0]["embedding"])
    assert vec.shape == (64,) and abs(np.linalg.norm(vec) - 1) < 1e-5
    assert client.post("/v1/embeddings", json={"input": "x", "dimensions": 4096}).status_code == 400


def test_native_embed(client):
    body = client.post("/v1/embed", json={"texts": ["a query"], "is_query": True}).json()
    assert len(body["dense"][0]) == 384
    response = client.post("/v1/embed", json={"texts": ["x"], "sparse": True})
    assert response.status_code == 400 and "sparse" in error_of(response)
    response = client.post("/v1/embed", json={"texts": ["x"], "dense": False})
    assert response.status_code == 400


def test_collection_lifecycle(client):
    assert client.post("/collections", json={"name": "a-1", "description": "first"}).status_code == 201
    response = client.post("/collections", json={"name": "a-1"})
    assert response.status_code == 409 and "exists" in error_of(response)
    for bad in ("../x", "-x", "has space"):
        assert client.post("/collections", json={"name": bad}).status_code in (400, 422)
    assert client.post("/collections", json={"name": "b", "index": "nope"}).status_code == 422
    listed = client.get("/collections").json()["collections"]
    assert [c["name"] for c in listed] == ["a-1"] and listed[0]["documents"] == 0
    assert client.get("/collections/a-1").json()["description"] == "first"
    assert client.delete("/collections/a-1").status_code == 200
    assert client.get("/collections/a-1").status_code == 404
    assert client.delete("/collections/a-1").status_code == 404


def test_documents_add_upsert_get_delete(docs):
    client = docs
    assert client.get("/collections/docs/documents/tea").json()["metadata"] == {"lang": "en", "topic": "health"}
    assert client.get("/collections/docs/documents/none").status_code == 404
    refused = client.post("/collections/docs/documents", json={"documents": [DOCS[0]], "upsert": False})
    assert refused.status_code == 409
    new_text = {"id": "tea", "text": "Black tea is fermented.", "metadata": {}}
    assert client.post("/collections/docs/documents", json={"documents": [new_text]}).json()["documents"] == 4
    top = client.post("/collections/docs/search", json={"query": "fermented tea", "mode": "bm25", "k": 1}).json()
    assert top["results"][0]["id"] == "tea" and top["results"][0]["text"] == "Black tea is fermented."
    twice = client.post("/collections/docs/documents", json={"documents": [new_text, new_text]})
    assert twice.status_code == 400
    assert client.post("/collections/docs/documents/delete", json={"ids": ["nope"]}).status_code == 404
    gone = client.post("/collections/docs/documents/delete", json={"ids": ["tea", "nope"], "missing_ok": True})
    assert gone.json() == {"collection": "docs", "deleted": 1, "documents": 3}
    ids = [h["id"] for h in client.post("/collections/docs/search", json={"query": "tea", "k": 10}).json()["results"]]
    assert "tea" not in ids and len(ids) == 3


def test_search_modes_signals_highlights(docs, minilm):
    client = docs
    for mode in ("dense", "bm25", "hybrid"):
        body = client.post("/collections/docs/search", json={"query": "common cold remedy", "mode": mode, "k": 2})
        hits = body.json()["results"]
        assert hits[0]["id"] == "cold", mode
        assert len(hits) == 2
    hybrid = client.post("/collections/docs/search", json={"query": "common cold", "k": 1}).json()["results"][0]
    assert set(hybrid["signals"]) == {"dense", "bm25"}
    q = minilm.encode_queries(["common cold"]).dense[0]
    d = minilm.encode_documents([DOCS[0]["text"]]).dense[0]
    assert hybrid["signals"]["dense"] == pytest.approx(float(q @ d), abs=1e-4)
    text = hybrid["text"]
    assert sorted(text[s:e].lower() for s, e in hybrid["highlights"]) == ["cold", "common"]


def test_search_filters(docs):
    client = docs

    def ids(**body):
        response = client.post("/collections/docs/search", json={"query": "stars", "k": 10, **body})
        assert response.status_code == 200, response.text
        return [h["id"] for h in response.json()["results"]]

    assert ids(filter={"lang": "fr"}) == ["etoiles"]
    assert set(ids(filter={"topic": {"$in": ["health"]}})) == {"cold", "tea"}
    assert ids(filter={"lang": "de"}) == []
    assert client.post("/collections/docs/search",
                       json={"query": "x", "filter": {"lang": {"$ne": "fr"}}}).status_code == 400


@pytest.mark.parametrize("body, status, message", [
    ({"query": "x", "mode": "colbert"}, 400, "not available"),
    ({"query": "x", "k": 5000}, 400, "over the limit"),
    ({"query": "   "}, 400, "empty"),
    ({"query": "x", "k": 0}, 422, "k"),
    ({"query": 5}, 422, "query"),
    ({}, 422, "query"),
])
def test_search_bad_input(docs, body, status, message):
    response = docs.post("/collections/docs/search", json=body)
    assert response.status_code == status and message in error_of(response)


def test_limits(serve, tmp_path):
    import httpx

    server = serve(max_texts=3, max_chars=50, max_body_bytes=2000)
    with httpx.Client(base_url=server.url) as client:
        assert client.post("/v1/embeddings", json={"input": ["a"] * 4}).status_code == 413
        assert client.post("/v1/embeddings", json={"input": ["a" * 51]}).status_code == 413
        assert client.post("/v1/embeddings", json={"input": ["a\x00b"]}).status_code == 400
        assert client.post("/v1/embeddings", content=json.dumps({"input": ["a" * 40] * 60}),
                           headers={"content-type": "application/json"}).status_code == 413
        broken = client.post("/v1/embeddings", content=b"{not json", headers={"content-type": "application/json"})
        assert broken.status_code == 422
        assert client.post("/v1/embeddings", json={"input": ["fine"]}).status_code == 200


def test_api_keys(serve):
    import httpx

    server = serve(api_keys=frozenset({"s3cret"}))
    with httpx.Client(base_url=server.url) as client:
        assert client.get("/health").status_code == 200
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
            response = client.post("/v1/embeddings", json={"input": "x"}, headers=headers)
            assert response.status_code == 401 and "API key" in error_of(response)
        ok = client.post("/v1/embeddings", json={"input": "x"}, headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200
        assert client.get("/collections").status_code == 401


def test_rerank_needs_a_configured_model_and_matches_the_library(serve, tiny_cross_encoder_dir, tmp_path):
    import httpx

    from flagstone.models.reranker import CrossEncoderReranker

    plain = serve()
    with httpx.Client(base_url=plain.url) as client:
        response = client.post("/rerank", json={"query": "q", "documents": ["a"]})
        assert response.status_code == 400 and "--reranker" in error_of(response)
    server = serve(reranker=str(tiny_cross_encoder_dir), data_dir=tmp_path / "with-reranker")
    documents = ["zinc helps colds", "stars are far", "tea is a drink"]
    with httpx.Client(base_url=server.url, timeout=60) as client:
        body = client.post("/rerank", json={"query": "cold remedy", "documents": documents, "top_n": 2}).json()
    expected = CrossEncoderReranker(str(tiny_cross_encoder_dir)).score_pairs([("cold remedy", d) for d in documents])
    order = np.argsort(-expected, kind="stable")[:2]
    assert [r["index"] for r in body["results"]] == order.tolist()
    np.testing.assert_allclose([r["score"] for r in body["results"]], expected[order], atol=1e-4)


def test_ask_answers_from_a_collection(serve, tiny_causal_lm_dir, tmp_path):
    import httpx

    server = serve(generator=str(tiny_causal_lm_dir))
    with httpx.Client(base_url=server.url, timeout=120) as client:
        client.post("/collections", json={"name": "docs"})
        client.post("/collections/docs/documents", json={"documents": DOCS})
        request = {"question": "What shortens a cold?", "collection": "docs", "k": 1, "max_new_tokens": 4}
        response = client.post("/ask", json=request)
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["pipeline"] == "rag" and "trace" not in body  # the trace is opt-in
        traced = client.post("/ask", json={**request, "trace": True}).json()
        assert traced["answer"] == body["answer"] and traced["trace"]["retrieved"] == ["cold"]
        assert traced["trace"]["unparsed_actions"] == 0 and traced["trace"]["silent_defaults"] == 0
        assert client.post("/ask", json={"question": "x", "collection": "nope"}).status_code == 404


def test_metrics_count_requests_and_documents(docs):
    docs.post("/collections/docs/search", json={"query": "stars"})
    text = docs.get("/metrics").text
    assert 'flagstone_requests_total{method="POST",path="/collections/{name}/search",status="200"} 1.0' in text
    assert 'flagstone_documents{collection="docs"} 4.0' in text
    assert "flagstone_encode_queue_depth" in text


def test_concurrent_embedding_requests_share_batches(serve, minilm):
    import httpx

    server = serve(max_wait_ms=50)
    texts = [f"sentence number {i} about topic {i % 5}" for i in range(24)]

    def one(text):
        with httpx.Client(base_url=server.url, timeout=60) as client:
            return client.post("/v1/embeddings", json={"input": text}).json()["data"][0]["embedding"]

    with concurrent.futures.ThreadPoolExecutor(12) as pool:
        vectors = np.array(list(pool.map(one, texts)), dtype=np.float32)
    np.testing.assert_allclose(vectors, minilm.encode(texts).dense, atol=1e-4)
    batcher = server.app.state.batcher
    assert batcher.texts == 24 and batcher.batches < 24


def test_restart_serves_the_same_results(serve, tmp_path):
    import httpx

    data = tmp_path / "persist"
    first = serve(data_dir=data)
    query = {"query": "dense stars", "k": 3}
    with httpx.Client(base_url=first.url, timeout=60) as client:
        client.post("/collections", json={"name": "docs", "index": "flat"})
        client.post("/collections/docs/documents", json={"documents": DOCS})
        client.post("/collections/docs/documents/delete", json={"ids": ["tea"]})
        before = client.post("/collections/docs/search", json=query).json()
    first.stop()
    second = serve(data_dir=data)
    with httpx.Client(base_url=second.url, timeout=60) as client:
        after = client.post("/collections/docs/search", json=query).json()
        assert client.get("/collections/docs").json()["documents"] == 3
    assert after == before


def test_an_hi2_collection_searches_like_flat(client):
    texts = [f"Document {i} is about subject {i % 7} and detail {i % 11}." for i in range(120)]
    documents = [{"id": str(i), "text": t} for i, t in enumerate(texts)]
    for kind in ("flat", "hi2"):
        client.post("/collections", json={"name": kind, "index": kind})
        assert client.post(f"/collections/{kind}/documents", json={"documents": documents[:100]}).status_code == 200
        assert client.post(f"/collections/{kind}/documents", json={"documents": documents[100:]}).status_code == 200
    results = {kind: [h["id"] for h in client.post(f"/collections/{kind}/search",
                                                    json={"query": "subject 3 and detail 5", "mode": "dense",
                                                          "k": 10}).json()["results"]] for kind in ("flat", "hi2")}
    assert len(set(results["flat"]) & set(results["hi2"])) >= 7


@pytest.mark.parametrize("kind", ["hi2", "ivf"])
def test_filtered_search_finds_every_matching_document(client, kind):
    """The filter is applied inside the index's search: a clustered index finds all 6 matching documents of
    60 (post-filtering a fixed over-fetch found 2 of 6 with HI²), and dense search returns k hits whenever k
    documents match."""
    subjects = ["stars", "bees", "colds", "rivers", "engines", "violins"]
    documents = [{"id": f"{s}-{n}", "text": f"Note {n} about {s}: observations number {n * 7 % 11} on {s}.",
                  "metadata": {"group": "rare" if n == 0 else ("half" if n % 2 else "other")}}
                 for s in subjects for n in range(10)]
    name = f"filtered-{kind}"
    assert client.post("/collections", json={"name": name, "index": kind}).status_code == 201
    assert client.post(f"/collections/{name}/documents", json={"documents": documents}).status_code == 200
    for mode in ("dense", "bm25", "hybrid"):
        body = {"query": "violins and engines", "mode": mode, "k": 10, "filter": {"group": "rare"}}
        found = [h["id"] for h in client.post(f"/collections/{name}/search", json=body).json()["results"]]
        assert sorted(found) == sorted(f"{s}-0" for s in subjects), mode
        body["filter"] = {"group": "half"}
        found = [h["id"] for h in client.post(f"/collections/{name}/search", json=body).json()["results"]]
        assert len(found) == 10 and all(int(i.rsplit("-", 1)[1]) % 2 for i in found), mode


def test_an_empty_document_is_stored_and_searchable_but_an_empty_query_is_refused(client):
    """A real corpus may hold empty documents (Cranfield's 471 and 995): upload them as they are."""
    assert client.post("/collections", json={"name": "raw"}).status_code == 201
    documents = [{"id": "471", "text": ""}, {"id": "1", "text": "Flow over a flat plate at high speed."}]
    response = client.post("/collections/raw/documents", json={"documents": documents})
    assert response.status_code == 200 and response.json()["documents"] == 2
    assert client.get("/collections/raw/documents/471").json()["text"] == ""
    for mode in ("dense", "bm25", "hybrid"):
        hits = client.post("/collections/raw/search", json={"query": "flat plate", "mode": mode, "k": 2}).json()
        assert hits["results"][0]["id"] == "1", mode
    refused = client.post("/collections/raw/search", json={"query": "  ", "mode": "dense"})
    assert refused.status_code == 400 and "query[0] is empty" in error_of(refused)
