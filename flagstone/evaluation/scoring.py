"""Task scores from embeddings, following MTEB's protocols so numbers compare with published ones.

Each function takes embeddings (and labels or gold scores) and returns a flat ``{metric: value}`` dict
whose keys match the metric names of MTEB's result files. Scores are fractions (0..1), as MTEB stores them.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def _cosine_pairs(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    num = np.einsum("ij,ij->i", a, b)
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return num / np.maximum(den, 1e-12)


def _pair_scores(a: np.ndarray, b: np.ndarray) -> dict[str, tuple[np.ndarray, bool]]:
    """Per-pair scores under each of MTEB's functions, with whether a higher score means more similar."""
    a64, b64 = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    cosine = _cosine_pairs(a64, b64)
    return {
        "similarity": (cosine, True),  # the model's own similarity: cosine for every Flagstone embedder
        "cosine": (cosine, True),
        "manhattan": (np.abs(a64 - b64).sum(axis=1), False),
        "euclidean": (np.sqrt(((a64 - b64) ** 2).sum(axis=1)), False),
        "dot": (np.einsum("ij,ij->i", a64, b64), True),
    }


def sts_scores(emb1: np.ndarray, emb2: np.ndarray, gold: Sequence[float]) -> dict[str, float]:
    """Pearson and Spearman correlation of each similarity with the gold scores (main: cosine_spearman)."""
    from scipy.stats import pearsonr, spearmanr

    gold = np.asarray(gold, dtype=np.float64)
    if len(gold) != len(emb1) or len(emb1) != len(emb2):
        raise ValueError(f"{len(emb1)} and {len(emb2)} embeddings for {len(gold)} gold scores")
    out: dict[str, float] = {}
    for name, (scores, higher_is_similar) in _pair_scores(emb1, emb2).items():
        if name == "dot":
            continue  # MTEB's STS reports cosine, Manhattan and Euclidean (and the model's similarity)
        sims = scores if higher_is_similar else -scores
        prefix = "" if name == "similarity" else f"{name}_"
        out[f"{prefix}pearson"] = float(pearsonr(gold, sims)[0])
        out[f"{prefix}spearman"] = float(spearmanr(gold, sims)[0])
    return out


def _threshold_sweep(scores: np.ndarray, labels: np.ndarray, higher_is_similar: bool) -> dict[str, float]:
    """Best accuracy and best F1 (with its precision and recall) over thresholds between consecutive
    distinct scores, as MTEB sweeps them (a threshold never splits tied scores)."""
    order = np.argsort(-scores if higher_is_similar else scores, kind="stable")
    s, y = scores[order], labels[order]
    n, n_pos = len(y), int(y.sum())
    cut_ok = s[:-1] != s[1:]  # cut after position i (the top i + 1 pairs predicted similar)
    pos_above = np.cumsum(y)[:-1]
    taken = np.arange(1, n)
    neg_below = (n - n_pos) - (taken - pos_above)
    accuracy = np.where(cut_ok, (pos_above + neg_below) / n, 0.0)
    precision = pos_above / taken
    recall = pos_above / max(n_pos, 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.where(cut_ok & (pos_above > 0), 2 * precision * recall / (precision + recall), 0.0)
    out = {"accuracy": float(accuracy.max(initial=0.0))}
    if len(f1) and f1.max() > 0:
        best = int(np.argmax(f1))  # the first (highest-threshold) maximum, as MTEB keeps it
        out.update(f1=float(f1[best]), precision=float(precision[best]), recall=float(recall[best]))
    else:
        out.update(f1=0.0, precision=0.0, recall=0.0)
    return out


def pair_classification_scores(emb1: np.ndarray, emb2: np.ndarray, labels: Sequence[int]) -> dict[str, float]:
    """Average precision, best-threshold accuracy and F1 per similarity (main: max_ap over similarities)."""
    from sklearn.metrics import average_precision_score

    y = np.asarray(labels, dtype=np.int64)
    if len(y) != len(emb1) or len(emb1) != len(emb2):
        raise ValueError(f"{len(emb1)} and {len(emb2)} embeddings for {len(y)} labels")
    if set(np.unique(y).tolist()) - {0, 1}:
        raise ValueError("pair classification labels must be 0 or 1")
    out: dict[str, float] = {}
    for name, (scores, higher_is_similar) in _pair_scores(emb1, emb2).items():
        metrics = _threshold_sweep(scores, y, higher_is_similar)
        metrics["ap"] = float(average_precision_score(y, scores if higher_is_similar else -scores))
        out.update({f"{name}_{k}": v for k, v in metrics.items()})
    for metric in ("accuracy", "f1", "precision", "recall", "ap"):
        out[f"max_{metric}"] = max(out[f"{n}_{metric}"] for n in ("similarity", "cosine", "manhattan", "euclidean",
                                                                  "dot"))
    return out


def undersample(labels: Sequence[object], samples_per_label: int, n_experiments: int, seed: int) -> list[list[int]]:
    """Training rows of each experiment, as MTEB draws them: one index list, shuffled in place by a fresh
    ``RandomState(seed)`` before every experiment, keeping the first ``samples_per_label`` rows per label."""
    idxs = list(range(len(labels)))
    chosen = []
    for _ in range(n_experiments):
        np.random.RandomState(seed).shuffle(idxs)
        counts: dict[object, int] = {}
        picked = []
        for i in idxs:
            c = counts.get(labels[i], 0)
            if c < samples_per_label:
                picked.append(i)
                counts[labels[i]] = c + 1
        chosen.append(picked)
    return chosen


def classification_scores(
    train_emb: np.ndarray,
    train_labels: Sequence[object],
    test_emb: np.ndarray,
    test_labels: Sequence[object],
    *,
    n_experiments: int = 10,
    samples_per_label: int = 8,
    seed: int = 42,
    max_iter: int = 100,
) -> dict[str, object]:
    """Logistic regression on embeddings, trained on ``samples_per_label`` examples per label in each of
    ``n_experiments`` draws, scored on the whole test set; metrics averaged over experiments (main: accuracy)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import (
        accuracy_score,
        average_precision_score,
        f1_score,
        precision_score,
        recall_score,
    )

    if len(train_emb) != len(train_labels) or len(test_emb) != len(test_labels):
        raise ValueError("each embedding needs exactly one label")
    y_test = np.asarray(test_labels)
    binary = len(np.unique(y_test)) == 2
    per_experiment = []
    for rows in undersample(list(train_labels), samples_per_label, n_experiments, seed):
        model = LogisticRegression(max_iter=max_iter, random_state=seed)
        model.fit(np.asarray(train_emb)[rows], np.asarray(train_labels)[rows])
        pred = model.predict(test_emb)
        scores = {
            "accuracy": accuracy_score(y_test, pred),
            "f1": f1_score(y_test, pred, average="macro"),
            "f1_weighted": f1_score(y_test, pred, average="weighted"),
            "precision": precision_score(y_test, pred, average="macro"),
            "precision_weighted": precision_score(y_test, pred, average="weighted"),
            "recall": recall_score(y_test, pred, average="macro"),
            "recall_weighted": recall_score(y_test, pred, average="weighted"),
        }
        if binary:
            scores["ap"] = average_precision_score(y_test, pred, average="macro")
            scores["ap_weighted"] = average_precision_score(y_test, pred, average="weighted")
        per_experiment.append({k: float(v) for k, v in scores.items()})
    out: dict[str, object] = {k: float(np.mean([e[k] for e in per_experiment])) for k in per_experiment[0]}
    out["scores_per_experiment"] = per_experiment
    return out


def clustering_scores(
    emb: np.ndarray,
    labels: Sequence[object],
    *,
    max_fraction: float | None = None,
    docs_per_run: int = 16_384,
    n_runs: int = 10,
    batch_size: int = 512,
    seed: int = 42,
) -> dict[str, object]:
    """MTEB's (v2) clustering protocol: optionally keep a random ``max_fraction`` of the documents, then
    ``n_runs`` times draw ``docs_per_run`` documents with replacement, cluster them with mini-batch k-means
    (k = number of gold labels) and score V-measure and AMI against the labels; mean and std over runs."""
    import random

    from sklearn.cluster import MiniBatchKMeans
    from sklearn.metrics import adjusted_mutual_info_score, v_measure_score

    if len(emb) != len(labels):
        raise ValueError(f"{len(emb)} embeddings for {len(labels)} labels")
    rng = random.Random(seed)
    emb = np.asarray(emb)
    gold = np.asarray(labels)
    if max_fraction is not None:
        keep = rng.sample(range(len(gold)), k=min(len(gold), int(max_fraction * len(gold))))
        emb, gold = emb[keep], gold[keep]
    model = MiniBatchKMeans(n_clusters=np.unique(gold).size, batch_size=batch_size, init="k-means++", n_init=1,
                            random_state=seed)
    v_measures, amis = [], []
    for _ in range(n_runs):
        pick = rng.choices(range(len(gold)), k=docs_per_run)
        assigned = model.fit_predict(emb[pick])
        v_measures.append(float(v_measure_score(gold[pick], assigned)))
        amis.append(float(adjusted_mutual_info_score(gold[pick], assigned)))
    return {"v_measure": float(np.mean(v_measures)), "v_measure_std": float(np.std(v_measures)),
            "ami": float(np.mean(amis)), "ami_std": float(np.std(amis)), "v_measures": {"Level 0": v_measures}}


def reranking_scores(
    query_emb: np.ndarray,
    candidate_embs: Sequence[np.ndarray],
    relevance: Sequence[Sequence[int]],
    k_values: Sequence[int] = (1, 3, 5, 10, 20, 100, 1000),
) -> dict[str, float]:
    """Each query's candidates ranked by cosine similarity and scored with trec_eval metrics against the
    graded relevance (MTEB v2 reranking: main score MAP over the whole list, ``map_at_1000``)."""
    from flagstone.evaluation.metrics import evaluate_run

    run: dict[str, dict[str, float]] = {}
    qrels: dict[str, dict[str, int]] = {}
    q = np.asarray(query_emb, dtype=np.float32)
    q = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
    for i, (cands, rel) in enumerate(zip(candidate_embs, relevance)):
        c = np.asarray(cands, dtype=np.float32)
        if len(c) != len(rel):
            raise ValueError(f"query {i}: {len(c)} candidates for {len(rel)} relevance labels")
        c = c / np.maximum(np.linalg.norm(c, axis=1, keepdims=True), 1e-12)
        sims = c @ q[i]
        ids = [f"{j:06d}" for j in range(len(c))]
        run[str(i)] = dict(zip(ids, sims.astype(float)))
        qrels[str(i)] = {d: int(r) for d, r in zip(ids, rel)}
    report = evaluate_run(run, qrels, tuple(k_values))
    return {key.replace("@", "_at_"): float(v) for key, v in report.mean.items()}
