"""benchmarks/best_pipeline.py on tiny random checkpoints (the bundled MiniLM as the dense model): the first
stage ranks by the hybrid formula over two models' signals, the weights chosen are the best on the tuning
queries, the final ranking is the interpolation formula, and a missing model is a one-line user error."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
DOCS = {f"d{i}": t for i, t in enumerate([
    "Return the index of the first item", "Load a model from a folder", "Encode texts into vectors",
    "Save the settings to a file", "Search the index for the nearest vectors", "Split a corpus into shards",
    "Count the tokens of each text", "Raise an error for a missing file", "Merge two sorted lists",
    "Write the results to a json file", "Read a folder of documents", "Score pairs of queries and texts"])}
QUERIES = ["nearest vectors in an index", "missing file error", "write json results"]
CANDIDATES, DEPTH = 4, 4


@pytest.fixture(scope="module")
def best(minilm, tiny_m3_dir, tiny_cross_encoder_dir):
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import best_pipeline
    finally:
        sys.path.remove(str(BENCHMARKS))
    # the bundled MiniLM stands in for the fine-tuned dense model: a random tiny encoder gives every text nearly
    # the same vector (cosines within 1e-6), where min-max normalisation magnifies float rounding
    dense = minilm.path
    pipeline = best_pipeline.build_pipeline(dense, tiny_m3_dir, tiny_cross_encoder_dir, list(DOCS),
                                            list(DOCS.values()), cache=None, depth=DEPTH, candidates=CANDIDATES)
    return best_pipeline, pipeline, {"dense": dense, "m3": tiny_m3_dir, "cross": tiny_cross_encoder_dir}


def minmax(x: np.ndarray) -> np.ndarray:
    lo, hi = x.min(), x.max()
    return (x - lo) / (hi - lo) if hi > lo else np.full_like(x, 1.0 if hi > 0 else 0.0)


def expected_first_stage(pipeline, weights: dict[str, float]) -> tuple[list[list[str]], list[np.ndarray]]:
    """Each signal's top max(CANDIDATES, DEPTH), their union scored by every signal, sum of weight x min-max score."""
    owner = {"dense": pipeline.lexical_dense, "bm25": pipeline.lexical_dense,
             "sparse": pipeline.m3, "colbert": pipeline.m3}
    full = {s: owner[s].search(QUERIES, mode=s, k=len(DOCS)) for s in weights}
    ids, scores = [], []
    for qi in range(len(QUERIES)):
        score_of = {s: dict(zip(full[s].ids[qi], full[s].scores[qi].astype(np.float64))) for s in weights}
        # a signal proposes max(candidates, k) so that the union always fills k
        proposed = max(CANDIDATES, DEPTH)
        union = sorted({d for s in weights for d in full[s].ids[qi][:proposed]}, key=list(DOCS).index)
        fused = sum(w * minmax(np.array([score_of[s].get(d, 0.0) for d in union])) for s, w in weights.items())
        order = np.lexsort((np.arange(len(union)), -fused))[:DEPTH]
        ids.append([union[j] for j in order])
        scores.append(fused[order])
    return ids, scores


def test_first_stage_and_interpolation_follow_the_formulas(best):
    module, pipeline, _ = best
    pipeline.fusion = {"dense": 0.4, "bm25": 0.3, "sparse": 0.1, "colbert": 0.2}
    pipeline.first_stage_weight = 0.3
    first, final, ms = pipeline.search(QUERIES)
    ids, scores = expected_first_stage(pipeline, pipeline.fusion)
    assert first.ids == ids
    for qi in range(len(QUERIES)):
        np.testing.assert_allclose(first.scores[qi][: len(ids[qi])], scores[qi], rtol=1e-5, atol=1e-5)
    texts = dict(DOCS)
    for qi, query in enumerate(QUERIES):
        rerank = pipeline.reranker.score_pairs([(query, texts[d]) for d in first.ids[qi]]).astype(np.float64)
        first_scores = first.scores[qi][: len(first.ids[qi])].astype(np.float64)
        value = 0.7 * minmax(rerank) + 0.3 * minmax(first_scores)
        order = np.argsort(-value, kind="stable")
        assert final.ids[qi] == [first.ids[qi][j] for j in order]
        np.testing.assert_allclose(final.scores[qi][: len(order)], value[order], rtol=1e-5, atol=1e-5)
    assert set(ms) == {"first_stage", f"cross_encoder_top{DEPTH}"}


def test_the_fusion_grid_covers_every_weighting():
    import itertools

    sys.path.insert(0, str(BENCHMARKS))
    try:
        from best_pipeline import fusion_grid
    finally:
        sys.path.remove(str(BENCHMARKS))
    grid = fusion_grid(0.1)
    assert len(grid) == 286 and all(abs(sum(w.values()) - 1) < 1e-9 and min(w.values()) >= 0 for w in grid)
    assert {"dense": 1.0, "bm25": 0.0, "sparse": 0.0, "colbert": 0.0} in grid
    assert len(fusion_grid(0.5)) == len([p for p in itertools.product(range(3), repeat=4) if sum(p) == 2]) == 10


def test_weights_are_the_best_on_the_tuning_queries(best):
    module, pipeline, _ = best
    qrels = {"q0": {"d4": 1}, "q1": {"d7": 1}, "q2": {"d9": 1}}
    grid = [module.fusion_grid()[i] for i in (0, 20, 285)]
    chosen = module.choose_weights(pipeline, QUERIES, list(qrels), qrels, grid=grid)
    assert chosen["fusion"] == max(chosen["fusion_sweep"], key=lambda r: r["dev_ndcg@10"])["weights"]
    again = module.per_query_ndcg(pipeline.first_stage(QUERIES), list(qrels), qrels)
    assert module.mean(again) == max(r["dev_ndcg@10"] for r in chosen["fusion_sweep"])
    best_w = max(chosen["interpolation_sweep"], key=lambda r: r["dev_ndcg@10"])["first_stage_weight"]
    assert pipeline.first_stage_weight == chosen["first_stage_weight"] == best_w
    assert len(chosen["interpolation_sweep"]) == 11


@pytest.mark.parametrize("absent, command", [("dense", "benchmarks/train_scifact.py"),
                                             ("m3", "benchmarks/train_scifact.py"),
                                             ("cross", "benchmarks/rerank_scifact.py")])
def test_a_missing_model_names_the_command_that_trains_it(best, tmp_path, capsys, absent, command):
    module, _, folders = best
    paths = {**{k: str(v) for k, v in folders.items()}, absent: str(tmp_path / "not-trained")}
    code = module.main(["--dense-model", paths["dense"], "--m3-model", paths["m3"], "--cross-encoder",
                        paths["cross"], "--data", str(tmp_path / "no-data")])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "not-trained" in err and command in err


def test_a_cached_pipeline_gives_the_same_hits_and_times_only_what_it_scored(best, tmp_path):
    module, plain, folders = best
    from flagstone.models.cache import EmbeddingCache

    cached = module.build_pipeline(folders["dense"], folders["m3"], folders["cross"], list(DOCS), list(DOCS.values()),
                                   cache=EmbeddingCache(tmp_path), depth=DEPTH, candidates=CANDIDATES)
    for p in (plain, cached):
        p.fusion, p.first_stage_weight = {"dense": 0.5, "bm25": 0.5, "sparse": 0.0, "colbert": 0.0}, 0.2
    _, expected, _ = plain.search(QUERIES)
    _, first_run, ms = cached.search(QUERIES)
    pairs = sum(len(row) for row in first_run.ids)
    assert cached.reranker_timing["pairs"] == cached.reranker_timing["pairs_scored"] == pairs
    assert f"cross_encoder_top{DEPTH}" in ms
    # a resumed run: a fresh pipeline on the same cache folder scores nothing and reports no reranker time
    resumed = module.build_pipeline(folders["dense"], folders["m3"], folders["cross"], list(DOCS),
                                    list(DOCS.values()), cache=EmbeddingCache(tmp_path), depth=DEPTH,
                                    candidates=CANDIDATES)
    resumed.fusion, resumed.first_stage_weight = cached.fusion, cached.first_stage_weight
    _, again, ms_again = resumed.search(QUERIES)
    assert resumed.reranker_timing["pairs_scored"] == 0 and resumed.reranker_timing["from_cache"] == pairs
    assert set(ms_again) == {"first_stage"}
    for hits in (first_run, again):
        assert hits.ids == expected.ids
        np.testing.assert_allclose(hits.scores, expected.scores, atol=1e-5)


def test_a_tuning_copy_must_have_held_out_every_dev_query(best, tmp_path):
    module, _, _ = best
    copy = tmp_path / "scifact-minilm-m3-no-dev"
    copy.mkdir()
    problem = module.tuning_copy_problem(copy, ["q1", "q2"])
    assert problem and "held-out.json" in problem and "--without-dev-slice" in problem
    record = tmp_path / "scifact-minilm-m3-no-dev.held-out.json"
    record.write_text(json.dumps({"held_out": ["q1"]}))
    problem = module.tuning_copy_problem(copy, ["q1", "q2"])
    assert problem and "1 of the dev queries" in problem and "q2" in problem and "\n" not in problem
    record.write_text(json.dumps({"held_out": ["q1", "q2", "q3"]}))
    assert module.tuning_copy_problem(copy, ["q1", "q2"]) is None


def test_the_fused_first_stage_mines_from_the_pipelines_own_ranking(best):
    from flagstone.training.data import TrainingExample
    from flagstone.training.mining import mine_hard_negatives

    module, pipeline, _ = best
    weights = {"dense": 0.5, "bm25": 0.2, "sparse": 0.1, "colbert": 0.2}
    fused = module.FusedFirstStage(pipeline.lexical_dense, pipeline.m3, weights, CANDIDATES)
    hits = fused.search(QUERIES, mode="hybrid", k=DEPTH)
    assert hits.ids == pipeline.first_stage(QUERIES, weights, k=DEPTH).ids == expected_first_stage(pipeline,
                                                                                                    weights)[0]
    with pytest.raises(ValueError, match="only mode='hybrid'"):
        fused.search(QUERIES, mode="dense", k=DEPTH)
    # negatives come from the fused ranking's ranks 1..3, the positive never among them
    positive = DOCS[hits.ids[0][1]]
    mined = mine_hard_negatives([TrainingExample(QUERIES[0], [positive])], fused, DOCS, mode="hybrid",
                                rank_range=(1, 4), n_negatives=2, seed=0)
    allowed = {DOCS[d] for d in fused.search(QUERIES[:1], k=4).ids[0][1:4]} - {positive}
    assert len(mined[0].neg) == 2 and set(mined[0].neg) <= allowed


def test_a_results_name_that_is_no_file_stem_is_refused(best, tmp_path, capsys):
    module, _, folders = best
    code = module.main(["--dense-model", str(folders["dense"]), "--m3-model", str(folders["m3"]), "--cross-encoder",
                        str(folders["cross"]), "--tuning-dense-model", str(folders["dense"]), "--tuning-m3-model",
                        str(folders["m3"]), "--data", str(tmp_path / "no-data"), "--results-name", "../elsewhere"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("--results-name") and len(err.strip().splitlines()) == 1


def test_a_results_name_never_replaces_another_benchmarks_results(best, tmp_path, capsys, monkeypatch):
    module, _, folders = best
    monkeypatch.setattr(module, "RESULTS", tmp_path)
    (tmp_path / "train_scifact.json").write_text(json.dumps({"grid": []}))
    code = module.main(["--dense-model", str(folders["dense"]), "--m3-model", str(folders["m3"]), "--cross-encoder",
                        str(folders["cross"]), "--tuning-dense-model", str(folders["dense"]), "--tuning-m3-model",
                        str(folders["m3"]), "--data", str(tmp_path / "no-data"), "--results-name", "train_scifact"])
    err = capsys.readouterr().err
    assert code == 2 and "another benchmark's results" in err and len(err.strip().splitlines()) == 1
    assert json.loads((tmp_path / "train_scifact.json").read_text()) == {"grid": []}


@pytest.mark.parametrize("content", [b"not json", b"\xff\xfe", b"[1, 2]", b"3"])
def test_a_results_name_whose_file_is_not_this_benchmarks_json_is_refused(best, tmp_path, capsys, monkeypatch,
                                                                          content):
    module, _, folders = best
    monkeypatch.setattr(module, "RESULTS", tmp_path)
    (tmp_path / "mine.json").write_bytes(content)
    code = module.main(["--dense-model", str(folders["dense"]), "--m3-model", str(folders["m3"]), "--cross-encoder",
                        str(folders["cross"]), "--tuning-dense-model", str(folders["dense"]), "--tuning-m3-model",
                        str(folders["m3"]), "--data", str(tmp_path / "no-data"), "--results-name", "mine"])
    err = capsys.readouterr().err
    assert code == 2 and "another benchmark's results" in err and len(err.strip().splitlines()) == 1
    assert (tmp_path / "mine.json").read_bytes() == content
