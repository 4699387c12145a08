"""`flagstone inters-data` and `flagstone train inters`: the working path on a tiny model, and user mistakes as
exit code 2 with one line."""
from __future__ import annotations

import json

import pytest

from flagstone.cli import main



def _one_line_error(capsys, code: int, match: str) -> None:
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and match in err, err


@pytest.fixture(scope="module")
def data_folder(shared_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("inters") / "data"
    code = main(["inters-data", "-o", str(out), "--data-root", str(shared_data), "--tasks", "query_matching",
                 "query_clarification", "--held-out-per-task", "4", "--max-train-per-task", "6", "--seed", "7"])
    assert code == 0
    return out


def test_inters_data_writes_rows_and_manifest(data_folder):
    manifest = json.loads((data_folder / "manifest.json").read_text())
    assert manifest["seed"] == 7 and manifest["tasks"] == ["query_matching", "query_clarification"]
    assert len((data_folder / "train.jsonl").read_text().splitlines()) == 12


def test_train_inters_saves_a_loadable_adapter_and_refuses_to_overwrite(data_folder, tiny_causal_lm_dir, tmp_path,
                                                                        capsys):
    out = tmp_path / "adapter"
    args = ["train", "inters", str(data_folder), "-o", str(out), "--model", str(tiny_causal_lm_dir),
            "--max-steps", "2", "--batch-size", "4", "--max-length", "256", "--rank", "2", "--quiet", "--no-bf16"]
    assert main(args) == 0
    assert "2 steps on" in capsys.readouterr().out
    assert (out / "adapter_config.json").is_file()
    _one_line_error(capsys, main(args), "--overwrite")
    assert main(args + ["--overwrite"]) == 0
    from flagstone.cli._common import causal_lm_name

    assert causal_lm_name(str(out)) == str(out)  # an adapter folder is a causal LM to every command


def test_user_mistakes_exit_2_with_one_line(data_folder, shared_data, tmp_path, capsys):
    _one_line_error(capsys, main(["inters-data", "-o", str(tmp_path / "x"), "--data-root", str(shared_data),
                                  "--tasks", "nope"]), "unknown task")
    _one_line_error(capsys, main(["inters-data", "-o", str(data_folder), "--data-root", str(shared_data)]),
                    "--overwrite")
    with pytest.raises(SystemExit) as exit_info:
        main(["inters-data", "-o", str(tmp_path / "x"), "--data-root", str(tmp_path / "nowhere")])
    assert exit_info.value.code == 2
    _one_line_error(capsys, 2, "folder not found")
    empty = tmp_path / "empty"
    empty.mkdir()
    _one_line_error(capsys, main(["train", "inters", str(empty), "-o", str(tmp_path / "a")]), "train.jsonl")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "p"}\n')
    _one_line_error(capsys, main(["train", "inters", str(bad), "-o", str(tmp_path / "a")]), "missing field")
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "inters", str(bad), "-o", str(tmp_path / "a"), "--rank", "0"])
    assert exit_info.value.code == 2
    _one_line_error(capsys, 2, "must be at least 1")
