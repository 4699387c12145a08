"""LC-Boost: a short-context model works through a long input one window at a time.

Every decision is chosen among fixed options, never guessed from free text (see ``Recorder.choose``: a local
model scores the options' likelihoods, a server uses guided decoding or a free reply matched to an option,
marked ``free_text``). First the model decides how to access the context: READ every part in order, or
SEARCH for the parts about one fact (it then writes the query). Then it walks the windows (consecutive
chunks up to ``window_tokens`` generator tokens) and at each one chooses how to use it:
NOTE (extract the facts that help), SUMMARISE (keep a short summary of the part), SKIP, SEARCH (jump to the
chunks a query finds) or ANSWER (stop). After NOTE, SUMMARISE, SEARCH and ANSWER the model writes the text
that goes with the action; when it writes none, the action is recorded as unparsed and not taken. Notes
that outgrow ``notes_tokens`` are merged into a shorter list. Without an ANSWER the final answer comes
from the notes. Each chosen action is in ``trace.actions``.
"""
from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from flagstone.models.generator import Generator
from flagstone.rag.base import (
    ANSWER_SYSTEM,
    Action,
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
ACCESS_OPTIONS = ("READ", "SEARCH")
STEP_SYSTEM = (
    "You read a long document part by part to answer a question, keeping short notes. Reply with exactly one "
    "line, one of:\nNOTE: <facts from this part that help answer the question>\n"
    "SUMMARISE: <a one-sentence summary of this part>\nSKIP\n"
    "SEARCH: <query for a fact you still need>\nANSWER: <the final answer, when the notes and this part suffice>"
)
STEP_OPTIONS = ("NOTE", "SUMMARISE", "SKIP", "SEARCH", "ANSWER")
STEP_PROMPT = "Question: {question}\n\nNotes so far:\n{notes}\n\nPart {index} of {parts}:\n{text}\n\nYour action:"
MERGE_SYSTEM = "You shorten notes without losing facts that matter for a question."
MERGE_PROMPT = "Question: {question}\n\nNotes:\n{notes}\n\nRewrite the notes as a shorter list keeping every fact that helps answer the question."


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

    def _act(self, name: str, messages: list[dict[str, str]], options: Sequence[str], needs_text: Sequence[str],
             recorder: Recorder, max_new_tokens: int) -> Action:
        """Choose an action; for one in ``needs_text`` the model then writes its text after ``ACTION:``. No
        option, or no text, leaves the action unparsed (recorded, not taken)."""
        action = recorder.choose(name, messages, options)
        if action.chosen in needs_text:
            prefix = f"{action.chosen}:"
            out, action.argument_source = recorder.write(
                f"{name}_text", [*messages, {"role": "assistant", "content": prefix}], max_new_tokens=max_new_tokens,
                stop=["\n"])
            action.argument, action.raw = " ".join(out.text.split()), prefix + out.text
            action.unparsed = not action.argument
        return action

    def _access(self, question: str, parts: int, recorder: Recorder) -> tuple[str, str]:
        messages = [{"role": "system", "content": ACCESS_SYSTEM},
                    {"role": "user", "content": ACCESS_PROMPT.format(parts=parts, question=question)}]
        action = self._act("access", messages, ACCESS_OPTIONS, ("SEARCH",), recorder, 24)
        if action.unparsed:  # no usable access choice: reading every part is the only access left, and says so
            recorder.policy("access", "READ", ACCESS_OPTIONS, "the access reply was unparsed: reading in order")
            return "READ", ""
        return action.chosen, action.argument

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
            messages = [{"role": "system", "content": STEP_SYSTEM}, {"role": "user", "content": prompt}]
            chosen = self._act("step", messages, STEP_OPTIONS, ("NOTE", "SUMMARISE", "SEARCH", "ANSWER"), recorder,
                               self.step_tokens)
            action, argument = chosen.chosen, chosen.argument
            trace.notes.append(f"step {steps}: " + ("UNPARSED " + chosen.raw if chosen.unparsed else
                                                     f"{action} {argument}".strip()))
            if chosen.unparsed:
                continue
            if action == "ANSWER":
                answer = clean_answer(argument)
            elif action in ("NOTE", "SUMMARISE"):
                notes.append(argument)
                notes = self._merge_if_long(question, notes, recorder)
            elif action == "SEARCH":
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
