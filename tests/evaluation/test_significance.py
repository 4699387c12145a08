"""Paired significance tests: against ranx's Fisher randomization test and scipy's t-test on known data."""
from __future__ import annotations

import numpy as np
import pytest

from flagstone.errors import DataError
from flagstone.evaluation.significance import paired_test


def scores(values):
    return {f"q{i}": float(v) for i, v in enumerate(values)}


def test_a_clear_gain_is_significant_and_noise_is_not():
    rng = np.random.default_rng(0)
    base = rng.uniform(0, 1, 200)
    better = np.clip(base + 0.1 + rng.normal(0, 0.05, 200), 0, 2)
    noise = base + rng.normal(0, 0.05, 200)
    gain = paired_test(scores(base), scores(better))
    assert gain.p_value < 0.001 and gain.delta == pytest.approx(np.mean(better - base))
    same = paired_test(scores(base), scores(noise))
    assert same.p_value > 0.05
    # the t-test agrees on the verdicts
    assert paired_test(scores(base), scores(better), method="t-test").p_value < 0.001
    assert paired_test(scores(base), scores(noise), method="t-test").p_value > 0.05


def test_randomization_matches_ranx_fisher_test():
    ranx = pytest.importorskip("ranx")
    rng = np.random.default_rng(1)
    qrels = {f"q{i}": {"d0": 1} for i in range(60)}
    # two runs whose per-query nDCG@1 differs on some queries: d0 first or second
    run_a = {q: ({"d0": 2.0, "d1": 1.0} if rng.random() < 0.5 else {"d0": 1.0, "d1": 2.0}) for q in qrels}
    run_b = {q: ({"d0": 2.0, "d1": 1.0} if rng.random() < 0.7 else {"d0": 1.0, "d1": 2.0}) for q in qrels}
    per_a = {q: float(r["d0"] > r["d1"]) for q, r in run_a.items()}
    per_b = {q: float(r["d0"] > r["d1"]) for q, r in run_b.items()}
    ours = paired_test(per_a, per_b, n_resamples=20_000)
    report = ranx.compare(qrels=ranx.Qrels(qrels), runs=[ranx.Run(run_a, name="a"), ranx.Run(run_b, name="b")],
                          metrics=["precision@1"], stat_test="fisher", n_permutations=20_000, random_seed=0)
    theirs = report.results["b"]["precision@1"] - report.results["a"]["precision@1"]
    assert ours.delta == pytest.approx(theirs)
    assert ours.p_value == pytest.approx(report.comparisons[("a", "b")]["precision@1"]["p_value"], abs=0.02)


def test_bad_inputs_are_refused():
    with pytest.raises(DataError, match="only one system"):
        paired_test({"q1": 0.5, "q2": 0.1}, {"q1": 0.4})
    with pytest.raises(DataError, match="finite"):
        paired_test({"q1": float("nan")}, {"q1": 0.4})
    with pytest.raises(DataError, match="at least one"):
        paired_test({}, {})
    with pytest.raises(ValueError, match="method"):
        paired_test({"q1": 0.5, "q2": 0.2}, {"q1": 0.4, "q2": 0.3}, method="wilcoxon")
    assert paired_test({"q1": 0.5}, {"q1": 0.5}).p_value == 1.0
    # a subset of the queries
    result = paired_test({"q1": 0.5, "q2": 0.1, "q3": 0.9}, {"q1": 0.6, "q2": 0.2, "q3": 0.0}, queries=["q1", "q2"])
    assert result.n == 2 and result.delta == pytest.approx(0.1)


def test_one_query_randomization_is_exact_p_one():
    from flagstone.evaluation.significance import paired_test

    result = paired_test({"q": 0.2}, {"q": 0.7})
    assert result.n == 1 and result.p_value == 1.0 and abs(result.delta - 0.5) < 1e-12
