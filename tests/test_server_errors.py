"""The bad-input battery: each mistake is a 4xx with a clear message in the API's own shape,
and the next request still works. Also the API key, CORS and Host checks."""
from __future__ import annotations

import pytest

pytest.importorskip("llama_cpp")
pytest.importorskip("sentencepiece")
openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")

import bigram  # noqa: E402
from hf_models import make_spm_tokenizer  # noqa: E402
from server_util import Server, scripted_gguf  # noqa: E402

from runtime.server import ServerConfig  # noqa: E402

KEY = "s3cret-key"


@pytest.fixture(scope="module")
def sky(tmp_path_factory):
    import sentencepiece as spm

    d = tmp_path_factory.mktemp("tok")
    make_spm_tokenizer(d)
    sp = spm.SentencePieceProcessor(model_file=str(d / "tokenizer.model"))
    start = sp.encode("x assistant:")[-1]
    return scripted_gguf(tmp_path_factory.mktemp("sky"),
                         [[start] + bigram.text_chain(sp, "Sky blue")])


def _server(sky, tmp_path_factory, **kw):
    config = ServerConfig(n_ctx=128, threads=1, max_body=64 * 1024,
                          store_home=tmp_path_factory.mktemp("home"), **kw)
    s = Server(config)
    info = s.pool.add_given(str(sky), sky)
    info.id = "sky"
    s.pool._given["sky"] = info
    return s


@pytest.fixture(scope="module")
def srv(sky, tmp_path_factory):
    with _server(sky, tmp_path_factory, cors=["https://allowed.example"]) as s:
        yield s


@pytest.fixture(scope="module")
def keyed(sky, tmp_path_factory):
    with _server(sky, tmp_path_factory, api_key=KEY) as s:
        yield s


def ok_chat(url: str, **kw) -> None:
    """The next request still works."""
    r = httpx.post(url + "/v1/chat/completions", json={
        "model": "sky", "messages": [{"role": "user", "content": "hi"}]}, timeout=60, **kw)
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"] == "Sky blue"


def msgs(text="hi"):
    return [{"role": "user", "content": text}]


BATTERY = [
    # (what, path, body (bytes = sent raw), status, param, words in the message)
    ("malformed JSON", "/v1/chat/completions", b'{"model": "sky", "messages": [', 400, None,
     "malformed JSON"),
    ("not an object", "/v1/chat/completions", b'[1, 2]', 400, None, "JSON object"),
    ("empty body", "/v1/chat/completions", b'', 400, None, "empty"),
    ("messages wrong type", "/v1/chat/completions", {"model": "sky", "messages": "hi"}, 400,
     "messages", "messages"),
    ("temperature wrong type", "/v1/chat/completions",
     {"model": "sky", "messages": msgs(), "temperature": "hot"}, 400, "temperature",
     "temperature"),
    ("model missing", "/v1/chat/completions", {"messages": msgs()}, 400, "model", "required"),
    ("unknown model", "/v1/chat/completions", {"model": "gpt-4o", "messages": msgs()}, 404,
     "model", "gpt-4o"),
    ("empty messages", "/v1/chat/completions", {"model": "sky", "messages": []}, 400,
     "messages", "empty"),
    ("unknown role", "/v1/chat/completions",
     {"model": "sky", "messages": [{"role": "wizard", "content": "hi"}]}, 400,
     "messages.0.role", "wizard"),
    ("n > 1", "/v1/chat/completions", {"model": "sky", "messages": msgs(), "n": 3}, 400, "n",
     "n=1"),
    ("max_tokens beyond the context", "/v1/chat/completions",
     {"model": "sky", "messages": msgs(), "max_tokens": 100000}, 400, "max_tokens", "128"),
    ("prompt over the context", "/v1/chat/completions",
     {"model": "sky", "messages": msgs("word " * 300)}, 400, "messages", "128"),
    ("raw prompt over the context", "/v1/completions",
     {"model": "sky", "prompt": "word " * 300}, 400, "prompt", "128"),
    ("top_p out of range", "/v1/chat/completions",
     {"model": "sky", "messages": msgs(), "top_p": 7}, 400, "top_p", "top_p"),
    ("bad json_schema", "/v1/chat/completions",
     {"model": "sky", "messages": msgs(), "response_format": {"type": "json_schema"}}, 400,
     "response_format.json_schema.schema", "schema"),
    ("unknown response_format", "/v1/chat/completions",
     {"model": "sky", "messages": msgs(), "response_format": {"type": "yaml"}}, 400,
     "response_format.type", "response_format"),
    ("image parts", "/v1/chat/completions",
     {"model": "sky", "messages": [{"role": "user", "content": [
         {"type": "image_url", "image_url": {"url": "data:,"}}]}]}, 400, "messages.0.content",
     "text"),
    ("no such endpoint", "/v1/embeddings", {"model": "sky", "input": "x"}, 404, None,
     "/v1/embeddings"),
]


@pytest.mark.parametrize("what,path,body,status,param,words", BATTERY,
                         ids=[b[0] for b in BATTERY])
def test_openai_bad_input(srv, what, path, body, status, param, words):
    if isinstance(body, bytes):
        r = httpx.post(srv.url + path, content=body,
                       headers={"content-type": "application/json"}, timeout=60)
    else:
        r = httpx.post(srv.url + path, json=body, timeout=60)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert words in err["message"], err
    assert err["param"] == param
    if status == 404 and param == "model":
        assert err["code"] == "model_not_found"
    if "context" in what:
        assert err["code"] == "context_length_exceeded"
    ok_chat(srv.url)


def test_context_overflow_gives_the_numbers(srv):
    r = httpx.post(srv.url + "/v1/chat/completions",
                   json={"model": "sky", "messages": msgs("word " * 300)}, timeout=60)
    text = r.json()["error"]["message"]
    import re

    n_ctx, n_prompt, reserve = (int(x) for x in re.findall(
        r"context is (\d+) tokens; the prompt is (\d+) tokens and (\d+)", text)[0])
    assert n_ctx == 128 and n_prompt > 300 and reserve == 64   # half the context to answer in


def test_openai_client_raises_the_errors(srv):
    client = srv.openai()
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="sky", messages=msgs(), n=2)
    assert err.value.param == "n"
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="sky", messages=msgs("word " * 300))
    assert err.value.code == "context_length_exceeded"
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="sky:q4_0", messages=msgs())


OLLAMA_BATTERY = [
    ("/api/chat", b"{nope", 400, "malformed JSON"),
    ("/api/chat", {"model": "nope", "messages": msgs()}, 404, "nope"),
    ("/api/chat", {"model": "sky", "messages": [{"role": "robot", "content": "x"}]}, 400,
     "robot"),
    ("/api/chat", {"model": "sky", "messages": msgs(), "options": {"temperature": "x"}}, 400,
     "options.temperature"),
    ("/api/generate", {"model": "sky", "prompt": "word " * 300}, 400, "128"),
    ("/api/generate", {"model": "sky", "prompt": "x", "images": ["aGk="]}, 400, "text only"),
    ("/api/show", {"model": "nope"}, 404, "nope"),
    ("/api/chat", {"model": "sky", "messages": msgs(), "keep_alive": "soon"}, 400,
     "keep_alive"),
]


@pytest.mark.parametrize("path,body,status,words", OLLAMA_BATTERY)
def test_ollama_bad_input(srv, path, body, status, words):
    if isinstance(body, bytes):
        r = httpx.post(srv.url + path, content=body, timeout=60)
    else:
        r = httpx.post(srv.url + path, json=body, timeout=60)
    assert r.status_code == status, r.text
    err = r.json()
    assert set(err) == {"error"} and isinstance(err["error"], str)
    assert words in err["error"], err
    ok_chat(srv.url)


def test_oversized_body(srv):
    big = {"model": "sky", "messages": msgs("x" * 100_000)}
    r = httpx.post(srv.url + "/v1/chat/completions", json=big, timeout=60)
    assert r.status_code == 413 and "limit" in r.json()["error"]["message"]

    def chunks():                  # no Content-Length: counted as it arrives
        yield b'{"model": "sky", "messages": [{"role": "user", "content": "'
        for _ in range(20):
            yield b"x" * 8192
        yield b'"}]}'
    r = httpx.post(srv.url + "/api/chat", content=chunks(), timeout=60)
    assert r.status_code == 413 and "limit" in r.json()["error"]
    ok_chat(srv.url)


def test_api_key(keyed):
    url = keyed.url
    r = httpx.get(url + "/v1/models")
    assert r.status_code == 401 and "API key" in r.json()["error"]["message"]
    assert r.headers["www-authenticate"] == "Bearer"
    r = httpx.get(url + "/api/tags", headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 401 and r.json() == {"error": "wrong API key"}
    assert httpx.get(url + "/").status_code == 200            # the probe stays open
    assert httpx.head(url + "/").status_code == 200
    assert httpx.get(url + "/health").status_code == 200
    with pytest.raises(openai.AuthenticationError):
        keyed.openai(api_key="wrong").models.list()
    assert [m.id for m in keyed.openai(api_key=KEY).models.list().data] == ["sky"]
    ok_chat(url, headers={"Authorization": f"Bearer {KEY}"})
    import ollama

    assert ollama.Client(host=url, headers={"Authorization": f"Bearer {KEY}"}).list().models


@pytest.mark.parametrize("origin", ["http://localhost:3000", "http://127.0.0.1:5173",
                                    "app://obsidian.md", "tauri://localhost",
                                    "http://tauri.localhost", "file://",
                                    "vscode-webview://abc123", "https://allowed.example"])
def test_cors_allows_local_apps(srv, origin):
    r = httpx.get(srv.url + "/v1/models", headers={"Origin": origin})
    assert r.status_code == 200
    assert r.headers["access-control-allow-origin"] == origin
    pre = httpx.options(srv.url + "/v1/chat/completions", headers={
        "Origin": origin, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type"})
    assert pre.status_code == 204
    assert pre.headers["access-control-allow-origin"] == origin
    assert "POST" in pre.headers["access-control-allow-methods"]
    assert "authorization" in pre.headers["access-control-allow-headers"]


@pytest.mark.parametrize("origin", ["https://evil.example", "null", "http://localhost.evil.com",
                                    "https://allowed.example.evil.com"])
def test_cors_refuses_foreign_origins(srv, origin):
    r = httpx.post(srv.url + "/v1/chat/completions", headers={"Origin": origin},
                   json={"model": "sky", "messages": msgs()})
    assert r.status_code == 403
    assert origin in r.json()["error"]["message"] and "--cors" in r.json()["error"]["message"]
    assert "access-control-allow-origin" not in r.headers
    r = httpx.post(srv.url + "/api/chat", headers={"Origin": origin},
                   json={"model": "sky", "messages": msgs()})
    assert r.status_code == 403 and origin in r.json()["error"]
    ok_chat(srv.url)


def test_foreign_host_header_refused(srv):
    """DNS rebinding: a page on evil.example resolving to 127.0.0.1 sends Host: evil.example."""
    r = httpx.get(srv.url + "/api/tags", headers={"Host": "evil.example:8080"})
    assert r.status_code == 403 and "evil.example" in r.json()["error"]
    assert httpx.get(srv.url + "/api/tags", headers={"Host": "localhost:1"}).status_code == 200
