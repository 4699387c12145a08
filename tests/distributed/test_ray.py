"""On a simulated 2-node Ray cluster (started once for the module): distributed encoding, sharded building and
scatter-gather search equal the single-process path; a node that dies mid-search gives a retry on a replica or
a result flagged partial, never silently fewer hits."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("ray", reason="the ray extra is not installed")

from flagstone.corpora import python_docstrings  # noqa: E402
from flagstone.distributed.cluster import ShardUnavailableError  # noqa: E402
from flagstone.distributed.encode import EmbedderSpec, encode_corpus, load_encoded, shard_path  # noqa: E402
from flagstone.distributed.shards import ShardedRetriever, build_sharded  # noqa: E402
from flagstone.retrieval.retriever import Retriever  # noqa: E402

QUERIES = ["read a file from disk", "parse command line arguments", "thread pool executor", "zzzz qqqq"]


@pytest.fixture(scope="module")
def cluster():
    import ray
    from ray.cluster_utils import Cluster

    simulated = Cluster(initialize_head=True, head_node_args={"num_cpus": 2})
    worker = simulated.add_node(num_cpus=2)
    ray.init(address=simulated.address, logging_level="WARNING")
    simulated.wait_for_nodes()
    yield simulated, worker
    ray.shutdown()
    simulated.shutdown()


@pytest.fixture(scope="module")
def corpus():
    ids, texts = python_docstrings(90)
    return ids + [f"{i}~copy" for i in ids[:10]], texts + texts[:10]


@pytest.fixture(scope="module")
def encoded(cluster, corpus, tiny_m3_dir, tmp_path_factory):
    ids, texts = corpus
    folder = tmp_path_factory.mktemp("encoded") / "enc"
    spec = EmbedderSpec(str(tiny_m3_dir))
    report = encode_corpus(ids, texts, folder, spec, workers=2, outputs=("dense", "sparse"), shard_size=30,
                           block_size=8, show_progress=False)
    return folder, spec, report


def test_encoding_on_an_actor_pool_equals_one_process_and_resumes(encoded, corpus, tiny_m3):
    folder, spec, report = encoded
    ids, texts = corpus
    assert (report.shards, report.shards_encoded, report.documents_encoded) == (4, 4, len(ids))
    got_ids, got = load_encoded(folder)
    want = tiny_m3.encode(texts, dense=True, sparse=True, show_progress=False)
    assert got_ids == ids
    assert np.abs(got.dense - want.dense).max() <= 1e-6
    assert np.array_equal(got.sparse.indptr, want.sparse.indptr)
    assert np.array_equal(got.sparse.token_ids, want.sparse.token_ids)
    assert np.abs(got.sparse.weights - want.sparse.weights).max() <= 1e-6
    shard_path(folder, 2).unlink()  # as if the run had stopped before this shard
    again = encode_corpus(ids, texts, folder, spec, workers=2, outputs=("dense", "sparse"), shard_size=30,
                          block_size=8, show_progress=False)
    assert (again.shards_encoded, again.shards_skipped, again.documents_encoded) == (1, 3, 30)
    assert np.array_equal(load_encoded(folder)[1].dense, got.dense)


def test_sharded_on_ray_equals_one_retriever(encoded, corpus, tiny_m3, tmp_path):
    folder, spec, _ = encoded
    ids, texts = corpus
    build_sharded(tmp_path / "s", ids, texts, spec=spec, shards=3, signals=["dense", "sparse", "bm25"],
                  encoded=folder)
    _, emb = load_encoded(folder)
    single = Retriever(tiny_m3, signals=["dense", "sparse", "bm25"])
    single.add(ids, texts, embeddings=emb)
    sharded = ShardedRetriever.load(tmp_path / "s", embedder=tiny_m3, replicas=2, num_cpus=0.5)
    try:
        for mode in ("dense", "sparse", "bm25", "hybrid"):
            want, got = single.search(QUERIES, mode=mode, k=12), sharded.search_with_status(QUERIES, mode=mode, k=12)
            assert got.complete and got.shards_answered == (0, 1, 2)
            assert got.hits.ids == want.ids and np.array_equal(got.hits.scores, want.scores), mode
    finally:
        sharded.close()


def test_eval_with_ray_reports_what_the_single_process_eval_reports(cluster, scifact_dir, tmp_path):
    import json

    from flagstone.cli import main

    data = tmp_path / "slice"
    (data / "qrels").mkdir(parents=True)
    lines = (scifact_dir / "corpus.jsonl").read_text(encoding="utf-8").splitlines()[:40]
    (data / "corpus.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    kept = {json.loads(line)["_id"] for line in lines}
    qrels = (scifact_dir / "qrels" / "test.tsv").read_text(encoding="utf-8").splitlines()
    (data / "qrels" / "test.tsv").write_text("\n".join([qrels[0]] + [q for q in qrels[1:] if q.split("\t")[1] in kept])
                                             + "\n", encoding="utf-8")
    (data / "queries.jsonl").write_text((scifact_dir / "queries.jsonl").read_text(encoding="utf-8"), encoding="utf-8")
    common = [str(data), "--modes", "dense", "bm25", "hybrid", "--no-cache", "--quiet", "--k", "1", "10"]
    for name, extra in (("one", []), ("ray", ["--ray", "--shards", "2"])):
        assert main(["eval", *common, *extra, "--output", str(tmp_path / f"{name}.json"),
                     "--run-dir", str(tmp_path / f"runs-{name}")]) == 0
    one, ray = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("one", "ray"))
    assert {m: r["metrics"] for m, r in one["modes"].items()} == {m: r["metrics"] for m, r in ray["modes"].items()}
    for run in sorted((tmp_path / "runs-one").iterdir()):  # every id, rank and score
        assert run.read_text() == (tmp_path / "runs-ray" / run.name).read_text()


def test_a_node_killed_mid_search_is_retried_or_flagged(cluster, encoded, corpus, tiny_m3, tmp_path):
    """Run last: it removes the worker node from the module's cluster."""
    simulated, worker = cluster
    folder, spec, _ = encoded
    ids, texts = corpus
    build_sharded(tmp_path / "s", ids, texts, spec=spec, shards=2, signals=["dense"], encoded=folder,
                  use_ray=False)
    single = Retriever(tiny_m3, signals=["dense"])
    single.add(ids, texts, embeddings=load_encoded(folder)[1])
    want = single.search(QUERIES, mode="dense", k=10)
    with_replicas = ShardedRetriever.load(tmp_path / "s", embedder=tiny_m3, replicas=2, deadline_s=20,
                                          num_cpus=0.5)
    alone = ShardedRetriever.load(tmp_path / "s", embedder=tiny_m3, replicas=1, deadline_s=20, num_cpus=0.5)
    try:
        simulated.remove_node(worker)  # each shard had one replica there (replicas go to different nodes)
        result = with_replicas.search_with_status(QUERIES, mode="dense", k=10, allow_partial=True)
        assert result.complete and result.retries >= 1  # a first call went to the dead node and was retried
        assert result.hits.ids == want.ids and np.array_equal(result.hits.scores, want.scores)
        partial = alone.search_with_status(QUERIES, mode="dense", k=10, allow_partial=True)
        if partial.complete:  # both single actors happened to live on the head node
            assert partial.hits.ids == want.ids
        else:
            assert set(partial.shards_missing) | set(partial.shards_answered) == {0, 1}
            assert all(len(row) == 10 for row in partial.hits.ids)  # the other shard's hits, flagged
            with pytest.raises(ShardUnavailableError, match="answered on none"):
                alone.search(QUERIES, mode="dense", k=10)
    finally:
        with_replicas.close()
        alone.close()
