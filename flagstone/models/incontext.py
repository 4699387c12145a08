"""In-context examples for the decoder embedders that read them (bge-en-icl).

Such a model embeds a query better when a few worked examples come before it: each one an instruction, a
query and a response (a passage that answers it), written in the model's ``example_format`` and separated by
a blank line, then the query itself in the model's query format. Documents never get examples.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Union

from flagstone.errors import InvalidExampleError

# bge-en-icl's example layout (the order of its fields: instruction, query, response); FlagEmbedding's
# ICL embedder writes examples this way and joins them with a blank line, ending with one before the query
BGE_ICL_EXAMPLE_FORMAT = "<instruct>{}\n<query>{}\n<response>{}"
EXAMPLE_SEPARATOR = "\n\n"


@dataclass(frozen=True)
class QueryExample:
    """One worked example: a query and the response (passage) it should retrieve, under ``instruction`` (None:
    the embedder's query instruction, as for the query that follows)."""

    query: str
    response: str
    instruction: str | None = None


# a QueryExample, or a dict with FlagEmbedding's keys: "query", "response" and optionally "instruct"
ExampleLike = Union[QueryExample, Mapping[str, str]]
_DICT_KEYS = ("instruct", "query", "response")


def check_example_format(example_format: str) -> None:
    """``example_format`` must have three ``{}`` fields: the instruction, the query, the response."""
    if not isinstance(example_format, str) or example_format.count("{}") != 3:
        raise InvalidExampleError("example_format needs three {} fields: the instruction, the query, then the "
                                  f"response; got {example_format!r}")


def as_examples(examples: Sequence[ExampleLike]) -> tuple[QueryExample, ...]:
    """Checked :class:`QueryExample` objects from objects or FlagEmbedding-style dicts; an empty sequence is
    allowed (no examples)."""
    if isinstance(examples, (str, bytes, Mapping)) or not isinstance(examples, Sequence):
        raise InvalidExampleError(f"examples must be a list of QueryExample or dicts, got {type(examples).__name__}")
    checked = []
    for i, example in enumerate(examples):
        if isinstance(example, Mapping):
            unknown = sorted(str(k) for k in example if k not in _DICT_KEYS)
            if unknown:
                raise InvalidExampleError(f"example #{i} has unknown key(s) {unknown}; the keys are 'instruct' "
                                          f"(optional), 'query' and 'response'")
            missing = [k for k in ("query", "response") if k not in example]
            if missing:
                raise InvalidExampleError(f"example #{i} has no {' or '.join(repr(k) for k in missing)}")
            example = QueryExample(example["query"], example["response"], example.get("instruct"))
        elif not isinstance(example, QueryExample):
            raise InvalidExampleError(f"example #{i} is {type(example).__name__}, not a QueryExample or a dict")
        for field in ("query", "response", "instruction"):
            value = getattr(example, field)
            if field == "instruction" and value is None:
                continue
            if not isinstance(value, str):
                raise InvalidExampleError(f"example #{i}: {field} is {type(value).__name__}, not a string")
            if not value.strip():
                raise InvalidExampleError(f"example #{i}: {field} is empty")
        checked.append(example)
    return tuple(checked)


def render_examples(examples: Sequence[QueryExample], example_format: str, default_instruction: str) -> str:
    """The text put before a query: each example in ``example_format``, a blank line after each; ``""`` for
    no examples. An example without its own instruction takes ``default_instruction``."""
    parts = []
    for i, example in enumerate(examples):
        instruction = example.instruction if example.instruction is not None else default_instruction
        if not instruction:
            raise InvalidExampleError(f"example #{i} has no instruction and the embedder has no query instruction "
                                      f"to lend it")
        # str.format inserts the values as they are: braces inside them are not read as fields
        parts.append(example_format.format(instruction, example.query, example.response) + EXAMPLE_SEPARATOR)
    return "".join(parts)
