"""Commands that write a model folder never delete a folder the user owns (issue: `train -o DIR` emptied DIR)."""
from __future__ import annotations

import json

import pytest

from flagstone._io import OUTPUT_MARKER
from flagstone.cli import main
from tests.helpers import build_tiny_m3


@pytest.fixture(scope="module")
def training_data(tmp_path_factory):
    from flagstone.corpora import python_docstrings

    _, texts = python_docstrings(40)
    path = tmp_path_factory.mktemp("data") / "train.jsonl"
    with path.open("w") as f:
        for i, text in enumerate(texts[:8]):
            f.write(json.dumps({"query": text[:30], "pos": [text], "neg": [texts[(i + k) % 40] for k in (3, 5, 7)]})
                    + "\n")
    return path


@pytest.fixture(scope="module")
def two_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return build_tiny_m3(root / "a", seed=1), build_tiny_m3(root / "b", seed=2)


def _commands(data, models, out):
    a, b = (str(m) for m in models)
    common = ["--max-steps", "1", "--batch-size", "2", "--group-size", "2", "--max-length", "32", "--quiet"]
    return {
        "train embedder": ["train", "embedder", str(data), "-o", str(out), "--model", a, *common],
        "train reranker": ["train", "reranker", str(data), "-o", str(out), "--model", a, *common],
        "merge": ["merge", a, b, "--weights", "1", "1", "-o", str(out)],
    }


@pytest.mark.parametrize("command", ["train embedder", "train reranker", "merge"])
def test_a_users_folder_survives_with_and_without_overwrite(command, training_data, two_models, tmp_path, capsys):
    out = tmp_path / "work"
    out.mkdir()
    (out / "thesis.tex").write_text("years of work")
    argv = _commands(training_data, two_models, out)[command]
    for extra in ([], ["--overwrite"]):
        assert main(argv + extra) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and str(out) in err
    assert [p.name for p in out.iterdir()] == ["thesis.tex"]
    assert (out / "thesis.tex").read_text() == "years of work"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["work"]  # no staging copy left behind


@pytest.mark.parametrize("command", ["train embedder", "train reranker", "merge"])
def test_own_output_is_replaced_only_with_overwrite(command, training_data, two_models, tmp_path, capsys):
    out = tmp_path / "model"
    argv = _commands(training_data, two_models, out)[command]
    assert main(argv) == 0
    assert (out / OUTPUT_MARKER).is_file() and (out / "config.json").is_file()
    capsys.readouterr()
    assert main(argv) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(argv + ["--overwrite"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
