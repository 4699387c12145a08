"""Instruction templates for search tasks (INTERS-style): a registry of tasks in three groups and several
hand-written templates per task, zero-shot and few-shot.

A task names the fields an example carries (``query``, ``passage``...) and how its answer is judged:
``choice`` (one of a few fixed answers, e.g. Yes/No), ``text`` (free text) or ``permutation`` (a ranking of
numbered passages, ``[2] > [1] > [3]``). A template renders an example into a prompt: an instruction, the
demonstrations (few-shot templates only, each with its answer) and the example's fields, ending with a cue
after which the model answers. The LLM reranker (:mod:`flagstone.models.reranker`) takes its pointwise,
pairwise and listwise prompts from here, so a model tuned on these templates is asked the same way.
"""
from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

GROUPS = ("query understanding", "document understanding", "query-document relationship")
ANSWER_KINDS = ("choice", "text", "permutation")


@dataclass(frozen=True)
class Task:
    """A search task: its group, the fields of an example, and what kind of answer it wants."""

    name: str
    group: str
    fields: tuple[str, ...]
    answer: str  # one of ANSWER_KINDS
    description: str


@dataclass(frozen=True)
class Template:
    """One way of asking a task. ``instruction`` states the task (no fields in it); ``body`` shows one
    example's fields as ``{field}``; ``cue`` ends the prompt where the answer starts. ``shots`` is the number
    of demonstrations a few-shot template shows (0: zero-shot)."""

    task: str
    name: str
    instruction: str
    body: str
    cue: str
    shots: int = 0

    def render(self, example: Mapping[str, str], demos: Sequence[tuple[Mapping[str, str], str]] = ()) -> str:
        """The prompt for ``example``; ``demos`` are (example, answer) pairs, exactly ``shots`` of them."""
        if len(demos) != self.shots:
            raise ValueError(f"template {self.task}/{self.name} shows {self.shots} demonstration(s), got {len(demos)}")
        parts = [self.instruction]
        for i, (demo, answer) in enumerate(demos, 1):
            parts.append(f"Example {i}:\n{self._fill(demo)}\n{self.cue} {answer}")
        if demos:
            parts.append("Now your turn:")
        parts.append(f"{self._fill(example)}\n{self.cue}")
        return "\n\n".join(parts)

    def _fill(self, example: Mapping[str, str]) -> str:
        missing = [f for f in TASKS[self.task].fields if f not in example]
        if missing:
            raise KeyError(f"template {self.task}/{self.name} needs field(s) {missing}")
        # one pass over the body's fields, so braces inside the values are left as they are
        return _FIELD.sub(lambda m: str(example[m.group(1)]), self.body)


_FIELD = re.compile(r"\{(\w+)\}")


def _task(name: str, group: str, fields: tuple[str, ...], answer: str, description: str) -> Task:
    return Task(name, group, fields, answer, description)


QU, DU, QD = GROUPS
TASKS: dict[str, Task] = {t.name: t for t in (
    _task("query_reformulation", QU, ("query",), "text", "rewrite a query in other words, same meaning"),
    _task("query_expansion", QU, ("query",), "text", "add terms a relevant document would use"),
    _task("intent_classification", QU, ("query", "options"), "choice", "pick the user's intent from options"),
    _task("query_clarification", QU, ("query",), "choice", "decide whether a query is too vague to answer"),
    _task("query_suggestion", QU, ("query",), "text", "suggest the next search that helps answer the query"),
    _task("query_matching", QU, ("query", "other"), "choice", "decide whether two texts mean the same"),
    _task("summarization", DU, ("passage",), "text", "give a passage a title-length summary"),
    _task("fact_verification", DU, ("claim", "passage"), "choice", "decide whether a passage supports a claim"),
    _task("reading_comprehension", DU, ("question", "passage"), "text", "answer a question from a passage"),
    _task("pointwise_reranking", QD, ("query", "passage"), "choice", "judge one passage's relevance: Yes/No"),
    _task("pairwise_reranking", QD, ("query", "passage_a", "passage_b"), "choice", "pick the more relevant of two"),
    _task("listwise_reranking", QD, ("query", "passages"), "permutation", "order numbered passages by relevance"),
)}


def _t(task: str, name: str, instruction: str, body: str, cue: str, shots: int = 0) -> Template:
    return Template(task, name, instruction, body, cue, shots)


# Written for Flagstone. Each task has at least two zero-shot templates and one few-shot template.
_TEMPLATES: tuple[Template, ...] = (
    # -- query understanding --------------------------------------------------------------------------------
    _t("query_reformulation", "rewrite", "Rewrite the search query below so that it keeps its meaning but uses "
       "different wording.", "Query: {query}", "Rewritten query:"),
    _t("query_reformulation", "paraphrase", "A search engine works better when a request is phrased in more than "
       "one way. Give another phrasing of this request.", "Request: {query}", "Another phrasing:"),
    _t("query_reformulation", "rewrite-shots", "Each query is restated with the same meaning in new words.",
       "Query: {query}", "Restated:", shots=2),
    _t("query_expansion", "terms", "List words a relevant document would probably contain, to add to this search "
       "query.", "Query: {query}", "Extra terms:"),
    _t("query_expansion", "topic", "Name the topic, in a few words, that a document answering this query would be "
       "about.", "Query: {query}", "Topic:"),
    _t("query_expansion", "terms-shots", "Expand each query with the words of a document that would answer it.",
       "Query: {query}", "Expansion:", shots=1),
    _t("intent_classification", "options", "What does the user want? Choose one intent from the options and copy "
       "it exactly.", "Message: {query}\nOptions: {options}", "Intent:"),
    _t("intent_classification", "label", "Classify this banking customer's message into one of the listed "
       "intents.", "Intents: {options}\nCustomer: {query}", "Label:"),
    _t("intent_classification", "options-shots", "Each message gets the intent from its options that fits it.",
       "Message: {query}\nOptions: {options}", "Intent:", shots=2),
    _t("query_clarification", "vague", "Is this search query too vague or unfinished to answer without asking the "
       "user a clarifying question? Answer Yes or No.", "Query: {query}", "Needs clarification:"),
    _t("query_clarification", "ask", "Would you need to ask the user what they mean before searching for this? "
       "Reply Yes or No.", "User's search: {query}", "Answer:"),
    _t("query_clarification", "vague-shots", "Decide for each query whether it is too vague to search for (Yes) "
       "or clear enough (No).", "Query: {query}", "Too vague:", shots=2),
    _t("query_suggestion", "next", "Suggest the next search the user should run to get closer to answering "
       "their question.", "Question: {query}", "Suggested search:"),
    _t("query_suggestion", "entity", "To answer this question you first need to look something up. What should "
       "you look up?", "Question: {query}", "Look up:"),
    _t("query_suggestion", "next-shots", "For each question, suggest a helpful search.", "Question: {query}",
       "Suggested search:", shots=1),
    _t("query_matching", "same", "Do these two texts say the same thing? Answer Yes or No.",
       "Text 1: {query}\nText 2: {other}", "Same meaning:"),
    _t("query_matching", "paraphrase", "Is the second sentence a paraphrase of the first? Reply Yes or No.",
       "First: {query}\nSecond: {other}", "Answer:"),
    _t("query_matching", "same-shots", "Decide whether each pair of sentences has the same meaning (Yes or No).",
       "Text 1: {query}\nText 2: {other}", "Same meaning:", shots=2),
    # -- document understanding -----------------------------------------------------------------------------
    _t("summarization", "title", "Write a short title that sums up this passage.", "Passage: {passage}",
       "Title:"),
    _t("summarization", "headline", "Summarise the passage below in one line, as short as a headline.",
       "{passage}", "One-line summary:"),
    _t("summarization", "title-shots", "Each passage is given a title that sums it up.", "Passage: {passage}",
       "Title:", shots=1),
    _t("fact_verification", "support", "Does the passage support the claim? Answer Yes or No.",
       "Claim: {claim}\nPassage: {passage}", "Supported:"),
    _t("fact_verification", "true", "Read the evidence, then say whether the statement is true according to it. "
       "Reply Yes or No.", "Evidence: {passage}\nStatement: {claim}", "True:"),
    _t("fact_verification", "support-shots", "Check each claim against its passage: Yes if the passage supports "
       "it, No otherwise.", "Claim: {claim}\nPassage: {passage}", "Supported:", shots=1),
    _t("reading_comprehension", "answer", "Answer the question with a short phrase taken from the passage.",
       "Passage: {passage}\nQuestion: {question}", "Answer:"),
    _t("reading_comprehension", "question-first", "Read the question, then find its answer in the text. Reply "
       "with the answer only.", "Question: {question}\nText: {passage}", "Answer:"),
    _t("reading_comprehension", "answer-shots", "Each question is answered with a few words from its passage.",
       "Passage: {passage}\nQuestion: {question}", "Answer:", shots=1),
    # -- query-document relationship ------------------------------------------------------------------------
    _t("pointwise_reranking", "relevant", "Given a query and a passage, answer 'Yes' if the passage is relevant "
       "to the query, otherwise 'No'.", "Query: {query}\nPassage: {passage}",
       "Is the passage relevant to the query? Answer Yes or No."),
    _t("pointwise_reranking", "useful", "Would this document help someone who searched for the query? Reply Yes "
       "or No.", "Search: {query}\nDocument: {passage}", "Helpful:"),
    _t("pointwise_reranking", "relevant-shots", "Judge whether each passage is relevant to its query (Yes or No).",
       "Query: {query}\nPassage: {passage}", "Relevant:", shots=2),
    _t("pairwise_reranking", "better", "Which passage is more relevant to the query? Answer A or B.",
       "Query: {query}\nPassage A: {passage_a}\nPassage B: {passage_b}", "More relevant passage:"),
    _t("pairwise_reranking", "prefer", "Two search results are shown for a query. Reply with the letter of the "
       "one that answers it better: A or B.", "Query: {query}\n(A) {passage_a}\n(B) {passage_b}", "Better result:"),
    _t("pairwise_reranking", "better-shots", "For each query, pick the more relevant of two passages (A or B).",
       "Query: {query}\nPassage A: {passage_a}\nPassage B: {passage_b}", "More relevant passage:", shots=1),
    _t("listwise_reranking", "order", "Order the numbered passages from most to least relevant to the query. "
       "Reply with every number once, like [2] > [1] > [3], and nothing else.",
       "Query: {query}\nPassages:\n{passages}", "Ranking:"),
    _t("listwise_reranking", "rank", "Rank these search results for the query, best first. Write the ranking as "
       "the result numbers in brackets joined by >, using each number exactly once.",
       "Results:\n{passages}\nQuery: {query}", "Ranking:"),
    _t("listwise_reranking", "order-shots", "Each list of numbered passages is ordered from most to least "
       "relevant to its query.", "Query: {query}\nPassages:\n{passages}", "Ranking:", shots=1),
)

TEMPLATES: dict[str, list[Template]] = {name: [t for t in _TEMPLATES if t.task == name] for name in TASKS}


def get_template(task: str, name: str | None = None) -> Template:
    """A task's template by name (default: its first zero-shot template)."""
    if task not in TEMPLATES:
        raise ValueError(f"unknown task {task!r}; tasks: {', '.join(TASKS)}")
    for template in TEMPLATES[task]:
        if (name is None and template.shots == 0) or template.name == name:
            return template
    raise ValueError(f"task {task!r} has no template {name!r}; it has {[t.name for t in TEMPLATES[task]]}")


def number_passages(passages: Sequence[str]) -> str:
    """Passages as the listwise prompts show them: ``[1] first``, ``[2] second``... one a line."""
    return "\n".join(f"[{i}] {' '.join(p.split())}" for i, p in enumerate(passages, 1))


def format_permutation(order: Sequence[int]) -> str:
    """0-based positions, best first, as a listwise answer: ``[2] > [1] > [3]``."""
    return " > ".join(f"[{i + 1}]" for i in order)


_PERMUTATION = re.compile(r"\s*\[(\d+)\](?:\s*>\s*\[(\d+)\])*\s*")


def parse_permutation(reply: str, n: int) -> list[int] | None:
    """The 0-based order a listwise reply gives, or None when it is not exactly a ranking of ``[1]..[n]``,
    each once, joined by ``>`` (strict: nothing is guessed, a partial ranking is not completed). Text after
    the ranking's line (a model going on talking) is ignored; text before it is not."""
    line = reply.strip().split("\n", 1)[0] if reply.strip() else ""
    if not _PERMUTATION.fullmatch(line):
        return None
    numbers = [int(x) for x in re.findall(r"\[(\d+)\]", line)]
    if sorted(numbers) != list(range(1, n + 1)):
        return None
    return [x - 1 for x in numbers]
