"""The ``mteb`` package as an oracle: its own task code scoring PRE-COMPUTED embeddings.

Every function builds the HF-format data split that the named mteb task expects, injects it into a fresh
instance of that task (``task.dataset = ...; task.data_loaded = True``, so nothing is downloaded) and calls
``task.evaluate(model, split, encode_kwargs=...)``.  All sampling, seeding, similarity computation,
classifier fitting, k-means and metric code therefore is mteb's own.  The only thing faked is the model:
``PrecomputedEncoder`` (an ``mteb.models.abs_encoder.AbsEncoder``) maps each synthetic input text (a unique key such as
"s1_17") to the embedding row the caller supplied, and inherits mteb's standard ``similarity`` /
``similarity_pairwise`` (cosine or dot, chosen with ``similarity_fn``).

Each function returns an ``MtebScores`` (a plain ``dict`` subclass) equal to the per-subset score dict
that mteb stores for the "default" subset (it already contains mteb's ``"main_score"`` value); the name of
the main metric is in the attribute ``.main_score_name``.

Used by the parity tests only (``mteb`` is a test dependency); it cannot download anything here, so
the data always comes from the caller.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import mteb
import numpy as np
from datasets import Dataset, DatasetDict
from mteb.abstasks import AbsTask
from mteb.abstasks.retrieval_dataset_loaders import RetrievalSplitData
from mteb.models import EncoderProtocol
from mteb.models.abs_encoder import AbsEncoder
from mteb.models.model_implementations.random_baseline import random_encoder_baseline
from mteb.models.model_meta import ScoringFunction

__all__ = [
    "MtebScores",
    "PrecomputedEncoder",
    "classification_scores",
    "clustering_legacy_scores",
    "clustering_scores",
    "make_task",
    "pair_classification_scores",
    "reranking_scores",
    "sts_scores",
]

ENCODE_KWARGS = {"batch_size": 32, "show_progress_bar": False}  # what mteb.evaluate uses by default
SPLIT = "test"


class MtebScores(dict):
    """mteb's per-subset score dict, plus ``main_score_name`` (e.g. "cosine_spearman")."""

    main_score_name: str
    task_name: str


class PrecomputedEncoder(AbsEncoder):
    """An mteb encoder that returns caller-supplied embeddings for given (synthetic) input texts.

    ``similarity_fn`` sets ``mteb_model_meta.similarity_fn_name``; AbsEncoder.similarity /
    similarity_pairwise then use mteb's cos_sim / dot_score exactly as a real wrapped model with that
    ModelMeta would.  It is used for: STS "pearson"/"spearman", PairClassification "similarity_*",
    and the query-candidate scores in retrieval/reranking.  Everything else in those tasks is fixed
    (cosine/manhattan/euclidean/dot) and does not depend on it.
    """

    def __init__(self, table: Mapping[str, np.ndarray], similarity_fn: str = "cosine",
                 name: str = "oracle/precomputed-embeddings") -> None:
        self.table = table
        self.mteb_model_meta = random_encoder_baseline.model_copy(
            update={"name": name, "revision": "1", "loader": None,
                    "similarity_fn_name": ScoringFunction(similarity_fn)}
        )
        self.calls: list[tuple[str | None, int]] = []  # (prompt_type, n) per encode call, for debugging

    def encode(self, inputs, *, task_metadata, hf_split, hf_subset, prompt_type=None, **kwargs):
        rows = []
        for batch in inputs:
            for text in batch["text"]:
                try:
                    rows.append(self.table[text])
                except KeyError as e:
                    raise KeyError(f"PrecomputedEncoder got an unknown input text {text!r}") from e
        self.calls.append((None if prompt_type is None else str(prompt_type), len(rows)))
        if not rows:
            return np.zeros((0, 1), dtype=np.float32)
        return np.stack(rows)


# ---------------------------------------------------------------------------------------------------------------
# helpers


def make_task(task: str | AbsTask | type[AbsTask], overrides: Mapping[str, Any] | None = None) -> AbsTask:
    """A FRESH task instance (fresh seed/rng state, as at the start of an mteb run) with attribute overrides."""
    if isinstance(task, str):
        inst = mteb.get_task(task)
    elif isinstance(task, AbsTask):
        inst = type(task)()
    else:
        inst = task()
    for k, v in (overrides or {}).items():
        if not hasattr(inst, k):
            raise AttributeError(f"{type(inst).__name__} has no attribute {k!r}")
        setattr(inst, k, v)
    return inst


def _as_2d(x: Any) -> np.ndarray:
    a = np.asarray(x)
    if a.ndim != 2:
        raise ValueError(f"expected a 2-D embedding array, got shape {a.shape}")
    return a


def _run(task: AbsTask, dataset: Any, encoder: PrecomputedEncoder) -> MtebScores:
    task.hf_subsets = ["default"]
    task.dataset = {"default": dataset}
    task.data_loaded = True
    assert isinstance(encoder, EncoderProtocol)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = task.evaluate(encoder, SPLIT, encode_kwargs=dict(ENCODE_KWARGS))
    out = MtebScores(res["default"])
    out.main_score_name = task.metadata.main_score
    out.task_name = task.metadata.name
    return out


# ---------------------------------------------------------------------------------------------------------------
# 1. STS


def sts_scores(emb1, emb2, gold_scores: Sequence[float], *, task: str | AbsTask = "STSBenchmark",
               min_score: float | None = None, max_score: float | None = None,
               similarity_fn: str = "cosine") -> MtebScores:
    """AbsTaskSTS / AnySTSEvaluator.  Returns pearson, spearman (model similarity), cosine_*, manhattan_*,
    euclidean_* (pearson/spearman each) and main_score (STSBenchmark: cosine_spearman)."""
    e1, e2 = _as_2d(emb1), _as_2d(emb2)
    n = len(e1)
    assert len(e2) == n == len(gold_scores)
    overrides = {}
    if min_score is not None:
        overrides["min_score"] = min_score
    if max_score is not None:
        overrides["max_score"] = max_score
    t = make_task(task, overrides)
    c1, c2 = t.column_names
    k1 = [f"s1_{i}" for i in range(n)]
    k2 = [f"s2_{i}" for i in range(n)]
    table = {**dict(zip(k1, e1)), **dict(zip(k2, e2))}
    ds = Dataset.from_dict({c1: k1, c2: k2, "score": [float(s) for s in gold_scores]})
    return _run(t, {SPLIT: ds}, PrecomputedEncoder(table, similarity_fn))


# ---------------------------------------------------------------------------------------------------------------
# 2. Pair classification


def pair_classification_scores(emb1, emb2, labels: Sequence[int], *,
                               task: str | AbsTask = "SprintDuplicateQuestions",
                               similarity_fn: str = "cosine") -> MtebScores:
    """AbsTaskPairClassification / PairClassificationEvaluator.  Returns {similarity,cosine,manhattan,
    euclidean,dot}_{accuracy,f1,precision,recall,ap}, max_{accuracy,f1,precision,recall,ap}, main_score
    (SprintDuplicateQuestions / TwitterSemEval2015: max_ap)."""
    e1, e2 = _as_2d(emb1), _as_2d(emb2)
    n = len(e1)
    assert len(e2) == n == len(labels)
    if n == 1:
        raise ValueError("mteb treats a 1-row split as the v1 single-row format; give >= 2 pairs")
    t = make_task(task)
    k1 = [f"p1_{i}" for i in range(n)]
    k2 = [f"p2_{i}" for i in range(n)]
    table = {**dict(zip(k1, e1)), **dict(zip(k2, e2))}
    ds = Dataset.from_dict({t.input1_column_name: k1, t.input2_column_name: k2,
                            t.label_column_name: [int(x) for x in labels]})
    return _run(t, {SPLIT: ds}, PrecomputedEncoder(table, similarity_fn))


# ---------------------------------------------------------------------------------------------------------------
# 3. Classification (logistic regression, undersampled train set, n_experiments)


def classification_scores(train_emb, train_labels: Sequence[Any], test_emb, test_labels: Sequence[Any], *,
                          task: str | AbsTask = "Banking77Classification",
                          n_experiments: int | None = None, samples_per_label: int | None = None,
                          seed: int | None = None) -> MtebScores:
    """AbsTaskClassification.  Train rows must be in the order of the task's train split (the undersampling
    shuffles row indices).  Returns accuracy, f1 (macro), f1_weighted, precision(_weighted), recall(_weighted),
    ap/ap_weighted (binary only, else NaN), scores_per_experiment, main_score (Banking77: accuracy)."""
    tr, te = _as_2d(train_emb), _as_2d(test_emb)
    assert len(tr) == len(train_labels) and len(te) == len(test_labels)
    overrides: dict[str, Any] = {}
    if n_experiments is not None:
        overrides["n_experiments"] = n_experiments
    if samples_per_label is not None:
        overrides["samples_per_label"] = samples_per_label
    if seed is not None:
        overrides["seed"] = seed
    t = make_task(task, overrides)
    ktr = [f"tr_{i}" for i in range(len(tr))]
    kte = [f"te_{i}" for i in range(len(te))]
    table = {**dict(zip(ktr, tr)), **dict(zip(kte, te))}
    col, lab = t.input_column_name, t.label_column_name

    def _lab(xs):
        return [x.item() if isinstance(x, np.generic) else x for x in xs]

    dd = DatasetDict({
        t.train_split: Dataset.from_dict({col: ktr, lab: _lab(train_labels)}),
        SPLIT: Dataset.from_dict({col: kte, lab: _lab(test_labels)}),
    })
    return _run(t, dd, PrecomputedEncoder(table))


# ---------------------------------------------------------------------------------------------------------------
# 4. Clustering


def clustering_scores(emb, labels: Sequence[Any], *, task: str | AbsTask = "TwentyNewsgroupsClustering.v2",
                      overrides: Mapping[str, Any] | None = None) -> MtebScores:
    """AbsTaskClustering (the v2 / former "ClusteringFast").  ``emb``/``labels`` are the WHOLE evaluation split
    (after the task's dataset_transform, in dataset order); mteb itself draws the max_fraction_of_documents_to_embed
    (default 4 %) subsample and the 10 bootstrap samples of 16,384 docs (with replacement).  ``labels`` may be
    scalars or lists (hierarchical levels).  Pass e.g. overrides={"max_fraction_of_documents_to_embed": None}
    to cluster all documents.  Returns v_measure, v_measure_std, v_measures{level: [..]}, ami, ami_std,
    ami_scores, main_score (v_measure)."""
    e = _as_2d(emb)
    assert len(e) == len(labels)
    t = make_task(task, overrides)
    keys = [f"doc_{i}" for i in range(len(e))]
    labs = [list(x) if isinstance(x, (list, tuple, np.ndarray)) else (x.item() if isinstance(x, np.generic) else x)
            for x in labels]
    ds = Dataset.from_dict({t.input_column_name: keys, t.label_column_name: labs})
    return _run(t, {SPLIT: ds}, PrecomputedEncoder(dict(zip(keys, e))))


def clustering_legacy_scores(sets: Sequence[tuple[Any, Sequence[Any]]], *,
                             task: str | AbsTask = "TwentyNewsgroupsClustering") -> MtebScores:
    """AbsTaskClusteringLegacy (v1).  ``sets`` = [(embeddings, labels), ...], one per row of the v1 dataset
    (each row is clustered separately).  Returns v_measure (mean over sets), v_measure_std, v_measures, main_score."""
    t = make_task(task)
    table: dict[str, np.ndarray] = {}
    sent_col, lab_col = [], []
    for j, (emb, labs) in enumerate(sets):
        e = _as_2d(emb)
        assert len(e) == len(labs)
        keys = [f"set{j}_doc{i}" for i in range(len(e))]
        table.update(zip(keys, e))
        sent_col.append(keys)
        lab_col.append([x.item() if isinstance(x, np.generic) else x for x in labs])
    ds = Dataset.from_dict({t.input_column_name: sent_col, t.label_column_name: lab_col})
    return _run(t, {SPLIT: ds}, PrecomputedEncoder(table))


# ---------------------------------------------------------------------------------------------------------------
# 5. Reranking (= AbsTaskRetrieval with top_ranked candidate lists)


def reranking_scores(query_emb, candidate_embs: Sequence[Any], relevance: Sequence[Sequence[int]], *,
                     task: str | AbsTask = "SciDocsRR", similarity_fn: str = "cosine",
                     overrides: Mapping[str, Any] | None = None) -> MtebScores:
    """Reranking in mteb 2 = AbsTaskRetrieval with ``top_ranked``.  Query i is scored (model.similarity) against
    only its candidates candidate_embs[i] (n_i x d); relevance[i] gives an int grade per candidate (0 = not
    relevant; all candidates are put into the qrels, as mteb's old-format conversion does).  Returns
    ndcg_at_k, map_at_k, recall_at_k, precision_at_k, mrr_at_k, hit_rate_at_k (k in 1,3,5,10,20,100,1000),
    accuracy (=recall_at_1), nauc_* and main_score (SciDocsRR/AskUbuntu/StackOverflowDupQuestions: map_at_1000)."""
    q = _as_2d(query_emb)
    assert len(q) == len(candidate_embs) == len(relevance)
    t = make_task(task, overrides)
    table: dict[str, np.ndarray] = {}
    qids, doc_ids = [], []
    relevant_docs: dict[str, dict[str, int]] = {}
    top_ranked: dict[str, list[str]] = {}
    for i in range(len(q)):
        qid = f"q{i}"
        qids.append(qid)
        table[qid] = q[i]
        c = _as_2d(candidate_embs[i])
        rel = list(relevance[i])
        assert len(rel) == len(c)
        ids = [f"q{i}_d{j:05d}" for j in range(len(c))]
        table.update(zip(ids, c))
        doc_ids.extend(ids)
        top_ranked[qid] = ids
        relevant_docs[qid] = {d: int(r) for d, r in zip(ids, rel)}
    split = RetrievalSplitData(
        corpus=Dataset.from_dict({"id": doc_ids, "text": doc_ids, "title": [""] * len(doc_ids)}),
        queries=Dataset.from_dict({"id": qids, "text": qids}),
        relevant_docs=relevant_docs,
        top_ranked=top_ranked,
    )
    return _run(t, {SPLIT: split}, PrecomputedEncoder(table, similarity_fn))
