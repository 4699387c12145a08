"""The search page at / in headless Chromium (Debian's chromium driven by Playwright)."""
from __future__ import annotations

import shutil

import pytest

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (test extra)")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary (apt-get install chromium)")

DOCS = [
    {"id": "cold", "text": "Zinc lozenges shorten the common cold.", "metadata": {"topic": "health"}},
    {"id": "stars", "text": "Neutron stars are the collapsed cores of massive stars.", "metadata": {}},
    {"id": "tea", "text": "Green tea contains catechins.", "metadata": {}},
]


@pytest.fixture
def browser_page():
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page()
        yield page
        browser.close()


def test_search_page_shows_ranked_results_with_signals_and_highlights(serve, browser_page):
    import httpx

    server = serve()
    httpx.post(f"{server.url}/collections", json={"name": "docs"})
    httpx.post(f"{server.url}/collections/docs/documents", json={"documents": DOCS}, timeout=60)
    page = browser_page
    page.goto(server.url + "/")
    page.wait_for_selector("#collection option[value=docs]", state="attached")
    assert page.locator("#mode option").all_inner_texts() == ["dense", "bm25", "hybrid"]
    page.fill("#query", "common cold remedy")
    page.click("button[type=submit]")
    page.wait_for_selector(".hit")
    hits = page.locator(".hit")
    assert hits.count() == 3
    first = hits.nth(0)
    assert first.locator(".id").inner_text() == "cold"
    signals = first.locator(".signals span").all_inner_texts()
    assert [s.split()[0] for s in signals] == ["dense", "bm25"]
    assert sorted(m.lower() for m in first.locator("mark").all_inner_texts()) == ["cold", "common"]
    assert "health" in first.locator(".meta").inner_text()
    assert "3 results" in page.locator("#status").inner_text()

    page.select_option("#mode", "bm25")
    page.fill("#query", "neutron")
    page.click("button[type=submit]")
    page.wait_for_function("document.querySelector('#status').textContent.includes('(bm25)')")
    assert page.locator(".hit .id").first.inner_text() == "stars"


def test_search_page_reports_errors_and_api_keys(serve, browser_page):
    server = serve(api_keys=frozenset({"k1"}))
    page = browser_page
    page.goto(server.url + "/")
    page.wait_for_function("document.querySelector('#status').textContent.length > 0")
    assert "API key" in page.locator("#status").inner_text()
    assert "error" in page.locator("#status").get_attribute("class")
    page.fill("#api-key", "k1")
    page.dispatch_event("#api-key", "change")
    page.wait_for_function("document.querySelector('#status').textContent.includes('No collections')")


def test_docs_page_renders_without_the_internet(serve, browser_page):
    """Every request the /docs page makes stays on the server (Swagger UI's CDN assets left it blank offline)."""
    server = serve()
    page = browser_page
    elsewhere = []
    page.route("**/*", lambda route: (route.continue_() if route.request.url.startswith(server.url)
                                      else (elsewhere.append(route.request.url), route.abort())))
    page.goto(server.url + "/docs")
    assert elsewhere == []
    assert page.locator("section.op").count() > 15
    assert "/collections/{name}/search" in page.locator("span.path").all_inner_texts()
    assert page.locator("#schema-SearchRequest").is_visible()


def test_search_page_highlights_the_right_words_after_emoji(serve, browser_page):
    """The API's highlight spans are code point offsets; the page must not slice them as UTF-16 units."""
    import httpx

    server = serve()
    httpx.post(f"{server.url}/collections", json={"name": "e"})
    httpx.post(f"{server.url}/collections/e/documents", timeout=60,
               json={"documents": [{"id": "x", "text": "🙂🙂 A 🧊 common cold, 𝒞old again."}]})
    page = browser_page
    page.goto(server.url + "/")
    page.wait_for_selector("#collection option[value=e]", state="attached")
    page.select_option("#mode", "bm25")
    page.fill("#query", "common cold")
    page.click("button[type=submit]")
    page.wait_for_selector(".hit mark")
    assert page.locator(".hit mark").all_inner_texts() == ["common", "cold"]
