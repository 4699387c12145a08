"""LC-Boost: a short-context model works through a long input one window at a time.

First the model decides how to access the context: read it all in order, or search it. Then it walks the
windows (consecutive chunks up to ``window_tokens`` generator tokens) and at each one chooses an action:
``NOTE: <facts>`` keeps information (notes that outgrow ``notes_tokens`` are merged into a shorter list),
``SKIP`` reads on, ``SEARCH: <query>`` jumps to the chunks a retrieval finds, ``ANSWER: <answer>`` stops.
A reply that names no action is kept as a note. Without an ANSWER the final answer comes from the notes.
"""
from __future__ import annotations

import re
import time
from dataclasses import dataclass

from flagstone.models.generator import Generator
from flagstone.rag.base import (
    ANSWER_SYSTEM,
    Answer,
    ContextIndex,
    Recorder,
    check_question,
    clean_answer,
    fit_passages,
    prompt_budget,
    without_overlap,
)
from flagstone.rag.chunking import Chunk, in_reading_order

ACCESS_SYSTEM = "You plan how to read a long document to answer a question."
ACCESS_PROMPT = (
    "A document of {parts} parts may answer this question:\n{question}\n\n"
    "Reply with one line: READ to read every part in order (for summaries or questions about the whole "
    "document), or SEARCH: <query> to look up only the parts about a specific fact."
)
STEP_SYSTEM = (
    "You read a long document part by part to answer a question, keeping short notes. Reply with exactly one "
    "line, one of:\nNOTE: <facts from this part that help answer the question>\nSKIP\n"
    "SEARCH: <query for a fact you still need>\nANSWER: <the final answer, when the notes and this part suffice>"
)
STEP_PROMPT = "Question: {question}\n\nNotes so far:\n{notes}\n\nPart {index} of {parts}:\n{text}\n\nYour action:"
MERGE_SYSTEM = "You shorten notes without losing facts that matter for a question."
MERGE_PROMPT = "Question: {question}\n\nNotes:\n{notes}\n\nRewrite the notes as a shorter list keeping every fact that helps answer the question."
_ACTION = re.compile(r"^\s*\**\s*(NOTE|SKIP|SEARCH|ANSWER|READ)\b\**\s*[:\-]?\s*(.*)$", re.IGNORECASE)


def parse_action(text: str) -> tuple[str, str]:
    """(action, argument) from the first line that names an action; ("NONE", first line) otherwise."""
    lines = [ln for ln in text.splitlines() if ln.strip()]
    for line in lines:
        match = _ACTION.match(line)
        if match:
            return match.group(1).upper(), match.group(2).strip()
    return "NONE", lines[0].strip() if lines else ""


@dataclass
class LCBoost:
    generator: Generator
    window_tokens: int = 512
    step_tokens: int = 64
    notes_tokens: int = 256
    search_k: int = 3
    max_steps: int = 16
    max_new_tokens: int = 32
    name: str = "lc_boost"

    def _windows(self, chunks: list[Chunk]) -> list[list[Chunk]]:
        windows, remaining = [], without_overlap(chunks)
        while remaining:
            window = fit_passages(self.generator, remaining, self.window_tokens)
            windows.append(window)
            remaining = remaining[len(window):]
        return windows

    def _access(self, question: str, parts: int, recorder: Recorder) -> tuple[str, str]:
        out = recorder.generate("access", [{"role": "system", "content": ACCESS_SYSTEM},
                                           {"role": "user", "content": ACCESS_PROMPT.format(parts=parts,
                                                                                            question=question)}],
                                max_new_tokens=24)
        action, argument = parse_action(out.text)
        return ("SEARCH", argument or question) if action == "SEARCH" else ("READ", "")

    def _searched_windows(self, query: str, context: ContextIndex, recorder: Recorder, read: set[str]):
        recorder.trace.queries.append(query)
        (found,) = recorder.retrieve("search", context, [query], self.search_k + len(read))
        fresh = [c for c in found if c.id not in read][: self.search_k]
        return self._windows(in_reading_order(fresh))

    def ask(self, question: str, context: ContextIndex) -> Answer:
        question = check_question(question)
        start, recorder = time.perf_counter(), Recorder(self.generator)
        trace = recorder.trace
        all_windows = self._windows(context.chunks)
        access, query = self._access(question, len(all_windows), recorder)
        trace.notes.append(f"access: {access}" + (f" {query}" if query else ""))
        queue = self._searched_windows(query, context, recorder, set()) if access == "SEARCH" else list(all_windows)
        notes: list[str] = []
        read: set[str] = set()
        answer = None
        steps = 0
        while queue and steps < self.max_steps and answer is None:
            window = queue.pop(0)
            steps += 1
            read |= {c.id for c in window}
            trace.add_retrieved([c.id for c in window])
            text = "\n".join(c.text.strip() for c in window)
            prompt = STEP_PROMPT.format(question=question, notes="\n".join(notes) or "(none)", index=steps,
                                        parts=steps + len(queue), text=text)
            out = recorder.generate("step", [{"role": "system", "content": STEP_SYSTEM},
                                             {"role": "user", "content": prompt}], max_new_tokens=self.step_tokens)
            action, argument = parse_action(out.text)
            trace.notes.append(f"step {steps}: {action} {argument}".strip())
            if action == "ANSWER" and argument:
                answer = clean_answer(argument)
            elif action in ("NOTE", "NONE") and argument:
                notes.append(argument)
                notes = self._merge_if_long(question, notes, recorder)
            elif action == "SEARCH" and argument:
                queue = self._searched_windows(argument, context, recorder, read) + queue
        if answer is None:
            answer = self._answer_from_notes(question, notes, recorder)
        trace.notes.append("notes: " + " | ".join(notes))
        return Answer(question, answer, self.name, trace, time.perf_counter() - start)

    def _merge_if_long(self, question: str, notes: list[str], recorder: Recorder) -> list[str]:
        if self.generator.count_tokens("\n".join(notes)) <= self.notes_tokens:
            return notes
        out = recorder.generate("merge", [{"role": "system", "content": MERGE_SYSTEM},
                                          {"role": "user", "content": MERGE_PROMPT.format(question=question,
                                                                                          notes="\n".join(notes))}],
                                max_new_tokens=self.notes_tokens // 2)
        merged = [ln.strip() for ln in out.text.splitlines() if ln.strip()]
        return merged or notes[-1:]

    def _answer_from_notes(self, question: str, notes: list[str], recorder: Recorder) -> str:
        text = "\n".join(notes) or "(no notes)"
        prompt_budget(self.generator, self.max_new_tokens, ANSWER_SYSTEM, text, question)
        out = recorder.generate("answer", [{"role": "system", "content": ANSWER_SYSTEM},
                                           {"role": "user", "content": f"Notes:\n{text}\n\nQuestion: {question}\nAnswer:"}],
                                max_new_tokens=self.max_new_tokens, stop=["\n\n"])
        return clean_answer(out.text)
