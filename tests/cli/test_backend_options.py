"""--backend and --precision: on every command that builds an embedder, checked choices, one-line errors, and
the service's default (the fastest exact backend)."""
from __future__ import annotations

import numpy as np
import pytest

from flagstone.cli import _common as c
from flagstone.cli import build_parser, main

COMMANDS_WITH_EMBEDDERS = [["encode", "{f}", "-o", "{d}/v.npz"], ["search", "{f}", "-q", "q"], ["eval", "{d}"],
                           ["index", "build", "{f}", "-o", "{d}/out"], ["index", "search", "{d}", "-q", "q"],
                           ["demo"], ["ask", "q"], ["serve"], ["mine", "{f}", "-o", "{d}/mined.jsonl"],
                           ["train", "genir", "{d}", "-o", "{d}/genir"]]


def test_the_choices_are_the_library_s():
    from flagstone.models.backends import BACKENDS, PRECISIONS

    assert c.BACKENDS == BACKENDS and c.PRECISIONS == PRECISIONS


@pytest.mark.parametrize("argv", COMMANDS_WITH_EMBEDDERS, ids=lambda a: " ".join(a[:2]))
def test_every_command_that_embeds_takes_backend_and_precision(tmp_path, argv):
    (tmp_path / "x.txt").write_text("one text\n")
    argv = [a.format(f=tmp_path / "x.txt", d=tmp_path) for a in argv]
    args = build_parser().parse_args([*argv, "--backend", "onnx", "--precision", "int8"])
    assert (args.backend, args.precision) == ("onnx", "int8")


def test_defaults_torch_for_commands_and_the_fastest_exact_backend_for_the_service():
    from flagstone.server.settings import SERVICE_BACKEND, ServerSettings

    parser = build_parser()
    assert parser.parse_args(["demo"]).backend == "torch"
    served = parser.parse_args(["serve"])
    assert (served.backend, served.precision) == (SERVICE_BACKEND, "float32")
    assert (ServerSettings().backend, ServerSettings().precision) == (SERVICE_BACKEND, "float32")
    assert parser.parse_args(["serve", "--backend", "openvino"]).backend == "openvino"


@pytest.mark.parametrize("option, value", [("--backend", "tensorrt"), ("--precision", "float16"),
                                           ("--precision", "fp32")])
def test_unknown_values_are_one_line_parser_errors(tmp_path, capsys, option, value):
    (tmp_path / "x.txt").write_text("one text\n")
    with pytest.raises(SystemExit) as exc:
        main(["encode", str(tmp_path / "x.txt"), "-o", str(tmp_path / "v.npz"), option, value])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"flagstone: error: argument {option}: invalid choice: '{value}'")


@pytest.mark.parametrize("extra, message", [
    (["--backend", "onnx", "--precision", "bfloat16"], "backend 'onnx' offers precision float32 or int8, not 'bfloat16'"),
    (["--backend", "openvino", "--precision", "int8"], "backend 'openvino' offers precision float32 or bfloat16"),
    (["--backend", "onnx", "--dtype", "bfloat16"], "leave dtype at float32 and use precision alone"),
])
def test_combinations_a_backend_does_not_offer_are_one_line_errors(tmp_path, capsys, extra, message):
    (tmp_path / "x.txt").write_text("one text\n")
    code = main(["encode", str(tmp_path / "x.txt"), "-o", str(tmp_path / "v.npz"), "--quiet", "--no-cache", *extra])
    assert code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and not (tmp_path / "v.npz").exists()


def test_encode_through_a_backend_gives_torch_s_vectors(tiny_m3_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FLAGSTONE_CACHE", str(tmp_path / "cache"))
    (tmp_path / "x.txt").write_text("zinc shortens colds\nneutron stars\n")
    outputs = {}
    for backend in ("torch", "onnx"):
        out = tmp_path / f"{backend}.npz"
        assert main(["encode", str(tmp_path / "x.txt"), "-o", str(out), "--model", str(tiny_m3_dir), "--sparse",
                     "--quiet", "--no-cache", "--backend", backend]) == 0
        outputs[backend] = np.load(out)
    assert (tmp_path / "cache" / "exports").is_dir()  # the export went to the cache folder
    assert np.abs(outputs["onnx"]["dense"] - outputs["torch"]["dense"]).max() <= 1e-5
    capsys.readouterr()
