"""The request guard: keys checked before any body is read, body limits enforced while the body arrives.

These talk to the app in-process through ``httpx.ASGITransport``, which pulls a streamed request body one chunk
per ``receive`` call, so the tests can count exactly how much of a body the server read.
"""
from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import pytest

CHUNK = 4096


@pytest.fixture
def make_app(minilm, tmp_path):
    """Build apps with given settings (no server, no lifespan); their services close at the end."""
    from flagstone.server.app import ServerSettings, create_app

    apps = []

    def build(**overrides):
        overrides.setdefault("data_dir", str(tmp_path / f"data{len(apps)}"))
        app = create_app(ServerSettings(**overrides), embedder=minilm)
        apps.append(app)
        return app

    yield build
    for app in apps:
        app.state.service.close()


class CountingBody:
    """A chunked request body (no Content-Length) that records how many chunks the server pulled."""

    def __init__(self, chunks: int, chunk: bytes = b"x" * CHUNK, pause: float = 0.0) -> None:
        self.chunks, self.chunk, self.pause = chunks, chunk, pause
        self.yielded = 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for _ in range(self.chunks):
            if self.pause:
                await asyncio.sleep(self.pause)
            self.yielded += 1
            yield self.chunk


def call(app, method: str, path: str, **kwargs):
    import httpx

    async def go():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://guard") as client:
            return await client.request(method, path, **kwargs)

    return asyncio.run(go())


def error_type(response) -> str:
    return response.json()["error"]["type"]


def test_a_chunked_body_over_the_limit_is_cut_off_while_it_arrives(make_app):
    app = make_app(max_body_bytes=10_000)
    body = CountingBody(chunks=1000)  # 4 MB, sent without Content-Length
    response = call(app, "POST", "/v1/embeddings", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 413 and error_type(response) == "too_large"
    assert body.yielded <= 10_000 // CHUNK + 1  # the limit plus the one chunk that crossed it, nothing more


def test_a_chunked_body_within_the_limit_is_served(make_app):
    app = make_app(max_body_bytes=10_000)
    payload = json.dumps({"input": ["hello world"]}).encode()

    async def two_chunks():
        yield payload[:5]
        yield payload[5:]

    response = call(app, "POST", "/v1/embeddings", content=two_chunks(), headers={"content-type": "application/json"})
    assert response.status_code == 200, response.text
    assert len(response.json()["data"][0]["embedding"]) == 384


def test_a_wrong_key_is_refused_before_any_body_is_read(make_app):
    app = make_app(api_keys=frozenset({"s3cret"}))
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        body = CountingBody(chunks=100)
        response = call(app, "POST", "/v1/embeddings", content=body,
                        headers={"content-type": "application/json", **headers})
        assert response.status_code == 401 and error_type(response) == "unauthorized"
        assert body.yielded == 0


def test_a_body_that_arrives_too_slowly_is_refused(make_app):
    app = make_app(body_timeout_s=0.3)
    body = CountingBody(chunks=40, chunk=b" ", pause=0.1)  # 4 s for 40 bytes: a trickle
    response = call(app, "POST", "/v1/embeddings", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 408 and error_type(response) == "timeout"
    assert body.yielded < 10


@pytest.mark.parametrize("length, status", [("20000", 413), ("12abc", 400), ("-1", 400)])
def test_a_declared_length_is_checked_before_reading(make_app, length: str, status: int):
    app = make_app(max_body_bytes=10_000)
    response = call(app, "POST", "/v1/embeddings", content=b"{}",
                    headers={"content-type": "application/json", "content-length": length})
    assert response.status_code == status


def test_through_uvicorn_a_refused_upload_stops_early(serve):
    """Over a real connection the refusal closes it, so the client stops sending (else uvicorn would read and
    discard all 200 MB before answering the next request)."""
    import httpx

    server = serve(max_body_bytes=100_000)
    sent = 0

    def body():
        nonlocal sent
        for _ in range(3000):  # 3000 x 64 KiB = 196 MiB
            sent += 1
            yield b"x" * 65536

    response = httpx.post(server.url + "/v1/embeddings", content=body(), timeout=60,
                          headers={"content-type": "application/json"})
    assert response.status_code == 413 and error_type(response) == "too_large"
    assert sent < 500  # what the socket buffers took before the close, far from all of it
    assert httpx.get(server.url + "/health").status_code == 200


def test_with_keys_only_a_minimal_health_and_the_page_are_open(make_app):
    app = make_app(api_keys=frozenset({"s3cret", "ключ"}))
    app.state.collections.create("private-name")
    for path in ("/metrics", "/docs", "/redoc", "/openapi.json", "/docs/oauth2-redirect", "/collections",
                 "/collections/private-name", "/no-such-path"):
        response = call(app, "GET", path)
        assert response.status_code == 401, path
        assert "private-name" not in response.text
    assert call(app, "GET", "/health").json() == {"status": "ok"}
    assert call(app, "GET", "/").status_code == 200  # the page: a static shell that asks for the key
    key = {"Authorization": "Bearer s3cret"}
    assert call(app, "GET", "/health", headers=key).json()["collections"] == 1
    assert "private-name" in call(app, "GET", "/metrics", headers=key).text
    assert call(app, "GET", "/openapi.json", headers=key).status_code == 200
    utf8_key = [(b"authorization", "Bearer ключ".encode())]  # a non-ASCII key, sent as UTF-8 bytes
    assert call(app, "GET", "/collections", headers=utf8_key).status_code == 200


def test_public_metrics_opens_only_metrics(make_app):
    app = make_app(api_keys=frozenset({"s3cret"}), public_metrics=True)
    assert call(app, "GET", "/metrics").status_code == 200
    assert call(app, "GET", "/openapi.json").status_code == 401


@pytest.mark.parametrize("header, valid", [
    ("Bearer s3cret", True), ("bearer  s3cret ", True), ("Bearer other-key-2", True), ("Bearer s3cre", False),
    ("Bearer s3cretX", False), ("s3cret", False), ("Basic s3cret", False), ("", False), ("Bearer ", False),
])
def test_key_is_valid(make_app, header: str, valid: bool):
    service = make_app(api_keys=frozenset({"s3cret", "other-key-2"})).state.service
    assert service.key_is_valid(header) is valid


def test_metric_labels_come_from_fixed_sets(make_app):
    """Made-up methods and paths must not each create a series: routes are labelled by template, unknown paths
    as one "unmatched", unknown methods as "other"."""
    import re

    from flagstone.server.metrics import METHODS

    app = make_app()
    app.state.collections.create("docs")
    for n in range(20):
        call(app, "GET", f"/made-up/{n}")
        call(app, f"FOO{n}", "/health")
        call(app, f"BAR{n}", f"/nowhere/{n}")
        call(app, "GET", f"/collections/docs-{n}")
    call(app, "get", "/health")  # methods are case-sensitive: not GET
    text = call(app, "GET", "/metrics").text
    series = re.findall(r'^flagstone_requests_total\{method="([^"]*)",path="([^"]*)"', text, re.MULTILINE)
    methods, paths = {m for m, _ in series}, {p for _, p in series}
    assert methods <= METHODS | {"other"} and "other" in methods
    assert paths <= set(app.openapi()["paths"]) | {"unmatched"}
    assert "unmatched" in paths and "/collections/{name}" in paths
    assert len(set(series)) <= 6


@pytest.mark.parametrize("name", ["abc\n", "abc\r\n", "abc\x00", "\nabc", "a" * 65])
def test_a_collection_name_must_match_whole(make_app, name: str):
    app = make_app()
    response = call(app, "POST", "/collections", json={"name": name})
    assert response.status_code in (400, 422)
    assert app.state.collections.names() == []


def test_error_bodies_do_not_reveal_server_paths(make_app, tmp_path, caplog):
    missing = tmp_path / "models" / "secret-layout" / "reranker"
    app = make_app(reranker=str(missing))
    with caplog.at_level("WARNING", logger="flagstone.server.service"):
        response = call(app, "POST", "/rerank", json={"query": "q", "documents": ["a"]})
    assert 400 <= response.status_code < 500
    message = response.json()["error"]["message"]
    assert str(tmp_path) not in message and "secret-layout" not in message
    assert ".../reranker" in message  # which file, not where
    assert str(missing) in caplog.text  # the operator still sees the whole path


def test_scrub_paths():
    from flagstone.server.service import scrub_paths

    assert scrub_paths("/srv/data/docs/wal.jsonl:3: damaged log line") == ".../wal.jsonl:3: damaged log line"
    assert scrub_paths(r"cannot read C:\Users\me\model.bin") == "cannot read .../model.bin"
    assert scrub_paths("in ~/cache/x/y.npy") == "in .../y.npy"
    for kept in ("no document 'a/b' in collection 'c'", "see https://example.com/a/b", "k=3/4", "/health"):
        assert scrub_paths(kept) == kept


def test_docs_is_one_self_contained_page(make_app):
    """/docs used to load Swagger UI from a CDN (blank offline); now the page needs nothing from elsewhere."""
    import re

    app = make_app()
    for path in ("/docs", "/redoc"):
        response = call(app, "GET", path)
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
        page = response.text
        assert not re.search(r"(src|href)\s*=\s*['\"]?(https?:)?//", page, re.IGNORECASE)  # nothing external
        assert "<script" not in page.lower()
        for operation in app.openapi()["paths"]:
            assert f"<span class='path'>{operation}</span>" in page
        assert "SearchRequest" in page and "rerank_depth" in page


def test_docs_escapes_what_it_renders():
    from flagstone.server.docs import render_docs

    spec = {"info": {"title": "<b>t</b>", "version": "1"},
            "paths": {"/x/{id}": {"get": {"summary": "<script>alert(1)</script>", "responses": {}}}},
            "components": {"schemas": {"S": {"properties": {"<i>": {"type": "string", "maxLength": 3}},
                                             "required": ["<i>"]}}}}
    page = render_docs(spec)
    assert "<script" not in page and "<b>t</b>" not in page and "<i>" not in page
    assert "/x/{id}" in page and "max length 3" in page


def test_a_lone_surrogate_fails_only_its_own_request(serve):
    """Sent together with good requests into one shared batch, a text with a lone surrogate used to fail all of
    them with a 500; now it is refused before it joins a batch and the others are served."""
    import concurrent.futures

    import httpx

    server = serve(max_wait_ms=200)  # a long batching window: the requests below share batches
    bad = b'{"input": ["fine text", "broken \\ud800 text"]}'  # the JSON escape, as a client would send it

    def send(n: int) -> int:
        with httpx.Client(base_url=server.url, timeout=60) as client:
            if n == 5:
                return client.post("/v1/embeddings", content=bad,
                                   headers={"content-type": "application/json"}).status_code
            return client.post("/v1/embeddings", json={"input": [f"good request {n}"]}).status_code

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        statuses = list(pool.map(send, range(16)))
    assert statuses[5] == 422
    assert statuses[:5] + statuses[6:] == [200] * 15


@pytest.mark.parametrize("path, body", [
    ("/v1/embed", {"texts": ["ok", "\ud800"]}),
    ("/collections", {"name": "x\udfff"}),
    ("/collections/docs/documents", {"documents": [{"id": "a\ud800", "text": "fine"}]}),
    ("/collections/docs/documents", {"documents": [{"id": "a", "text": "bad \ud800"}]}),
    ("/collections/docs/search", {"query": "\ud800"}),
    ("/collections/docs/documents/delete", {"ids": ["\ud800"]}),
    ("/rerank", {"query": "q", "documents": ["\ud800"]}),
    ("/ask", {"question": "\ud800", "collection": "docs"}),
])
def test_lone_surrogates_are_refused_everywhere(make_app, path: str, body: dict):
    app = make_app()
    app.state.collections.create("docs")
    raw = json.dumps(body).encode()  # json escapes the surrogate as \\udXXX, as a client's encoder would
    response = call(app, "POST", path, content=raw, headers={"content-type": "application/json"})
    assert response.status_code == 422, response.text
    assert any(word in response.json()["error"]["message"] for word in ("surrogate", "unicode"))
    assert len(app.state.collections.get("docs").store) == 0


def test_a_failed_batch_is_retried_request_by_request():
    """Whatever still fails a shared batch, only the request that causes it gets the error."""
    import threading

    from flagstone.server.batching import BatchingEncoder

    class Picky:
        def __init__(self) -> None:
            self.calls: list[int] = []

        def encode(self, texts, **_):
            from flagstone.models.embeddings import Embeddings

            self.calls.append(len(texts))
            if any("poison" in t for t in texts):
                raise ValueError("cannot encode poison")
            return Embeddings(dense=np.array([[float(len(t))] for t in texts], dtype=np.float32))

    import numpy as np

    embedder = Picky()
    batcher = BatchingEncoder(embedder, max_batch=6, max_wait_ms=5000)  # the batch closes when all 6 texts are in
    texts = [["a"], ["bb", "ccc"], ["poison", "x"], ["dddd"]]
    results: dict[int, object] = {}

    def one(n: int) -> None:
        try:
            results[n] = batcher.encode(texts[n]).dense[:, 0].tolist()
        except ValueError as exc:
            results[n] = exc

    threads = [threading.Thread(target=one, args=(n,)) for n in range(len(texts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    batcher.close()
    assert embedder.calls[0] == 6  # they did share one batch first
    assert results[0] == [1.0] and results[1] == [2.0, 3.0] and results[3] == [4.0]
    assert isinstance(results[2], ValueError)


def _nested(levels: int) -> dict:
    value: object = "leaf"
    for _ in range(levels):
        value = {"a": value}
    return value  # type: ignore[return-value]


BAD_METADATA = {
    "surrogate": '{"k": "\\ud800"}',
    "surrogate-key": '{"\\udfff": 1}',
    "deep": json.dumps(_nested(300)),
    "nan": '{"k": NaN}',
    "infinity": '{"k": [1, -Infinity]}',
    "huge": json.dumps({"k": "x" * 70_000}),
}


@pytest.mark.parametrize("kind", sorted(BAD_METADATA))
def test_bad_metadata_is_refused_on_write(make_app, kind: str):
    app = make_app()
    app.state.collections.create("docs")
    body = '{"documents": [{"id": "x", "text": "hello world", "metadata": %s}]}' % BAD_METADATA[kind]
    response = call(app, "POST", "/collections/docs/documents", content=body.encode(),
                    headers={"content-type": "application/json"})
    assert response.status_code == 422, response.text
    message = response.json()["error"]["message"]
    assert "metadata" in message or "not valid JSON" in message  # NaN and Infinity are refused while parsing
    assert len(app.state.collections.get("docs").store) == 0


def test_metadata_within_the_bounds_is_kept(make_app):
    app = make_app()
    app.state.collections.create("docs")
    metadata = {"nested": _nested(30), "list": [1, 2.5, None, True, "é"], "emoji": "🙂"}
    response = call(app, "POST", "/collections/docs/documents",
                    json={"documents": [{"id": "x", "text": "hello world", "metadata": metadata}]})
    assert response.status_code == 200, response.text
    assert call(app, "GET", "/collections/docs/documents/x").json()["metadata"] == metadata


def test_a_collection_holding_bad_metadata_from_before_still_answers(make_app):
    """Documents written before metadata was checked (here through the Python API, which does not check) are
    still served: their metadata comes back null with the reason, the other documents as they are."""
    from flagstone.server.store import Document

    app = make_app()
    collection = app.state.collections.create("docs")
    collection.add([Document("good", "hello world from a good document", {"lang": "en"}),
                    Document("surrogate", "hello world with a broken string", {"k": "\ud800"}),
                    Document("deep", "hello world nested far too deep", _nested(300)),
                    Document("nan", "hello world not a number", {"k": float("nan")})], overwrite=True)
    response = call(app, "POST", "/collections/docs/search", json={"query": "hello world", "k": 10})
    assert response.status_code == 200, response.text
    hits = {h["id"]: h for h in response.json()["results"]}
    assert set(hits) == {"good", "surrogate", "deep", "nan"}
    assert hits["good"]["metadata"] == {"lang": "en"} and "metadata_error" not in hits["good"]
    for bad in ("surrogate", "deep", "nan"):
        assert hits[bad]["metadata"] is None and hits[bad]["metadata_error"], bad
        got = call(app, "GET", f"/collections/docs/documents/{bad}")
        assert got.status_code == 200 and got.json()["metadata"] is None, got.text
    assert call(app, "GET", "/collections/docs/documents/good").json()["metadata"] == {"lang": "en"}
    app.state.service.close()  # saving the retriever fails on such metadata: the store must close all the same
    assert collection.store._wal.closed
    again = make_app(data_dir=app.state.settings.data_dir)  # and after a restart it still answers
    response = call(again, "POST", "/collections/docs/search", json={"query": "hello world", "k": 10})
    assert response.status_code == 200 and len(response.json()["results"]) == 4


def test_filters_compare_json_values_without_coercion(make_app):
    """1 is not true, 0 is not false, [1] is not [true]; 1 and 1.0 are the same number."""
    app = make_app()
    app.state.collections.create("docs")
    documents = [{"id": "flag-true", "text": "a note about rivers", "metadata": {"v": True, "l": [True]}},
                 {"id": "one", "text": "a note about engines", "metadata": {"v": 1, "l": [1]}},
                 {"id": "zero", "text": "a note about violins", "metadata": {"v": 0}},
                 {"id": "flag-false", "text": "a note about bees", "metadata": {"v": False}},
                 {"id": "one-float", "text": "a note about stars", "metadata": {"v": 1.0}}]
    assert call(app, "POST", "/collections/docs/documents", json={"documents": documents}).status_code == 200

    def ids(where: dict) -> set[str]:
        response = call(app, "POST", "/collections/docs/search", json={"query": "a note", "k": 10, "filter": where})
        assert response.status_code == 200, response.text
        return {h["id"] for h in response.json()["results"]}

    assert ids({"v": True}) == {"flag-true"}
    assert ids({"v": 1}) == {"one", "one-float"}
    assert ids({"v": False}) == {"flag-false"}
    assert ids({"v": 0}) == {"zero"}
    assert ids({"v": {"$in": [True, 0]}}) == {"flag-true", "zero"}
    assert ids({"l": [1]}) == {"one"}
    for bad in ('{"v": NaN}', '{"v": "\\ud800"}', '{"v": {"$in": [Infinity]}}'):
        body = '{"query": "a note", "filter": %s}' % bad
        response = call(app, "POST", "/collections/docs/search", content=body.encode(),
                        headers={"content-type": "application/json"})
        assert response.status_code == 422, bad


@pytest.mark.parametrize("doc_id", ["a/b", "dir/sub/file.txt", "/leading", "trailing/", "q?x=1#frag", "100%", "é/ü"])
def test_any_id_can_be_fetched(make_app, doc_id: str):
    from urllib.parse import quote

    app = make_app()
    app.state.collections.create("docs")
    documents = [{"id": doc_id, "text": "a document with an awkward id"}, {"id": "other", "text": "another one"}]
    assert call(app, "POST", "/collections/docs/documents", json={"documents": documents}).status_code == 200
    response = call(app, "GET", f"/collections/docs/documents/{quote(doc_id, safe='')}")
    assert response.status_code == 200, response.text
    assert response.json()["id"] == doc_id
    assert "/collections/{name}/documents/{doc_id}" in app.openapi()["paths"]  # the spec is unchanged
    metrics = call(app, "GET", "/metrics").text
    assert 'path="/collections/{name}/documents/{doc_id}",status="200"' in metrics


@pytest.mark.parametrize("method, path, body, status", [
    ("GET", "/no-such-path", None, 404),
    ("DELETE", "/health", None, 405),
    ("POST", "/v1/embed", b'{"texts": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", 400),  # too deep to parse
])
def test_framework_errors_use_the_service_error_format(make_app, method: str, path: str, body, status: int):
    app = make_app()
    response = call(app, method, path, content=body, headers={"content-type": "application/json"})
    assert response.status_code == status
    assert set(response.json()) == {"error"} and set(response.json()["error"]) == {"type", "message"}


@pytest.mark.parametrize("path, body", [
    ("/v1/embeddings", '{"input": "x", "dimensions": NaN}'),
    ("/collections/docs/search", '{"query": "x", "k": Infinity}'),
    ("/collections/docs/search", '{"query": "x", "filter": {"v": -Infinity}}'),
    ("/collections/docs/documents", '{"documents": [{"id": "a", "text": "t", "metadata": {"v": [NaN]}}]}'),
])
def test_nan_and_infinity_are_not_json(make_app, path: str, body: str):
    """Python's JSON parser accepts NaN and Infinity; the service refuses them wherever they appear."""
    app = make_app()
    app.state.collections.create("docs")
    response = call(app, "POST", path, content=body.encode(), headers={"content-type": "application/json"})
    assert response.status_code == 422
    assert "is not valid JSON: numbers must be finite" in response.json()["error"]["message"]


@pytest.mark.parametrize("path, body", [
    ("/collections/docs/search", {"query": "x", "k": "10"}),
    ("/collections/docs/search", {"query": "x", "rerank": 1}),
    ("/collections/docs/documents", {"documents": [{"id": "a", "text": "t"}], "upsert": "yes"}),
    ("/collections/docs/documents/delete", {"ids": ["a"], "missing_ok": 0}),
    ("/v1/embed", {"texts": ["x"], "is_query": 1}),
    ("/v1/embeddings", {"input": "x", "dimensions": 64.0}),
    ("/collections", {"name": "other", "index": ["flat"]}),
])
def test_request_values_are_not_coerced(make_app, path: str, body: dict):
    app = make_app()
    app.state.collections.create("docs")
    response = call(app, "POST", path, json=body)
    assert response.status_code == 422, response.text
    assert len(app.state.collections.get("docs").store) == 0
