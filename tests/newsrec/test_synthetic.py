"""The synthetic MIND generator: real files, deterministic, and the planted signals are there."""
from __future__ import annotations

import json

import numpy as np
import pytest

from flagstone.errors import DataError
from flagstone.newsrec.baselines import evaluate_baseline
from flagstone.newsrec.mind import load_mind
from flagstone.newsrec.synthetic import SyntheticMindConfig, generate_mind, write_synthetic_mind

SMALL = SyntheticMindConfig(n_users=150, news_per_day=80, history_news=300, train_impressions=800,
                            dev_impressions=400, seed=3)


@pytest.fixture(scope="module")
def small():
    return generate_mind(SMALL)


def test_writes_mind_folders_that_read_back(tmp_path):
    data = write_synthetic_mind(tmp_path / "syn", SMALL)
    for name, split in (("train", data.train), ("dev", data.dev)):
        back = load_mind(tmp_path / "syn" / name)
        assert back.news == split.news and back.impressions == split.impressions
    assert json.loads((tmp_path / "syn" / "config.json").read_text())["seed"] == 3
    # same seed, same bytes; another seed, other data
    write_synthetic_mind(tmp_path / "again", SMALL)
    for name in ("train/news.tsv", "train/behaviors.tsv", "dev/behaviors.tsv"):
        assert (tmp_path / "syn" / name).read_bytes() == (tmp_path / "again" / name).read_bytes()
    other = generate_mind(SyntheticMindConfig(**{**SMALL.__dict__, "seed": 4}))
    assert other.train.impressions[0] != data.train.impressions[0]


def test_shape_is_mind_like(small):
    train, dev = small.train, small.dev
    assert len(train.impressions) == 800 and len(dev.impressions) == 400
    assert max(i.time for i in train.impressions) < min(i.time for i in dev.impressions)  # dev is the next day
    for imp in train.impressions + dev.impressions:
        assert 0 < sum(imp.labels) < len(imp.labels)  # a click and a non-click
        assert set(imp.history) <= set(train.news if imp in train.impressions else dev.news)
    lengths = [len(item.title.split()) for item in train.news.values()]
    assert 9 <= np.mean(lengths) <= 14  # MIND titles: about 11 words


def test_planted_interests_and_popularity_beat_random(small):
    random = evaluate_baseline("random", small.dev)
    topic = evaluate_baseline("topic", small.dev)
    popularity = evaluate_baseline("popularity", small.dev, train=small.train)
    assert abs(random.auc - 0.5) < 0.03
    assert topic.auc > random.auc + 0.08 and topic.ndcg_10 > random.ndcg_10 + 0.05
    assert popularity.auc > random.auc + 0.02


def test_drift_moves_interests_away_from_the_history():
    kept = generate_mind(SyntheticMindConfig(**{**SMALL.__dict__, "drift": 0.0}))
    moved = generate_mind(SyntheticMindConfig(**{**SMALL.__dict__, "drift": 1.0}))
    # the history shows the day-0 interests: with full drift it predicts the dev day's clicks less well
    assert evaluate_baseline("topic", kept.dev).auc > evaluate_baseline("topic", moved.dev).auc + 0.03


def test_bad_settings_are_refused():
    with pytest.raises(DataError, match="candidates"):
        SyntheticMindConfig(candidates=(1, 5))
    with pytest.raises(DataError, match="drift"):
        SyntheticMindConfig(drift=1.5)
