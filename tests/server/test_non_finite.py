"""A model that turns one input into NaN: that request gets a 422 naming the cause, never NaN in JSON or a
500, and requests batched with it are answered."""
from __future__ import annotations

import concurrent.futures

from tests.helpers import poison_token
from tests.server.conftest import RunningServer


def test_a_nan_output_is_a_422_and_spares_the_requests_batched_with_it(tiny_m3_dir, tmp_path):
    import httpx

    from flagstone.models.embedder import Embedder
    from flagstone.server.app import ServerSettings, create_app

    embedder = Embedder(str(tiny_m3_dir), show_progress=False)
    good, bad = ["the first text", "another one here"], "return the value"
    poison_token(embedder, bad, good)
    # a long batching wait so the concurrent requests share one model batch
    server = RunningServer(create_app(ServerSettings(data_dir=str(tmp_path / "data"), max_wait_ms=200),
                                      embedder=embedder))
    try:
        with httpx.Client(base_url=server.url, timeout=60) as http, \
                concurrent.futures.ThreadPoolExecutor(3) as pool:
            futures = [pool.submit(http.post, "/v1/embeddings", json={"input": text}) for text in good + [bad]]
            replies = [f.result() for f in futures]
        assert [r.status_code for r in replies] == [200, 200, 422]
        problem = replies[2].json()
        assert "NaN" in str(problem) and "non_finite" in str(problem)
        assert all(len(r.json()["data"][0]["embedding"]) == embedder.dim for r in replies[:2])
    finally:
        server.stop()
