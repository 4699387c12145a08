"""LocalGenerator.generate(on_text=...): the text reaches the callback while it is generated, cut at the stop
string exactly like the returned text (the tiny random Llama; see test_generator.py)."""
from __future__ import annotations

import pytest

from flagstone.models.generator import LocalGenerator, OpenAIChatGenerator, accepts_on_text
from tests.models.test_generator import CONTINUED


@pytest.fixture(scope="module")
def gen(tiny_causal_lm_dir):
    return LocalGenerator(str(tiny_causal_lm_dir))


@pytest.mark.parametrize("stop", [(), ("alu",), ("never-there", "zzz")], ids=["no-stop", "stop", "stops-not-hit"])
def test_on_text_pieces_join_to_the_returned_text(gen, stop):
    pieces: list[str] = []
    out = gen.generate(CONTINUED, max_new_tokens=6, stop=stop, on_text=pieces.append)
    assert "".join(pieces) == out.text == gen.generate(CONTINUED, max_new_tokens=6, stop=stop).text
    assert all(pieces)
    if not stop:
        assert len(pieces) > 1  # streamed word by word, not handed over once at the end
    if "alu" in stop:
        assert "".join(pieces) == " v" and out.stop == "alu"


def test_only_generators_with_on_text_accept_it(gen):
    assert accepts_on_text(gen)
    assert not accepts_on_text(OpenAIChatGenerator("m", base_url="http://127.0.0.1:9/v1"))
    assert not accepts_on_text(object())
