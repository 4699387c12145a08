"""The CLI's argument types, its one-line parser errors and --version."""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys

import pytest

from flagstone.cli import _common as c
from flagstone.cli import build_parser, version
from tests.helpers import REPO


@pytest.mark.parametrize("check, good, bad", [
    (c.positive_int, [("1", 1), ("12", 12)], ["0", "-3", "1.5", "x"]),
    (c.non_negative_int, [("0", 0), ("7", 7)], ["-1", "a"]),
    (c.positive_float, [("0.5", 0.5), ("2", 2.0)], ["0", "-1", "nan", "inf", "x"]),
    (c.non_negative_float, [("0", 0.0), ("2.5", 2.5)], ["-0.1", "nan"]),
    (c.probability, [("0", 0.0), ("1", 1.0), ("0.25", 0.25)], ["1.5", "-0.1", "x"]),
    (c.port, [("1", 1), ("65535", 65535)], ["0", "65536", "80000", "http"]),
    (c.http_url, [("http://localhost:8080/v1", "http://localhost:8080/v1"), ("https://x.org", "https://x.org")],
     ["localhost:8080", "ftp://x.org", "http://"]),
    (c.model_name, [("all-MiniLM-L6-v2", "all-MiniLM-L6-v2"), ("BAAI/bge-m3", "BAAI/bge-m3"),
                    ("org/some-model", "org/some-model")], ["nosuch", "/no/such/folder", "./nope/x", "a/b/c"]),
    (c.causal_lm_name, [("smollm2-135m-instruct", "smollm2-135m-instruct"), ("org/llm", "org/llm")],
     ["nosuch", "/no/such/file.gguf"]),
    (c.reranker_spec, [("llm", "llm"), ("llm:org/llm", "llm:org/llm"), ("BAAI/bge-reranker-base",
                                                                       "BAAI/bge-reranker-base")],
     ["llm:nosuch", "nosuch"]),
])
def test_argument_types(check, good, bad):
    for text, value in good:
        assert check(text) == value
    for text in bad:
        with pytest.raises(argparse.ArgumentTypeError):
            check(text)


def test_paths(tmp_path):
    (tmp_path / "f.txt").write_text("x")
    f, d = str(tmp_path / "f.txt"), str(tmp_path)
    assert c.existing_file(f) == f and c.existing_folder(d) == d and c.existing_path(f) == f
    assert c.output_file(str(tmp_path / "new" / "out.npz")) and c.output_folder(str(tmp_path / "new" / "dir"))
    for check, text in ((c.existing_file, d), (c.existing_file, d + "/nope"), (c.existing_folder, f),
                        (c.existing_path, d + "/nope"), (c.output_file, d), (c.output_file, f + "/out.npz"),
                        (c.output_folder, f), (c.output_folder, f + "/sub")):
        with pytest.raises(argparse.ArgumentTypeError):
            check(text)


def test_model_folders_need_a_config(tmp_path):
    with pytest.raises(argparse.ArgumentTypeError, match="no config.json"):
        c.model_name(str(tmp_path))
    (tmp_path / "config.json").write_text("{}")
    assert c.model_name(str(tmp_path)) == str(tmp_path)
    assert c.causal_lm_name(str(tmp_path)) == str(tmp_path)


def test_weights_are_parsed_and_checked():
    assert c.hybrid_weights("dense=0.3, bm25=0.7") == {"dense": 0.3, "bm25": 0.7}
    for text in ("dense", "dense=x", "dense=nan", "dense=0,bm25=0", "dense=-1", "nosuch=1"):
        with pytest.raises(argparse.ArgumentTypeError):
            c.hybrid_weights(text)


def test_modes_match_the_retriever():
    from flagstone.retrieval.retriever import MODES

    assert c.MODES == MODES


def test_a_parser_error_is_one_line_naming_the_help(capsys):
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["serve", "--port", "80000"])
    assert exc.value.code == 2
    assert capsys.readouterr().err == ("flagstone: error: argument --port: a port must be between 1 and 65535, "
                                       "got 80000 (see flagstone serve --help)\n")


def test_version():
    env = dict(os.environ, PYTHONPATH=str(REPO))
    result = subprocess.run([sys.executable, "-m", "flagstone", "--version"], capture_output=True, text=True,
                            env=env, timeout=60)
    assert result.returncode == 0 and result.stdout == f"flagstone {version()}\n"
    from flagstone import __version__

    declared = re.search(r'^version = "(.+)"$', (REPO / "pyproject.toml").read_text(), re.MULTILINE)
    assert version() == __version__ == declared.group(1)


def test_serve_options_reach_the_service_settings(monkeypatch, tmp_path, capsys):
    import uvicorn

    from flagstone.cli import main
    from flagstone.server import app as server_app

    seen = {}
    monkeypatch.setattr(server_app, "create_app", lambda settings: seen.setdefault("settings", settings))
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: seen.setdefault("run", kw))
    keys = tmp_path / "keys"
    keys.write_text("secret\n")
    assert main(["serve", "--data-dir", str(tmp_path / "d"), "--api-keys-file", str(keys), "--public-metrics",
                 "--body-timeout", "5", "--max-body-mb", "1", "--port", "8123", "--model-workers", "3",
                 "--model-queue", "0"]) == 0
    settings = seen["settings"]
    assert settings.model_workers == 3 and settings.model_queue == 0
    assert settings.public_metrics and settings.body_timeout_s == 5.0 and settings.max_body_bytes == 1024 * 1024
    assert "secret" in settings.api_keys and seen["run"]["port"] == 8123
    assert "API keys required" in capsys.readouterr().out


def test_serve_ray_options_reach_the_service_settings(monkeypatch, tmp_path, capsys):
    import uvicorn

    from flagstone.cli import main
    from flagstone.server import app as server_app

    seen = {}
    monkeypatch.setattr(server_app, "create_app", lambda settings: seen.setdefault("settings", settings))
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: None)
    folder = tmp_path / "sharded"
    folder.mkdir()
    assert main(["serve", "--data-dir", str(tmp_path / "d"), "--ray", "--sharded", f"docs={folder}", "--shards", "3",
                 "--replicas", "2", "--shard-deadline", "4"]) == 0
    settings = seen["settings"]
    assert settings.ray == "" and settings.sharded == {"docs": str(folder)}  # "": a local cluster
    assert (settings.shards, settings.replicas, settings.shard_deadline_s) == (3, 2, 4.0)
    assert "read-only on Ray shard actors: docs; every stored collection in 3 shards" in capsys.readouterr().out
    assert build_parser().parse_args(["serve", "--ray", "auto"]).ray == "auto"
    assert build_parser().parse_args(["serve"]).ray is None


@pytest.mark.parametrize("argv, message", [
    (["--shards", "2"], "add --ray"),
    (["--replicas", "2"], "add --ray"),
    (["--ray", "--sharded", "a=.", "--sharded", "a=."], "given twice"),
    (["--ray", "--sharded", "nofolder"], "is not NAME=FOLDER"),
])
def test_serve_ray_mistakes_stop_before_starting(argv, message, capsys, tmp_path):
    from flagstone.cli import main

    try:
        code = main(["serve", "--data-dir", str(tmp_path / "d"), *argv])
    except SystemExit as exc:  # a bad value is a parser error
        code = exc.code
    assert code == 2
    assert message in capsys.readouterr().err
