"""Rerankers: score (query, passage) pairs with a cross-encoder, a causal LM (yes/no prompting) or ColBERT.

All rerankers share one small interface: ``score_pairs(pairs) -> (n,) float32`` and
``rerank(query, passages, top_k) -> Reranked``. Re-ordering a retriever's ``Hits`` is
:func:`flagstone.rerank.rerank_hits`, a layer above.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from flagstone.errors import BackendError, InvalidTextError, ModelNotFoundError
from flagstone.models._hf import quiet_transformers, torch_dtype
from flagstone.models.finite import require_finite
from flagstone.models.generator import eos_token_ids

if TYPE_CHECKING:
    import torch

    from flagstone.models.embedder import Embedder

DEFAULT_LLM_PROMPT = (
    "Given a query and a passage, answer 'Yes' if the passage is relevant to the query, otherwise 'No'.\n"
    "Query: {query}\nPassage: {passage}\nIs the passage relevant to the query? Answer Yes or No."
)
QWEN3_RERANKER_INSTRUCTION = "Given a web search query, retrieve relevant passages that answer the query"
# Qwen3-Reranker's input format (the text it was trained on, so it must be exact): a system turn asking for
# "yes" or "no", the instruction, query and document in the user turn, and an empty thinking block before the answer
_QWEN3_RERANKER_PROMPT = (
    "<|im_start|>system\nJudge whether the Document meets the requirements based on the Query and the Instruct "
    'provided. Note that the answer can only be "yes" or "no".<|im_end|>\n<|im_start|>user\n'
    "<Instruct>: {instruction}\n<Query>: {query}\n<Document>: {passage}<|im_end|>\n"
    "<|im_start|>assistant\n<think>\n\n</think>\n\n"
)


@dataclass(frozen=True)
class LLMPromptStyle:
    """How a causal LM is asked for relevance: the prompt (``{query}``, ``{passage}``, optionally
    ``{instruction}``), the two answer words, whether the prompt goes through the tokenizer's chat template
    (``None``: when it has one), and whether scores are probabilities by default."""

    prompt: str
    yes: str
    no: str
    chat_template: bool | None
    normalize: bool


LLM_PROMPT_STYLES: dict[str, LLMPromptStyle] = {
    "yes-no": LLMPromptStyle(DEFAULT_LLM_PROMPT, "Yes", "No", None, False),
    # score = softmax over the "yes" and "no" logits at the last position, the probability of "yes"
    "qwen3": LLMPromptStyle(_QWEN3_RERANKER_PROMPT, "yes", "no", False, True),
}
LLM_RERANK_MODES = ("pointwise", "pairwise", "listwise")
LISTWISE_DECODINGS = ("free", "constrained")
# short name -> (hub name, prompt style)
LLM_RERANKER_PRESETS: dict[str, tuple[str, str]] = {
    f"qwen3-reranker-{size.lower()}": (f"Qwen/Qwen3-Reranker-{size}", "qwen3") for size in ("0.6B", "4B", "8B")
}


def find_llm_reranker_preset(name: str) -> tuple[str, str] | None:
    """``(hub name, prompt style)`` of an LLM reranker preset, by short name or hub name (any case)."""
    key = name.strip().lower()
    for short, (hub_id, style) in LLM_RERANKER_PRESETS.items():
        if key in (short, hub_id.lower()):
            return hub_id, style
    return None


@dataclass(frozen=True)
class Reranked:
    """Passages of one query re-ordered best first: positions into the input list and their scores."""

    order: np.ndarray  # (k,) int64 positions into the passages given
    scores: np.ndarray  # (k,) float32, descending


class Reranker(Protocol):
    def score_pairs(self, pairs: Sequence[tuple[str, str]]) -> np.ndarray: ...


def validate_pairs(pairs: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    """Reject a bare string, malformed pairs and empty queries with the position of the first bad one (an empty
    passage is scored: a corpus's empty document can be a first-stage hit)."""
    if isinstance(pairs, str) or (isinstance(pairs, tuple) and len(pairs) == 2 and isinstance(pairs[0], str)):
        raise InvalidTextError("expected a list of (query, passage) pairs, got a single pair or string")
    checked = []
    for i, pair in enumerate(pairs):
        if not isinstance(pair, (tuple, list)) or len(pair) != 2:
            raise InvalidTextError(f"pair #{i} is not a (query, passage) pair")
        query, passage = pair
        for role, text in (("query", query), ("passage", passage)):
            if not isinstance(text, str):
                raise InvalidTextError(f"pair #{i}: the {role} is {type(text).__name__}, not a string")
            if role == "query" and not text.strip():
                raise InvalidTextError(f"pair #{i}: the query is empty")
        checked.append((query, passage))
    return checked


def checked_scores(reranker: Reranker, pairs: Sequence[tuple[str, str]]) -> np.ndarray:
    """``reranker.score_pairs(pairs)`` as float32, checked: one finite score per pair, or an error naming the
    pair (a NaN would otherwise sort to an arbitrary place). Every caller of a reranker goes through here."""
    scores = np.asarray(reranker.score_pairs(pairs), dtype=np.float32)
    if scores.shape != (len(pairs),):
        raise ValueError(f"{type(reranker).__name__}.score_pairs returned shape {scores.shape} for {len(pairs)} pairs")
    return require_finite(scores, f"{type(reranker).__name__} scores", name_row=lambda row: f"pair {row}")


def rerank(reranker: Reranker, query: str, passages: Sequence[str], top_k: int | None = None) -> Reranked:
    """Score every passage against ``query`` and return the best ``top_k`` (all by default), best first."""
    if len(passages) == 0:
        return Reranked(np.zeros(0, np.int64), np.zeros(0, np.float32))
    scores = checked_scores(reranker, [(query, p) for p in passages])
    order = np.argsort(-scores, kind="stable")[: top_k if top_k is not None else len(passages)]
    return Reranked(order.astype(np.int64), scores[order])


def _batches(n: int, size: int) -> list[slice]:
    return [slice(start, min(start + size, n)) for start in range(0, n, size)]


def encode_pairs(tokenizer, pairs: Sequence[tuple[str, str]], max_length: int,
                 max_query_length: int) -> dict[str, torch.Tensor]:
    """Tokenise (query, passage) pairs for a cross-encoder: the query is kept whole up to
    ``max_query_length`` tokens, the passage is cut to fit ``max_length``. Shared by scoring and training."""
    cut = []
    for query, _ in pairs:
        enc = tokenizer(query, add_special_tokens=False, return_offsets_mapping=True)
        if len(enc["input_ids"]) > max_query_length:  # cut at a character offset so it re-tokenises the same
            query = query[: enc["offset_mapping"][max_query_length - 1][1]]
        cut.append(query)
    # padding to a multiple of 32 keeps the number of distinct shapes small: oneDNN builds a kernel per shape
    return tokenizer(cut, [p for _, p in pairs], padding=True, truncation="only_second", max_length=max_length,
                     pad_to_multiple_of=32 if max_length % 32 == 0 else None, return_tensors="pt")


class CrossEncoderReranker:
    """A Hugging Face sequence-classification checkpoint (the bge-reranker format) scoring pairs.

    Scores are raw logits (``normalize=False``) or sigmoid probabilities in 0..1. A two-label model scores
    the log-odds of its second label. Long inputs keep the query (cut to ``max_query_length`` tokens)
    and truncate the passage to fit ``max_length``.
    """

    def __init__(
        self,
        model: str | os.PathLike,
        *,
        max_length: int = 512,
        max_query_length: int = 64,
        batch_size: int = 32,
        normalize: bool = False,
        dtype: str = "float32",
        device: str = "cpu",
        backend: str = "torch",
        precision: str = "float32",
    ) -> None:
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        from flagstone.models.backends import check_backend, require_backend, warn_if_lossy
        from flagstone.models.embedder import _model_fingerprint, resolve_model_path, transformer_folder

        check_backend(backend, precision)
        if dtype != "float32" and (backend != "torch" or precision != "float32"):  # as Embedder decides
            raise BackendError(f"dtype={dtype!r} sets torch's weight type; with backend={backend!r} and "
                               f"precision={precision!r} leave dtype at float32 and use precision alone")
        if backend != "torch" and device != "cpu":
            raise BackendError(f"the {backend} backend runs on the CPU; got device={device!r}")
        require_backend(backend)
        warn_if_lossy(precision)
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        folder, _ = resolve_model_path(str(model))
        self.path = folder
        with quiet_transformers():
            try:
                self.tokenizer = AutoTokenizer.from_pretrained(str(folder))
                self.model = AutoModelForSequenceClassification.from_pretrained(str(folder), dtype=torch_dtype(dtype))
            except (OSError, ValueError) as exc:
                raise ModelNotFoundError(f"could not load a cross-encoder from {folder}: {exc}") from None
        self.model.eval().to(device)
        self.fingerprint = _model_fingerprint(transformer_folder(folder))
        n_labels = int(self.model.config.num_labels)
        if n_labels not in (1, 2):
            raise ModelNotFoundError(f"{folder} has {n_labels} labels; a reranker needs 1 (a score) or 2 (no/yes)")
        limit = int(getattr(self.model.config, "max_position_embeddings", max_length) or max_length)
        if self.model.config.model_type in ("xlm-roberta", "roberta", "camembert"):
            limit -= 2
        self.max_length = min(max_length, limit)
        self.max_query_length = min(max_query_length, self.max_length // 2)
        self.batch_size = batch_size
        self.normalize = normalize
        self.device = device
        self.backend = backend
        self.precision = precision
        self.compiled = None  # the exported graph that replaces the torch module for onnx / openvino
        if backend != "torch":
            from flagstone.models.backends import compile_model

            example = self._encode_batch([("an example query", "a passage to trace the graph with"),
                                          ("another", "short")])
            names = tuple(n for n in ("input_ids", "attention_mask", "token_type_ids") if n in example)
            if set(example) - set(names):
                raise BackendError(f"{folder}: the tokenizer gives inputs {sorted(example)}; the {backend} backend "
                                   f"exports input_ids, attention_mask and token_type_ids only")
            self.compiled = compile_model(
                lambda: _logits_graph(self.model, names), {n: example[n] for n in names}, ("logits",), backend=backend, precision=precision,
                fingerprint=self.fingerprint,
                settings={"kind": "cross-encoder", "inputs": names}, threads=torch.get_num_threads())

    def cache_key(self) -> str:
        """A key for everything that determines a pair's score (weights, lengths, dtype, backend, sigmoid); the
        pair itself is not part of it. :class:`flagstone.rerank.CachedReranker` files scores under it."""
        parts = ["cross-encoder", self.fingerprint, str(self.max_length), str(self.max_query_length),
                 str(self.model.dtype), self.backend, self.precision, str(self.normalize)]
        if (self.backend, self.precision) != ("torch", "float32"):
            from flagstone.models.backends import stored_weights

            parts.append(stored_weights(self.precision))  # a change of quantisation scheme never reuses scores
        return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:24]

    def _logits(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """(batch, labels) float32 logits from the torch module or the exported graph."""
        import torch

        if self.compiled is not None:
            return torch.from_numpy(self.compiled.run({k: v.numpy() for k, v in batch.items()})["logits"])
        autocast = torch.autocast(self.device.split(":")[0], dtype=torch.bfloat16) \
            if self.precision == "bfloat16" else contextlib.nullcontext()
        with autocast:
            return self.model(**batch).logits.float()

    def _encode_batch(self, pairs: list[tuple[str, str]]) -> dict[str, torch.Tensor]:
        batch = encode_pairs(self.tokenizer, pairs, self.max_length, self.max_query_length)
        return {k: v.to(self.device) for k, v in batch.items()}

    def score_pairs(self, pairs: Sequence[tuple[str, str]]) -> np.ndarray:
        import torch

        pairs = validate_pairs(pairs)
        out = np.zeros(len(pairs), dtype=np.float32)
        # longest first keeps padding low; results go back to input order
        order = np.argsort([-(len(q) + len(p)) for q, p in pairs], kind="stable")
        with torch.inference_mode():
            for part in _batches(len(pairs), self.batch_size):
                idx = order[part]
                logits = self._logits(self._encode_batch([pairs[i] for i in idx]))
                scores = logits[:, 0] if logits.shape[1] == 1 else logits[:, 1] - logits[:, 0]
                if self.normalize:
                    scores = torch.sigmoid(scores)
                out[idx] = scores.cpu().numpy()
        return out


def _logits_graph(model: torch.nn.Module, names: tuple[str, ...]) -> torch.nn.Module:
    """The sequence-classification model called with the inputs its tokenizer gives (``names``, in this order:
    input_ids, attention_mask and, for BERT-style models, token_type_ids), returning its logits: what an onnx /
    openvino backend exports."""
    import torch

    class LogitsGraph(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                    token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
            given = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}
            return self.model(**{name: given[name] for name in names}).logits

    return LogitsGraph()


class LLMReranker:
    """Pointwise reranking with a causal LM (INTERS style): the score is the log-odds of the "yes" word over the
    "no" word as the next token after a relevance prompt; ``normalize=True`` gives P(yes | yes or no) in 0..1,
    the softmax over the two logits at the last position.

    ``model`` is anything :func:`flagstone.models.causal_lm.load_causal_lm` accepts (default: the bundled
    SmolLM2-135M-Instruct) or an LLM reranker preset (``qwen3-reranker-0.6b``, ``Qwen/Qwen3-Reranker-4B``...).
    ``prompt_style`` picks the prompt, answer words, chat-template use and default ``normalize`` from
    :data:`LLM_PROMPT_STYLES`: ``"yes-no"`` (the default; chat models get the prompt through their chat
    template) or ``"qwen3"`` (Qwen3-Reranker's format and probability scores; the default for its presets).
    ``prompt``, ``yes``, ``no``, ``normalize`` and ``chat_template`` given here beat the style's; ``instruction``
    fills a prompt's ``{instruction}`` (default: a web-search retrieval task). Passages are cut by tokens so the
    whole prompt fits ``max_length``.

    ``mode`` picks how the model is asked (the prompts come from :mod:`flagstone.models.prompts`; ``template``
    names one of the mode's zero-shot templates): ``"pointwise"`` (the default, above; ``template`` replaces the
    style's prompt), ``"pairwise"`` (which of two passages is more relevant, A or B, read from the next-token
    logits; shown in both orders unless ``both_orders=False``; a passage's score is its number of wins) or
    ``"listwise"`` (the model writes a ranking ``[2] > [1] > ...`` of ``window`` passages at a time, sliding up
    by ``step``; a reply that does not parse raises, or with ``on_unparsed="keep"`` leaves its window as it
    was; either way it is recorded in ``listwise_log``). Pairwise and listwise scores compare the passages of
    one query within a ``score_pairs`` call, so pass a query's candidates together (``rerank`` and
    ``rerank_hits`` do). ``listwise_decoding="free"`` (the default) lets the model write any text;
    ``"constrained"`` restricts greedy decoding to the token ids of ``[i]`` and `` > [j]`` for the window's
    numbers not used yet, then the end of the turn, so the reply is always a full ranking (small models rarely
    write one unaided). A constrained reply is parsed and counted like a free one.
    """

    def __init__(
        self,
        model: str | os.PathLike = "smollm2-135m-instruct",
        *,
        prompt_style: str | None = None,
        prompt: str | None = None,
        instruction: str | None = None,
        yes: str | None = None,
        no: str | None = None,
        chat_template: bool | None = None,
        max_length: int = 512,
        batch_size: int = 8,
        normalize: bool | None = None,
        dtype: str = "float32",
        cache_dir: str | os.PathLike | None = None,
        mode: str = "pointwise",
        template: str | None = None,
        both_orders: bool = True,
        window: int = 10,
        step: int = 5,
        on_unparsed: str = "raise",
        listwise_decoding: str = "free",
    ) -> None:
        from flagstone.models.causal_lm import load_causal_lm
        from flagstone.models.prompts import get_template

        if mode not in LLM_RERANK_MODES:
            raise ValueError(f"mode must be one of {LLM_RERANK_MODES}, got {mode!r}")
        if on_unparsed not in ("raise", "keep"):
            raise ValueError(f"on_unparsed must be 'raise' or 'keep', got {on_unparsed!r}")
        if listwise_decoding not in LISTWISE_DECODINGS:
            raise ValueError(f"listwise_decoding must be one of {LISTWISE_DECODINGS}, got {listwise_decoding!r}")
        if window < 2 or not 1 <= step < window:
            raise ValueError(f"need window >= 2 and 1 <= step < window, got window={window}, step={step}")
        if template is not None and prompt is not None:
            raise ValueError("give prompt or template, not both")
        # the registry's template for this mode (pairwise and listwise always use one; pointwise when asked)
        self.template = get_template(f"{mode}_reranking", template) if mode != "pointwise" or template else None
        if self.template is not None and self.template.shots:
            raise ValueError(f"template {self.template.name!r} is few-shot; the reranker asks zero-shot")
        if self.template is not None and mode == "pointwise":
            prompt = self.template.render({"query": "{query}", "passage": "{passage}"})

        preset = find_llm_reranker_preset(str(model))
        if preset is not None:
            model = preset[0]
        style_name = prompt_style or (preset[1] if preset is not None else "yes-no")
        if style_name not in LLM_PROMPT_STYLES:
            raise ValueError(f"prompt_style must be one of {sorted(LLM_PROMPT_STYLES)}, got {style_name!r}")
        style = LLM_PROMPT_STYLES[style_name]
        prompt = style.prompt if prompt is None else prompt
        if "{query}" not in prompt or "{passage}" not in prompt:
            raise ValueError("prompt must contain {query} and {passage}")
        if "{instruction}" in prompt:  # filled now; braces in it are escaped so format() leaves them as they are
            task = QWEN3_RERANKER_INSTRUCTION if instruction is None else instruction
            prompt = prompt.replace("{instruction}", task.replace("{", "{{").replace("}", "}}"))
        elif instruction is not None:
            raise ValueError("instruction given but the prompt has no {instruction} field")
        lm = load_causal_lm(model, dtype=dtype, cache_dir=cache_dir)
        self.model, self.tokenizer, self.path = lm.model, lm.tokenizer, lm.path
        self.prompt_style = style_name
        self.prompt = prompt
        self.max_length = max_length
        self.batch_size = batch_size
        self.normalize = style.normalize if normalize is None else normalize
        self.yes_id = self._single_token(style.yes if yes is None else yes)
        self.no_id = self._single_token(style.no if no is None else no)
        has_template = getattr(self.tokenizer, "chat_template", None) is not None
        use_template = style.chat_template if chat_template is None else chat_template
        if use_template and not has_template:
            raise ValueError(f"chat_template=True but the tokenizer in {self.path} has no chat template")
        self._chat = has_template if use_template is None else use_template
        self._pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        self.mode = mode
        self.both_orders = both_orders
        self.window, self.step = window, step
        self.on_unparsed = on_unparsed
        self.listwise_decoding = listwise_decoding
        if mode == "pairwise":
            self.a_id, self.b_id = self._single_token("A"), self._single_token("B")
        self.listwise_log: list[ListwiseReply] = []  # every listwise window's reply, parsed or not

    def _single_token(self, word: str) -> int:
        ids = self.tokenizer(word, add_special_tokens=False)["input_ids"]
        if len(ids) != 1:
            raise ValueError(f"{word!r} is {len(ids)} tokens for this tokenizer; the answer words must be one token")
        return int(ids[0])

    def _encode_prompt(self, text: str) -> list[int]:
        if self._chat:
            return list(self.tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=True,
                                                           add_generation_prompt=True, return_dict=False))
        return self.tokenizer(text, add_special_tokens=True)["input_ids"]

    def _prompt_ids(self, query: str, passage: str) -> list[int]:
        """Token ids of the full pointwise prompt, the passage cut so everything fits in max_length."""
        def render(passage_text: str) -> list[int]:
            return self._encode_prompt(self.prompt.format(query=query, passage=passage_text))

        ids = render(passage)
        if len(ids) <= self.max_length:
            return ids
        passage_ids = self.tokenizer(passage, add_special_tokens=False)["input_ids"]
        budget = len(passage_ids) - (len(ids) - self.max_length)
        if budget < 1:
            raise InvalidTextError(f"the prompt and query alone take more than max_length={self.max_length} tokens")
        ids = render(self.tokenizer.decode(passage_ids[:budget]))
        return ids[: self.max_length]  # decoding and re-encoding can shift a token or two

    def _multi_passage_ids(self, query: str, fields: dict[str, str], passages: Sequence[str]) -> list[int]:
        """A pairwise or listwise prompt: every passage cut to an equal share of the tokens the prompt leaves."""
        def render(texts: Sequence[str]) -> list[int]:
            example = dict(fields, query=query)
            if self.mode == "pairwise":
                example.update(passage_a=texts[0], passage_b=texts[1])
            else:
                from flagstone.models.prompts import number_passages

                example["passages"] = number_passages(texts)
            return self._encode_prompt(self.template.render(example))

        ids = render(passages)
        if len(ids) <= self.max_length:
            return ids
        overhead = len(render([""] * len(passages)))
        share = (self.max_length - overhead) // len(passages)
        if share < 1:
            raise InvalidTextError(f"the prompt and query alone take more than max_length={self.max_length} tokens")
        cut = [self.tokenizer.decode(self.tokenizer(p, add_special_tokens=False)["input_ids"][:share]) for p in passages]
        return render(cut)[: self.max_length]

    def _next_token_logodds(self, prompts: Sequence[list[int]], first: int, second: int) -> np.ndarray:
        """log P(first) - log P(second) as the next token after each prompt, batched longest first."""
        import torch

        order = np.argsort([-len(p) for p in prompts], kind="stable")
        out = np.zeros(len(prompts), dtype=np.float32)
        with torch.inference_mode():
            for part in _batches(len(prompts), self.batch_size):
                idx = order[part]
                rows = [prompts[i] for i in idx]
                width = -(-max(len(r) for r in rows) // 32) * 32  # few distinct shapes: see encode_pairs
                input_ids = torch.full((len(rows), width), self._pad_id, dtype=torch.long)
                mask = torch.zeros((len(rows), width), dtype=torch.long)
                for r, ids in enumerate(rows):  # right padding: positions of real tokens stay 0..n-1
                    input_ids[r, : len(ids)] = torch.tensor(ids)
                    mask[r, : len(ids)] = 1
                logits = self.model(input_ids=input_ids, attention_mask=mask).logits
                last = logits[torch.arange(len(rows)), mask.sum(dim=1) - 1].float()
                log_probs = torch.log_softmax(last, dim=-1)
                out[idx] = (log_probs[:, first] - log_probs[:, second]).numpy()
        return out

    def score_pairs(self, pairs: Sequence[tuple[str, str]]) -> np.ndarray:
        """One score per (query, passage) pair. Pointwise: the yes/no log-odds (or probability). Pairwise and
        listwise compare the passages that share a query within this call: pairwise scores are wins against
        them (:func:`aggregate_pairwise`), listwise scores are ``n - rank`` in the order the model gives."""
        pairs = validate_pairs(pairs)
        if self.mode == "pointwise":
            scores = self._next_token_logodds([self._prompt_ids(q, p) for q, p in pairs], self.yes_id, self.no_id)
            if self.normalize:
                import torch

                scores = torch.sigmoid(torch.from_numpy(scores)).numpy()
            return scores
        out = np.zeros(len(pairs), dtype=np.float32)
        groups: dict[str, list[int]] = {}
        for i, (query, _) in enumerate(pairs):
            groups.setdefault(query, []).append(i)
        for query, rows in groups.items():
            passages = [pairs[i][1] for i in rows]
            scores = self.pairwise_wins(query, passages) if self.mode == "pairwise" else \
                self.listwise_scores(query, passages)
            out[rows] = scores
        return out

    def pairwise_wins(self, query: str, passages: Sequence[str]) -> np.ndarray:
        """Each passage's wins over the others (0.5 for a tie): every pair is shown once, or in both orders
        with ``both_orders`` (the preference is then the mean of the two, which cancels a bias for A or B)."""
        n = len(passages)
        pairs = [(i, j) for i in range(n) for j in range(i + 1, n)]
        shown = pairs + ([(j, i) for i, j in pairs] if self.both_orders else [])
        prompts = [self._multi_passage_ids(query, {}, [passages[i], passages[j]]) for i, j in shown]
        logodds = self._next_token_logodds(prompts, self.a_id, self.b_id) if prompts else np.zeros(0, np.float32)
        preference = logodds[: len(pairs)]
        if self.both_orders:
            preference = (preference - logodds[len(pairs):]) / 2
        return aggregate_pairwise(n, pairs, preference)

    def listwise_scores(self, query: str, passages: Sequence[str]) -> np.ndarray:
        """``n - rank`` after a sliding window (``window`` passages, moving ``step`` up from the bottom, as
        RankGPT does) asks the model to order each window. A reply that is not exactly a ranking of the
        window's numbers is recorded in ``listwise_log`` and raises :class:`ListwiseParseError`, or, with
        ``on_unparsed="keep"``, leaves that window in the order it came in."""
        import torch

        from flagstone.models.prompts import parse_permutation

        order = list(range(len(passages)))
        starts = list(range(max(0, len(order) - self.window), -1, -self.step))
        if starts and starts[-1] != 0:
            starts.append(0)
        for start in starts:
            window = order[start: start + self.window]
            if len(window) < 2:
                continue
            ids = self._multi_passage_ids(query, {}, [passages[i] for i in window])
            kwargs: dict[str, Any] = {}
            if self.listwise_decoding == "constrained":
                constraint = PermutationConstraint(self.tokenizer, len(window), len(ids),
                                                   eos_token_ids(self.model, self.tokenizer))
                budget = constraint.max_tokens
                kwargs = {"prefix_allowed_tokens_fn": constraint, "eos_token_id": sorted(constraint.eos)}
            else:
                budget = 6 * len(window) + 8  # "[10] > " is at most ~6 tokens a number
            with torch.inference_mode():
                generated = self.model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                                max_new_tokens=budget, do_sample=False, pad_token_id=self._pad_id,
                                                **kwargs)
            reply = self.tokenizer.decode(generated[0, len(ids):], skip_special_tokens=True)
            parsed = parse_permutation(reply, len(window))
            self.listwise_log.append(ListwiseReply(query, len(window), reply, parsed is not None))
            if parsed is None:
                if self.on_unparsed == "raise":
                    raise ListwiseParseError(f"the model's ranking of {len(window)} passages could not be parsed: "
                                             f"{reply[:80]!r}")
                continue
            order[start: start + self.window] = [window[k] for k in parsed]
        scores = np.zeros(len(passages), dtype=np.float32)
        scores[order] = np.arange(len(passages), 0, -1, dtype=np.float32)
        return scores

    @property
    def listwise_unparsed(self) -> int:
        """How many listwise replies so far were not a ranking (see ``listwise_log``)."""
        return sum(not r.parsed for r in self.listwise_log)


@dataclass(frozen=True)
class ListwiseReply:
    """One listwise window: the query, how many passages it showed, the model's reply and whether it parsed."""

    query: str
    n_passages: int
    reply: str
    parsed: bool


class PermutationConstraint:
    """Constrained listwise decoding: a ``prefix_allowed_tokens_fn`` for ``generate`` under which the reply can
    only be ``[i] > [j] > ...`` over ``1..n``, each number once, then an end-of-turn token.

    Each piece (``[i]`` first, `` > [i]`` after it) is tokenised once and decoding may only follow those
    token ids; no piece's text is a prefix of another's, so the tokens so far split into pieces one way.
    """

    def __init__(self, tokenizer: Any, n: int, prompt_length: int, eos: set[int]) -> None:
        if n < 1:
            raise ValueError("a ranking needs at least one passage")
        if not eos:
            raise ValueError("the model has no end-of-turn token to finish a constrained ranking with")

        def tokens(text: str) -> tuple[int, ...]:
            return tuple(tokenizer(text, add_special_tokens=False)["input_ids"])

        self.first = {i: tokens(f"[{i}]") for i in range(1, n + 1)}
        self.later = {i: tokens(f" > [{i}]") for i in range(1, n + 1)}
        self.n, self.prompt_length, self.eos = n, prompt_length, set(eos)
        # the longest reply: the longest first piece, n - 1 longest later pieces and the end token
        self.max_tokens = max(map(len, self.first.values())) + (n - 1) * max(map(len, self.later.values())) + 1

    def allowed(self, generated: Sequence[int]) -> list[int]:
        """Token ids that may follow ``generated`` (the reply's tokens so far)."""
        used: set[int] = set()
        pos = 0
        while True:
            pieces = {i: t for i, t in (self.later if used else self.first).items() if i not in used}
            if not pieces:  # a full ranking: only the end of the turn may follow
                return sorted(self.eos) if pos == len(generated) else []
            rest = tuple(generated[pos:])
            done = [i for i, t in pieces.items() if rest[: len(t)] == t]
            if done:
                used.add(done[0])
                pos += len(pieces[done[0]])
                continue
            return sorted({t[len(rest)] for t in pieces.values() if len(t) > len(rest) and t[: len(rest)] == rest})

    def __call__(self, batch_id: int, input_ids: torch.Tensor) -> list[int]:
        allowed = self.allowed(input_ids[self.prompt_length:].tolist())
        # nothing allowed can only follow tokens outside the constraint: end the reply (it is then unparsed)
        return allowed or sorted(self.eos)


class ListwiseParseError(BackendError):
    """The model's listwise reply was not a ranking of the passages it was shown."""


def aggregate_pairwise(n: int, pairs: Sequence[tuple[int, int]], preference: np.ndarray) -> np.ndarray:
    """Wins per passage from pairwise preferences: ``preference[k] > 0`` means ``pairs[k][0]`` beat
    ``pairs[k][1]``, ``< 0`` the reverse, ``0`` a tie (half a win each)."""
    if len(pairs) != len(preference):
        raise ValueError(f"{len(pairs)} pairs for {len(preference)} preferences")
    wins = np.zeros(n, dtype=np.float32)
    for (i, j), p in zip(pairs, preference):
        if p > 0:
            wins[i] += 1.0
        elif p < 0:
            wins[j] += 1.0
        else:
            wins[i] += 0.5
            wins[j] += 0.5
    return wins


class ColbertReranker:
    """Late-interaction re-scoring with an embedder's ColBERT head (BGE-M3's multi-vector output)."""

    def __init__(self, embedder: Embedder) -> None:
        if not embedder.has_colbert:
            from flagstone.errors import MissingHeadError
            from flagstone.models.embedder import COLBERT_HEAD_FILE

            raise MissingHeadError(f"model {embedder.name!r} has no ColBERT head ({COLBERT_HEAD_FILE})")
        self.embedder = embedder

    def score_pairs(self, pairs: Sequence[tuple[str, str]]) -> np.ndarray:
        from flagstone.models.scoring import colbert_pair_scores

        pairs = validate_pairs(pairs)
        unique = list(dict.fromkeys(q for q, _ in pairs))  # reranking repeats one query for every passage
        encoded = self.embedder.encode(unique, dense=False, colbert=True, is_query=True, show_progress=False).colbert
        position = {q: i for i, q in enumerate(unique)}
        queries = encoded.take([position[q] for q, _ in pairs])
        docs = self.embedder.encode([p for _, p in pairs], dense=False, colbert=True, show_progress=False)
        return colbert_pair_scores(queries, docs.colbert)

