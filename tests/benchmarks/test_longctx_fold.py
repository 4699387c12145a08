"""longctx.py fold: the sibling benchmarks' results join longctx.{json,md} without re-running anything, and
folding twice changes nothing."""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture()
def longctx(monkeypatch, tmp_path):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    for name in ("_common", "longctx"):
        sys.modules.pop(name, None)
    import _common
    import longctx

    for module in (_common, longctx):
        monkeypatch.setattr(module, "RESULTS", tmp_path)
    return longctx


def test_fold_adds_the_lora_table_and_the_extender_rows_once(longctx, tmp_path, capsys):
    assert longctx.fold(None) == 2  # nothing measured yet
    assert "run 'longctx.py eval' first" in capsys.readouterr().err
    shutil.copy(BENCHMARKS / "results" / "longctx.json", tmp_path / "longctx.json")
    measured = [r for r in json.loads((tmp_path / "longctx.json").read_text())["rows"] if "source" not in r]
    needle = {"ppl": 30.0, "needle_correct": 2, "needle_total": 3}
    (tmp_path / "longctx_lora.json").write_text(json.dumps({"lora_extension": {
        "before": {"512": needle, "1024": {**needle, "ppl": 40.5}}, "after": {"512": {**needle, "needle_correct": 3}},
        "rope_only": None, "native_reference": {"512": {"ppl": 28.0}}, "after_short": {"512": {"ppl": 29.5}}}}))
    (tmp_path / "longctx_extensible.json").write_text(json.dumps({"rows": [
        {"method": "extensible", "ratio": 4, "ppl_essays": 31.0, "peak_mb": None},
        {"method": "truncation", "ppl_essays": 33.0}]}))
    for _ in range(2):
        longctx.fold_if_present()
        folded = json.loads((tmp_path / "longctx.json").read_text())
        assert folded["rows"][: len(measured)] == measured
        assert [r["method"] for r in folded["rows"][len(measured):]] == ["extensible"]
        assert folded["extensible_benchmark_rows"] == [{"method": "truncation", "ppl_essays": 33.0}]
        assert folded["lora_extension"]["after"]["512"]["needle_correct"] == 3
    table = (tmp_path / "longctx.md").read_text()
    assert "| before | 30.00 | 40.50 | 2/3 | 2/3 |" in table
    assert "| after | 30.00 | - | 3/3 | - |" in table
    assert "| native_reference | 28.00 | - | - | - |" in table
    assert "| after_short | 29.50 | - | - | - |" in table  # the short-sample control, last
    assert table.index("| after |") < table.index("| after_short |")
    assert "rope_only" not in table  # not evaluated
    assert "| extensible | 4 | 31.00 | - | - | - | - | - |" in table  # figures a row lacks (peak_mb None) read "-"
    assert "Rows from longctx_extensible.json (extensible*) follow that benchmark's protocol" in table
    training = json.loads((tmp_path / "longctx.json").read_text())["training"]
    losses = training["losses"]
    assert (f"Beacon training: {training['steps']} steps in {training['seconds'] / 60:.0f} min; mean loss "
            f"{sum(losses[:50]) / 50:.2f} over the first 50 steps") in table


def test_a_file_from_before_refill_windows_was_recorded_folds_without_a_none(longctx):
    refill = {"method": "beacon_refill", "length": 1024, "depth": 0.5, "correct": True, "needle_window": 1,
              "needle_in_compressed_window": True, "needle_window_refilled": True, "beacon_attention_would_pick": [2]}
    results = {"window": 256, "eval": {"tokens_per_sequence": 2048, "sequences_per_kind": {}, "heldout_kind": "x"},
               "rows": [], "niah": [refill, {**refill, "method": "full"}]}
    table = longctx.markdown(results, None)
    assert "Refilling (windows, chosen by" in table and "None" not in table
    assert "picked the needle's window in 1 of 1 haystacks" in table and "| beacon_refill | 1/1 |" in table
