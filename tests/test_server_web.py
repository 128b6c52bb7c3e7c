"""`/` for both kinds of visitor: a browser (Accept: text/html) gets the chat page from
runtime/web/, API clients probing `/` get Ollama's text; the page's files and nothing else."""
from __future__ import annotations

import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")

from server_util import Server  # noqa: E402

from runtime.server import ServerConfig  # noqa: E402


@pytest.fixture
def srv(tmp_path):
    web = tmp_path / "web"
    web.mkdir()
    (web / "index.html").write_text("<!doctype html><title>kiln chat</title>")
    (web / "app.js").write_text("console.log('kiln')")
    (tmp_path / "secret.txt").write_text("not for the web")
    with Server(ServerConfig(web_dir=web, store_home=tmp_path / "home", api_key="k")) as s:
        yield s


def test_browser_gets_the_page_clients_get_the_probe(srv):
    page = httpx.get(srv.url + "/", headers={"Accept": "text/html,application/xhtml+xml"})
    assert page.status_code == 200 and "kiln chat" in page.text
    assert page.headers["content-type"].startswith("text/html")
    probe = httpx.get(srv.url + "/")                       # httpx sends Accept: */*
    assert probe.text == "Ollama is running"
    assert httpx.head(srv.url + "/").status_code == 200
    js = httpx.get(srv.url + "/app.js")                    # static files need no key
    assert js.status_code == 200 and "kiln" in js.text


@pytest.mark.parametrize("path", ["/../secret.txt", "/%2e%2e/secret.txt", "/nothing.css",
                                  "/v1/nothing", "/api/nothing"])
def test_nothing_outside_the_page(srv, path):
    r = httpx.get(srv.url + path, headers={"Authorization": "Bearer k"})
    assert r.status_code == 404 and "not for the web" not in r.text
