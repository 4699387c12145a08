"""Validation splits carved from training queries: seeded, disjoint, saved with a manifest, never over the source."""
from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from flagstone.cli import main
from flagstone.errors import DataError, FlagstoneError
from flagstone.evaluation.beir import load_beir, load_qrels
from flagstone.evaluation.splits import (
    SplitError,
    carve_split,
    carved_count,
    choose_queries,
    ids_hash,
    read_split_manifest,
)
from tests.helpers import SCIFACT


def make_beir(root: Path, train_queries: int = 10) -> Path:
    root.mkdir(parents=True)
    docs = [{"_id": f"d{i}", "title": f"title {i}", "text": f"text {i}"} for i in range(30)]
    (root / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    queries = [{"_id": f"q{i}", "text": f"query {i}"} for i in range(train_queries + 3)]
    (root / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in queries))
    (root / "qrels").mkdir()
    rows = ["query-id\tcorpus-id\tscore"] + [f"q{i}\td{i}\t1" for i in range(train_queries)]
    rows += ["q0\td29\t2"]  # a second judgement for one query: it moves with its query
    (root / "qrels" / "train.tsv").write_text("\n".join(rows) + "\n")
    test = [f"q{i}\td{i}\t1" for i in range(train_queries, train_queries + 3)]
    (root / "qrels" / "test.tsv").write_text("\n".join(["query-id\tcorpus-id\tscore", *test]) + "\n")
    return root


def test_carve_writes_a_disjoint_seeded_split(tmp_path):
    source = make_beir(tmp_path / "src")
    before = {p: p.read_bytes() for p in source.rglob("*") if p.is_file()}
    manifest = carve_split(source, tmp_path / "out", seed=7, fraction=0.25)
    dev, rest = load_qrels(tmp_path / "out" / "qrels" / "dev.tsv"), load_qrels(tmp_path / "out" / "qrels" / "train.tsv")
    original = load_qrels(source / "qrels" / "train.tsv")
    assert len(dev) == 3 and len(rest) == 7  # ceil(0.25 * 10)
    assert not set(dev) & set(rest) and {**dev, **rest} == original  # every judgement kept, on one side
    assert manifest["seed"] == 7 and manifest["source"]["split"] == "train" and manifest["source"]["queries"] == 10
    assert manifest["splits"]["dev"]["query_ids_sha256"] == ids_hash(dev)
    assert manifest["splits"]["train"]["queries"] == 7
    assert not (tmp_path / "out" / "qrels" / "test.tsv").exists()  # the test split stays out of the tuning folder
    assert load_beir(tmp_path / "out", "dev").qrels == dev
    assert read_split_manifest(tmp_path / "out") == manifest
    assert {p: p.read_bytes() for p in source.rglob("*") if p.is_file()} == before  # the source is only read

    again = carve_split(source, tmp_path / "again", seed=7, fraction=0.25)
    assert again["splits"] == manifest["splits"]
    assert (tmp_path / "again" / "qrels" / "dev.tsv").read_bytes() == (tmp_path / "out" / "qrels" / "dev.tsv").read_bytes()
    other = carve_split(source, tmp_path / "other", seed=8, count=3)
    assert other["splits"]["dev"]["query_ids_sha256"] != manifest["splits"]["dev"]["query_ids_sha256"]


def test_choice_depends_on_seed_and_ids_only():
    ids = [f"q{i}" for i in range(50)]
    shuffled = ids[:]
    random.Random(0).shuffle(shuffled)
    assert set(choose_queries(ids, 10, seed=3)) == set(choose_queries(shuffled, 10, seed=3))
    assert choose_queries(shuffled, 10, seed=3) == [q for q in shuffled if q in set(choose_queries(ids, 10, seed=3))]
    assert set(choose_queries(ids, 10, seed=3)) != set(choose_queries(ids, 10, seed=4))


@pytest.mark.parametrize("kwargs", [{"fraction": 0.0}, {"fraction": 1.0}, {"count": 10}, {"count": 0},
                                    {}, {"fraction": 0.5, "count": 2}])
def test_bad_shares_are_refused(kwargs):
    with pytest.raises(SplitError):
        carved_count(10, **kwargs)


def test_never_overwrites_without_asking(tmp_path):
    source = make_beir(tmp_path / "src")
    carve_split(source, tmp_path / "out", seed=1, count=2)
    with pytest.raises(FlagstoneError, match="overwrite"):
        carve_split(source, tmp_path / "out", seed=2, count=2)
    assert read_split_manifest(tmp_path / "out")["seed"] == 1
    assert carve_split(source, tmp_path / "out", seed=2, count=2, overwrite=True)["seed"] == 2
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep")
    with pytest.raises(FlagstoneError):
        carve_split(source, foreign, seed=1, count=2, overwrite=True)  # not Flagstone's: never replaced
    assert (foreign / "notes.txt").read_text() == "keep"
    with pytest.raises(SplitError, match="outside the source"):
        carve_split(source, source / "dev-split", seed=1, count=2)
    with pytest.raises(SplitError, match="plain name"):
        carve_split(source, tmp_path / "x", seed=1, count=2, name="train")
    with pytest.raises(DataError, match="no qrels for split 'dev'"):
        carve_split(source, tmp_path / "y", seed=1, count=2, source_split="dev")


def test_manifest_detects_changed_files(tmp_path):
    source = make_beir(tmp_path / "src")
    carve_split(source, tmp_path / "out", seed=1, count=2)
    dev = tmp_path / "out" / "qrels" / "dev.tsv"
    dev.write_text(dev.read_text() + "q9\td9\t1\n")
    with pytest.raises(DataError, match="does not match"):
        read_split_manifest(tmp_path / "out")


def test_cli_carve_split(tmp_path, capsys):
    source = make_beir(tmp_path / "src")
    out = tmp_path / "split"
    assert main(["data", "carve-split", str(source), "-o", str(out), "--fraction", "0.2", "--seed", "5"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["dev"]["queries"] == 2 and printed["train"]["queries"] == 8
    assert main(["data", "carve-split", str(source), "-o", str(out), "--fraction", "0.2", "--seed", "6"]) == 2
    assert "overwrite" in capsys.readouterr().err
    assert main(["data", "carve-split", str(source), "-o", str(tmp_path / "z"), "--count", "10", "--seed", "5"]) == 2
    assert "at least one must go to each side" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # a share is required
        main(["data", "carve-split", str(source), "-o", str(tmp_path / "z"), "--seed", "5"])


@pytest.mark.skipif(not (SCIFACT / "qrels" / "train.tsv").is_file(), reason="SciFact not in ../shared/data")
def test_scifact_dev_split(tmp_path):
    manifest = carve_split(SCIFACT, tmp_path / "scifact-dev", seed=0, fraction=0.2)
    assert manifest["source"]["queries"] == 809
    assert manifest["splits"]["dev"]["queries"] == 162 and manifest["splits"]["train"]["queries"] == 647
    test_queries = set(load_qrels(SCIFACT / "qrels" / "test.tsv"))
    assert not test_queries & set(load_qrels(tmp_path / "scifact-dev" / "qrels" / "dev.tsv"))
