"""Tests for flagstone.models.generator: the local HF backend on a tiny random Llama, the stop-string helpers,
and the OpenAI-compatible backend against a real HTTP server on 127.0.0.1 (standard library only)."""
from __future__ import annotations

import json
import random
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from flagstone.errors import InvalidTextError
from flagstone.models.generator import (
    Generation,
    GeneratorError,
    LocalGenerator,
    OpenAIChatGenerator,
    _stream_until_stop,
    cut_at_stop,
    first_repeat,
    validate_messages,
)

QUESTION = [{"role": "user", "content": "Question?"}]
# the tiny random model greedily repeats the last prompt token, so this prefix yields " value value value ..."
PREFIX = "Return the value"
CONTINUED = [*QUESTION, {"role": "assistant", "content": PREFIX}]
SYSTEM_CONTINUED = [{"role": "system", "content": "Be brief."}, *CONTINUED]

BAD_MESSAGES = [
    pytest.param("Question?", id="bare-string"),
    pytest.param([], id="empty-list"),
    pytest.param({"role": "user", "content": "Question?"}, id="bare-dict"),
    pytest.param([{"role": "tool", "content": "x"}], id="unknown-role"),
    pytest.param([{"role": "user", "content": 42}], id="non-string-content"),
    pytest.param([{"role": "user"}], id="missing-content"),
    pytest.param(["Question?"], id="string-item"),
    pytest.param([*QUESTION, {"role": "system", "content": "Be brief."}], id="last-is-system"),
]


# ----------------------------------------------------------------------------------------------------------------
# LocalGenerator on the tiny causal LM
# ----------------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def gen(tiny_causal_lm_dir):
    return LocalGenerator(str(tiny_causal_lm_dir))


@pytest.fixture(scope="module")
def plain_gen(tiny_causal_lm_dir):
    """The same model with the chat template removed: the plain-text prompt path."""
    from flagstone.models.causal_lm import load_causal_lm

    lm = load_causal_lm(tiny_causal_lm_dir)
    lm.tokenizer.chat_template = None
    return LocalGenerator(lm)


def direct_generate(gen: LocalGenerator, ids: list[int], max_new_tokens: int, **kwargs) -> list[int]:
    """The new token ids from calling transformers' generate directly (greedy unless kwargs say otherwise)."""
    import torch

    kwargs.setdefault("do_sample", False)
    with torch.inference_mode():
        out = gen.model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                 max_new_tokens=max_new_tokens, pad_token_id=gen.tokenizer.pad_token_id, **kwargs)
    return out[0, len(ids):].tolist()


def test_tiny_tokenizer_has_a_chat_template_and_prompt_ids_apply_it(gen):
    assert gen._chat
    assert gen.context_window == 256  # max_position_embeddings of the tiny config
    ids = gen.prompt_ids([{"role": "system", "content": "Be brief."}, *QUESTION])
    assert gen.tokenizer.decode(ids) == ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nQuestion?"
                                         "<|im_end|>\n<|im_start|>assistant\n")
    assert ids == list(gen.tokenizer.apply_chat_template(
        [{"role": "system", "content": "Be brief."}, *QUESTION], tokenize=True, add_generation_prompt=True,
        return_dict=False))


@pytest.mark.parametrize("messages", [QUESTION, SYSTEM_CONTINUED], ids=["user", "system-user-prefix"])
def test_greedy_generate_equals_model_generate(gen, messages):
    ids = gen.prompt_ids(messages)
    new = direct_generate(gen, ids, 8)
    out = gen.generate(messages, max_new_tokens=8)
    assert isinstance(out, Generation)
    assert out.text == gen.tokenizer.decode(new, skip_special_tokens=True)
    assert out.text  # not an empty answer: the comparison means something
    assert out.prompt_tokens == len(ids)
    assert out.completion_tokens == len(new) == 8
    assert out.stop is None
    assert out.seconds > 0


def test_finish_reason_is_length_when_max_new_tokens_is_reached(gen):
    out = gen.generate(CONTINUED, max_new_tokens=5)
    assert out.text == " value" * 5
    assert (out.finish_reason, out.stop, out.completion_tokens) == ("length", None, 5)


def test_trailing_assistant_message_is_continued(gen):
    prefix_ids = gen.tokenizer(PREFIX, add_special_tokens=False)["input_ids"]
    ids = gen.prompt_ids(CONTINUED)
    assert ids[-len(prefix_ids):] == prefix_ids
    assert ids == gen.prompt_ids(QUESTION) + prefix_ids  # the open assistant turn, then the prefix
    assert gen.tokenizer.decode(ids).endswith("<|im_start|>assistant\nReturn the value")
    assert "<|im_end|>" not in gen.tokenizer.decode(ids[-len(prefix_ids) - 3:])  # the turn is not closed
    assert gen.generate(CONTINUED, max_new_tokens=3).text == " value value value"


def test_stop_string_cuts_the_greedy_text(gen):
    full = gen.generate(CONTINUED, max_new_tokens=6)
    assert "alu" in full.text and full.finish_reason == "length"
    out = gen.generate(CONTINUED, max_new_tokens=6, stop=["alu"])
    assert out.text == full.text[:full.text.find("alu")] == " v"
    assert (out.stop, out.finish_reason) == ("alu", "stop")
    assert out.completion_tokens == 1  # generation stopped at the token that completed the stop string
    # a single string is accepted as one stop string
    assert gen.generate(CONTINUED, max_new_tokens=6, stop="alu").text == " v"


def sampled_stop(text: str) -> str:
    """A 5-character ASCII stop string from the middle of a sampled text that does not occur earlier."""
    for at in range(3, len(text) - 5):
        candidate = text[at:at + 5]
        if candidate.isascii() and candidate.strip() == candidate and "\n" not in candidate \
                and text.find(candidate) == at:
            return candidate
    raise AssertionError(f"no usable stop string in {text!r}")


def test_stop_string_spanning_tokens_cuts_a_sampled_answer(gen):
    # greedy output of the random model is one token repeated; a seeded sample gives varied text to cut mid-way
    full = gen.generate(QUESTION, max_new_tokens=16, temperature=1.0)
    assert full.finish_reason == "length" and full.completion_tokens == 16
    stop = sampled_stop(full.text)
    at = full.text.find(stop)
    out = gen.generate(QUESTION, max_new_tokens=16, temperature=1.0, stop=["never-there", stop])
    assert out.text == full.text[:at]
    assert (out.stop, out.finish_reason) == (stop, "stop")
    assert 1 <= out.completion_tokens < 16
    # of two stop strings the earliest in the text wins, whatever the order they are given in
    later = full.text[at + 2:at + 5]
    out = gen.generate(QUESTION, max_new_tokens=16, temperature=1.0, stop=[later, stop])
    assert (out.text, out.stop) == (full.text[:at], stop)


def test_sampling_is_seeded_and_equals_model_generate(gen):
    import torch

    a = gen.generate(QUESTION, max_new_tokens=10, temperature=1.0)
    b = gen.generate(QUESTION, max_new_tokens=10, temperature=1.0)
    assert a.text == b.text
    assert a.text != gen.generate(QUESTION, max_new_tokens=10).text  # greedy gives newlines only
    torch.manual_seed(gen.seed)
    new = direct_generate(gen, gen.prompt_ids(QUESTION), 10, do_sample=True, temperature=1.0, top_p=1.0, top_k=0)
    assert a.text == gen.tokenizer.decode(new, skip_special_tokens=True)


@pytest.mark.parametrize("stop", [(), ("alu",), ("never-there", "zzz")], ids=["no-stop", "stop", "stops-not-hit"])
def test_stream_pieces_join_to_the_generated_text(gen, stop):
    expected = gen.generate(CONTINUED, max_new_tokens=6, stop=stop).text
    pieces = list(gen.stream(CONTINUED, max_new_tokens=6, stop=stop))
    assert "".join(pieces) == expected
    assert all(isinstance(p, str) and p for p in pieces)
    if not stop:
        assert pieces == [" value"] * 6  # one piece a token: nothing is held back without stop strings


def test_stream_stops_at_stop_string(gen):
    pieces = list(gen.stream(CONTINUED, max_new_tokens=6, stop=["alu"]))
    assert "".join(pieces) == " v"


def test_plain_prompt_path_without_chat_template(plain_gen, gen):
    assert not plain_gen._chat
    ids = plain_gen.prompt_ids([{"role": "system", "content": "Be brief."}, *QUESTION])
    assert plain_gen.tokenizer.decode(ids) == "Be brief.\n\nQuestion?\n\n"
    continued = plain_gen.prompt_ids(SYSTEM_CONTINUED)
    assert plain_gen.tokenizer.decode(continued) == "Be brief.\n\nQuestion?\n\nReturn the value"
    prefix_ids = plain_gen.tokenizer(PREFIX, add_special_tokens=False)["input_ids"]
    assert continued[-len(prefix_ids):] == prefix_ids
    assert continued != gen.prompt_ids(SYSTEM_CONTINUED)  # the chat template really is not used
    new = direct_generate(plain_gen, continued, 6)
    out = plain_gen.generate(SYSTEM_CONTINUED, max_new_tokens=6)
    assert out.text == plain_gen.tokenizer.decode(new, skip_special_tokens=True) == " value" * 6
    assert (out.prompt_tokens, out.completion_tokens, out.finish_reason) == (len(continued), 6, "length")
    assert "".join(plain_gen.stream(SYSTEM_CONTINUED, max_new_tokens=6)) == out.text


def test_first_repeat_finds_where_a_reply_starts_repeating_itself():
    assert first_repeat([1, 2, 3, 4, 5, 6], 2) is None
    assert first_repeat([7, 1, 2, 3, 1, 2, 3, 1, 2], 2) == 6  # [1, 2] again at positions 4-5
    assert first_repeat([5, 5, 5], 1) == 2
    assert first_repeat([1, 2, 1, 2], 3) is None  # too short to hold a span twice


@pytest.mark.parametrize("span", [2, 4])
def test_stop_on_repeat_ends_the_greedy_reply_where_it_repeats(gen, span):
    ids = gen.prompt_ids(QUESTION)
    full = direct_generate(gen, ids, 48, min_new_tokens=48)  # no end of turn: the random model runs on
    end = first_repeat(full, span)
    assert end is not None and end < 48  # the tiny random model loops, so the stop has work to do
    out = gen.generate(QUESTION, max_new_tokens=48, stop_on_repeat=span)
    assert out.finish_reason == "repeat" and out.completion_tokens == end
    assert out.text == gen.tokenizer.decode(full[:end], skip_special_tokens=True)
    assert gen.generate(QUESTION, max_new_tokens=48).completion_tokens > end  # off by default
    with pytest.raises(ValueError, match="stop_on_repeat"):
        gen.generate(QUESTION, max_new_tokens=4, stop_on_repeat=-1)


def test_int8_generator_quantises_every_linear_layer_and_generates(tiny_causal_lm_dir, gen):
    import torch

    messages = QUESTION
    int8 = LocalGenerator(str(tiny_causal_lm_dir), dtype="int8")
    assert int8.precision == "int8" and gen.precision == "float32"
    linears = [m for m in int8.model.modules() if isinstance(m, torch.nn.Linear)]
    quantised = [m for m in int8.model.modules() if type(m).__name__ == "Linear" and "quantized" in type(m).__module__]
    assert quantised and not linears  # every linear layer, the vocabulary projection too
    assert int8.model_key != gen.model_key and int8.model_key.split(":")[1] == "int8"
    out = int8.generate(messages, max_new_tokens=6)
    assert out.completion_tokens == 6 and out.text and out.prompt_tokens == gen.generate(messages, max_new_tokens=1).prompt_tokens
    assert int8.word_start_mask().shape[0] == gen.word_start_mask().shape[0]  # no .weight tensor on an int8 layer
    # the next-token distribution stays close to float32's (random tiny weights: a loose bound)
    ids = torch.tensor([gen.prompt_ids(messages)])
    with torch.inference_mode():
        exact = torch.log_softmax(gen.model(input_ids=ids).logits[0, -1], -1)
        close = torch.log_softmax(int8.model(input_ids=ids).logits[0, -1], -1)
    assert float((exact.exp() - close.exp()).abs().sum()) < 0.2
    with pytest.raises(ValueError, match="dtype must be"):
        LocalGenerator(str(tiny_causal_lm_dir), dtype="int4")


def test_context_window_limits_prompt_plus_new_tokens(tiny_causal_lm_dir):
    small = LocalGenerator(str(tiny_causal_lm_dir), context_window=32)
    assert small.context_window == 32
    n = len(small.prompt_ids(QUESTION))
    assert n < 32
    out = small.generate(QUESTION, max_new_tokens=32 - n)  # exactly fills the window
    assert out.completion_tokens == 32 - n
    with pytest.raises(InvalidTextError, match="32-token context window"):
        small.generate(QUESTION, max_new_tokens=33 - n)  # one token too many
    long = [{"role": "user", "content": "the value of the parameter " * 10}]
    assert len(small.prompt_ids(long)) > 32
    with pytest.raises(InvalidTextError, match=r"prompt of \d+ tokens"):
        small.generate(long, max_new_tokens=1)
    with pytest.raises(InvalidTextError):
        list(small.stream(long, max_new_tokens=1))
    # a window larger than the model's is capped at the model's
    assert LocalGenerator(str(tiny_causal_lm_dir), context_window=10_000).context_window == 256


@pytest.mark.parametrize("messages", BAD_MESSAGES)
def test_bad_messages_raise_invalid_text(gen, messages):
    with pytest.raises(InvalidTextError):
        gen.prompt_ids(messages)
    with pytest.raises(InvalidTextError):
        gen.generate(messages, max_new_tokens=2)
    with pytest.raises(InvalidTextError):
        list(gen.stream(messages, max_new_tokens=2))


def test_validate_messages_copies_and_accepts_trailing_assistant():
    messages = [{"role": "user", "content": "a", "name": "x"}, {"role": "assistant", "content": "b"}]
    assert validate_messages(messages) == [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]
    assert validate_messages(tuple(messages)) == validate_messages(messages)


@pytest.mark.parametrize("settings, match", [
    ({"max_new_tokens": 0}, "max_new_tokens"),
    ({"max_new_tokens": -3}, "max_new_tokens"),
    ({"temperature": -0.1}, "temperature"),
    ({"stop": ["ok", ""]}, "non-empty"),
])
def test_bad_settings_raise_value_error(gen, settings, match):
    kwargs = {"max_new_tokens": 2, **settings}
    with pytest.raises(ValueError, match=match):
        gen.generate(QUESTION, **kwargs)
    with pytest.raises(ValueError, match=match):
        list(gen.stream(QUESTION, **kwargs))


def test_count_tokens_uses_the_tokenizer(gen):
    assert gen.count_tokens(PREFIX) == len(gen.tokenizer(PREFIX, add_special_tokens=False)["input_ids"])
    assert gen.count_tokens("") == 0


def test_stop_string_is_only_matched_in_the_answer(gen):
    # the greedy answer is "\n\n\n..." and the chat prompt ends with "\n": "\n\n" first occurs in the answer
    # at its second token, but prompt "\n" + answer "\n" already stops generation after one token
    full = gen.generate(QUESTION, max_new_tokens=6)
    assert full.text == "\n" * 6
    out = gen.generate(QUESTION, max_new_tokens=6, stop=["\n\n"])
    assert (out.text, out.stop, out.completion_tokens) == ("", "\n\n", 2)


def test_sampled_stream_equals_sampled_generate(gen):
    expected = gen.generate(QUESTION, max_new_tokens=10, temperature=1.0).text
    assert "".join(gen.stream(QUESTION, max_new_tokens=10, temperature=1.0)) == expected


# ----------------------------------------------------------------------------------------------------------------
# cut_at_stop and _stream_until_stop
# ----------------------------------------------------------------------------------------------------------------

def test_cut_at_stop():
    assert cut_at_stop("Answer: 42\nEND more", ["END"]) == ("Answer: 42\n", "END")
    assert cut_at_stop("Answer: 42\nEND more", ["END", "\n"]) == ("Answer: 42", "\n")  # earliest wins
    assert cut_at_stop("Answer: 42\nEND more", ["\n", "END"]) == ("Answer: 42", "\n")  # whatever the order
    assert cut_at_stop("STOP at once", ["STOP"]) == ("", "STOP")
    assert cut_at_stop("no stop here", ["END", "###"]) == ("no stop here", None)
    assert cut_at_stop("no stop here", []) == ("no stop here", None)
    assert cut_at_stop("", ["x"]) == ("", None)


def consumed(pieces: list[str], seen: list[str]):
    for piece in pieces:
        seen.append(piece)
        yield piece


def test_stream_until_stop_cuts_a_stop_string_split_across_pieces():
    pieces = ["Hel", "lo ST", "O", "P and more", " text"]
    seen: list[str] = []
    out = list(_stream_until_stop(consumed(pieces, seen), ["STOP"]))
    assert "".join(out) == "Hello "
    assert all("S" not in p for p in out)  # no part of the stop string is ever yielded
    assert seen == pieces  # the producer is drained after the hit


def test_stream_until_stop_earliest_of_several_wins():
    pieces = ["a b", "c <e", "nd> x ###", " y"]
    assert "".join(_stream_until_stop(iter(pieces), ["###", "<end>"])) == "a bc "
    assert "".join(_stream_until_stop(iter(pieces), ["<end>", "###"])) == "a bc "
    assert "".join(_stream_until_stop(iter(["###<end>"]), ["<end>", "###"])) == ""


def test_stream_until_stop_without_a_stop_passes_everything_through():
    pieces = ["one", " two", "", " three\n", "four"]
    assert list(_stream_until_stop(iter(pieces), [])) == [p for p in pieces if p]  # piece by piece, no delay
    out = list(_stream_until_stop(iter(pieces), ["never", "zzz"]))
    assert "".join(out) == "".join(pieces)
    assert list(_stream_until_stop(iter([]), ["x"])) == []


def test_stream_until_stop_holds_back_only_what_a_stop_string_could_start():
    stream = _stream_until_stop(iter(["abcdef", "ghij"]), ["XYZ"])
    assert next(stream) == "abcd"  # "ef" might start "XYZ": held back until the next piece
    assert list(stream) == ["efgh", "ij"]  # the rest is let go at the end


@pytest.mark.parametrize("seed", range(5))
def test_stream_until_stop_matches_cut_at_stop_for_random_splits(seed):
    rng = random.Random(seed)
    text = "The result is </a> in the STOP table, see </a> STOP again"
    stops = ["STOP", "</a>"] if seed % 2 else ["none", "gone"]
    cuts = sorted(rng.sample(range(1, len(text)), 8))
    pieces = [text[i:j] for i, j in zip([0, *cuts], [*cuts, len(text)])]
    assert "".join(_stream_until_stop(iter(pieces), stops)) == cut_at_stop(text, stops)[0]


# ----------------------------------------------------------------------------------------------------------------
# OpenAIChatGenerator against a real local HTTP server
# ----------------------------------------------------------------------------------------------------------------

@dataclass
class Reply:
    status: int = 200
    body: object = None  # a dict is sent as JSON, a str as is
    content_type: str = "application/json"
    delay: float = 0.0  # seconds before answering (cut short when the fixture shuts down)
    events: list[dict] | None = None  # server-sent events: data: <json> lines, then data: [DONE]
    raw_events: list[str] = field(default_factory=list)  # data: lines sent as is, before the JSON events
    stall: float = 0.0  # with events: seconds to hang after them instead of sending data: [DONE]


@dataclass
class FakeAPI:
    url: str = ""
    requests: list[dict] = field(default_factory=list)
    replies: list[Reply] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    release: threading.Event = field(default_factory=threading.Event)

    def answer(self, *replies: Reply) -> None:
        """Reply with these in turn; the last one is repeated."""
        self.replies = list(replies)

    def next_reply(self) -> Reply:
        with self.lock:
            return self.replies.pop(0) if len(self.replies) > 1 else self.replies[0]


class _Handler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        api: FakeAPI = self.server.api
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        with api.lock:
            api.requests.append({"path": self.path, "headers": {k.lower(): v for k, v in self.headers.items()},
                                 "body": json.loads(raw)})
        reply = api.next_reply()
        if reply.delay:
            api.release.wait(reply.delay)
        try:
            self._send(reply)
        except OSError:  # the client gave up (a timeout test)
            pass

    def _send(self, reply: Reply) -> None:
        if reply.events is not None:
            self.send_response(reply.status)
            self.send_header("Content-Type", "text/event-stream")
            self.end_headers()
            lines = [*reply.raw_events, *(json.dumps(e) for e in reply.events)]
            for line in lines if reply.stall else [*lines, "[DONE]"]:
                self.wfile.write(f"data: {line}\n\n".encode())
                self.wfile.flush()
            if reply.stall:
                self.server.api.release.wait(reply.stall)
            return
        body = reply.body if isinstance(reply.body, str) else json.dumps(reply.body)
        data = body.encode()
        self.send_response(reply.status)
        self.send_header("Content-Type", reply.content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format, *args) -> None:
        pass


@pytest.fixture
def api(monkeypatch):
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.api = FakeAPI(url=f"http://127.0.0.1:{server.server_address[1]}/v1")
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server.api
    finally:
        server.api.release.set()
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
    assert not thread.is_alive()


def completion(content: str | None, finish_reason: str = "stop", usage: dict | None = None, **choice) -> dict:
    body = {"id": "chatcmpl-1", "object": "chat.completion", "model": "served",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                         "finish_reason": finish_reason, **choice}]}
    if usage is not None:
        body["usage"] = usage
    return body


def client(api: FakeAPI, **kwargs) -> OpenAIChatGenerator:
    kwargs.setdefault("backoff", 0.01)
    kwargs.setdefault("timeout", 5.0)
    return OpenAIChatGenerator("served", base_url=api.url + "/", **kwargs)


def test_openai_sends_the_request_and_reads_the_answer(api):
    api.answer(Reply(body=completion("Paris is", "length", {"prompt_tokens": 11, "completion_tokens": 7})))
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Capital of France?"}]
    out = client(api, api_key="sk-test", extra_body={"top_p": 0.5}).generate(
        messages, max_new_tokens=5, stop=["END"], temperature=0.3)
    assert out.text == "Paris is"
    assert (out.stop, out.finish_reason, out.prompt_tokens, out.completion_tokens) == (None, "length", 11, 7)
    assert len(api.requests) == 1
    request = api.requests[0]
    assert request["path"] == "/v1/chat/completions"  # the trailing slash of base_url is dropped
    assert request["headers"]["authorization"] == "Bearer sk-test"
    assert request["headers"]["content-type"] == "application/json"
    assert request["body"] == {"model": "served", "messages": messages, "max_tokens": 5, "temperature": 0.3,
                               "stream": False, "stop": ["END"], "top_p": 0.5}


def test_openai_finish_reason_stop_and_estimated_usage(api):
    api.answer(Reply(body=completion("abcdefghi")))  # no usage block: estimated at ~4 characters a token
    out = client(api).generate(QUESTION, max_new_tokens=50)
    assert (out.text, out.stop, out.finish_reason) == ("abcdefghi", None, "stop")
    assert (out.prompt_tokens, out.completion_tokens) == (3, 3)  # "Question?" 9 chars, "abcdefghi" 9 chars
    assert "stop" not in api.requests[0]["body"]
    assert api.requests[0]["body"]["temperature"] == 0.0


def test_openai_key_from_the_named_environment_variable(api, monkeypatch):
    monkeypatch.setenv("FLAGSTONE_TEST_KEY", "from-env")
    api.answer(Reply(body=completion("ok")))
    client(api, api_key_env="FLAGSTONE_TEST_KEY").generate(QUESTION)
    assert api.requests[0]["headers"]["authorization"] == "Bearer from-env"


def test_openai_sends_no_authorization_without_a_key(api, monkeypatch):
    monkeypatch.delenv("FLAGSTONE_TEST_KEY", raising=False)
    api.answer(Reply(body=completion("ok")))
    client(api, api_key_env="FLAGSTONE_TEST_KEY").generate(QUESTION)
    client(api).generate(QUESTION)  # OPENAI_API_KEY is unset by the fixture
    assert [r["headers"].get("authorization") for r in api.requests] == [None, None]


def test_openai_cuts_stop_strings_locally(api):
    api.answer(Reply(body=completion("Answer: 42\nEND trailing", usage={"prompt_tokens": 4,
                                                                        "completion_tokens": 9})))
    out = client(api).generate(QUESTION, stop=["END", "\n"])
    assert (out.text, out.stop, out.finish_reason) == ("Answer: 42", "\n", "stop")
    assert out.completion_tokens == 9
    # at most four stop strings are sent; the others are still cut locally
    api.answer(Reply(body=completion("one two three FIVE six")))
    out = client(api).generate(QUESTION, stop=["A1", "B2", "C3", "D4", "FIVE"])
    assert (out.text, out.stop) == ("one two three ", "FIVE")
    assert api.requests[-1]["body"]["stop"] == ["A1", "B2", "C3", "D4"]


def test_openai_uses_the_stop_string_the_server_reports(api):
    api.answer(Reply(body=completion("the text before", "stop", stop="###")))
    out = client(api).generate(QUESTION, stop=["###", "END"])
    assert (out.text, out.stop) == ("the text before", "###")
    api.answer(Reply(body=completion("the text before", "stop", stop="not-ours")))
    assert client(api).generate(QUESTION, stop=["###"]).stop is None


def test_openai_sends_a_trailing_assistant_message_as_is(api):
    api.answer(Reply(body=completion(" value")))
    out = client(api).generate(CONTINUED)
    assert out.text == " value"
    assert api.requests[0]["body"]["messages"] == CONTINUED


def test_openai_stream_yields_the_event_pieces(api):
    deltas = [{"role": "assistant"}, {"content": "Hel"}, {"content": "lo"}, {"content": ""}, {"content": " wor"},
              {"content": "ld"}, {}]
    events = [{"choices": [{"index": 0, "delta": d, "finish_reason": None}]} for d in deltas]
    api.answer(Reply(events=events, raw_events=[]))
    pieces = list(client(api, api_key="k").stream(QUESTION, max_new_tokens=9))
    assert pieces == ["Hel", "lo", " wor", "ld"]
    body = api.requests[0]["body"]
    assert (body["stream"], body["max_tokens"], "stop" in body) == (True, 9, False)
    assert api.requests[0]["headers"]["authorization"] == "Bearer k"
    # with a stop string split across events
    pieces = list(client(api).stream(QUESTION, stop=["o w"]))
    assert "".join(pieces) == "Hell"
    assert api.requests[-1]["body"]["stop"] == ["o w"]


def test_openai_stream_rejects_a_malformed_event(api):
    api.answer(Reply(events=[{"choices": [{"delta": {"content": "ok"}}]}], raw_events=["{not json"]))
    with pytest.raises(GeneratorError, match="malformed stream event"):
        list(client(api).stream(QUESTION))


def test_openai_retries_429_then_succeeds(api):
    api.answer(Reply(429, {"error": {"message": "slow down"}}), Reply(body=completion("finally")))
    out = client(api, retries=3, backoff=0.01).generate(QUESTION)
    assert out.text == "finally"
    assert len(api.requests) == 2
    assert api.requests[0]["body"] == api.requests[1]["body"]


def test_openai_retries_503_for_streams_too(api):
    api.answer(Reply(503, {"error": {"message": "loading"}}),
               Reply(events=[{"choices": [{"delta": {"content": "up"}}]}]))
    assert list(client(api, retries=1).stream(QUESTION)) == ["up"]
    assert len(api.requests) == 2


def test_openai_persistent_500_fails_after_all_attempts(api):
    api.answer(Reply(500, {"error": {"message": "engine crashed"}}))
    with pytest.raises(GeneratorError) as info:
        client(api, retries=2).generate(QUESTION)
    assert len(api.requests) == 3
    message = str(info.value)
    assert "3 attempts" in message and "HTTP 500" in message and "engine crashed" in message


def test_openai_401_fails_at_once_with_the_server_message(api):
    api.answer(Reply(401, {"error": {"message": "bad key"}}))
    with pytest.raises(GeneratorError) as info:
        client(api, retries=3, api_key="wrong").generate(QUESTION)
    assert len(api.requests) == 1
    assert "bad key" in str(info.value) and "401" in str(info.value)
    with pytest.raises(GeneratorError, match="bad key"):
        list(client(api, retries=3).stream(QUESTION))
    assert len(api.requests) == 2


def test_openai_unreachable_port_fails_after_all_attempts(monkeypatch):
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    gen = OpenAIChatGenerator("served", base_url=f"http://127.0.0.1:{port}/v1", retries=1, backoff=0.01,
                              timeout=2.0)
    with pytest.raises(GeneratorError, match="after 2 attempts") as info:
        gen.generate(QUESTION)
    assert f"127.0.0.1:{port}" in str(info.value)
    assert "ConnectError" in str(info.value)


def test_openai_slow_server_times_out(api):
    api.answer(Reply(body=completion("too late"), delay=5.0))
    start = time.perf_counter()
    with pytest.raises(GeneratorError, match="after 1 attempts") as info:
        client(api, timeout=0.2, retries=0).generate(QUESTION)
    assert time.perf_counter() - start < 2.0
    assert "Timeout" in str(info.value)
    assert len(api.requests) == 1


def test_openai_stream_that_stalls_raises_generator_error(api):
    api.answer(Reply(events=[{"choices": [{"delta": {"content": "a"}}]}], stall=5.0))
    with pytest.raises(GeneratorError):
        list(client(api, timeout=0.2, retries=0).stream(QUESTION))


def test_openai_non_json_answer_raises(api):
    api.answer(Reply(body="<html>oops</html>", content_type="text/html"))
    with pytest.raises(GeneratorError, match="not JSON"):
        client(api).generate(QUESTION)


@pytest.mark.parametrize("body", [{"choices": []}, {"object": "x"}, {"choices": [{"text": "legacy"}]}, []])
def test_openai_answer_without_message_content_raises(api, body):
    api.answer(Reply(body=body))
    with pytest.raises(GeneratorError, match=r"choices\[0\]\.message\.content"):
        client(api).generate(QUESTION)


def test_openai_null_content_is_empty_text(api):
    api.answer(Reply(body=completion(None, usage={"prompt_tokens": 2, "completion_tokens": 1})))
    out = client(api).generate(QUESTION)
    assert (out.text, out.completion_tokens) == ("", 1)


@pytest.mark.parametrize("kwargs", [
    {"base_url": "localhost:8080/v1"},
    {"base_url": "ftp://localhost/v1"},
    {"base_url": ""},
    {"retries": -1},
    {"timeout": 0},
])
def test_openai_invalid_settings_raise_value_error(kwargs):
    with pytest.raises(ValueError):
        OpenAIChatGenerator("served", **kwargs)


def test_openai_invalid_model_name_raises_value_error():
    with pytest.raises(ValueError, match="model"):
        OpenAIChatGenerator("", base_url="http://127.0.0.1:1/v1")


def test_openai_bad_input_fails_before_any_request(api):
    api.answer(Reply(body=completion("unused")))
    gen = client(api)
    with pytest.raises(ValueError):
        gen.generate(QUESTION, max_new_tokens=0)
    with pytest.raises(ValueError):
        gen.generate(QUESTION, temperature=-1)
    with pytest.raises(InvalidTextError):
        gen.generate([{"role": "system", "content": "alone"}])
    with pytest.raises(InvalidTextError):
        list(gen.stream("Question?"))
    assert api.requests == []


def test_openai_count_tokens_estimate():
    gen = OpenAIChatGenerator("served", base_url="http://127.0.0.1:1/v1")
    assert [gen.count_tokens(t) for t in ("", "a", "abcd", "abcde", "x" * 40)] == [1, 1, 1, 2, 10]
    assert gen.name == "served" and gen.context_window == 8192
