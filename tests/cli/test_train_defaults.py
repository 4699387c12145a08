"""`flagstone train` takes its defaults from the library's settings, and those are the tuned values the
README reports (lr 1e-4, temperature 0.05, 3 epochs / 2 for M3, 16 queries x (1 + 3), bf16; cross-encoder
3 epochs at 1e-4, groups of 1 + 7)."""
from __future__ import annotations

import inspect

from pathlib import Path

from flagstone.cli import build_parser
from flagstone.cli.train import _training_config
from flagstone.training.data import TrainingExample
from flagstone.training.embedder import train_embedder
from flagstone.training.reranker import train_cross_encoder
from flagstone.training.settings import (
    M3_EPOCHS,
    EmbedderTrainingSettings,
    TrainingConfig,
    default_epochs,
)


def _parse(kind: str, *options: str):
    data = Path(__file__)  # the parser checks that the data file exists; nothing reads it here
    return build_parser().parse_args(["train", kind, str(data), "-o", "out", *options])


def test_library_defaults_are_the_tuned_settings():
    config, settings = TrainingConfig(), EmbedderTrainingSettings()
    assert (config.learning_rate, config.epochs, config.precision, config.warmup_ratio) == (1e-4, 3, "auto", 0.1)
    assert (settings.temperature, settings.batch_size, settings.group_size, settings.passage_max_length) == (0.05, 16, 4, 192)
    assert settings.in_batch_negatives and settings.heads == ("dense",)
    assert default_epochs(("dense",)) == 3 and default_epochs(("dense", "sparse", "colbert")) == M3_EPOCHS == 2
    reranker = inspect.signature(train_cross_encoder).parameters
    assert (reranker["group_size"].default, reranker["batch_size"].default) == (8, 4)


def test_embedder_options_default_to_the_library_settings():
    args = _parse("embedder")
    settings, config = EmbedderTrainingSettings(), TrainingConfig()
    assert args.learning_rate == config.learning_rate and args.temperature == settings.temperature
    assert args.batch_size == settings.batch_size and args.group_size == settings.group_size
    assert args.max_length == settings.passage_max_length and tuple(args.heads) == settings.heads
    assert args.sparse_init == settings.sparse_init and args.no_in_batch is not settings.in_batch_negatives
    assert args.gradient_accumulation == config.gradient_accumulation and args.seed == config.seed
    assert args.bf16 is None and _training_config(args) == TrainingConfig(checkpoint_every=None)
    assert _training_config(_parse("embedder", "--heads", "dense", "sparse", "colbert")).epochs == M3_EPOCHS
    assert _training_config(_parse("embedder", "--epochs", "5", "--heads", "colbert")).epochs == 5
    assert _training_config(_parse("embedder", "--no-bf16")).precision == "float32"
    assert _training_config(_parse("embedder", "--bf16")).precision == "bfloat16"


def test_auto_precision_is_bfloat16_only_where_the_cpu_computes_it(monkeypatch):
    import torch

    from flagstone.models._hf import resolve_precision

    for native, expected in ((True, "bfloat16"), (False, "float32")):
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: native)
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
        assert resolve_precision("auto") == expected
        assert resolve_precision("float32") == "float32" and resolve_precision("bfloat16") == "bfloat16"


def test_train_embedder_without_a_config_trains_the_tuned_epochs(tiny_m3_dir, tmp_path):
    examples = [TrainingExample(f"query {i}", [f"passage {i}"], [f"other {i} {k}" for k in range(3)])
                for i in range(4)]  # one batch of 16 queries or fewer: one step per epoch
    short = {"query_max_length": 16, "passage_max_length": 16}
    dense = train_embedder(str(tiny_m3_dir), examples, tmp_path / "dense", settings=EmbedderTrainingSettings(**short))
    m3 = train_embedder(str(tiny_m3_dir), examples, tmp_path / "m3",
                        settings=EmbedderTrainingSettings(heads=("dense", "sparse", "colbert"), **short))
    assert (dense.steps, m3.steps) == (TrainingConfig.epochs, M3_EPOCHS)


def test_reranker_options_default_to_the_library_settings():
    args = _parse("reranker")
    reranker = inspect.signature(train_cross_encoder).parameters
    assert args.group_size == reranker["group_size"].default and args.batch_size == reranker["batch_size"].default
    assert args.max_length == reranker["max_length"].default
    config = _training_config(args)
    assert config == TrainingConfig() and (config.epochs, config.learning_rate) == (3, 1e-4)
