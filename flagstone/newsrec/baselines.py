"""Trivial recommenders every model must beat: random, popularity and topic (category) overlap."""
from __future__ import annotations

from collections import Counter

import numpy as np

from flagstone.newsrec.metrics import NewsRecMetrics, mean_metrics
from flagstone.newsrec.mind import Impression, MindSplit

BASELINES = ("random", "popularity", "topic")


def random_scores(impressions: list[Impression], seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.random(len(imp.candidates)) for imp in impressions]


def popularity_scores(impressions: list[Impression], train: MindSplit) -> list[np.ndarray]:
    """Clicks each candidate received in the training impressions, smoothed by how often it was shown:
    (clicks + 1) / (shown + 10). Items never seen in training score 1/10, the prior."""
    clicks: Counter[str] = Counter()
    shown: Counter[str] = Counter()
    for imp in train.impressions:
        shown.update(imp.candidates)
        clicks.update(imp.clicked)
    return [np.array([(clicks[c] + 1.0) / (shown[c] + 10.0) for c in imp.candidates]) for imp in impressions]


def topic_scores(impressions: list[Impression], split: MindSplit) -> list[np.ndarray]:
    """The share of the user's history in the candidate's subcategory, plus a tenth of the share in its
    category (so a category match breaks subcategory ties)."""
    out = []
    for imp in impressions:
        subs = Counter(split.news[h].subcategory for h in imp.history)
        cats = Counter(split.news[h].category for h in imp.history)
        n = max(1, len(imp.history))
        out.append(np.array([(subs[split.news[c].subcategory] + 0.1 * cats[split.news[c].category]) / n
                             for c in imp.candidates]))
    return out


def evaluate_baseline(name: str, split: MindSplit, *, train: MindSplit | None = None, seed: int = 0
                      ) -> NewsRecMetrics:
    """Score ``split`` with a baseline; ``popularity`` needs the ``train`` split it counts clicks in."""
    from flagstone.errors import DataError

    if not split.labelled:
        raise DataError(f"{split.path or 'the split'}: impressions have no click labels; cannot score them")
    if name == "random":
        scores = random_scores(split.impressions, seed)
    elif name == "popularity":
        if train is None:
            raise DataError("the popularity baseline needs the training split to count clicks in")
        scores = popularity_scores(split.impressions, train)
    elif name == "topic":
        scores = topic_scores(split.impressions, split)
    else:
        raise DataError(f"unknown baseline {name!r}: choose one of {', '.join(BASELINES)}")
    return mean_metrics([imp.labels for imp in split.impressions], scores)
