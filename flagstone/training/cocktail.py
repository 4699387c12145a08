"""LM-Cocktail: merge same-architecture checkpoints by a weighted average of their parameters, with the
weights given or computed from a few examples of the target task (softmax of negative loss / temperature).

Merging works on the saved tensors, so one implementation serves embedders (incl. BGE-M3 heads),
cross-encoder rerankers and causal LMs alike.
"""
from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from flagstone._io import MODEL_LAYOUT, atomic_folder, check_output_folder
from flagstone.errors import DataError, ModelNotFoundError

if TYPE_CHECKING:
    import torch

    from flagstone.training.data import TrainingExample

MODEL_KINDS = ("embedder", "reranker", "causal_lm")
_HEAD_FILES = ("sparse_linear.pt", "colbert_linear.pt")
# config fields that must agree for two checkpoints to be averaged
_SHAPE_FIELDS = ("model_type", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                 "vocab_size", "num_labels", "num_key_value_heads")


class IncompatibleModelsError(DataError):
    """Checkpoints that cannot be merged: different architectures, shapes or parameter names."""


def _weights_file(folder: Path) -> Path:
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (folder / name).is_file():
            return folder / name
    if any(folder.glob("*.safetensors.index.json")):
        raise ModelNotFoundError(f"{folder}: sharded checkpoints are not supported for merging yet")
    raise ModelNotFoundError(f"{folder} has no model.safetensors or pytorch_model.bin")


def _load_state(folder: Path) -> dict[str, torch.Tensor]:
    import torch

    file = _weights_file(folder)
    if file.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(file)
    return torch.load(file, map_location="cpu", weights_only=True)


def _config(folder: Path) -> dict:
    from flagstone.models.embedder import transformer_folder

    return json.loads((transformer_folder(folder) / "config.json").read_text())


def check_compatible(folders: Sequence[Path]) -> None:
    """Refuse checkpoints whose architectures or parameter shapes differ, naming the first difference."""
    first = _config(folders[0])
    for folder in folders[1:]:
        other = _config(folder)
        for key in ("architectures", *_SHAPE_FIELDS):
            if first.get(key) != other.get(key):
                raise IncompatibleModelsError(
                    f"cannot merge {folders[0]} and {folder}: {key} differs ({first.get(key)!r} vs {other.get(key)!r})")


def merge_state_dicts(states: Sequence[dict[str, torch.Tensor]], weights: Sequence[float],
                      names: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
    """sum_i w_i * state_i for floating-point tensors (accumulated in float64, stored in each tensor's
    dtype); integer buffers (e.g. position ids) must be equal and are copied."""
    import torch

    names = list(names or [f"model #{i}" for i in range(len(states))])
    # integer buffers some checkpoints store and others rebuild on load (e.g. BERT's position_ids) are left
    # for the loader to rebuild; any other difference in parameter names is an error
    optional = {k for s in states for k, v in s.items() if not v.is_floating_point()}
    keys = set(states[0]) - optional
    for name, state in zip(names[1:], states[1:]):
        if set(state) - optional != keys:
            diff = sorted(keys ^ (set(state) - optional))
            raise IncompatibleModelsError(f"{names[0]} and {name} have different parameters (e.g. {diff[0]!r})")
    shared = [k for k in states[0] if k in keys or all(k in s for s in states)]
    merged = {}
    for key in shared:
        tensors = [s[key] for s in states]
        shapes = {tuple(t.shape) for t in tensors}
        if len(shapes) > 1:
            raise IncompatibleModelsError(f"parameter {key!r} has different shapes: {sorted(shapes)}")
        if not tensors[0].is_floating_point():
            if any(not torch.equal(tensors[0], t) for t in tensors[1:]):
                raise IncompatibleModelsError(f"integer buffer {key!r} differs between checkpoints")
            merged[key] = tensors[0].clone()
            continue
        total = sum(float(w) * t.double() for w, t in zip(weights, tensors))
        merged[key] = total.to(tensors[0].dtype)
    return merged


def merge_models(
    models: Sequence[str | os.PathLike[str]],
    weights: Sequence[float],
    output_dir: str | os.PathLike[str],
    *,
    overwrite: bool = False,
) -> Path:
    """Average ``models`` (folders) with ``weights`` (normalised to sum to 1) into ``output_dir``.

    Configuration, tokenizer and sentence-transformers files come from the first model; BGE-M3 heads
    (``sparse_linear.pt``, ``colbert_linear.pt``) are merged when every model has them. An existing
    ``output_dir`` is replaced only with ``overwrite=True`` (:func:`flagstone._io.check_output_folder`).
    """
    import torch

    from flagstone.models.embedder import resolve_model_path, transformer_folder

    check_output_folder(output_dir, overwrite=overwrite, legacy=MODEL_LAYOUT)
    if len(models) < 2:
        raise ValueError("merging needs at least two models")
    if len(weights) != len(models):
        raise ValueError(f"{len(weights)} weights for {len(models)} models")
    w = np.asarray(weights, dtype=np.float64)
    if np.any(w < 0) or w.sum() <= 0:
        raise ValueError("weights must be non-negative and not all zero")
    w = w / w.sum()
    roots = [resolve_model_path(str(m))[0] for m in models]
    folders = [transformer_folder(r) for r in roots]
    check_compatible(folders)
    merged = merge_state_dicts([_load_state(f) for f in folders], w, [str(f) for f in folders])

    target = Path(output_dir)
    with atomic_folder(target, overwrite=overwrite, legacy=MODEL_LAYOUT) as staging:
        source = roots[0]
        for item in source.iterdir():  # configs, tokenizer, sentence-transformers modules
            if item.name in ("model.safetensors", "pytorch_model.bin", *_HEAD_FILES) or item.name.startswith("."):
                continue
            if item.is_dir():
                shutil.copytree(item, staging / item.name, dirs_exist_ok=True)
            else:
                shutil.copy2(item, staging / item.name)
        weights_dir = staging / folders[0].relative_to(source) if folders[0] != source else staging
        from safetensors.torch import save_file

        stale = weights_dir / "pytorch_model.bin"
        if stale.exists():
            stale.unlink()
        save_file({k: v.contiguous() for k, v in merged.items()}, str(weights_dir / "model.safetensors"),
                  metadata={"format": "pt", "merged_by": "flagstone LM-Cocktail"})
        for head in _HEAD_FILES:
            if all((f / head).is_file() for f in folders):
                states = [torch.load(f / head, map_location="cpu", weights_only=True) for f in folders]
                torch.save(merge_state_dicts(states, w), weights_dir / head)
        (staging / "merge.json").write_text(json.dumps(
            {"models": [str(m) for m in models], "weights": w.tolist()}, indent=2))
    return target


def example_loss(model: str | os.PathLike[str], examples: Sequence, kind: str) -> float:
    """A model's mean loss on a few target-task examples: InfoNCE over each (query, pos, negs) group for an
    embedder (temperature 0.02), group softmax for a reranker, token NLL of ``output`` given ``input`` for a
    causal LM (examples as ``{"input": ..., "output": ...}``)."""
    import torch

    if kind not in MODEL_KINDS:
        raise ValueError(f"kind must be one of {MODEL_KINDS}, got {kind!r}")
    if not examples:
        raise DataError("LM-Cocktail weights need at least one example")
    losses = []
    if kind == "embedder":
        from flagstone.models.embedder import Embedder

        embedder = Embedder(str(model), show_progress=False)
        for ex in examples:
            texts = ex.pos[:1] + ex.neg
            q = embedder.encode([ex.query], is_query=True).dense
            d = embedder.encode(texts).dense
            losses.append(float(torch.nn.functional.cross_entropy(torch.from_numpy(q @ d.T) / 0.02,
                                                                  torch.zeros(1, dtype=torch.long))))
    elif kind == "reranker":
        from flagstone.models.reranker import CrossEncoderReranker, checked_scores

        reranker = CrossEncoderReranker(model)
        for ex in examples:
            scores = checked_scores(reranker, [(ex.query, t) for t in ex.pos[:1] + ex.neg])
            losses.append(float(torch.nn.functional.cross_entropy(torch.from_numpy(scores)[None],
                                                                  torch.zeros(1, dtype=torch.long))))
    else:
        from flagstone.models.causal_lm import load_causal_lm

        lm = load_causal_lm(model)
        with torch.inference_mode():
            for ex in examples:
                prompt = lm.tokenizer(ex["input"], add_special_tokens=True)["input_ids"]
                answer = lm.tokenizer(ex["output"], add_special_tokens=False)["input_ids"]
                ids = torch.tensor([prompt + answer])
                labels = ids.clone()
                labels[0, : len(prompt)] = -100
                losses.append(float(lm.model(input_ids=ids, labels=labels).loss))
    return float(np.mean(losses))


def cocktail_weights(losses: Sequence[float], temperature: float = 5.0) -> list[float]:
    """LM-Cocktail's weights: softmax(-loss / temperature); a lower loss on the examples earns more weight."""
    if temperature <= 0:
        raise ValueError("temperature must be positive")
    z = -np.asarray(losses, dtype=np.float64) / temperature
    e = np.exp(z - z.max())
    return (e / e.sum()).tolist()


def mix_models(
    models: Sequence[str | os.PathLike[str]],
    output_dir: str | os.PathLike[str],
    *,
    examples: Sequence[TrainingExample] | Sequence[dict] | None = None,
    weights: Sequence[float] | None = None,
    kind: str = "embedder",
    temperature: float = 5.0,
    overwrite: bool = False,
) -> tuple[Path, list[float]]:
    """Merge ``models`` with given ``weights``, or with weights computed from ``examples``; returns the
    merged folder and the weights used (normalised to sum to 1)."""
    if (weights is None) == (examples is None):
        raise ValueError("give either weights or examples (to compute the weights from)")
    check_output_folder(output_dir, overwrite=overwrite, legacy=MODEL_LAYOUT)  # before the example losses
    if weights is None:
        check_compatible([Path(_config_folder(m)) for m in models])
        losses = [example_loss(m, examples, kind) for m in models]  # type: ignore[arg-type]
        weights = cocktail_weights(losses, temperature)
    total = float(sum(weights))
    return merge_models(models, weights, output_dir, overwrite=overwrite), [float(w) / total for w in weights]


def _config_folder(model: str | os.PathLike[str]) -> Path:
    from flagstone.models.embedder import resolve_model_path, transformer_folder

    return transformer_folder(resolve_model_path(str(model))[0])
