"""LoRA context extension: RoPE base raised in the saved config, adapter round trip, merged == unmerged,
synthetic samples that put the evidence where they say, and the CLI's user errors."""
from __future__ import annotations

import json
import random

import pytest
import torch

from flagstone.cli import main
from flagstone.longctx.extension import (
    LongContextSettings,
    SyntheticLongContext,
    encode_example,
    recipe_rope_theta,
    squeezed_rope_theta,
    train_long_context,
)
from flagstone.models.causal_lm import load_causal_lm, rope_theta_of
from flagstone.training.loop import TrainingConfig

WORDS = ("river stone lamp paper garden window music bridge cloud forest engine silver market letter candle "
         "harbor mountain signal ladder winter").split()


def filler_texts(n: int = 30, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [". ".join(" ".join(rng.choice(WORDS) for _ in range(8)).capitalize() for _ in range(6)) + "."
            for _ in range(n)]


def hotpot_like(i: int) -> dict:
    titles = [f"Place {i}-{j}" for j in range(4)]
    sentences = [[f"Place {i}-{j} is a town in the valley.", f" It has {j + 3} bridges."] for j in range(4)]
    sentences[2] = [f"Place {i}-2 was founded by Marigold Teller{i}.", " It is old."]
    return {"question": f"Who founded the town in question {i}?", "answer": f"Marigold Teller{i}",
            "supporting_facts": {"title": [titles[2], titles[0]], "sent_id": [0, 0]},
            "context": {"title": titles, "sentences": sentences}}


def count_words(text: str) -> int:
    return len(text.split())


@pytest.fixture()
def builder():
    docs = [(f"Finding {i} about lamps", f"Abstract {i}: " + filler_texts(1, seed=i)[0]) for i in range(20)]
    return SyntheticLongContext(filler_texts(), count_words, qa_records=[hotpot_like(i) for i in range(5)]
                                + [{"question": "Yes?", "answer": "yes", "supporting_facts": {"title": []},
                                    "context": {"title": [], "sentences": []}}], documents=docs, seed=3)


@pytest.mark.parametrize("depth", [0.0, 0.3, 0.7, 1.0])
def test_needle_sits_at_the_depth_it_reports(builder, depth):
    example = builder.needle(300, depth)
    start, end = example.evidence
    fact = example.context[start:end]
    assert example.answer in fact and example.context.count(fact) == 1
    assert abs(example.depth - depth) < 0.08
    assert 250 <= count_words(example.context) <= 320


@pytest.mark.parametrize("depth", [0.1, 0.5, 0.9])
def test_qa_answer_paragraph_sits_at_the_depth_it_reports(builder, depth):
    example = builder.qa(400, depth)
    start, end = example.evidence
    paragraph = example.context[start:end]
    assert example.answer in paragraph and "founded by" in paragraph  # the supporting paragraph with the answer
    assert example.context.count(example.answer) == 1  # nowhere else: retrieval is needed
    assert abs(example.depth - depth) < 0.15
    assert count_words(example.context) >= 300
    assert all(r["answer"] != "yes" for r in builder.qa_records)  # yes/no answers are never in the text


def test_summary_answer_lists_the_titles_of_the_documents_in_order(builder):
    example = builder.summary(200)
    lines = example.answer.splitlines()
    bodies = example.context.split("\n\n")
    assert len(lines) == len(bodies) >= 2 and example.evidence == (0, len(example.context))
    for i, (line, body) in enumerate(zip(lines, bodies)):
        number = line.split(". ")[0]
        assert number == str(i + 1) and body.startswith(f"Document {i + 1}: Abstract ")
        assert body.split("Abstract ")[1].split(":")[0] == line.split("Finding ")[1].split(" ")[0]


def test_recipe_scaling_reproduces_the_80k_recipe():
    assert recipe_rope_theta(500e3, 10) == pytest.approx(200e6)
    assert recipe_rope_theta(1e4, 1) == 1e4
    # inverse NTK: at 1/8 of the length the slowest dimension turns as far as before
    short = squeezed_rope_theta(1e5, 8192, 1024, 64)
    assert 1024 * short ** (-62 / 64) == pytest.approx(8192 * 1e5 ** (-62 / 64))


@pytest.fixture(scope="module")
def trained(tiny_causal_lm_dir, tmp_path_factory):
    """An adapter trained for a few steps on the tiny random LM (positions 256 -> 512)."""
    lm = load_causal_lm(tiny_causal_lm_dir)
    count = lambda text: len(lm.tokenizer(text, add_special_tokens=False)["input_ids"])  # noqa: E731
    builder = SyntheticLongContext(filler_texts(), count, qa_records=[hotpot_like(i) for i in range(5)],
                                   documents=[(f"T{i}", t) for i, t in enumerate(filler_texts(10, 1))], seed=0)
    examples = builder.mixture(6, [200, 300])
    theta = rope_theta_of(lm.model.config)
    settings = LongContextSettings(rope_theta=theta * 40, max_positions=512, lora_rank=4, lora_alpha=8)
    out = tmp_path_factory.mktemp("lc") / "adapter"
    config = TrainingConfig(epochs=1, learning_rate=5e-2, precision="float32", show_progress=False, seed=0)
    result = train_long_context(lm, str(tiny_causal_lm_dir), examples, out, settings, config)
    return lm, out, examples, theta, result


def test_adapter_folder_records_the_raised_rope_base(trained):
    lm, out, _, theta, result = trained
    assert result.steps == 6
    record = json.loads((out / "base_model.json").read_text())
    assert record["config"]["rope_parameters"]["rope_theta"] == pytest.approx(theta * 40)
    assert record["config"]["max_position_embeddings"] == 512
    loaded = load_causal_lm(out)
    assert rope_theta_of(loaded.model.config) == pytest.approx(theta * 40)
    assert loaded.model.config.max_position_embeddings == 512
    assert rope_theta_of(load_causal_lm(lm.path).model.config) == pytest.approx(theta)  # the base is untouched


def test_adapter_round_trip_merged_and_unmerged_agree(trained, tmp_path):
    from peft import PeftModel

    lm, out, examples, theta, _ = trained
    ids = torch.tensor([encode_example(examples[0], lm.tokenizer)[0][:300]])
    merged = load_causal_lm(out)  # merged into the base on load
    unmerged = load_causal_lm(out, merge_adapter=False)
    assert isinstance(unmerged.model, PeftModel) and not isinstance(merged.model, PeftModel)
    with torch.no_grad():
        a, b = merged.model(ids).logits, unmerged.model(ids).logits
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
        # the adapter changes the model: without it (raised base only) the logits differ
        with unmerged.model.disable_adapter():
            plain = unmerged.model(ids).logits
    assert (plain - a).abs().max() > 1e-3
    # saving the merged model gives a plain folder that loads to the same logits
    from flagstone.longctx.extension import save_extension

    merged_dir = save_extension(load_causal_lm(out, merge_adapter=False).model, lm.tokenizer, tmp_path / "merged",
                                str(lm.path), {}, merge=True, overwrite=False, info={})
    assert (merged_dir / "config.json").is_file() and not (merged_dir / "adapter_config.json").exists()
    reloaded = load_causal_lm(merged_dir)
    assert rope_theta_of(reloaded.model.config) == pytest.approx(theta * 40)
    with torch.no_grad():
        torch.testing.assert_close(reloaded.model(ids).logits, a, atol=1e-4, rtol=1e-4)


def test_raising_the_base_reaches_the_model_as_a_saved_config_does(tiny_causal_lm_dir, tmp_path):
    from transformers import AutoConfig, AutoModelForCausalLM

    from flagstone.longctx.extension import apply_rope, rope_overrides

    ids = torch.randint(5, 300, (1, 200), generator=torch.Generator().manual_seed(1))
    lm = load_causal_lm(tiny_causal_lm_dir)
    with torch.no_grad():
        before = lm.model(ids).logits
        theta = rope_theta_of(lm.model.config)
        apply_rope(lm, theta * 100, 1024)
        raised = lm.model(ids).logits
        config = AutoConfig.from_pretrained(tiny_causal_lm_dir)
        for key, value in rope_overrides(config, theta * 100, 1024).items():
            setattr(config, key, value)
        reference = AutoModelForCausalLM.from_pretrained(tiny_causal_lm_dir, config=config).eval()(ids).logits
    assert (raised - before).abs().max() > 1e-3
    torch.testing.assert_close(raised, reference, atol=1e-5, rtol=1e-5)


def test_existing_output_needs_overwrite(trained):
    lm, out, examples, theta, _ = trained
    from flagstone.errors import DataError

    settings = LongContextSettings(rope_theta=theta * 2, max_positions=512, lora_rank=2)
    with pytest.raises(DataError, match="overwrite"):
        train_long_context(lm, str(lm.path), examples, out, settings, TrainingConfig(show_progress=False))


def test_cli_user_errors_exit_2_with_one_line(tmp_path, capsys, tiny_causal_lm_dir):
    code = main(["train", "long-context", "-o", str(tmp_path / "o"), "--model", str(tiny_causal_lm_dir),
                 "--data", str(tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "missing" in err[0]
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x.txt").write_text("mine")
    code = main(["train", "long-context", "-o", str(tmp_path / "full"), "--model", str(tiny_causal_lm_dir),
                 "--data", str(tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "overwrite" in err[0]


def test_cli_trains_an_adapter_the_loader_accepts(tmp_path, shared_data, tiny_causal_lm_dir, capsys):
    out = tmp_path / "ext"
    code = main(["train", "long-context", "-o", str(out), "--model", str(tiny_causal_lm_dir), "--data",
                 str(shared_data), "--trained-length", "256", "--target-length", "1024", "--samples", "3",
                 "--sample-lengths", "1000", "--max-steps", "2", "--no-bf16", "--quiet"])
    assert code == 0, capsys.readouterr().err
    record = json.loads((out / "long_context.json").read_text())
    base_theta = record["rope_theta_before"]
    assert record["settings"]["rope_theta"] == pytest.approx(base_theta * 4 ** (record["settings"]["rope_theta"]
                                                                                and 2.60206), rel=1e-3)
    assert record["steps"] == 2 and sum(record["kinds"].values()) == 3
    assert rope_theta_of(load_causal_lm(out).model.config) == pytest.approx(record["settings"]["rope_theta"])
    # the adapter folder is a causal LM for every command that takes one
    from flagstone.cli._common import causal_lm_name

    assert causal_lm_name(str(out)) == str(out)
