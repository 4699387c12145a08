"""Text generators behind one small interface: chat messages in, text out.

Two backends:
- :class:`LocalGenerator` runs a Hugging Face causal LM in this process (a folder, a hub name, a ``.gguf`` file,
  or the bundled SmolLM2-135M-Instruct, converted once and cached);
- :class:`OpenAIChatGenerator` calls any OpenAI-compatible ``/v1/chat/completions`` endpoint (llama.cpp server,
  vLLM, Ollama, hosted APIs).

Both return a :class:`Generation` (text without the stop string, the stop string hit, token counts, time).
A conversation may end with an assistant message: it is treated as the start of the answer and continued,
which the RAG pipelines use to resume reasoning after a search.

The local generator can also keep the key-value cache of a prompt beginning that many prompts share
(:class:`PromptCache`, e.g. MemoRAG's notes before each question) and generate for several prompts in one
batch (:meth:`LocalGenerator.generate_many`); a served model can do neither, and callers say so.
"""
from __future__ import annotations

import hashlib
import inspect
import json
import os
import random
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from flagstone._io import atomic_write, require_file
from flagstone.errors import DataError, FlagstoneError, InvalidTextError

if TYPE_CHECKING:
    import torch

    from flagstone.models.causal_lm import CausalLM

Message = Mapping[str, str]
ROLES = ("system", "user", "assistant")


class GeneratorError(FlagstoneError):
    """A generation backend failed in a way the user can fix (unreachable endpoint, rejected key, ...)."""


@dataclass(frozen=True)
class Generation:
    text: str
    stop: str | None  # the stop string that ended generation, None when it ended otherwise
    # "stop" (a stop string or end of turn), "length" (max_new_tokens reached) or "repeat" (stop_on_repeat)
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    seconds: float
    # of prompt_tokens, how many were read from a PromptCache instead of run through the model
    cached_tokens: int = 0
    # why a PromptCache that was offered could not be used (the whole prompt was then run): "" when it was
    # used or none was offered
    cache_miss: str = ""


@dataclass
class PromptCache:
    """The key-value cache of a prompt beginning that many prompts share (MemoRAG's notes before a question).

    ``model`` names the model it is for (:attr:`LocalGenerator.model_key`: its name, dtype and a fingerprint
    of its weights) and ``ids`` are the exact tokens it covers. ``layers`` holds per layer the keys and values,
    each ``[1, kv_heads, len(ids), head_dim]``; it is None until filled: :meth:`LocalGenerator.generate` given
    an unfilled cache runs the whole prompt as usual and keeps the first ``len(ids)`` positions of the
    prompt's cache in it (no extra work), and given a filled one reads only the rest of the prompt. A cache
    is used only when the model and the prompt's first tokens match; otherwise the whole prompt is run and
    :attr:`Generation.cache_miss` says why.
    """

    model: str
    ids: list[int]
    layers: list[tuple[torch.Tensor, torch.Tensor]] | None = None

    FORMAT = "1"

    @property
    def filled(self) -> bool:
        return self.layers is not None

    def nbytes(self) -> int:
        return sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in self.layers or [])

    def save(self, path: str | os.PathLike) -> None:
        """Write a filled cache as one safetensors file (the model key and the tokens in its metadata)."""
        from safetensors.torch import save

        if self.layers is None:
            raise ValueError("an unfilled prompt cache has nothing to save")
        tensors = {}
        for i, (k, v) in enumerate(self.layers):
            tensors[f"keys.{i}"], tensors[f"values.{i}"] = k.contiguous(), v.contiguous()
        data = save(tensors, metadata={"format": self.FORMAT, "model": self.model, "ids": json.dumps(self.ids),
                                       "layers": str(len(self.layers))})
        with atomic_write(path, "wb") as f:
            f.write(data)

    @classmethod
    def load(cls, path: str | os.PathLike) -> PromptCache:
        from safetensors import SafetensorError
        from safetensors.torch import load

        file = require_file(Path(path), "saved prompt cache")
        try:
            data = file.read_bytes()
            tensors = load(data)
            header_length = int.from_bytes(data[:8], "little")
            meta = json.loads(data[8:8 + header_length]).get("__metadata__") or {}
            if meta.get("format") != cls.FORMAT:
                raise ValueError("format")
            layers = [(tensors[f"keys.{i}"], tensors[f"values.{i}"]) for i in range(int(meta["layers"]))]
            ids = [int(i) for i in json.loads(meta["ids"])]
            if not layers or any(k.shape[-2] != len(ids) or v.shape != k.shape for k, v in layers):
                raise ValueError("shapes")
            return cls(str(meta["model"]), ids, layers)
        except (SafetensorError, ValueError, KeyError, TypeError, OSError):
            raise DataError(f"{file} is not a saved prompt cache") from None

    def mismatch(self, model: str, ids: Sequence[int]) -> str:
        """Why this cache cannot serve a prompt of ``ids`` on ``model`` ("" when it can): another model, or
        tokens that are not the prompt's first tokens (at least one prompt token must be left to run)."""
        if model != self.model:
            return f"the cache was computed with model {self.model}, not {model}"
        n = len(self.ids)
        if n >= len(ids) or list(ids[:n]) != self.ids:
            return f"the cache's {n} tokens are not the start of this {len(ids)}-token prompt"
        return ""


class Generator(Protocol):
    """What the RAG pipelines need from a generator."""

    name: str
    context_window: int

    def generate(self, messages: Sequence[Message], *, max_new_tokens: int = 256, stop: Sequence[str] = (),
                 temperature: float = 0.0) -> Generation: ...

    def count_tokens(self, text: str) -> int: ...


# how a choice among fixed options was made (see Choice.source)
CHOICE_SOURCES = ("scored", "guided", "free_text")


@dataclass(frozen=True)
class Choice:
    """One of a fixed set of options, picked by a generator.

    ``source`` says how: "scored" (each option's likelihood after the prompt, the highest wins: a local
    model), "guided" (the server's constrained decoding could only emit an option), "free_text" (the
    model replied freely and the reply was matched to an option). ``option`` is None when a free reply names
    no option (or several): the caller records it as unparsed, it is never replaced by a default.
    """

    option: str | None
    source: str
    raw: str  # the reply (free text or guided), "" when scored
    scores: dict[str, float]  # log-likelihood per option when scored, else empty
    prompt_tokens: int
    completion_tokens: int
    seconds: float


def match_option(reply: str, options: Sequence[str]) -> str | None:
    """The option a free reply names: its first word (markdown and punctuation stripped, any case) is the
    option's first word, for exactly one option; else None."""
    words = reply.replace("*", " ").replace("#", " ").split()
    if not words:
        return None
    first = words[0].strip(".:,;!-\"'`()[]").lower()
    hits = [o for o in options if o.split() and o.split()[0].strip(".:,;!-\"'`()[]").lower() == first]
    return hits[0] if len(hits) == 1 else None


def choice_instruction(options: Sequence[str]) -> str:
    """What a free-text chooser is told: reply with one option."""
    return "Reply with exactly one of: " + ", ".join(o.strip() for o in options) + "."


def accepts_on_text(generator: object) -> bool:
    """Whether ``generator.generate`` takes ``on_text``, a callback that receives the text as it is generated
    (:class:`LocalGenerator` does)."""
    generate = getattr(generator, "generate", None)
    if generate is None:
        return False
    try:
        return "on_text" in inspect.signature(generate).parameters
    except (TypeError, ValueError):  # a builtin or C callable without a signature
        return False


def generate_accepts(generator: object, parameter: str, method: str = "generate") -> bool:
    """Whether ``generator.generate`` (or another ``method``) takes the keyword ``parameter``."""
    generate = getattr(generator, method, None)
    try:
        return generate is not None and parameter in inspect.signature(generate).parameters
    except (TypeError, ValueError):  # a builtin or C callable without a signature
        return False


def accepts_prompt_cache(generator: object) -> bool:
    """Whether ``generator.generate`` takes ``prompt_cache`` (a :class:`PromptCache` of the prompt's beginning;
    :class:`LocalGenerator` does, a served model does not)."""
    return generate_accepts(generator, "prompt_cache")


def validate_messages(messages: Sequence[Message]) -> list[dict[str, str]]:
    """Check roles and contents; a trailing assistant message is allowed (it is continued)."""
    if isinstance(messages, (str, Mapping)) or not messages:
        raise InvalidTextError("messages must be a non-empty list of {'role', 'content'} dicts")
    checked = []
    for i, message in enumerate(messages):
        if not isinstance(message, Mapping) or "role" not in message or "content" not in message:
            raise InvalidTextError(f"message #{i} needs 'role' and 'content'")
        role, content = message["role"], message["content"]
        if role not in ROLES:
            raise InvalidTextError(f"message #{i}: role must be one of {', '.join(ROLES)}, got {role!r}")
        if not isinstance(content, str):
            raise InvalidTextError(f"message #{i}: content is {type(content).__name__}, not a string")
        checked.append({"role": role, "content": content})
    if checked[-1]["role"] == "system":
        raise InvalidTextError("the last message must be from the user or the assistant")
    return checked


def cut_at_stop(text: str, stop: Sequence[str]) -> tuple[str, str | None]:
    """The text before the earliest stop string, and that stop string (None if none occurs)."""
    best, hit = len(text), None
    for s in stop:
        at = text.find(s)
        if at != -1 and at < best:
            best, hit = at, s
    return text[:best], hit


def _check_settings(max_new_tokens: int, temperature: float, stop: Sequence[str]) -> list[str]:
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if isinstance(stop, str):
        stop = [stop]
    stops = [s for s in stop if s]
    if len(stops) != len(list(stop)):
        raise ValueError("stop strings must be non-empty")
    return stops


class LocalGenerator:
    """A Hugging Face causal LM in this process; greedy when ``temperature`` is 0.

    ``model`` is anything :func:`flagstone.models.causal_lm.load_causal_lm` accepts, or an already loaded
    :class:`~flagstone.models.causal_lm.CausalLM`. Prompts longer than the context window lose their oldest
    tokens with a clear error instead (callers fit their prompts with :meth:`count_tokens`).
    """

    def __init__(self, model: str | os.PathLike | CausalLM = "smollm2-135m-instruct", *, dtype: str = "float32",
                 context_window: int | None = None, threads: int | None = None,
                 cache_dir: str | os.PathLike | None = None, seed: int = 0) -> None:
        from flagstone.models.causal_lm import CausalLM, load_causal_lm

        lm = model if isinstance(model, CausalLM) else load_causal_lm(model, dtype=dtype, cache_dir=cache_dir)
        self.model, self.tokenizer, self.path = lm.model, lm.tokenizer, lm.path
        self.name, self.precision = lm.name, lm.precision
        configured = int(getattr(self.model.config, "max_position_embeddings", 2048) or 2048)
        self.context_window = min(context_window, configured) if context_window else configured
        self.threads = threads
        self.seed = seed
        self._chat = getattr(self.tokenizer, "chat_template", None) is not None
        self._lock = threading.Lock()  # one generation at a time: the model is not re-entrant
        self._model_key: str | None = None
        # transformers renamed past_key_values to cache (5.x); take whichever this version's model accepts
        self._cache_arg = "cache" if "cache" in inspect.signature(self.model.forward).parameters \
            else "past_key_values"
        # a forward pass that only fills the cache needs no logits (the vocabulary projection of every position)
        self._last_logits_only = {"logits_to_keep": 1} \
            if "logits_to_keep" in inspect.signature(self.model.forward).parameters else {}

    @property
    def model_key(self) -> str:
        """Names this model for a :class:`PromptCache`: its name, dtype and a fingerprint of its config and of a
        sample of every weight tensor (two checkpoints that share a folder name do not share a key)."""
        if self._model_key is None:
            import torch

            digest = hashlib.sha256(self.model.config.to_json_string().encode())
            with torch.no_grad():
                for name, value in self.model.state_dict().items():
                    # an int8 layer keeps its weight and bias as a tuple (and its dtype) under one name
                    for tensor in value if isinstance(value, tuple) else (value,):
                        if not isinstance(tensor, torch.Tensor):
                            continue
                        flat = (tensor.int_repr() if tensor.is_quantized else tensor).detach().reshape(-1)
                        step = max(1, flat.numel() // 64)
                        digest.update(name.encode())
                        digest.update(flat[:64].float().cpu().numpy().tobytes())
                        digest.update(flat[::step][:64].float().cpu().numpy().tobytes())
            self._model_key = f"{self.name}:{self.precision}:{self.model.dtype}:{digest.hexdigest()[:16]}"
        return self._model_key

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def prompt_ids(self, messages: Sequence[Message]) -> list[int]:
        """The token ids the model sees: the chat template with a generation prompt, or the prefix continued."""
        checked = validate_messages(messages)
        prefix = ""
        if checked[-1]["role"] == "assistant":
            prefix = checked.pop()["content"]
        if self._chat:
            ids = list(self.tokenizer.apply_chat_template(checked, tokenize=True, add_generation_prompt=True,
                                                          return_dict=False))
            if prefix:
                ids += self.tokenizer(prefix, add_special_tokens=False)["input_ids"]
            return ids
        text = "\n\n".join(m["content"] for m in checked) + ("\n\n" + prefix if prefix else "\n\n")
        return self.tokenizer(text, add_special_tokens=True)["input_ids"]

    def prefix_ids(self, messages: Sequence[Message]) -> list[int]:
        """The token ids of a prompt beginning: ``messages`` as the start of later prompts, whose last message
        begins with the content of the last message here (e.g. a fixed text, then a question appended)."""
        checked = validate_messages([*messages[:-1], {**messages[-1], "content": messages[-1]["content"] + _CUT}]
                                    if messages else messages)
        if self._chat:
            text = self.tokenizer.apply_chat_template(checked, tokenize=False, add_generation_prompt=True)
            return list(self.tokenizer(text[: text.index(_CUT)], add_special_tokens=False)["input_ids"])
        text = "\n\n".join(m["content"] for m in checked)
        return list(self.tokenizer(text[: text.index(_CUT)], add_special_tokens=True)["input_ids"])

    def prompt_cache(self, messages: Sequence[Message]) -> PromptCache:
        """An unfilled :class:`PromptCache` for a prompt beginning (see :meth:`prefix_ids`): the first
        :meth:`generate` call whose prompt starts with it fills it, later calls read from it."""
        return PromptCache(self.model_key, self.prefix_ids(messages))

    def _check_window(self, ids: list[int], max_new_tokens: int) -> None:
        if len(ids) + max_new_tokens > self.context_window:
            raise InvalidTextError(
                f"prompt of {len(ids)} tokens + max_new_tokens={max_new_tokens} exceeds the "
                f"{self.context_window}-token context window of {self.name}"
            )

    def _generate_kwargs(self, ids: list[int], max_new_tokens: int, stop: list[str], temperature: float) -> dict:
        import torch

        self._check_window(ids, max_new_tokens)
        kwargs = {
            "input_ids": torch.tensor([ids]),
            "attention_mask": torch.ones(1, len(ids), dtype=torch.long),
            "max_new_tokens": max_new_tokens,
            "do_sample": temperature > 0,
            "pad_token_id": self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None
            else self.tokenizer.eos_token_id,
        }
        if temperature > 0:
            kwargs.update(temperature=temperature, top_p=1.0, top_k=0)
        else:
            kwargs.update(temperature=None, top_p=None, top_k=None)
        if stop:
            kwargs["stopping_criteria"] = new_text_stop(self.tokenizer, len(ids), stop)
        return kwargs

    def write(self, messages: Sequence[Message], *, max_new_tokens: int = 64, stop: Sequence[str] = (),
              avoid: Sequence[str] = ()) -> Generation:
        """Greedy free text that cannot be empty: a logits processor allows as the first token only tokens
        that start with a word character (after at most one space), so no reply opens with a newline, a tag
        or the end of the turn; the text then runs to a stop string, the end of the turn, or the limit.
        Used for the text an agent's action needs (a search query, a note).

        ``avoid``: replies this one must not be (compared by :func:`reply_key`: case, punctuation and spacing
        ignored). While the text so far is one of them, only tokens that add a word, with no newline and no
        character that starts a stop string, may follow, so the reply cannot end there (e.g. a search query
        already searched); it can still equal one if it runs out of tokens exactly there."""
        return self.generate(messages, max_new_tokens=max_new_tokens, stop=stop, _first_word=True, _avoid=avoid)

    def token_texts(self) -> list[str]:
        """The text of each output-vocabulary token on its own ("" past the tokenizer's vocabulary), decoded
        once and cached: the word masks below all read it."""
        if getattr(self, "_token_texts", None) is None:
            size = self.model.get_output_embeddings().out_features  # also on an int8 layer (no .weight tensor)
            tokens = self.tokenizer.convert_ids_to_tokens(list(range(min(size, len(self.tokenizer)))))
            texts = [self.tokenizer.convert_tokens_to_string([t]) if t is not None else "" for t in tokens]
            self._token_texts = texts + [""] * (size - len(texts))
        return self._token_texts

    def word_content_mask(self, stops: Sequence[str]) -> Any:
        """A vocabulary-sized mask of the tokens that add a word and cannot end a reply: text with a word
        character, no newline, none of the stop strings' first characters, and not an end-of-turn token."""
        import re

        import torch

        key = tuple(sorted({s[0] for s in stops if s}))
        masks = self.__dict__.setdefault("_word_content", {})
        if key not in masks:
            texts = self.token_texts()
            mask = torch.tensor([re.search(r"\w", t) is not None and "\n" not in t and not any(c in t for c in key)
                                 for t in texts], dtype=torch.bool)
            for i in eos_token_ids(self.model, self.tokenizer):
                if i < len(texts):
                    mask[i] = False
            masks[key] = mask
        return masks[key]

    def word_start_mask(self) -> Any:
        """A vocabulary-sized mask of the tokens whose text starts with a word character (after one space)."""
        import re

        import torch

        if getattr(self, "_word_start", None) is None:
            self._word_start = torch.tensor([re.match(r"^ ?\w", t) is not None for t in self.token_texts()],
                                            dtype=torch.bool)
        return self._word_start

    def generate(self, messages: Sequence[Message], *, max_new_tokens: int = 256, stop: Sequence[str] = (),
                 temperature: float = 0.0, on_text: Callable[[str], None] | None = None,
                 prompt_cache: PromptCache | None = None, prompt_lookup: int = 0, stop_on_repeat: int = 0,
                 _first_word: bool = False, _avoid: Sequence[str] = ()) -> Generation:
        """Generate a reply; with ``on_text``, its text is passed to ``on_text`` piece by piece while it is
        generated (cut at the stop string like the returned text), in this thread.

        With ``prompt_cache`` (from :meth:`prompt_cache`, or loaded) for this model and the prompt's first
        tokens: a filled cache is read instead of running those tokens again (the Generation's
        ``cached_tokens``), an unfilled one is filled from this prompt's run. Otherwise the whole prompt is
        run and ``cache_miss`` says why. Greedy replies are the same with and without the cache up to float
        rounding (the prompt is then run in two parts instead of one; see tests/rag/test_prompt_cache.py).

        ``prompt_lookup`` > 0 (greedy only) decodes by prompt lookup: the last tokens are looked up in the
        text so far and up to that many tokens that followed them there are checked in one forward pass, all
        those the model itself would pick kept. The reply is the greedy one (up to float rounding); replies
        that copy the prompt, like gists, come several tokens per pass.

        ``stop_on_repeat`` > 0 ends the reply (finish reason "repeat") once its last that many tokens already
        occurred in it: a small model caught in a loop stops there instead of at ``max_new_tokens``.
        """
        import torch

        stops = _check_settings(max_new_tokens, temperature, stop)
        if prompt_lookup < 0 or (prompt_lookup and temperature > 0):
            raise ValueError(f"prompt_lookup must be >= 0 and is for greedy decoding (temperature 0), got "
                             f"{prompt_lookup} at temperature {temperature}")
        ids = self.prompt_ids(messages)
        kwargs = self._generate_kwargs(ids, max_new_tokens, stops, temperature)
        if prompt_lookup:
            kwargs["prompt_lookup_num_tokens"] = prompt_lookup
        cached, miss, fill = 0, "", None
        if prompt_cache is not None:
            miss = prompt_cache.mismatch(self.model_key, ids)
            if not miss and prompt_cache.filled:
                kwargs[self._cache_arg] = _dynamic_cache(prompt_cache, self.model.config)  # a fresh copy
                cached = len(prompt_cache.ids)
            elif not miss:  # run the prompt as usual and keep its first positions
                from transformers import DynamicCache

                fill = kwargs[self._cache_arg] = DynamicCache(config=self.model.config)
        if stop_on_repeat < 0:
            raise ValueError(f"stop_on_repeat must be >= 0, got {stop_on_repeat}")
        if stop_on_repeat:
            from transformers import StoppingCriteriaList

            criteria = kwargs.get("stopping_criteria") or StoppingCriteriaList()
            criteria.append(repeat_stop(len(ids), stop_on_repeat))
            kwargs["stopping_criteria"] = criteria
        processors = []
        if _first_word:
            processors.append(first_token_mask(len(ids), self.word_start_mask()))
        avoid_keys = {reply_key(a) for a in _avoid} - {""}
        if avoid_keys:
            processors.append(avoid_replies(self.tokenizer, len(ids), avoid_keys, stops,
                                            self.word_content_mask(stops), max_new_tokens))
        if processors:
            from transformers import LogitsProcessorList

            kwargs["logits_processor"] = LogitsProcessorList(processors)
        if on_text is not None:
            kwargs["streamer"] = _callback_streamer(self.tokenizer, stops, on_text)
        start = time.perf_counter()
        with self._lock, _torch_threads(self.threads), torch.inference_mode():
            if temperature > 0:
                torch.manual_seed(self.seed)
            out = self.model.generate(**kwargs)
            if fill is not None:  # keys and values at a position depend only on the tokens up to it
                n = len(prompt_cache.ids)
                prompt_cache.layers = [(layer.keys[:, :, :n].clone(), layer.values[:, :, :n].clone())
                                       for layer in fill.layers]
        new = out[0, len(ids):].tolist()
        text, hit = cut_at_stop(self.tokenizer.decode(new, skip_special_tokens=True), stops)
        ended_on_eos = bool(new) and new[-1] in eos_token_ids(self.model, self.tokenizer)
        # the stop fires at the first repeat, so a reply that ends in one was stopped by it
        looped = bool(stop_on_repeat) and hit is None and not ended_on_eos and ends_in_repeat(new, stop_on_repeat)
        finish = "repeat" if looped else \
            "stop" if hit is not None or ended_on_eos or len(new) < max_new_tokens else "length"
        return Generation(text, hit, finish, len(ids), len(new), time.perf_counter() - start, cached, miss)

    def generate_many(self, conversations: Sequence[Sequence[Message]], *, max_new_tokens: int = 256,
                      stop: Sequence[str] = ()) -> list[Generation]:
        """Greedy replies to several prompts in one batch: each prompt is read on its own (no padding to
        read), then all replies are decoded together, each row ending at its end of turn or stop string.

        On a CPU decoding is bound by reading the weights, so one step for all rows costs little more than one
        step for one row. The replies equal :meth:`generate`'s one by one, up to float rounding (the rows'
        caches are left-padded to one length and the padding masked). Each Generation's ``seconds`` is the
        batch's wall time shared equally among its rows.
        """
        import torch
        import torch.nn.functional as F
        from transformers import DynamicCache

        stops = _check_settings(max_new_tokens, 0.0, stop)
        prompts = [self.prompt_ids(m) for m in conversations]
        for ids in prompts:
            self._check_window(ids, max_new_tokens)
        if len(prompts) <= 1 or min(len(ids) for ids in prompts) < 2:  # nothing to batch, or no prefix to cache
            return [self.generate(m, max_new_tokens=max_new_tokens, stop=stop) for m in conversations]
        width = max(len(ids) for ids in prompts)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        start = time.perf_counter()
        with self._lock, _torch_threads(self.threads), torch.inference_mode():
            rows = []
            for ids in prompts:  # each prompt but its last token, on its own: no padding to run through
                cache = DynamicCache(config=self.model.config)
                self.model(input_ids=torch.tensor([ids[:-1]]), use_cache=True, **{self._cache_arg: cache},
                           **self._last_logits_only)
                gap = width - len(ids)
                rows.append([(F.pad(layer.keys, (0, 0, gap, 0)), F.pad(layer.values, (0, 0, gap, 0)))
                             for layer in cache.layers])
            merged = [(torch.cat([r[i][0] for r in rows]), torch.cat([r[i][1] for r in rows]))
                      for i in range(len(rows[0]))]
            input_ids = torch.tensor([[pad] * (width - len(ids)) + ids for ids in prompts])
            mask = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in prompts])
            kwargs = {"input_ids": input_ids, "attention_mask": mask, "max_new_tokens": max_new_tokens,
                      "do_sample": False, "temperature": None, "top_p": None, "top_k": None, "pad_token_id": pad,
                      self._cache_arg: DynamicCache(ddp_cache_data=merged, config=self.model.config)}
            if stops:
                kwargs["stopping_criteria"] = new_text_stop(self.tokenizer, width, stops)
            out = self.model.generate(**kwargs)
        seconds = (time.perf_counter() - start) / len(prompts)
        eos = eos_token_ids(self.model, self.tokenizer)
        results = []
        for ids, row in zip(prompts, out[:, width:].tolist()):
            # a row that ended (end of turn or stop string) before the others is padded from then on
            new = row[: next((i + 1 for i, t in enumerate(row) if t in eos), len(row))]
            while new and new[-1] == pad and pad not in eos:
                new.pop()
            text, hit = cut_at_stop(self.tokenizer.decode(new, skip_special_tokens=True), stops)
            ended_on_eos = bool(new) and new[-1] in eos
            finish = "stop" if hit is not None or ended_on_eos or len(new) < max_new_tokens else "length"
            results.append(Generation(text, hit, finish, len(ids), len(new), seconds))
        return results

    def choose(self, messages: Sequence[Message], options: Sequence[str]) -> Choice:
        """The option the model finds most likely right after the prompt (sum of its tokens' log-probabilities).

        The prompt is run once; each option's tokens are then run on a copy of the prompt's key-value cache.
        Options are text that continues the prompt as is (for a chat model, the start of the assistant reply,
        or the continuation of a trailing assistant message).
        """
        import copy

        import torch

        options = check_options(options)
        ids = self.prompt_ids(messages)
        option_ids = [self.tokenizer(o, add_special_tokens=False)["input_ids"] for o in options]
        longest = max(len(o) for o in option_ids)
        if len(ids) + longest > self.context_window:
            raise InvalidTextError(f"prompt of {len(ids)} tokens + an option of {longest} exceeds the "
                                   f"{self.context_window}-token context window of {self.name}")
        cache_arg = self._cache_arg
        start = time.perf_counter()
        scores: dict[str, float] = {}
        with self._lock, _torch_threads(self.threads), torch.inference_mode():
            out = self.model(input_ids=torch.tensor([ids]), use_cache=True)
            cache = getattr(out, "cache", None) or out.past_key_values
            first = torch.log_softmax(out.logits[0, -1].float(), -1)
            for option, tokens in zip(options, option_ids):
                total = float(first[tokens[0]])
                if len(tokens) > 1:  # the forward pass extends the cache it gets: give it a copy
                    rest = self.model(input_ids=torch.tensor([tokens[:-1]]), use_cache=True,
                                      **{cache_arg: copy.deepcopy(cache)})
                    logp = torch.log_softmax(rest.logits[0].float(), -1)
                    total += float(logp[torch.arange(len(tokens) - 1), torch.tensor(tokens[1:])].sum())
                scores[option] = total
        best = max(options, key=lambda o: scores[o])  # ties: the first option listed
        return Choice(best, "scored", "", scores, len(ids), sum(len(o) for o in option_ids),
                      time.perf_counter() - start)

    def stream(self, messages: Sequence[Message], *, max_new_tokens: int = 256, stop: Sequence[str] = (),
               temperature: float = 0.0) -> Iterator[str]:
        """Yield text pieces as they are generated (stop strings are not yielded)."""
        import torch
        from transformers import TextIteratorStreamer

        stops = _check_settings(max_new_tokens, temperature, stop)
        ids = self.prompt_ids(messages)
        kwargs = self._generate_kwargs(ids, max_new_tokens, stops, temperature)
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        errors: list[BaseException] = []

        def run() -> None:
            try:
                with self._lock, _torch_threads(self.threads), torch.inference_mode():
                    if temperature > 0:
                        torch.manual_seed(self.seed)
                    self.model.generate(**kwargs, streamer=streamer)
            except BaseException as exc:  # noqa: BLE001 -- re-raised in the consuming thread below
                errors.append(exc)
                streamer.end()

        worker = threading.Thread(target=run, daemon=True)
        worker.start()
        yield from _stream_until_stop(streamer, stops)
        worker.join()
        if errors:
            raise errors[0]


# marks where a prompt beginning ends when the chat template is rendered around it (a private-use character)
_CUT = "\ue000"


def _dynamic_cache(prompt_cache: PromptCache, config):
    """A transformers cache holding a copy of ``prompt_cache``'s keys and values (generation extends it)."""
    from transformers import DynamicCache

    return DynamicCache(ddp_cache_data=[(k.clone(), v.clone()) for k, v in prompt_cache.layers], config=config)


def first_token_mask(prompt_length: int, allowed: Any) -> Any:
    """Only ``allowed`` tokens at the first generated position; any token after it."""
    from transformers import LogitsProcessor

    class FirstTokenMask(LogitsProcessor):
        def __call__(self, input_ids, scores):
            if input_ids.shape[1] == prompt_length:
                scores = scores.masked_fill(~allowed[: scores.shape[-1]].to(scores.device), float("-inf"))
            return scores

    return FirstTokenMask()


def reply_key(text: str) -> str:
    """A reply's words, lower-cased and single-spaced: two replies with the same key say the same thing up to
    case, punctuation and spacing."""
    import re

    return " ".join(re.findall(r"\w+", text.lower()))


def avoid_replies(tokenizer: Any, prompt_length: int, keys: set[str], stops: Sequence[str], continuing: Any,
                  max_new_tokens: int, candidates: int = 64) -> Any:
    """While a row's text so far (cut at a stop string) has one of ``keys`` (:func:`reply_key`), only the
    ``continuing`` tokens may follow: the reply cannot end as an avoided one. At the last allowed token, where
    the limit itself ends the reply, the ``candidates`` likeliest tokens that would make it an avoided one are
    banned too (greedy decoding picks among them)."""
    import torch
    from transformers import LogitsProcessor

    class AvoidReplies(LogitsProcessor):
        def __call__(self, input_ids, scores):
            new = input_ids[:, prompt_length:]
            texts = tokenizer.batch_decode(new, skip_special_tokens=True)
            last_step = new.shape[1] == max_new_tokens - 1
            for row, text in enumerate(texts):
                if reply_key(cut_at_stop(text, stops)[0]) in keys:
                    scores[row] = scores[row].masked_fill(~continuing[: scores.shape[-1]].to(scores.device),
                                                          float("-inf"))
                if last_step:
                    top = torch.topk(scores[row], min(candidates, scores.shape[-1])).indices.tolist()
                    ends = tokenizer.batch_decode([new[row].tolist() + [t] for t in top], skip_special_tokens=True)
                    banned = [t for t, end in zip(top, ends) if reply_key(cut_at_stop(end, stops)[0]) in keys]
                    scores[row, banned] = float("-inf")
            return scores

    return AvoidReplies()


def check_options(options: Sequence[str]) -> list[str]:
    if isinstance(options, str) or len(options) < 2:
        raise ValueError("a choice needs a list of at least two options")
    options = list(options)
    if any(not isinstance(o, str) or not o.strip() for o in options) or len(set(options)) != len(options):
        raise ValueError(f"options must be distinct non-empty strings, got {options!r}")
    return options


# what OpenAIChatGenerator.write asks a guided server for: a word character first, then anything but a newline
WRITE_REGEX = r"\w[^\n]*"
WRITE_GBNF = "root ::= [0-9A-Za-z] [^\\n]*"


def gbnf_choice(options: Sequence[str]) -> str:
    """A llama.cpp GBNF grammar whose only sentences are the options."""
    return "root ::= " + " | ".join(json.dumps(o) for o in options)


def new_text_stop(tokenizer: Any, prompt_length: int, stops: Sequence[str]) -> Any:
    """Stop when the generated text (not the prompt: transformers' own ``stop_strings`` also match across the
    prompt's end) contains a stop string."""
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList

    class NewTextStop(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs) -> torch.Tensor:
            texts = tokenizer.batch_decode(input_ids[:, prompt_length:], skip_special_tokens=True)
            return torch.tensor([cut_at_stop(t, stops)[1] is not None for t in texts], device=input_ids.device)

    return StoppingCriteriaList([NewTextStop()])


def ends_in_repeat(tokens: Sequence[int], span: int) -> bool:
    """Whether the last ``span`` of ``tokens`` already occurred, in that order, earlier in them."""
    tokens = list(tokens)
    tail = tokens[-span:]
    return len(tokens) >= 2 * span and any(tokens[i:i + span] == tail for i in range(len(tokens) - span))


def first_repeat(tokens: Sequence[int], span: int) -> int | None:
    """The length at which ``tokens`` first end in a repeat of ``span`` tokens (a reply caught in a loop), or
    None."""
    tokens = list(tokens)
    return next((end for end in range(2 * span, len(tokens) + 1) if ends_in_repeat(tokens[:end], span)), None)


def repeat_stop(prompt_length: int, span: int) -> Any:
    """Stop once the generated tokens end with ``span`` tokens they already contain earlier: a greedy reply
    that repeats itself that much stays in its loop."""
    import torch
    from transformers import StoppingCriteria

    class RepeatStop(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs) -> torch.Tensor:
            done = [ends_in_repeat(row, span) for row in input_ids[:, prompt_length:].tolist()]
            return torch.tensor(done, device=input_ids.device)

    return RepeatStop()


class _StopCutter:
    """Pass text pieces through, holding back just enough to cut at a stop string spanning pieces."""

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = list(stops)
        self.hold = max((len(s) for s in self.stops), default=1) - 1
        self.buffer = ""
        self.stopped = False

    def feed(self, piece: str) -> str:
        """The text that can be released now (empty once a stop string was seen)."""
        if self.stopped:
            return ""
        self.buffer += piece
        text, hit = cut_at_stop(self.buffer, self.stops)
        if hit is not None:
            self.stopped, self.buffer = True, ""
            return text
        if len(self.buffer) > self.hold:
            cut = len(self.buffer) - self.hold
            text, self.buffer = self.buffer[:cut], self.buffer[cut:]
            return text
        return ""

    def flush(self) -> str:
        """The held-back rest, at the end of the text."""
        text, self.buffer = self.buffer, ""
        return text


def _stream_until_stop(pieces: Iterator[str], stops: Sequence[str]) -> Iterator[str]:
    """Pass text pieces through, holding back just enough to cut at a stop string spanning pieces."""
    cutter = _StopCutter(stops)
    for piece in pieces:
        text = cutter.feed(piece)
        if text:
            yield text
        if cutter.stopped:
            for _ in pieces:  # drain so the producer can finish
                pass
            return
    rest = cutter.flush()
    if rest:
        yield rest


def _callback_streamer(tokenizer, stops: Sequence[str], on_text: Callable[[str], None]):
    """A transformers streamer that hands the new text to ``on_text`` as ``generate`` produces it, cut at the
    first stop string (generation itself stops there through the stopping criteria)."""
    from transformers import TextStreamer

    cutter = _StopCutter(stops)

    class CallbackStreamer(TextStreamer):
        def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
            released = cutter.feed(text)
            if stream_end:
                released += cutter.flush()
            if released:
                on_text(released)

    return CallbackStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)


def eos_token_ids(model: Any, tokenizer: Any) -> set[int]:
    """Every token id that ends a reply: the generation config's end ids (one or a list) and the tokenizer's."""
    ids = model.generation_config.eos_token_id if model.generation_config is not None else None
    ids = ids if isinstance(ids, list) else [ids]
    return {i for i in ids + [tokenizer.eos_token_id] if i is not None}


class _torch_threads:
    """Run a block with a given number of torch threads (None: leave as is)."""

    def __init__(self, threads: int | None) -> None:
        self.threads = threads
        self.saved = None

    def __enter__(self) -> None:
        if self.threads:
            import torch

            self.saved = torch.get_num_threads()
            torch.set_num_threads(self.threads)

    def __exit__(self, *exc) -> None:
        if self.saved is not None:
            import torch

            torch.set_num_threads(self.saved)


class OpenAIChatGenerator:
    """Any OpenAI-compatible chat completions endpoint.

    ``base_url`` is the API root (``http://localhost:8080/v1``); the key comes from ``api_key`` or the
    environment variable named by ``api_key_env`` (default ``OPENAI_API_KEY``; none is needed for local
    servers). Connection errors, timeouts, 429 and 5xx answers are retried ``retries`` times with
    exponential backoff and jitter; other 4xx answers fail at once with the server's message.
    A trailing assistant message is sent as is: llama.cpp, vLLM (``continue_final_message``) and Ollama
    continue it.

    ``guided`` says how :meth:`choose` constrains a choice among fixed options: "vllm" sends
    ``guided_choice``, "llama.cpp" sends a GBNF ``grammar``; None (the default, for servers that support
    neither) lets the model reply freely and matches the reply to an option, and the choice says so
    (``source="free_text"``).
    """

    GUIDED = ("vllm", "llama.cpp")

    def __init__(self, model: str, *, base_url: str = "http://localhost:8080/v1", api_key: str | None = None,
                 api_key_env: str = "OPENAI_API_KEY", timeout: float = 60.0, retries: int = 3,
                 backoff: float = 1.0, context_window: int = 8192,
                 extra_body: Mapping[str, object] | None = None, guided: str | None = None) -> None:
        if guided is not None and guided not in self.GUIDED:
            raise ValueError(f"guided must be one of {', '.join(self.GUIDED)} or None, got {guided!r}")
        self.guided = guided
        if not model:
            raise ValueError("model must name the served model")
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must start with http:// or https://, got {base_url!r}")
        if retries < 0 or timeout <= 0:
            raise ValueError("retries must be >= 0 and timeout > 0")
        self.name = model
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key if api_key is not None else os.environ.get(api_key_env)
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.context_window = context_window
        self.extra_body = dict(extra_body or {})

    def count_tokens(self, text: str) -> int:
        """An estimate (the served model's tokenizer is not available here): about 4 characters a token."""
        return max(1, (len(text) + 3) // 4)

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        return headers

    def _body(self, messages: Sequence[Message], max_new_tokens: int, stop: list[str], temperature: float,
              stream: bool) -> dict:
        body = {"model": self.name, "messages": validate_messages(messages), "max_tokens": max_new_tokens,
                "temperature": temperature, "stream": stream}
        if stop:
            body["stop"] = stop[:4]  # the OpenAI API accepts at most four
        body.update(self.extra_body)
        return body

    def _post(self, body: dict, *, stream: bool):
        """POST with retries; returns the open response (the caller closes it)."""
        import httpx

        url = f"{self.base_url}/chat/completions"
        last = ""
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1) * (1 + random.random() / 2))
            client = httpx.Client(timeout=self.timeout)
            try:
                request = client.build_request("POST", url, json=body, headers=self._headers())
                response = client.send(request, stream=stream)
            except httpx.TransportError as exc:  # refused, reset, DNS, timeouts
                client.close()
                last = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                continue
            if response.status_code == 429 or response.status_code >= 500:
                last = f"HTTP {response.status_code}: {_error_text(response)}"
                response.close()
                client.close()
                continue
            if response.status_code >= 400:
                message = _error_text(response)
                response.close()
                client.close()
                raise GeneratorError(f"{url} rejected the request (HTTP {response.status_code}): {message}")
            response.extensions["flagstone_client"] = client
            return response
        raise GeneratorError(f"{url} failed after {self.retries + 1} attempts: {last}")

    def generate(self, messages: Sequence[Message], *, max_new_tokens: int = 256, stop: Sequence[str] = (),
                 temperature: float = 0.0) -> Generation:
        stops = _check_settings(max_new_tokens, temperature, stop)
        start = time.perf_counter()
        return self._completion(self._body(messages, max_new_tokens, stops, temperature, False), stops, start,
                                messages)

    def _completion(self, body: dict, stops: list[str], start: float, messages: Sequence[Message]) -> Generation:
        response = self._post(body, stream=False)
        try:
            payload = response.json()
        except ValueError:
            raise GeneratorError(f"{self.base_url} answered with something that is not JSON") from None
        finally:
            response.close()
            response.extensions["flagstone_client"].close()
        try:
            choice = payload["choices"][0]
            raw = choice["message"].get("content") or ""
        except (KeyError, IndexError, TypeError, AttributeError):
            raise GeneratorError(f"{self.base_url} answered without choices[0].message.content") from None
        # servers differ in whether they report which stop string matched; cut locally as well
        text, hit = cut_at_stop(raw, stops)
        if hit is None and choice.get("finish_reason") == "stop" and isinstance(choice.get("stop"), str):
            hit = choice["stop"] if choice["stop"] in stops else None
        usage = payload.get("usage") or {}
        prompt_tokens = int(usage["prompt_tokens"]) if usage.get("prompt_tokens") is not None else \
            sum(self.count_tokens(m["content"]) for m in messages)
        completion_tokens = int(usage["completion_tokens"]) if usage.get("completion_tokens") is not None else \
            self.count_tokens(raw)
        finish = "length" if choice.get("finish_reason") == "length" else "stop"
        return Generation(text, hit, finish, prompt_tokens, completion_tokens, time.perf_counter() - start)

    def choose(self, messages: Sequence[Message], options: Sequence[str]) -> Choice:
        """One of ``options``: constrained by the server when ``guided`` is set, else matched from a free reply
        (None when the reply names no option: the caller records it as unparsed)."""
        options = check_options(options)
        max_tokens = max(self.count_tokens(o) for o in options) + 8
        body = self._body(messages, max_tokens, [], 0.0, False)
        if self.guided == "vllm":
            body["guided_choice"] = [o.strip() for o in options]
        elif self.guided == "llama.cpp":
            body["grammar"] = gbnf_choice([o.strip() for o in options])
        out = self._completion(body, [], time.perf_counter(), messages)
        if self.guided is not None:  # the server could only write an option; anything else is unparsed
            option = next((o for o in options if o.strip() == out.text.strip()), None)
            source = "guided"
        else:
            option, source = match_option(out.text, options), "free_text"
        return Choice(option, source, out.text, {}, out.prompt_tokens, out.completion_tokens, out.seconds)

    def write(self, messages: Sequence[Message], *, max_new_tokens: int = 64, stop: Sequence[str] = ()) -> Generation:
        """Greedy text that starts with a word character and holds no newline, constrained by the server when
        ``guided`` is set (vLLM ``guided_regex``, llama.cpp ``grammar``); without it, plain free text (which
        may come back empty: the caller records that as unparsed)."""
        stops = _check_settings(max_new_tokens, 0.0, stop)
        body = self._body(messages, max_new_tokens, stops, 0.0, False)
        if self.guided == "vllm":
            body["guided_regex"] = WRITE_REGEX
        elif self.guided == "llama.cpp":
            body["grammar"] = WRITE_GBNF
        return self._completion(body, stops, time.perf_counter(), messages)

    def stream(self, messages: Sequence[Message], *, max_new_tokens: int = 256, stop: Sequence[str] = (),
               temperature: float = 0.0) -> Iterator[str]:
        """Yield text pieces from the server's server-sent events."""
        stops = _check_settings(max_new_tokens, temperature, stop)
        import httpx

        response = self._post(self._body(messages, max_new_tokens, stops, temperature, True), stream=True)
        try:
            yield from _stream_until_stop(_sse_pieces(response), stops)
        except httpx.TransportError as exc:  # a stalled or dropped stream
            raise GeneratorError(f"{self.base_url}: the stream broke off ({type(exc).__name__})") from None
        finally:
            response.close()
            response.extensions["flagstone_client"].close()


def _sse_pieces(response) -> Iterator[str]:
    for line in response.iter_lines():
        if not line.startswith("data:"):
            continue
        data = line[5:].strip()
        if data == "[DONE]":
            return
        try:
            delta = json.loads(data)["choices"][0].get("delta") or {}
        except (ValueError, KeyError, IndexError, TypeError):
            raise GeneratorError(f"malformed stream event from the server: {data[:200]!r}") from None
        if delta.get("content"):
            yield delta["content"]


def _error_text(response) -> str:
    try:
        response.read()
        payload = response.json()
        error = payload.get("error", payload)
        message = error.get("message") if isinstance(error, dict) else error
        return str(message)[:300]
    except Exception:  # noqa: BLE001 -- any body at all is better than none in the error message
        return response.text[:300] if hasattr(response, "text") else ""


def load_generator(spec: str = "smollm2-135m-instruct", *, base_url: str | None = None,
                   dtype: str = "float32", guided: str | None = None) -> Generator:
    """A generator from a CLI-style spec: a local model name/folder/.gguf, or a served model with ``base_url``
    (``guided``: the server's constrained decoding for choices, see :class:`OpenAIChatGenerator`)."""
    if guided is not None and not base_url:
        raise ValueError("guided decoding is a server option: it needs base_url")
    if base_url:
        return OpenAIChatGenerator(spec, base_url=base_url, guided=guided)
    return LocalGenerator(spec, dtype=dtype)
