"""Score a causal LM on INTERS rows, per task, the way each task's answer is judged.

- ``choice`` tasks: the choice with the highest log-likelihood as the answer (prompt encoded as in tuning);
  score = accuracy.
- ``text`` tasks: greedy generation, first line; score = token F1 against the reference (SQuAD-style).
- ``permutation`` tasks: greedy generation parsed strictly (:func:`flagstone.models.prompts.parse_permutation`);
  score = how often the reply puts the reference's first passage first (an unparsed reply counts as wrong),
  with the number of unparsed replies reported beside it.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from flagstone.evaluation.qa import token_f1
from flagstone.inters.tuning import encode_row
from flagstone.models.prompts import parse_permutation

METRICS = {"choice": "accuracy", "text": "token_f1", "permutation": "top1_accuracy"}


@dataclass(frozen=True)
class TaskScore:
    task: str
    metric: str
    score: float
    n: int
    unparsed: int  # permutation tasks: replies that were not a ranking; 0 for the others

    def as_dict(self) -> dict[str, Any]:
        return {"metric": self.metric, "score": self.score, "n": self.n, "unparsed": self.unparsed}


def _log_likelihoods(model, tokenizer, rows: Sequence[tuple[list[int], int]], batch_size: int) -> list[float]:
    """Sum of the log-probabilities of each sequence's tokens after its prompt."""
    import torch

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    out = []
    with torch.inference_mode():
        for start in range(0, len(rows), batch_size):
            batch = rows[start: start + batch_size]
            width = max(len(ids) for ids, _ in batch)
            input_ids = torch.full((len(batch), width), pad, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for r, (ids, _) in enumerate(batch):
                input_ids[r, : len(ids)] = torch.tensor(ids)
                mask[r, : len(ids)] = 1
            log_probs = torch.log_softmax(model(input_ids=input_ids, attention_mask=mask).logits.float(), dim=-1)
            for r, (ids, n_prompt) in enumerate(batch):
                targets = torch.tensor(ids[n_prompt:])
                out.append(float(log_probs[r, n_prompt - 1: len(ids) - 1].gather(1, targets[:, None]).sum()))
    return out


def _generate(model, tokenizer, prompt: str, max_new_tokens: int) -> str:
    import torch

    if getattr(tokenizer, "chat_template", None) is not None:
        head = list(tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=True,
                                                  add_generation_prompt=True, return_dict=False))
    else:
        head = tokenizer(prompt, add_special_tokens=True)["input_ids"]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    with torch.inference_mode():
        out = model.generate(torch.tensor([head]), attention_mask=torch.ones(1, len(head), dtype=torch.long),
                             max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad)
    return tokenizer.decode(out[0, len(head):], skip_special_tokens=True).strip()


def score_rows(lm, rows: Sequence[dict[str, Any]], *, max_new_tokens: int = 32,
               batch_size: int = 8) -> dict[str, TaskScore]:
    """Per-task scores of the causal LM ``lm`` (a :class:`flagstone.models.causal_lm.CausalLM`) on ``rows``."""
    by_task: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_task.setdefault(row["task"], []).append(row)
    scores = {}
    for task, task_rows in by_task.items():
        kind = task_rows[0]["answer"]
        unparsed = 0
        if kind == "choice":
            flat = [encode_row(lm.tokenizer, row["prompt"], choice) for row in task_rows for choice in row["choices"]]
            likelihood = _log_likelihoods(lm.model, lm.tokenizer, flat, batch_size)
            correct, at = 0, 0
            for row in task_rows:
                k = len(row["choices"])
                best = max(range(k), key=lambda i: likelihood[at + i])
                correct += row["choices"][best] == row["completion"]
                at += k
            value = correct / len(task_rows)
        elif kind == "text":
            value = sum(token_f1(_generate(lm.model, lm.tokenizer, row["prompt"], max_new_tokens).split("\n")[0],
                                 row["completion"]) for row in task_rows) / len(task_rows)
        else:
            hits = 0
            for row in task_rows:
                target = parse_permutation(row["completion"], row["completion"].count("["))
                n = len(target)
                reply = _generate(lm.model, lm.tokenizer, row["prompt"], 6 * n + 8)
                parsed = parse_permutation(reply, n)
                unparsed += parsed is None
                hits += parsed is not None and parsed[0] == target[0]
            value = hits / len(task_rows)
        scores[task] = TaskScore(task, METRICS[kind], value, len(task_rows), unparsed)
    return scores
