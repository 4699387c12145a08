"""benchmarks/longctx_lora.py never writes into a folder it did not make: the stand-in carries a marker, an existing
adapter folder needs --reuse-adapter or --overwrite."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture
def lora(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import longctx_lora

    return longctx_lora


def fake_native(folder: Path) -> Path:
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"rope_parameters": {"rope_theta": 100000.0, "rope_type": "default"},
                                                    "max_position_embeddings": 8192}))
    (folder / "model.safetensors").write_bytes(b"weights")
    return folder


def test_a_user_folder_is_refused_and_a_standin_it_made_is_accepted(lora, tmp_path):
    standin, adapter = tmp_path / "standin", tmp_path / "adapter"
    assert lora.output_problem(standin, [adapter], reuse=False, overwrite=False) is None  # nothing there yet
    standin.mkdir()
    (standin / "config.json").write_text("{}")  # someone else's folder of the same name
    problem = lora.output_problem(standin, [adapter], reuse=False, overwrite=False)
    assert problem and str(standin) in problem and "--overwrite" in problem and "\n" not in problem
    assert lora.output_problem(standin, [adapter], reuse=False, overwrite=True) is None

    made = tmp_path / "made"
    lora.make_standin(fake_native(tmp_path / "native"), made, 5715.0, 512)
    config = json.loads((made / "config.json").read_text())
    assert config["rope_parameters"]["rope_theta"] == 5715.0 and config["max_position_embeddings"] == 512
    assert (made / "model.safetensors").is_symlink()
    assert lora.output_problem(made, [adapter], reuse=False, overwrite=False) is None


@pytest.mark.parametrize("reuse, overwrite, refused", [(False, False, True), (True, False, False),
                                                       (False, True, False)])
def test_an_existing_adapter_needs_reuse_or_overwrite(lora, tmp_path, reuse, overwrite, refused):
    adapters = [tmp_path / "lora-x4", tmp_path / "lora-x4-short-samples"]
    adapters[1].mkdir()
    problem = lora.output_problem(tmp_path / "standin", adapters, reuse=reuse, overwrite=overwrite)
    assert (problem is not None) == refused
    if refused:
        assert str(adapters[1]) in problem and "--reuse-adapter" in problem
