"""`kiln serve` as a command: startup lines, the exposure warning, and SIGTERM / SIGINT in
the middle of a stream: the stream ends cleanly, the process exits 0."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time

import pytest

pytest.importorskip("llama_cpp")
pytest.importorskip("sentencepiece")
httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")

import bigram  # noqa: E402
from hf_models import make_spm_tokenizer  # noqa: E402
from server_util import scripted_gguf  # noqa: E402

# the command, with each generated token slowed to 20 ms so a stream is long enough to stop
SLOW_SERVE = ("import time, sys; import runtime.engine as e; real = e.ChatModel._piece; "
              "e.ChatModel._piece = lambda self, t: (time.sleep(0.02), real(self, t))[1]; "
              "from runtime.cli import main; main(sys.argv[1:])")


@pytest.fixture(scope="module")
def loop(tmp_path_factory):
    import sentencepiece as spm

    d = tmp_path_factory.mktemp("tok")
    make_spm_tokenizer(d)
    sp = spm.SentencePieceProcessor(model_file=str(d / "tokenizer.model"))
    start = sp.encode("x assistant:")[-1]
    return scripted_gguf(tmp_path_factory.mktemp("loop"), [],
                         cycle=[start] + bigram.text_chain(sp, "abc"))


def start(args, tmp_path):
    env = dict(os.environ, KILN_HOME=str(tmp_path / "home"), PYTHONUNBUFFERED="1")
    env.pop("KILN_API_KEY", None)
    proc = subprocess.Popen([sys.executable, "-c", SLOW_SERVE, "serve", *args, "--port", "0"],
                            stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
    lines = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        lines.append(line)
        if line.startswith("Ctrl-C stops"):
            break
    text = "".join(lines)
    m = re.search(r"kiln serve: (http://\S+)", text)
    assert m, text
    url = m.group(1)
    deadline = time.monotonic() + 30
    while True:                                 # listening as soon as uvicorn has started
        try:
            httpx.get(url + "/health", timeout=1)
            break
        except httpx.HTTPError:
            assert time.monotonic() < deadline and proc.poll() is None, text
            time.sleep(0.05)
    return proc, url, text


def test_startup_lines(loop, tmp_path):
    proc, url, text = start([str(loop), "--ctx", "256"], tmp_path)
    try:
        assert url.startswith("http://127.0.0.1:")
        assert f"OpenAI: {url}/v1" in text and f"Ollama: {url}" in text
        assert "model (given)" in text and str(loop) in text
        assert "warning" not in text
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0


def test_warning_without_key_on_other_hosts(loop, tmp_path):
    proc, url, text = start([str(loop), "--host", "0.0.0.0"], tmp_path)
    try:
        assert "warning: listening on 0.0.0.0 without --api-key" in text
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0


def test_missing_model_is_one_line_error(tmp_path):
    out = subprocess.run([sys.executable, "-m", "runtime", "serve", str(tmp_path / "no.gguf")],
                         capture_output=True, text=True, timeout=60,
                         env=dict(os.environ, KILN_HOME=str(tmp_path / "home")))
    assert out.returncode == 1
    assert "no.gguf" in out.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize("sig,api", [(signal.SIGTERM, "openai"), (signal.SIGINT, "ollama")])
def test_signal_ends_streams_cleanly_and_exits_0(loop, tmp_path, sig, api):
    proc, url, _ = start([str(loop), "--ctx", "256"], tmp_path)
    lines, errors = [], []
    started = threading.Event()

    def stream():
        try:
            if api == "openai":
                req = ("POST", url + "/v1/chat/completions",
                       {"model": "model", "messages": [{"role": "user", "content": "go"}],
                        "stream": True, "max_tokens": 200})
            else:
                req = ("POST", url + "/api/chat",
                       {"model": "model", "messages": [{"role": "user", "content": "go"}],
                        "options": {"num_predict": 200}})
            with httpx.stream(req[0], req[1], json=req[2], timeout=60) as r:
                for line in r.iter_lines():
                    if line:
                        lines.append(line)
                    if len(lines) >= 5:
                        started.set()
        except Exception as exc:
            errors.append(repr(exc))
        finally:
            started.set()

    t = threading.Thread(target=stream)
    t.start()
    assert started.wait(30)
    sent_at = time.monotonic()
    proc.send_signal(sig)
    t.join(timeout=30)
    code = proc.wait(timeout=30)
    took = time.monotonic() - sent_at
    assert code == 0, proc.stderr.read()
    assert errors == []
    if api == "openai":
        assert lines[-1] == "data: [DONE]"
        final = json.loads(lines[-2][len("data: "):])
        assert final["choices"][0]["finish_reason"] == "stop"
        n = sum(1 for line in lines if '"content": "' in line) - 1
    else:
        final = json.loads(lines[-1])
        assert final["done"] is True and final["done_reason"] == "unload"
        n = final["eval_count"]
    assert n < 150, n             # stopped early, not run to the end
    assert took < 15
