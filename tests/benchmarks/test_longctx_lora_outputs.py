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


def test_main_refuses_before_writing_into_a_user_folder(lora, tmp_path, monkeypatch):
    # the run's first write (the stand-in) must come after the check, or the check protects nothing
    from types import SimpleNamespace

    import flagstone.models.causal_lm as causal_lm
    from flagstone.longctx.extension import squeezed_rope_theta

    native = fake_native(tmp_path / "native")
    config = SimpleNamespace(rope_parameters={"rope_theta": 100000.0}, head_dim=64)
    monkeypatch.setattr(causal_lm, "load_causal_lm",
                        lambda *a, **k: SimpleNamespace(path=native, model=SimpleNamespace(config=config),
                                                        tokenizer=None))
    models = tmp_path / "models"
    theta = squeezed_rope_theta(100000.0, lora.NATIVE_LENGTH, 512, 64)
    user = models / f"smollm2-135m-rope{round(theta)}"
    user.mkdir(parents=True)
    (user / "config.json").write_text("mine")
    monkeypatch.setattr("sys.argv", ["longctx_lora.py", "--models", str(models)])
    assert lora.main() == 2
    assert sorted(p.name for p in user.iterdir()) == ["config.json"]
    assert (user / "config.json").read_text() == "mine"
