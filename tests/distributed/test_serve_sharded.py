"""``serve --ray``: collections backed by shard actors on a local Ray cluster answer search by scatter-gather
with the single retriever's results (metadata filters too), say which shards answered, refuse writes (409
read_only), and a killed shard actor gives a retry on its replica or a 503 / an explicitly partial result, never
silently fewer hits."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("ray", reason="the ray extra is not installed")
pytest.importorskip("fastapi", reason="the server extra is not installed")

from flagstone.corpora import python_docstrings  # noqa: E402
from flagstone.distributed.encode import EmbedderSpec  # noqa: E402
from flagstone.distributed.shards import build_sharded  # noqa: E402
from flagstone.retrieval.retriever import Retriever  # noqa: E402

QUERY = "read a file from disk"


@pytest.fixture(scope="module")
def local_ray():
    import ray

    from flagstone.distributed.cluster import connect

    connect(num_cpus=6)  # logical CPUs: 2 shards x 2 replicas of 1 CPU each, and 2 builders
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def corpus():
    ids, texts = python_docstrings(60)
    metadata = [{"n": n, "half": "first" if n < 30 else "second"} for n in range(len(ids))]
    return ids, texts, metadata


def start(settings_kw, minilm, tmp_path):
    from fastapi.testclient import TestClient

    from flagstone.server.app import ServerSettings, create_app

    app = create_app(ServerSettings(data_dir=str(tmp_path / "data"), **settings_kw), embedder=minilm)
    return app, TestClient(app)


def test_a_sharded_folder_is_served_read_only_and_a_killed_shard_is_retried_or_flagged(local_ray, corpus, minilm,
                                                                                     tiny_cross_encoder_dir, tmp_path):
    ids, texts, metadata = corpus
    emb = minilm.encode(texts, show_progress=False)
    build_sharded(tmp_path / "sharded", ids, texts, spec=EmbedderSpec.of(minilm), shards=2, embeddings=emb,
                  metadata=metadata, use_ray=False)
    single = Retriever(minilm)
    single.add(ids, texts, metadata, embeddings=emb)
    app, client = start({"ray": "", "sharded": {"docs": str(tmp_path / "sharded")}, "replicas": 2,
                         "shard_deadline_s": 20, "reranker": str(tiny_cross_encoder_dir)}, minilm, tmp_path)
    with client as http:
        described = http.get("/collections/docs").json()
        assert described["writable"] is False and described["sharded"] == {"shards": 2, "replicas": 2}
        assert described["documents"] == len(ids)
        for mode in ("hybrid", "dense", "bm25"):
            want = single.search([QUERY], mode=mode, k=5)
            got = http.post("/collections/docs/search", json={"query": QUERY, "mode": mode, "k": 5}).json()
            assert [r["id"] for r in got["results"]] == want.ids[0], mode
            assert [r["score"] for r in got["results"]] == [float(s) for s in want.scores[0]], mode
            assert got["shards"] == {"total": 2, "answered": [0, 1], "missing": [], "complete": True, "retries": 0}
        first = got["results"][0]
        row = ids.index(first["id"])
        assert first["text"] == texts[row] and first["metadata"] == metadata[row] and first["highlights"]
        assert http.get(f"/collections/docs/documents/{ids[40]}").json()["metadata"] == metadata[40]

        # writes: refused with 409 read_only, saying why
        added = http.post("/collections/docs/documents", json={"documents": [{"id": "x", "text": "new"}]})
        assert added.status_code == 409 and added.json()["error"]["type"] == "read_only"
        assert "read-only" in added.json()["error"]["message"]
        assert http.post("/collections/docs/documents/delete", json={"ids": [ids[0]]}).status_code == 409
        assert http.delete("/collections/docs").status_code == 409

        # metadata filters: evaluated on each shard, applied inside its index search; the answer is the single
        # retriever's searched with every matching id allowed (ids and scores)
        for where in ({"half": "first"}, {"n": {"$in": [3, 44, 59]}}, {"n": 7}, {"half": "neither"}):
            allow = [i for i, m in zip(ids, metadata) if all(m.get(f) == v if not isinstance(v, dict)
                                                             else m.get(f) in v["$in"] for f, v in where.items())]
            for mode in ("hybrid", "dense", "bm25"):
                got = http.post("/collections/docs/search", json={"query": QUERY, "mode": mode, "k": 5,
                                                                   "filter": where}).json()
                want = single.search([QUERY], mode=mode, k=5, allow=allow) if allow else None
                assert [r["id"] for r in got["results"]] == (want.ids[0] if allow else []), (where, mode)
                if allow:
                    assert [r["score"] for r in got["results"]] == [float(s) for s in
                                                                     want.scores[0][: len(want.ids[0])]], (where, mode)
                assert all(r["metadata"] == metadata[ids.index(r["id"])] for r in got["results"])
                assert got["shards"]["complete"]
        bad = http.post("/collections/docs/search", json={"query": QUERY, "filter": {"n": {"$gt": 3}}})
        assert bad.status_code == 400

        # one actor of shard 0 killed: the call moves to its replica, the answer is whole and the same
        retriever = app.state.collections.get("docs").retriever
        workers = retriever._workers
        local_ray.kill(workers.workers[0][workers.preferred[0]])
        want = single.search([QUERY], mode="hybrid", k=5)
        got = http.post("/collections/docs/search", json={"query": QUERY, "k": 5}).json()
        assert got["shards"]["complete"] and got["shards"]["retries"] >= 1
        assert [r["id"] for r in got["results"]] == want.ids[0]

        # both actors of shard 0 gone: 503 naming it, or the other shard's hits flagged partial on request
        for worker in workers.workers[0]:
            local_ray.kill(worker)
        down = http.post("/collections/docs/search", json={"query": QUERY, "k": 5})
        assert down.status_code == 503 and down.json()["error"]["type"] == "shard_unavailable"
        assert "[0]" in down.json()["error"]["message"] and down.headers["Retry-After"]
        partial = http.post("/collections/docs/search", json={"query": QUERY, "mode": "dense", "k": 5,
                                                               "allow_partial": True})
        assert partial.status_code == 200
        assert partial.json()["shards"] | {"retries": 0} == {"total": 2, "answered": [1], "missing": [0],
                                                             "complete": False, "retries": 0}
        # exactly shard 1's documents (the corpus's second half) in the single retriever's dense order
        ranked = single.search([QUERY], mode="dense", k=len(ids)).ids[0]
        second_half = [i for i in ranked if i in set(ids[30:])]
        assert [r["id"] for r in partial.json()["results"]] == second_half[:5]

        # reranked, a partial result is still flagged, and the reranker scored exactly shard 1's top candidates:
        # the order and scores /rerank gives those texts
        reranked = http.post("/collections/docs/search", json={"query": QUERY, "mode": "dense", "k": 5,
                                                                "rerank": True, "rerank_depth": 12,
                                                                "allow_partial": True})
        assert reranked.status_code == 200
        assert reranked.json()["shards"] | {"retries": 0} == {"total": 2, "answered": [1], "missing": [0],
                                                              "complete": False, "retries": 0}
        candidates = second_half[:12]
        direct = http.post("/rerank", json={"query": QUERY,
                                            "documents": [texts[ids.index(i)] for i in candidates]}).json()["results"]
        got = reranked.json()["results"]
        assert [r["id"] for r in got] == [candidates[d["index"]] for d in direct][:5]
        assert [r["score"] for r in got] == [r["signals"]["rerank"] for r in got] == [d["score"] for d in direct][:5]
        assert [r["id"] for r in got] != second_half[:5]  # the reranker did re-order them
        assert reranked.json()["results"][0]["text"] == texts[ids.index(got[0]["id"])]
        # without allow_partial, reranking does not hide the missing shard either
        down = http.post("/collections/docs/search", json={"query": QUERY, "k": 5, "rerank": True})
        assert down.status_code == 503 and down.json()["error"]["type"] == "shard_unavailable"

# reranked searches (the same model scoring the first stage's top rerank_depth texts): every mode, with and
# without metadata filters (half the documents, all on shard 1; three spread over both shards)
RERANKED = [{"mode": mode, "k": 6, "rerank": True, "rerank_depth": 20, **where}
            for mode in ("hybrid", "dense", "bm25")
            for where in ({}, {"filter": {"half": "second"}}, {"filter": {"n": {"$in": [3, 44, 59]}}})]


def test_stored_collections_are_sharded_on_load_and_answer_as_before(local_ray, corpus, minilm,
                                                                     tiny_cross_encoder_dir, tmp_path):
    ids, texts, metadata = corpus
    docs = [{"id": i, "text": t, "metadata": m} for i, t, m in zip(ids, texts, metadata)]
    reranker = {"reranker": str(tiny_cross_encoder_dir)}
    _, client = start(reranker, minilm, tmp_path)
    with client as http:
        assert http.post("/collections", json={"name": "notes"}).status_code == 201
        assert http.post("/collections", json={"name": "empty"}).status_code == 201
        assert http.post("/collections/notes/documents", json={"documents": docs}).status_code == 200
        before = {mode: http.post("/collections/notes/search", json={"query": QUERY, "mode": mode, "k": 6}).json()
                  for mode in ("hybrid", "dense", "bm25")}
        reranked_before = [http.post("/collections/notes/search", json={"query": QUERY, **body}).json()
                           for body in RERANKED]
    # the reranker re-orders: a sharded collection that skipped it, or reranked other candidates, would differ
    assert any([r["id"] for r in got["results"]] != [r["id"] for r in before[body["mode"]]["results"]]
               for body, got in zip(RERANKED, reranked_before) if "filter" not in body)
    _, client = start({"ray": "", "shards": 2, **reranker}, minilm, tmp_path)
    with client as http:
        assert http.get("/collections/notes").json()["sharded"] == {"shards": 2, "replicas": 1}
        for mode, want in before.items():
            got = http.post("/collections/notes/search", json={"query": QUERY, "mode": mode, "k": 6}).json()
            assert [r["id"] for r in got["results"]] == [r["id"] for r in want["results"]], mode
            assert np.allclose([r["score"] for r in got["results"]], [r["score"] for r in want["results"]],
                               rtol=0, atol=1e-6), mode
            assert [r["metadata"] for r in got["results"]] == [r["metadata"] for r in want["results"]]
            assert got["shards"]["complete"] and "shards" not in want
        # reranking: the same candidates' texts scored by the same model, so the same ids and the same scores
        for body, want in zip(RERANKED, reranked_before):
            got = http.post("/collections/notes/search", json={"query": QUERY, **body}).json()
            assert [r["id"] for r in got["results"]] == [r["id"] for r in want["results"]], body
            assert [r["score"] for r in got["results"]] == [r["score"] for r in want["results"]], body
            assert [r["signals"] for r in got["results"]] == [r["signals"] for r in want["results"]], body
            assert [(r["text"], r["metadata"], r["highlights"]) for r in got["results"]] == [
                (r["text"], r["metadata"], r["highlights"]) for r in want["results"]], body
            assert all(r["score"] == r["signals"]["rerank"] for r in got["results"])
            assert got["shards"]["complete"]
            if "filter" in body:
                assert len(got["results"]) == (6 if body["filter"] == {"half": "second"} else 3)
        assert http.post("/collections/notes/documents", json={"documents": docs[:1]}).status_code == 409
        # an empty collection has nothing to shard: it stays an ordinary, writable one
        assert "sharded" not in http.get("/collections/empty").json()
        assert http.post("/collections/empty/documents", json={"documents": docs[:2]}).status_code == 200


def test_a_folder_that_is_not_sharded_stops_the_service_before_it_starts(local_ray, minilm, tmp_path):
    from flagstone.errors import DataError
    from flagstone.server.app import ServerSettings, create_app

    (tmp_path / "plain").mkdir()
    with pytest.raises(DataError, match="not a sharded retriever folder"):
        create_app(ServerSettings(data_dir=str(tmp_path / "data"), ray="", sharded={"x": str(tmp_path / "plain")}),
                   embedder=minilm)
    with pytest.raises(ValueError, match="need Ray"):
        ServerSettings(sharded={"x": str(tmp_path / "plain")})
