"""The INTERS data builder over the shared data: row schema, seeded determinism, held-out tasks, no SciFact test
query anywhere, and the saved folder (rows + manifest with the seed)."""
from __future__ import annotations

import json

import pytest

from flagstone.errors import DataError
from flagstone.inters.data import (
    HELD_OUT_FILE,
    MANIFEST_FILE,
    ROW_FIELDS,
    TRAIN_FILE,
    build_inters_data,
    load_inters_rows,
    save_inters_data,
)
from flagstone.models.prompts import TASKS, TEMPLATES, parse_permutation


@pytest.fixture(scope="module")
def built(shared_data):
    return build_inters_data(shared_data, seed=3, held_out_per_task=6, max_train_per_task=12,
                             held_out_tasks=["query_suggestion"])


def test_every_task_has_rows_of_the_documented_schema(built):
    counts = built.counts()
    assert set(counts) == set(TASKS)
    for task, c in counts.items():
        assert c["held_out"] == 6
        assert c["train"] == (0 if task == "query_suggestion" else 12)  # a held-out task is not trained on
    for row in built.train + built.held_out:
        assert tuple(row) == ROW_FIELDS
        task = TASKS[row["task"]]
        assert row["group"] == task.group and row["answer"] == task.answer
        template = next(t for t in TEMPLATES[row["task"]] if t.name == row["template"])
        assert row["shots"] == template.shots
        assert row["prompt"].startswith(template.instruction) and row["prompt"].endswith(template.cue)
        assert row["prompt"].count("Example ") >= template.shots
        assert row["completion"].strip()
        if task.answer == "choice":
            assert row["completion"] in row["choices"]
        else:
            assert row["choices"] is None
        if task.answer == "permutation":
            n = row["completion"].count("[")
            tail = row["prompt"].rsplit("Now your turn:", 1)[-1]  # the example itself, after any demonstrations
            assert f"[{n}] " in tail and f"[{n + 1}] " not in tail
            assert parse_permutation(row["completion"], n) is not None
    ids = [r["id"] for r in built.train + built.held_out]
    assert len(set(ids)) == len(ids)
    used = {(r["task"], r["shots"] > 0) for r in built.train + built.held_out}
    assert any(few for _, few in used) and any(not few for _, few in used)


def test_the_same_seed_gives_the_same_rows_and_another_seed_others(shared_data, built):
    again = build_inters_data(shared_data, seed=3, held_out_per_task=6, max_train_per_task=12,
                              held_out_tasks=["query_suggestion"])
    assert again.train == built.train and again.held_out == built.held_out
    other = build_inters_data(shared_data, seed=4, tasks=["query_matching"], held_out_per_task=6,
                              max_train_per_task=12)
    mine = [r for r in built.held_out if r["task"] == "query_matching"]
    assert [r["prompt"] for r in other.held_out] != [r["prompt"] for r in mine]


def test_held_out_and_train_rows_do_not_share_examples(built):
    for task in TASKS:
        train = {r["prompt"] for r in built.train if r["task"] == task}
        held = {r["prompt"] for r in built.held_out if r["task"] == task}
        assert not train & held


def test_no_scifact_test_query_is_used(shared_data, built):
    from flagstone.evaluation.beir import load_qrels, load_queries

    folder = shared_data / "beir" / "scifact"
    queries = load_queries(folder / "queries.jsonl")
    test_only = set(load_qrels(folder / "qrels" / "test.tsv")) - set(load_qrels(folder / "qrels" / "train.tsv"))
    texts = {queries[q] for q in test_only} - {queries[q] for q in load_qrels(folder / "qrels" / "train.tsv")}
    prompts = "\n".join(r["prompt"] for r in built.train + built.held_out)
    assert not [t for t in texts if t in prompts]


def test_saved_folder_round_trips_and_keeps_the_seed(built, tmp_path):
    out = save_inters_data(built, tmp_path / "inters")
    assert load_inters_rows(out / TRAIN_FILE) == built.train
    assert load_inters_rows(out / HELD_OUT_FILE) == built.held_out
    manifest = json.loads((out / MANIFEST_FILE).read_text())
    assert manifest["seed"] == 3 and manifest["held_out_tasks"] == ["query_suggestion"]
    assert manifest["counts"]["query_matching"] == {"train": 12, "held_out": 6}
    with pytest.raises(DataError, match="overwrite"):
        save_inters_data(built, out)
    save_inters_data(built, out, overwrite=True)


def test_bad_rows_and_arguments_are_data_errors(shared_data, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"task": "query_matching", "prompt": "p"}) + "\n")
    with pytest.raises(DataError, match="missing field"):
        load_inters_rows(bad)
    with pytest.raises(DataError, match="unknown task"):
        build_inters_data(shared_data, tasks=["nope"])
    with pytest.raises(DataError, match="not found"):
        build_inters_data(tmp_path / "nowhere", tasks=["query_matching"])
