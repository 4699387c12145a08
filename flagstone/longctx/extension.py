"""Context extension by LoRA, after the Llama-3-8B-Instruct-80K recipe: raise the RoPE base, then train LoRA
adapters on synthetic long-context data (multi-document QA with the answer somewhere in a long haystack,
needle retrieval, and summaries of concatenated documents).

The recipe extended 8K to 80K (10x) while moving the base from 500K to 200M (400x); :func:`recipe_rope_theta`
applies the same power law, ``theta * factor ** (log 400 / log 10)``, to other extension factors.

The trained result is a folder :func:`flagstone.models.causal_lm.load_causal_lm` loads: either a merged model
(a plain Hugging Face folder whose config carries the raised base) or a peft adapter folder with
``base_model.json`` naming the base model and the config fields the extension changed.
"""
from __future__ import annotations

import json
import math
import os
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from flagstone._io import MODEL_LAYOUT, LegacyLayout, atomic_folder, check_output_folder
from flagstone.errors import DataError, FlagstoneError, require_extra
from flagstone.evaluation.niah import Needle, build_haystack
from flagstone.models.causal_lm import ADAPTER_BASE_FILE, CausalLM, rope_theta_of
from flagstone.training.loop import TrainingConfig, TrainingResult, train

# 8K -> 80K (10x) with the base moved 500K -> 200M (400x): theta grows as factor ** 2.602
RECIPE_THETA_EXPONENT = math.log(200e6 / 500e3) / math.log(80 / 8)
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")
TRAINING_FILE = "long_context.json"
# what an adapter save writes (peft's files, the tokenizer, base_model.json and the training record)
ADAPTER_LAYOUT = LegacyLayout("adapter_config.json", MODEL_LAYOUT.entries | {
    "adapter_config.json", "adapter_model.safetensors", ADAPTER_BASE_FILE, TRAINING_FILE, "README.md"})


def recipe_rope_theta(theta: float, factor: float) -> float:
    """The RoPE base for a context ``factor`` times longer, scaled the way the 80K recipe scaled it."""
    if factor < 1 or theta <= 0:
        raise ValueError(f"factor must be at least 1 and theta positive (got factor={factor}, theta={theta})")
    return theta * factor ** RECIPE_THETA_EXPONENT


def squeezed_rope_theta(theta: float, native_length: int, trained_length: int, head_dim: int) -> float:
    """The base under which a model trained at ``native_length`` sees, at ``trained_length``, the rotation
    angles of its slowest RoPE dimension that it saw at ``native_length``: the inverse of NTK-aware scaling.
    Used to make a short-context stand-in of a long-context model where long sequences are too costly."""
    if not 0 < trained_length <= native_length:
        raise ValueError("trained_length must be in (0, native_length]")
    return theta / (native_length / trained_length) ** (head_dim / (head_dim - 2))


def rope_overrides(config, theta: float, max_positions: int) -> dict:
    """The config fields that set the RoPE base to ``theta`` and the position limit to ``max_positions``."""
    params = getattr(config, "rope_parameters", None)
    if isinstance(params, dict):
        if params.get("rope_type", "default") != "default":
            raise FlagstoneError(f"the model already scales RoPE ({params.get('rope_type')}); only plain RoPE "
                                 "bases are raised")
        return {"rope_parameters": {**params, "rope_theta": float(theta)}, "max_position_embeddings": max_positions}
    if getattr(config, "rope_theta", None) is None:
        raise FlagstoneError(f"{type(config).__name__} has no RoPE base (rope_theta) to raise")
    return {"rope_theta": float(theta), "max_position_embeddings": max_positions}


# --- synthetic long-context data ----------------------------------------------------------------------------

@dataclass(frozen=True)
class LongContextExample:
    """One training or evaluation sample: answer ``question`` about ``context``. ``evidence`` is the character
    span of ``context`` that holds what the answer needs (the needle, the answering paragraph, or the whole
    context for a summary)."""

    kind: str  # "qa", "needle" or "summary"
    context: str
    question: str
    answer: str
    evidence: tuple[int, int]

    @property
    def depth(self) -> float:
        """Where the evidence starts, as a fraction of the context (0 = start)."""
        return self.evidence[0] / max(1, len(self.context))


_WORDS = ("amber", "falcon", "cobalt", "willow", "harbor", "granite", "lantern", "meadow", "orchid", "quartz",
          "saffron", "thistle", "velvet", "juniper", "marble", "copper", "heron", "indigo", "cedar", "ember")
_PLACES = ("the old lighthouse archive", "the northern observatory", "the river mill", "the glass museum",
           "the mountain library", "the harbour customs office", "the botanical vault", "the clock tower")


def random_needle(rng: random.Random) -> Needle:
    """A passkey fact with a random place, two random words and a random 4-digit number."""
    place = rng.choice(_PLACES)
    key = f"{rng.choice(_WORDS)} {rng.choice(_WORDS)} {rng.randrange(1000, 10000)}"
    return Needle(f"The secret passphrase for {place} is {key}.",
                  f"What is the secret passphrase for {place}?", key,
                  f"The secret passphrase for {place} is")


def _fill(texts: Sequence[str], rng: random.Random, length_tokens: int, count_tokens: Callable[[str], int],
          exclude: str = "") -> list[str]:
    """Random ``texts`` (none equal to ``exclude``) adding up to about ``length_tokens`` tokens; the last one is
    cut at a sentence boundary to fit."""
    pool = [t for t in texts if t.strip() and t != exclude]
    if not pool:
        raise DataError("no filler texts to build a haystack from")
    picked, used = [], 0
    while used < length_tokens - 8:
        text = rng.choice(pool).strip()
        n = count_tokens(text)
        if used + n + 1 > length_tokens:
            text = _prefix_fitting(text, length_tokens - used - 1, count_tokens)
            if not text:
                break
            n = count_tokens(text)
        picked.append(text)
        used += n + 1  # the blank line between texts
    return picked


def _prefix_fitting(text: str, tokens: int, count_tokens: Callable[[str], int]) -> str:
    """The longest prefix of ``text`` within ``tokens`` tokens, ending at a sentence end when there is one."""
    lo, hi = 0, len(text)
    while lo < hi:  # bisection on characters
        mid = (lo + hi + 1) // 2
        if count_tokens(text[:mid]) <= tokens:
            lo = mid
        else:
            hi = mid - 1
    cut = text.rfind(". ", 0, lo)
    return text[: cut + 1] if cut > 0 else text[:lo]


def _place(pieces: list[str], insert: str, depth: float) -> tuple[str, tuple[int, int]]:
    """Join ``pieces`` with ``insert`` placed between pieces at about ``depth``; return the text and its span."""
    at = round(depth * len(pieces))
    before = "\n\n".join(pieces[:at])
    start = len(before) + (2 if before else 0)
    text = "\n\n".join(pieces[:at] + [insert] + pieces[at:])
    return text, (start, start + len(insert))


class SyntheticLongContext:
    """Builds the three kinds of synthetic long-context samples from real texts.

    ``filler`` is the haystack (essays, abstracts, paragraphs); ``qa_records`` are HotpotQA-style records
    (question, answer, context titles and sentences); ``documents`` are (title, text) pairs whose titles serve
    as the reference summary of a concatenation. ``count_tokens`` measures lengths in the model's tokens."""

    def __init__(self, filler: Sequence[str], count_tokens: Callable[[str], int], *,
                 qa_records: Sequence[dict] = (), documents: Sequence[tuple[str, str]] = (), seed: int = 0) -> None:
        self.filler = list(filler)
        self.count_tokens = count_tokens
        self.qa_records = [r for r in qa_records if _answer_paragraph(r) is not None]
        self.documents = [(t, x) for t, x in documents if t.strip() and x.strip()]
        self.rng = random.Random(seed)

    def needle(self, length_tokens: int, depth: float) -> LongContextExample:
        needle = random_needle(self.rng)
        offset = self.rng.randrange(len(self.filler))
        texts = self.filler[offset:] + self.filler[:offset]  # a different stretch of filler per sample
        context = build_haystack(texts, length_tokens, depth, self.count_tokens, needle)
        start = context.index(needle.fact)
        return LongContextExample("needle", context, needle.question, needle.key,
                                  (start, start + len(needle.fact)))

    def qa(self, length_tokens: int, depth: float) -> LongContextExample:
        """A HotpotQA question whose answering paragraph sits at ``depth`` among its distractor paragraphs
        and filler; the other supporting paragraph (bridge questions) goes elsewhere at random."""
        if not self.qa_records:
            raise DataError("no QA records whose answer appears in a supporting paragraph")
        for _ in range(100):  # a record whose answering paragraph fits in the length
            record = self.rng.choice(self.qa_records)
            answer_paragraph = _answer_paragraph(record)
            if self.count_tokens(answer_paragraph) <= length_tokens // 2:
                break
        else:
            raise DataError(f"no QA record's answering paragraph fits in {length_tokens // 2} tokens")
        paragraphs = [p for p in _paragraphs(record) if p != answer_paragraph]
        self.rng.shuffle(paragraphs)
        room = length_tokens - self.count_tokens(answer_paragraph)
        kept = []  # the record's other paragraphs (distractors, the bridge) as far as they fit
        for paragraph in paragraphs:
            cost = self.count_tokens(paragraph) + 2
            if cost <= room:
                kept.append(paragraph)
                room -= cost
        pieces = kept + (_fill(self.filler, self.rng, room, self.count_tokens) if room > 64 else [])
        self.rng.shuffle(pieces)
        context, span = _place(pieces, answer_paragraph, depth)
        return LongContextExample("qa", context, record["question"], record["answer"], span)

    def summary(self, length_tokens: int) -> LongContextExample:
        """Documents concatenated up to ``length_tokens``; the answer lists their titles in order (a SciFact
        title states the finding of its abstract in one sentence)."""
        if not self.documents:
            raise DataError("no titled documents for summary samples")
        picked: list[tuple[str, str]] = []
        for _ in range(1000):
            title, text = self.rng.choice(self.documents)
            candidate = picked + [(title, text)]
            body = "\n\n".join(f"Document {i + 1}: {t}" for i, (_, t) in enumerate(candidate))
            titles = "\n".join(f"{i + 1}. {t}" for i, (t, _) in enumerate(candidate))
            if self.count_tokens(body) + self.count_tokens(titles) > length_tokens:
                if picked:
                    break  # documents and their summary together stay within the length
                continue  # a first document too long on its own: draw another
            picked = candidate
            if len(picked) >= 64:
                break
        if not picked:
            raise DataError(f"no document and its title fit in {length_tokens} tokens")
        context = "\n\n".join(f"Document {i + 1}: {t}" for i, (_, t) in enumerate(picked))
        answer = "\n".join(f"{i + 1}. {title}" for i, (title, _) in enumerate(picked))
        return LongContextExample("summary", context, "Summarise each document above in one line, in order.",
                                  answer, (0, len(context)))

    def mixture(self, n: int, lengths: Sequence[int], kinds: Sequence[str] = ("qa", "needle", "summary")
                ) -> list[LongContextExample]:
        """``n`` samples cycling through ``kinds``, each of a random length from ``lengths`` and a random depth."""
        samples = []
        for i in range(n):
            kind, length = kinds[i % len(kinds)], self.rng.choice(list(lengths))
            depth = self.rng.random()
            samples.append(self.summary(length) if kind == "summary" else getattr(self, kind)(length, depth))
        return samples


def _paragraphs(record: dict) -> list[str]:
    ctx = record["context"]
    return [f"{title}: {''.join(sentences).strip()}" for title, sentences in zip(ctx["title"], ctx["sentences"])]


def _answer_paragraph(record: dict) -> str | None:
    """The supporting paragraph that contains the answer string (None for yes/no or unmatched answers)."""
    answer = str(record.get("answer", "")).strip()
    if not answer or answer.lower() in ("yes", "no"):
        return None
    gold = set(record.get("supporting_facts", {}).get("title", []))
    for title, paragraph in zip(record["context"]["title"], _paragraphs(record)):
        if title in gold and re.search(re.escape(answer), paragraph, re.IGNORECASE):
            return paragraph
    return None


def load_hotpot_records(path: str | os.PathLike) -> list[dict]:
    from flagstone._io import iter_jsonl

    return [row for _, row in iter_jsonl(path)]


# --- tokenisation and loss ----------------------------------------------------------------------------------

def encode_example(example: LongContextExample, tokenizer) -> tuple[list[int], int]:
    """(token ids, index of the first answer token): a chat turn whose user message is the context and the
    question, and whose assistant reply is the answer. Without a chat template, plain text."""
    user = f"{example.context}\n\n{example.question}"
    if getattr(tokenizer, "chat_template", None):
        prompt = tokenizer.apply_chat_template([{"role": "user", "content": user}], tokenize=False,
                                               add_generation_prompt=True)
    else:
        prompt = f"{user}\nAnswer: "
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    answer_ids = tokenizer(example.answer, add_special_tokens=False)["input_ids"]
    eos = tokenizer.eos_token_id
    return prompt_ids + answer_ids + ([eos] if eos is not None else []), len(prompt_ids)


def example_loss(model, ids: Sequence[int], answer_start: int, *, answer_weight: float = 1.0):
    """Next-token loss over the whole sample (long-range language modelling) plus ``answer_weight`` times the
    loss over the answer tokens alone (the QA / retrieval / summary skill), each a mean."""
    import torch

    t = torch.tensor([list(ids)])
    logits = model(input_ids=t).logits[0, :-1].float()
    losses = torch.nn.functional.cross_entropy(logits, t[0, 1:], reduction="none")
    answer = losses[answer_start - 1:]
    return losses.mean() + answer_weight * answer.mean()


# --- training and saving ------------------------------------------------------------------------------------

@dataclass
class LongContextSettings:
    """What the extension changes and trains (the optimiser and schedule are in TrainingConfig)."""

    rope_theta: float
    max_positions: int
    lora_rank: int = 16
    lora_alpha: int = 32
    lora_targets: tuple[str, ...] = LORA_TARGETS
    answer_weight: float = 1.0


def apply_rope(lm: CausalLM, theta: float, max_positions: int) -> CausalLM:
    """Set ``lm``'s RoPE base to ``theta`` in place: the config is changed and every rotary-embedding module is
    rebuilt from it (its frequency table is computed once, at construction). Returns ``lm``."""
    config = lm.model.config
    for key, value in rope_overrides(config, theta, max_positions).items():
        setattr(config, key, value)
    rebuilt = 0
    for parent in list(lm.model.modules()):
        for name, child in list(parent.named_children()):
            if type(child).__name__.endswith("RotaryEmbedding"):
                fresh = type(child)(config=config)
                setattr(parent, name, fresh.to(next(iter(child.buffers()), fresh.inv_freq).device))
                rebuilt += 1
    if not rebuilt:
        raise FlagstoneError(f"{type(lm.model).__name__} has no rotary-embedding module to rebuild")
    return lm


def add_lora(model, settings: LongContextSettings):
    require_extra("train", ("peft",), "LoRA context extension needs")
    from peft import LoraConfig, get_peft_model

    names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    targets = [t for t in settings.lora_targets if t in names]
    if not targets:
        raise FlagstoneError(f"none of the LoRA targets {list(settings.lora_targets)} is a module of this model")
    return get_peft_model(model, LoraConfig(r=settings.lora_rank, lora_alpha=settings.lora_alpha,
                                            target_modules=targets, lora_dropout=0.0, task_type="CAUSAL_LM"))


def train_long_context(lm: CausalLM, base_spec: str, examples: Sequence[LongContextExample],
                       output: str | os.PathLike, settings: LongContextSettings, config: TrainingConfig, *,
                       merge: bool = False, overwrite: bool = False, record: dict | None = None,
                       checkpoint_dir: str | os.PathLike | None = None,
                       on_step: Callable[[int, float], None] | None = None,
                       stop: type[Exception] | None = None) -> TrainingResult:
    """Raise ``lm``'s RoPE base (in place), train LoRA adapters on ``examples`` (one sample per micro-batch) and save to
    ``output``: the adapter with ``base_model.json`` (naming ``base_spec``), or with ``merge`` the merged model.
    ``record`` is extra provenance written to ``long_context.json``. ``on_step`` may raise ``stop`` to end
    training early (a time budget); what was learnt until then is saved."""
    if not examples:
        raise DataError("no training samples")
    layout = MODEL_LAYOUT if merge else ADAPTER_LAYOUT
    check_output_folder(output, overwrite=overwrite, legacy=layout)  # before any work
    raised = apply_rope(lm, settings.rope_theta, settings.max_positions)
    model = add_lora(raised.model, settings)
    encoded = [encode_example(e, lm.tokenizer) for e in examples]
    too_long = [len(ids) for ids, _ in encoded if len(ids) > settings.max_positions]
    if too_long:
        raise DataError(f"{len(too_long)} samples exceed the {settings.max_positions} positions of the extended "
                        f"model (longest {max(too_long)} tokens)")

    def batches_for_epoch(epoch: int) -> list[tuple[list[int], int]]:
        order = list(encoded)
        random.Random(config.seed + epoch).shuffle(order)
        return order

    import time

    losses: list[float] = []

    def log_step(step: int, loss: float) -> None:
        losses.append(loss)
        if on_step is not None:
            on_step(step, loss)

    start = time.perf_counter()
    try:
        result = train(model, batches_for_epoch,
                       lambda batch: example_loss(model, batch[0], batch[1], answer_weight=settings.answer_weight),
                       config, checkpoint_dir=checkpoint_dir, on_step=log_step)
    except Exception as exc:
        if stop is None or not isinstance(exc, stop):
            raise
        model.eval()
        result = TrainingResult(steps=len(losses), losses=losses, seconds=time.perf_counter() - start)
    info = {"base_model": base_spec, "settings": {**asdict(settings), "lora_targets": list(settings.lora_targets)},
            "steps": result.steps, "samples": len(examples), "seconds": round(result.seconds, 1),
            "loss_first": result.losses[:5], "loss_last": result.losses[-5:], **(record or {})}
    save_extension(model, lm.tokenizer, output, base_spec, rope_overrides(lm.model.config, settings.rope_theta,
                                                                          settings.max_positions),
                   merge=merge, overwrite=overwrite, info=info)
    return result


def save_extension(peft_model, tokenizer, output: str | os.PathLike, base_spec: str, overrides: dict, *,
                   merge: bool, overwrite: bool, info: dict) -> Path:
    """Save a trained LoRA extension: merged into a plain model folder, or as a peft adapter folder with
    ``base_model.json`` = {"base_model": base_spec, "config": overrides}."""
    with atomic_folder(output, overwrite=overwrite, legacy=MODEL_LAYOUT if merge else ADAPTER_LAYOUT) as staging:
        if merge:
            merged = peft_model.merge_and_unload()
            merged.save_pretrained(staging)
        else:
            peft_model.save_pretrained(staging)
            (staging / ADAPTER_BASE_FILE).write_text(json.dumps({"base_model": base_spec, "config": overrides},
                                                                indent=2))
            (staging / "README.md").unlink(missing_ok=True)  # peft's model-card template says nothing here
        tokenizer.save_pretrained(staging)
        (staging / TRAINING_FILE).write_text(json.dumps({**info, "merged": merge}, indent=2))
    return Path(output)


__all__ = ["LongContextExample", "LongContextSettings", "RECIPE_THETA_EXPONENT", "SyntheticLongContext",
           "apply_rope", "encode_example", "example_loss", "load_hotpot_records", "random_needle",
           "recipe_rope_theta", "rope_overrides", "rope_theta_of", "save_extension", "squeezed_rope_theta",
           "train_long_context"]
