"""Load, queueing and cancellation: 32 concurrent streaming clients (OpenAI and Ollama mixed)
each get exactly their own answer; past the queue limit the answer is 503 and the server keeps
serving; a client that goes away (streaming or not, generating or waiting) frees the model
within one token. Generation is slowed to 20 ms a token where timing matters."""
from __future__ import annotations

import threading
import time

import pytest

pytest.importorskip("llama_cpp")
pytest.importorskip("sentencepiece")
openai = pytest.importorskip("openai")
ollama = pytest.importorskip("ollama")
httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")

import bigram  # noqa: E402
from server_util import Server, scripted_gguf, sp, wait_for  # noqa: E402,F401

from runtime.server import ServerConfig  # noqa: E402

CONTENT_ONLY = "{{ bos_token }}{% for m in messages %}{{ m['content'] }}{% endfor %}"
# 32 Cyrillic letters: byte-fallback tokens, each ending in its own continuation byte
LETTERS = [chr(c) for c in range(0x430, 0x450)]
SLOW = 0.02          # seconds per token where a test slows generation down


@pytest.fixture(scope="module")
def many(tmp_path_factory, sp):
    """A model with 32 answers: the prompt's last letter picks a two-character answer."""
    ascii_ids = [bigram.byte_id(sp, b) for b in range(0x21, 0x7F)]
    chains, answers = [], {}
    for i, letter in enumerate(LETTERS):
        start = sp.encode("q " + letter)[-1]
        a, b = ascii_ids[2 * i], ascii_ids[2 * i + 1]
        chains.append([start, a, b])
        answers[letter] = chr(0x21 + 2 * i) + chr(0x22 + 2 * i)
    assert len({c[0] for c in chains}) == 32
    path = scripted_gguf(tmp_path_factory.mktemp("many"), chains, template=CONTENT_ONLY,
                         dim=128)
    return path, answers


@pytest.fixture(scope="module")
def loop(tmp_path_factory, sp):
    start = sp.encode("x assistant:")[-1]
    return scripted_gguf(tmp_path_factory.mktemp("loop"), [],
                         cycle=[start] + bigram.text_chain(sp, "abc"))


def serve(tmp_path_factory, models: dict, **kw):
    config = ServerConfig(n_ctx=256, threads=1, store_home=tmp_path_factory.mktemp("home"),
                          **kw)
    s = Server(config)
    for name, path in models.items():
        info = s.pool.add_given(str(path), path)
        info.id = name
        s.pool._given[name] = info
    return s


def slow_down(srv, name: str) -> None:
    """Load `name` and make each of its tokens take SLOW seconds (in the worker thread)."""
    srv.openai().chat.completions.create(model=name, messages=user("go"), max_tokens=1)
    model = srv.loaded(name)
    real = model._piece

    def slow_piece(token):
        time.sleep(SLOW)
        return real(token)
    model._piece = slow_piece


def user(text):
    return [{"role": "user", "content": text}]


def test_32_concurrent_streams_mixed_clients(tmp_path_factory, many):
    path, answers = many
    with serve(tmp_path_factory, {"many": path}, queue=64) as srv:
        got, errors = {}, []
        barrier = threading.Barrier(32)

        def client(i: int, letter: str) -> None:
            try:
                barrier.wait()
                if i % 2:
                    stream = srv.openai().chat.completions.create(
                        model="many", messages=user("q " + letter), stream=True)
                    text = "".join(c.choices[0].delta.content or "" for c in stream)
                else:
                    stream = srv.ollama().chat(model="many", messages=user("q " + letter),
                                               stream=True)
                    text = "".join(p.message.content for p in stream)
                got[letter] = text
            except Exception as exc:
                errors.append(repr(exc))

        started = time.perf_counter()
        threads = [threading.Thread(target=client, args=(i, letter))
                   for i, letter in enumerate(LETTERS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        wall = time.perf_counter() - started
        assert errors == []
        assert got == answers                       # each client got exactly its own answer
        lm = srv.pool.loaded["many"]
        # the server lets go of the model just after the last byte a client reads
        wait_for(lambda: lm.users == 0 and not lm.gate.busy and lm.gate.waiting == 0,
                 what="the model to be released")
        print(f"\n32 concurrent streams: 0 errors, {wall:.2f} s wall")


def test_queue_overflow_is_503_and_serving_goes_on(tmp_path_factory, loop):
    with serve(tmp_path_factory, {"loop": loop}, queue=2) as srv:
        slow_down(srv, "loop")
        first_text, results = [], {}

        def first():
            stream = srv.openai().chat.completions.create(model="loop", messages=user("go"),
                                                          max_tokens=40, stream=True)
            for c in stream:
                first_text.append(c.choices[0].delta.content or "")
                results["first_finish"] = c.choices[0].finish_reason

        def waiter(k):
            r = srv.openai().chat.completions.create(model="loop", messages=user("go"),
                                                     max_tokens=3)
            results[k] = r.choices[0].message.content

        t1 = threading.Thread(target=first)
        t1.start()
        lm = srv.pool.loaded["loop"]
        wait_for(lambda: lm.gate.busy and first_text, what="the first stream to start")
        waiters = [threading.Thread(target=waiter, args=(k,)) for k in ("w1", "w2")]
        for t in waiters:
            t.start()
        wait_for(lambda: lm.gate.waiting == 2, what="two requests in the queue")
        with pytest.raises(openai.InternalServerError) as err:
            srv.openai().chat.completions.create(model="loop", messages=user("go"))
        assert err.value.status_code == 503
        assert int(err.value.response.headers["retry-after"]) >= 1
        assert err.value.code == "queue_full"
        with pytest.raises(ollama.ResponseError) as oerr:
            srv.ollama().chat(model="loop", messages=user("go"))
        assert oerr.value.status_code == 503 and "busy" in oerr.value.error
        for t in [t1] + waiters:
            t.join(timeout=60)
        # the running stream was never cut off by the newer requests
        assert "".join(first_text) == ("abc:" * 10) and results["first_finish"] == "length"
        assert results["w1"] == results["w2"] == "abc"
        r = srv.openai().chat.completions.create(model="loop", messages=user("go"), max_tokens=2)
        assert r.choices[0].message.content == "ab"


def test_disconnects_free_the_model_within_one_token(tmp_path_factory, loop):
    with serve(tmp_path_factory, {"loop": loop}) as srv:
        slow_down(srv, "loop")
        pool = srv.pool
        lm = pool.loaded["loop"]
        body = {"model": "loop", "messages": user("go"), "max_tokens": 200}
        report = []

        # 1. a streaming client reads a few tokens and hangs up
        with httpx.Client(timeout=60) as http:
            with http.stream("POST", srv.url + "/v1/chat/completions",
                             json={**body, "stream": True}) as r:
                lines = r.iter_lines()
                seen = 0
                for line in lines:
                    if '"content": "' in line and '"content": ""' not in line:
                        seen += 1
                    if seen == 5:
                        break
                closed_at = time.perf_counter()
        wait_for(lambda: pool.cancellations, what="the cancelled stream to end")
        rec = pool.cancellations[-1]
        assert rec.started and rec.tokens_at_end - rec.tokens_at_cancel <= 1
        assert rec.tokens_at_end < 20
        report.append(("stream", rec, rec.freed_at - closed_at))
        wait_for(lambda: not lm.gate.busy and lm.users == 0, what="the model to be released")

        # 2. a non-streaming client gives up while its answer is being generated
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(srv.url + "/v1/chat/completions", json=body, timeout=0.3)
        closed_at = time.perf_counter()
        wait_for(lambda: len(pool.cancellations) == 2, what="the non-streaming cancel")
        rec = pool.cancellations[-1]
        assert rec.started and rec.tokens_at_end - rec.tokens_at_cancel <= 1
        report.append(("non-stream", rec, rec.freed_at - closed_at))

        # 3. a client waiting in the queue gives up: it leaves the queue, the running one goes on
        running = {}

        def long_stream():
            r = httpx.post(srv.url + "/api/chat", json={
                "model": "loop", "messages": user("go"), "stream": False,
                "options": {"num_predict": 30}}, timeout=60)
            running.update(r.json())
        t = threading.Thread(target=long_stream)
        t.start()
        wait_for(lambda: lm.gate.busy, what="the long request to start")
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(srv.url + "/api/chat", json={"model": "loop", "messages": user("go"),
                                                    "stream": False}, timeout=0.3)
        wait_for(lambda: len(pool.cancellations) == 3, what="the waiting client's cancel")
        rec = pool.cancellations[-1]
        assert not rec.started and lm.gate.waiting == 0 and lm.gate.busy
        t.join(timeout=60)
        assert running["message"]["content"] == "abc:" * 7 + "ab"
        assert running["done_reason"] == "length"

        # the model is free and answers at once
        r = srv.openai().chat.completions.create(model="loop", messages=user("go"), max_tokens=3)
        assert r.choices[0].message.content == "abc"
        print()
        for kind, rec, latency in report:
            print(f"{kind}: {rec.tokens_at_end - rec.tokens_at_cancel} token(s) after the "
                  f"server saw the disconnect; model free {latency * 1000:.0f} ms after the "
                  f"client closed ({SLOW * 1000:.0f} ms/token)")


def test_keep_alive_and_max_loaded(tmp_path_factory, many, loop):
    path, _ = many
    with serve(tmp_path_factory, {"many": path, "loop": loop}, max_loaded=1,
               keep_alive=0.5) as srv:
        o, pool = srv.ollama(), srv.pool
        o.chat(model="many", messages=user("q а"))
        assert list(pool.loaded) == ["many"]
        o.chat(model="loop", messages=user("go"), options={"num_predict": 2})
        assert list(pool.loaded) == ["loop"]          # the least recently used made room
        wait_for(lambda: not pool.loaded, timeout=5, what="keep-alive to unload the model")
        o.chat(model="loop", messages=user("go"), options={"num_predict": 2}, keep_alive=-1)
        import time as _t
        _t.sleep(1.0)
        assert list(pool.loaded) == ["loop"]          # keep_alive -1: stays
        assert o.ps().models[0].model == "loop"
        o.chat(model="loop", messages=user("go"), options={"num_predict": 2}, keep_alive=0)
        wait_for(lambda: not pool.loaded, timeout=5, what="keep_alive 0 to unload at once")
        r = o.generate(model="many", prompt="", keep_alive="10m")   # load only
        assert r.done and r.done_reason == "load" and list(pool.loaded) == ["many"]
