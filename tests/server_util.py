"""Helpers for the server tests: scripted GGUFs (tests/bigram.py) with a chosen template,
stops and sampling defaults, and a real `kiln serve` on an ephemeral loopback port."""
from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

import bigram
from convert.cli import run_cli
from convert.families.llama import LlamaFamily

# the answer follows the prompt's last token
TEMPLATE = ("{{ bos_token }}{% for m in messages %}{{ m['role'] }}: {{ m['content'] }} | "
            "{% endfor %}assistant:")
STOPS = ["USER:"]


@pytest.fixture(scope="module")
def sp(tmp_path_factory):
    """The tests' SentencePiece tokenizer (hf_models.make_spm_tokenizer), loaded."""
    import sentencepiece as spm

    from hf_models import make_spm_tokenizer

    d = tmp_path_factory.mktemp("tok")
    make_spm_tokenizer(d)
    return spm.SentencePieceProcessor(model_file=str(d / "tokenizer.model"))


def answer_start(sp) -> int:
    """The id TEMPLATE's prompt ends with ("assistant:"): where a scripted answer starts."""
    return sp.encode("x assistant:")[-1]


def sky_gguf(d: Path, sp, **kw) -> tuple[Path, int, list[int]]:
    """The scripted model that answers "Sky blue" to any prompt: (GGUF, start id, answer ids)."""
    start, answer = answer_start(sp), bigram.text_chain(sp, "Sky blue")
    return scripted_gguf(d, [[start] + answer], **kw), start, answer


def scripted_gguf(d: Path, chains, *, cycle=None, template: str = TEMPLATE, stops=STOPS,
                  sampling=None, banned=(), dim: int | None = None, **build) -> Path:
    """Convert a scripted bigram checkpoint with kiln, the family knowledge patched in
    (`build`: bigram.build's n_ctx, corpus, vocab_size)."""
    from runtime.cli import cli

    mp = pytest.MonkeyPatch()
    if dim:
        mp.setattr(bigram, "D", dim)
    bigram.build(d / "ckpt", chains, cycle=cycle, **build)
    out = d / "model.gguf"
    mp.setattr(LlamaFamily, "chat_template", lambda self, vocab: template)
    mp.setattr(LlamaFamily, "stop_strings", lambda self: list(stops))
    mp.setattr(LlamaFamily, "banned_ids", lambda self: list(banned))
    mp.setattr(LlamaFamily, "sampling_defaults",
               lambda self: dict(sampling if sampling is not None else {"temperature": 0.0}))
    try:
        run_cli(cli, ["convert", str(d / "ckpt"), "-o", str(out), "--quant", "f32", "--quiet"])
    except SystemExit as exc:
        assert exc.code in (0, None)
    finally:
        mp.undo()
    return out


class Server:
    """`kiln serve` in a thread of this process (so tests can look at its pool)."""

    def __init__(self, config):
        from runtime.server.cli import bind, make_server

        self.config = config
        self.server = make_server(config)
        self.pool = self.server.pool
        self.sock = bind("127.0.0.1", 0)
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]},
                                       daemon=True)

    def __enter__(self) -> "Server":
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("kiln serve did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
        self.sock.close()

    def loaded(self, model_id: str):
        return self.pool.loaded[model_id].model

    def openai(self, **kw):
        import openai

        return openai.OpenAI(base_url=self.url + "/v1", api_key=kw.pop("api_key", "none"),
                             max_retries=kw.pop("max_retries", 0), **kw)

    def ollama(self, **kw):
        import ollama

        return ollama.Client(host=self.url, **kw)


def wait_for(cond, timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)
