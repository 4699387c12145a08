"""Refinement (exact vectors re-rank compressed candidates), tune() / recall targets, and memory accounting."""
from __future__ import annotations

import numpy as np
import pytest

from flagstone.errors import CorruptIndexError, TuningError
from flagstone.index.dense import DenseIndex
from flagstone.index.flat import FlatIndex
from flagstone.index.hi2 import HI2Index
from flagstone.index.ivf import IVFIndex
from flagstone.models.embeddings import Embeddings
from tests.index.test_dense import DIM, N_DOCS, build, data, exact, found_ids, recall, search, truth_ids  # noqa: F401

pytest.importorskip("faiss")
pytest.importorskip("numba")


def recall_rows(index, result, truth_rows):
    return recall(found_ids(index, result), truth_ids(truth_rows))


@pytest.mark.parametrize("kind,codec", [("ivf", "pq"), ("hi2", "pq"), ("flat", "fp16")])
def test_refinement_raises_recall_and_returns_exact_scores(kind, codec, data):
    _, docs, queries, _, _ = data
    kw = {"pq_m": 4} if codec == "pq" else {}
    probe = {"n_probe": 8} if kind != "flat" else {}
    plain = build(kind, data, codec=codec, **kw, **probe)
    refined = build(kind, data, codec=codec, refine=4, **kw, **probe)
    truth_rows, _ = exact(docs, queries, 10)
    plain_result, refined_result = search(plain, data, 10), search(refined, data, 10)
    if codec == "pq":  # 4 bytes per 32-dim vector ranks poorly; re-ranking 40 candidates repairs most of it
        assert recall_rows(refined, refined_result, truth_rows) > recall_rows(plain, plain_result, truth_rows) + 0.1
    assert recall_rows(refined, refined_result, truth_rows) >= recall_rows(plain, plain_result, truth_rows)
    # every returned score is the exact float32 inner product of that document
    doc_rows = np.array([[int(i[3:]) for i in row] for row in found_ids(refined, refined_result)])
    exact_scores = np.einsum("qd,qkd->qk", queries, docs[doc_rows])
    assert np.allclose(refined_result.scores, exact_scores, atol=1e-5)
    assert np.all(np.diff(refined_result.scores, axis=1) <= 0)  # best first


def test_refine_settings_are_checked():
    with pytest.raises(ValueError, match="already exact"):
        IVFIndex(DIM, refine=2)
    with pytest.raises(ValueError, match="at least 1"):
        IVFIndex(DIM, codec="pq", pq_m=4, refine=0)


def test_refine_vectors_round_trip_memory_mapped(data, tmp_path):
    ids, docs, queries, _, q_terms = data
    index = build("hi2", data, codec="pq", pq_m=4, refine=3, n_probe=6)
    index.remove(ids[:2])
    allow = ids[100:400]
    expected, expected_allowed = search(index, data, 10), search(index, data, 10, allow=allow)
    expected_ids, expected_allowed_ids = index.ids_of(expected.positions), index.ids_of(expected_allowed.positions)
    index.save(tmp_path / "idx")  # compacts: rows move, ids stay
    for mmap in (False, True):
        loaded = DenseIndex.load(tmp_path / "idx", mmap=mmap)
        assert isinstance(loaded.refine_store.codes, np.memmap)  # on disk, whatever mmap says
        assert loaded.params()["refine"] == 3
        assert np.array_equal(np.asarray(loaded.refine_store.codes), np.asarray(index.refine_store.codes))
        got = search(loaded, data, 10)
        assert loaded.ids_of(got.positions) == expected_ids
        assert np.allclose(got.scores, expected.scores)
        got_allowed = search(loaded, data, 10, allow=allow)
        assert loaded.ids_of(got_allowed.positions) == expected_allowed_ids
        assert all(i in set(allow) for row in loaded.ids_of(got_allowed.positions) for i in row)
    # a loaded index takes more documents (the memory-mapped vectors are copied into memory first)
    loaded = DenseIndex.load(tmp_path / "idx")
    loaded.add(["new"], Embeddings(dense=docs[:1], sparse=data[3].take([0])))
    hit = loaded.search(Embeddings(dense=docs[:1], sparse=data[3].take([0])), 1)
    assert loaded.ids_of(hit.positions)[0][0] in {"new", ids[0]} and hit.scores[0, 0] == pytest.approx(1.0, abs=1e-5)
    # the refinement vectors are checksummed like every other array
    gen = tmp_path / "idx" / (tmp_path / "idx" / "CURRENT").read_text().strip()
    raw = bytearray((gen / "refine_vectors.npy").read_bytes())
    raw[-1] ^= 0xFF
    (gen / "refine_vectors.npy").write_bytes(bytes(raw))
    with pytest.raises(CorruptIndexError, match="refine_vectors.npy"):
        DenseIndex.load(tmp_path / "idx")


@pytest.mark.parametrize("kind", ["ivf", "hi2"])
def test_tune_meets_the_target_with_the_fewest_probes_and_survives_save(kind, data, tmp_path):
    _, docs, queries, _, q_terms = data
    index = build(kind, data, codec="pq", pq_m=8, refine=4, n_probe=1)
    sample = queries if kind == "ivf" else Embeddings(dense=queries, sparse=q_terms)
    chosen = index.tune(sample, target_recall=0.95, k=10)
    truth = truth_ids(exact(docs, queries, 10)[0])

    def recall_with(n_probe):
        return recall(found_ids(index, index.search(sample, 10, n_probe=n_probe)), truth)

    assert index.n_probe == chosen["n_probe"] and chosen["recall"] >= 0.95
    assert recall_with(chosen["n_probe"]) >= 0.95
    if chosen["n_probe"] > 1:
        assert recall_with(chosen["n_probe"] - 1) < 0.95  # the fewest that reach it
    assert [p for p, _ in chosen["curve"]] == sorted(p for p, _ in chosen["curve"])
    # a recall target at search time reads the measured curve
    low = min(r for _, r in chosen["curve"])
    assert index.n_probe_for(low) == min(p for p, r in chosen["curve"] if r >= low)
    assert index.n_probe_for(1.0) <= index.n_lists
    index.save(tmp_path / "idx")
    loaded = DenseIndex.load(tmp_path / "idx")
    assert loaded.n_probe == chosen["n_probe"] and loaded.tuning == index.tuning
    assert loaded.n_probe_for(0.95) == chosen["n_probe"]
    again = loaded.search(sample, 10, target_recall=0.95)
    assert loaded.ids_of(again.positions) == index.ids_of(index.search(sample, 10).positions)


@pytest.mark.parametrize("kind", ["ivf", "hi2"])
def test_tune_grows_a_refine_factor_too_small_for_the_target(kind, data, tmp_path):
    _, docs, queries, _, q_terms = data
    # 4 PQ bytes per 32-dim vector: re-ranking only k x 1 candidates cannot reach 0.95 even probing everything
    index = build(kind, data, codec="pq", pq_m=4, refine=1, n_probe=1)
    sample = queries if kind == "ivf" else Embeddings(dense=queries, sparse=q_terms)
    truth = truth_ids(exact(docs, queries, 10)[0])
    everything = recall(found_ids(index, index.search(sample, 10, n_probe=index.n_lists)), truth)
    assert everything < 0.95
    chosen = index.tune(sample, target_recall=0.95, k=10)
    assert chosen["reached"] and chosen["refine"] > 1 and index.refine == chosen["refine"]
    tried = [t["refine"] for t in chosen["refine_tried"]]
    assert tried == [2 ** i for i in range(len(tried))] and tried[-1] == chosen["refine"]
    # the smallest factor that reaches it: half of it misses the target even with every cluster
    assert all(t["recall_probing_all"] < 0.95 for t in chosen["refine_tried"][:-1])
    assert recall(found_ids(index, index.search(sample, 10)), truth) >= 0.95
    index.save(tmp_path / "idx")
    loaded = DenseIndex.load(tmp_path / "idx")
    assert loaded.refine == chosen["refine"] and loaded.n_probe == chosen["n_probe"]
    assert loaded.ids_of(loaded.search(sample, 10).positions) == index.ids_of(index.search(sample, 10).positions)
    # a cap below what the target needs: the largest factor allowed, reported as not reached
    capped = build(kind, data, codec="pq", pq_m=4, refine=1, n_probe=1)
    result = capped.tune(sample, target_recall=0.95, k=10, max_refine=1)
    assert not result["reached"] and result["refine"] == 1 and result["n_probe"] == capped.n_lists
    with pytest.raises(ValueError, match="max_refine"):
        capped.tune(sample, target_recall=0.95, max_refine=0)


def test_recall_targets_need_tuning_and_valid_values(data):
    _, _, queries, _, _ = data
    index = build("ivf", data, n_probe=4)  # an explicit n_probe: nothing tuned
    assert index.tuning is None
    with pytest.raises(TuningError, match="not been tuned"):
        index.search(queries, 10, target_recall=0.9)
    for bad in (0.0, 1.5, -1):
        with pytest.raises(ValueError, match="target_recall"):
            index.tune(queries, target_recall=bad)
    with pytest.raises(ValueError, match="not both"):
        index.search(queries, 10, n_probe=2, target_recall=0.9)


def test_ivf_without_n_probe_tunes_itself_on_its_documents(data):
    ids, docs, _, _, _ = data
    index = IVFIndex(DIM)
    index.add(ids, docs)
    tuning = index.tuning
    assert tuning["sample"] == "documents" and tuning["k"] == 100 and tuning["target_recall"] == 0.995
    assert index.n_probe == tuning["n_probe"] and tuning["recall"] >= 0.995
    # the sampled documents as queries: the chosen setting reaches the target on them
    sample = docs[np.random.default_rng(0).choice(N_DOCS, 256, replace=False)]
    truth = truth_ids(exact(docs, sample, 100)[0])
    assert recall(found_ids(index, index.search(sample, 100)), truth) >= 0.995
    assert HI2Index(DIM).self_tunes is False


@pytest.mark.parametrize("kind,kw", [("flat", {}), ("ivf", {"codec": "pq", "pq_m": 8, "refine": 2}),
                                     ("hi2", {"codec": "fp16", "refine": 2}), ("hi2", {})])
def test_bytes_per_document_is_the_size_of_the_arrays(kind, kw, data):
    index = build(kind, data, **kw)
    index.remove(data[0][:5])
    memory = index.memory()
    n = N_DOCS - 5
    parts = index.memory_parts()
    for name, array in parts.items():
        assert memory["parts"][name]["bytes_per_document"] == pytest.approx(np.asarray(array).nbytes / n, abs=0.01)
    ram = sum(np.asarray(a).nbytes for name, a in parts.items() if memory["parts"][name]["where"] == "ram")
    disk = sum(np.asarray(a).nbytes for name, a in parts.items() if memory["parts"][name]["where"] == "disk")
    assert index.bytes_per_document() == pytest.approx(ram / n)
    assert index.describe()["bytes_per_document_on_disk"] == pytest.approx(disk / n)
    assert parts["codes"] is index.codec.codes or np.shares_memory(parts["codes"], index.codec.codes)
    if kw.get("refine"):
        assert memory["parts"]["refine_vectors"] == {"bytes_per_document": round(4 * DIM * index.id_map.rows / n, 2),
                                                     "where": "disk"}
    if kind == "hi2":
        assert {"posting_rows", "term_rows", "term_ids", "term_weights", "list_rows", "centroids"} <= set(parts)
    # the ids count too: "doc0".."doc2999" (3 to 7 bytes), an int64 offset, a uint64 hash and its int32 row
    id_bytes = sum(len(f"doc{i}") for i in range(N_DOCS)) + 8 * (N_DOCS + 1) + (8 + 4) * N_DOCS
    assert sum(parts[name].nbytes for name in ("id_bytes", "id_offsets", "id_hashes", "id_hash_rows")) == id_bytes
    if kind == "flat":
        assert index.bytes_per_document() == pytest.approx((4 * DIM * index.id_map.rows + id_bytes) / n)
    assert isinstance(index, (FlatIndex, IVFIndex))
