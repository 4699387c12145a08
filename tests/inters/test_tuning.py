"""LoRA instruction tuning on a tiny causal LM: the adapter trains, saves, and loads back through
load_causal_lm (and the LLM reranker) with the same outputs as peft's own loading."""
from __future__ import annotations

import json

import numpy as np
import pytest

from flagstone.inters.settings import LoraSettings
from flagstone.inters.tuning import TRAINING_FILE, encode_row, tune_lora
from flagstone.training.settings import TrainingConfig


ROWS = [{"task": "query_matching", "prompt": f"Do these mean the same? {a} / {b}", "completion": ans}
        for a, b, ans in [("open a file", "open the file", "Yes"), ("read bytes", "close socket", "No"),
                          ("parse json", "parse the json", "Yes"), ("sort a list", "print text", "No")] * 4]


@pytest.fixture(scope="module")
def adapter(tiny_causal_lm_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("adapter") / "lora"
    result = tune_lora(str(tiny_causal_lm_dir), ROWS + [{"prompt": "x " * 400, "completion": "Yes"}], out,
                       lora=LoraSettings(rank=4, alpha=8, dropout=0.0, max_length=128, batch_size=4),
                       config=TrainingConfig(epochs=2, learning_rate=5e-3, precision="float32", show_progress=False))
    return out, result


def test_the_loss_covers_the_answer_only(tiny_causal_lm_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_causal_lm_dir)
    ids, n_prompt = encode_row(tok, "a question", "Yes")
    assert tok.decode(ids[n_prompt:]).startswith("Yes")
    assert "a question" in tok.decode(ids[:n_prompt]) and "Yes" not in tok.decode(ids[:n_prompt])


def test_tuning_saves_an_adapter_and_counts_rows_left_out(adapter):
    out, result = adapter
    assert (out / "adapter_config.json").is_file() and (out / "adapter_model.safetensors").is_file()
    assert result.rows_used == len(ROWS) and result.rows_too_long == 1
    assert result.training.steps == 8
    saved = json.loads((out / TRAINING_FILE).read_text())
    assert saved["rows_too_long"] == 1 and len(saved["losses"]) == 8


def test_adapter_round_trips_through_load_causal_lm(adapter, tiny_causal_lm_dir):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from flagstone.models.causal_lm import load_causal_lm

    out, _ = adapter
    loaded = load_causal_lm(out)
    assert loaded.path == out
    ids = torch.tensor([loaded.tokenizer("open a file", add_special_tokens=False)["input_ids"]])
    base = AutoModelForCausalLM.from_pretrained(tiny_causal_lm_dir).eval()
    with torch.inference_mode():
        before = base(input_ids=ids).logits
        reference = PeftModel.from_pretrained(base, str(out)).eval()(input_ids=ids).logits
        mine = loaded.model(input_ids=ids).logits
    torch.testing.assert_close(mine, reference, atol=1e-4, rtol=1e-4)
    assert (mine - before).abs().max() > 1e-3  # the adapter changed the model


def test_the_reranker_loads_the_adapter(adapter, tiny_causal_lm_dir):
    from flagstone.models.reranker import LLMReranker

    out, _ = adapter
    pairs = [("open a file", "open the file"), ("open a file", "print text")]
    tuned = LLMReranker(out).score_pairs(pairs)
    base = LLMReranker(tiny_causal_lm_dir).score_pairs(pairs)
    assert tuned.shape == (2,) and not np.allclose(tuned, base)


def test_an_adapter_without_a_base_is_a_clear_error(tmp_path):
    from flagstone.errors import ModelNotFoundError
    from flagstone.models.causal_lm import load_causal_lm

    (tmp_path / "adapter_config.json").write_text("{}")
    with pytest.raises(ModelNotFoundError, match="base_model_name_or_path"):
        load_causal_lm(tmp_path)
