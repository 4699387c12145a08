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


def _pair_similarities(a: np.ndarray, b: np.ndarray) -> dict[str, np.ndarray]:
    """Higher-is-more-similar scores for aligned pairs under each of MTEB's similarity functions."""
    a64, b64 = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return {
        "cosine": _cosine_pairs(a64, b64),
        "manhattan": -np.abs(a64 - b64).sum(axis=1),
        "euclidean": -np.sqrt(((a64 - b64) ** 2).sum(axis=1)),
        "dot": np.einsum("ij,ij->i", a64, b64),
    }


def sts_scores(emb1: np.ndarray, emb2: np.ndarray, gold: Sequence[float]) -> dict[str, float]:
    """Pearson and Spearman correlation of each similarity with the gold scores (main: cosine_spearman)."""
    from scipy.stats import pearsonr, spearmanr

    gold = np.asarray(gold, dtype=np.float64)
    out: dict[str, float] = {}
    for name, sims in _pair_similarities(emb1, emb2).items():
        out[f"{name}_pearson"] = float(pearsonr(gold, sims)[0])
        out[f"{name}_spearman"] = float(spearmanr(gold, sims)[0])
    out["pearson"] = out["cosine_pearson"]
    out["spearman"] = out["cosine_spearman"]
    return out


def _best_accuracy(scores: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """Best accuracy over thresholds between consecutive sorted scores, and that threshold."""
    order = np.argsort(-scores, kind="stable")
    s, y = scores[order], labels[order]
    # predicting "positive" for the top i pairs: correct = positives in top i + negatives below
    pos_above = np.concatenate([[0], np.cumsum(y)])
    neg_below = (len(y) - y.sum()) - np.concatenate([[0], np.cumsum(1 - y)])
    correct = pos_above + neg_below
    best = int(np.argmax(correct))
    threshold = float((s[best - 1] + s[best]) / 2) if 0 < best < len(s) else float(s[0] if best == 0 else s[-1])
    return float(correct[best] / len(y)), threshold


def _best_f1(scores: np.ndarray, labels: np.ndarray) -> tuple[float, float, float, float]:
    """Best F1 over thresholds, with its precision, recall and threshold."""
    order = np.argsort(-scores, kind="stable")
    s, y = scores[order], labels[order]
    n_pos = y.sum()
    tp = np.cumsum(y)
    predicted = np.arange(1, len(y) + 1)
    precision = tp / predicted
    recall = tp / max(n_pos, 1)
    f1 = np.where(precision + recall > 0, 2 * precision * recall / np.maximum(precision + recall, 1e-12), 0.0)
    # only cut between distinct scores
    valid = np.append(s[1:] != s[:-1], True)
    f1 = np.where(valid, f1, -1.0)
    best = int(np.argmax(f1))
    threshold = float((s[best] + s[best + 1]) / 2) if best + 1 < len(s) else float(s[best])
    return float(f1[best]), float(precision[best]), float(recall[best]), threshold


def pair_classification_scores(emb1: np.ndarray, emb2: np.ndarray, labels: Sequence[int]) -> dict[str, float]:
    """Average precision, best-threshold accuracy and F1 per similarity (main: max_ap over similarities)."""
    from sklearn.metrics import average_precision_score

    y = np.asarray(labels, dtype=np.int64)
    if set(np.unique(y)) - {0, 1}:
        raise ValueError("pair classification labels must be 0 or 1")
    out: dict[str, float] = {}
    for name, sims in _pair_similarities(emb1, emb2).items():
        out[f"{name}_ap"] = float(average_precision_score(y, sims))
        acc, acc_t = _best_accuracy(sims, y)
        f1, p, r, f1_t = _best_f1(sims, y)
        out.update({f"{name}_accuracy": acc, f"{name}_accuracy_threshold": acc_t, f"{name}_f1": f1,
                    f"{name}_precision": p, f"{name}_recall": r, f"{name}_f1_threshold": f1_t})
    for metric in ("ap", "accuracy", "f1", "precision", "recall"):
        out[f"max_{metric}"] = max(out[f"{n}_{metric}"] for n in ("cosine", "manhattan", "euclidean", "dot"))
    return out
