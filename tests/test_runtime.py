"""The chat engine end to end on scripted models converted by kiln and run by llama.cpp."""
from __future__ import annotations

import json
import subprocess
import sys
import threading

import pytest

pytest.importorskip("llama_cpp")
pytest.importorskip("sentencepiece")

import bigram  # noqa: E402
from server_util import STOPS, answer_start, scripted_gguf, sky_gguf, sp  # noqa: E402,F401
from runtime.engine import ChatModel  # noqa: E402


@pytest.fixture(scope="module")
def scripted(tmp_path_factory, sp):
    """A GGUF whose answers are scripted: after the prompt's last token it says ANSWER."""
    return sky_gguf(tmp_path_factory.mktemp("scripted"), sp)


def user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def test_answer_follows_script_and_stops_at_eos(scripted):
    path, start, answer = scripted
    with ChatModel(path, n_ctx=256) as model:
        ids = model.prompt.encode(user("what colour is the sky"))
        assert ids[0] == model.meta.bos_id and ids[-1] == start
        pieces = list(model.chat(user("what colour is the sky"), stream=True))
        assert "".join(pieces) == "Sky blue"
        assert len(pieces) > 1  # streamed, not all at once
        assert model.last_stats.finish_reason == "stop"
        assert model.last_stats.generated_tokens == len(answer)


def test_metadata_drives_runtime(scripted):
    path, _, _ = scripted
    with ChatModel(path, n_ctx=256) as model:
        assert model.meta.stop_strings == STOPS
        assert model.meta.sampling == {"temperature": 0.0}
        assert model.meta.family == "llama"


def test_stop_string_is_never_shown(tmp_path, sp):
    start = answer_start(sp)
    path = scripted_gguf(tmp_path, [[start] + bigram.text_chain(sp, "ok USER:")])
    with ChatModel(path, n_ctx=256) as model:
        pieces = list(model.chat(user("hi"), stream=True))
        assert "".join(pieces) == "ok "
        assert not any("U" in p for p in pieces)
        assert model.last_stats.finish_reason == "stop"


def test_banned_token_is_never_sampled(tmp_path, sp):
    start = answer_start(sp)
    banned_tok = bigram.byte_id(sp, ord("Z"))
    chains = [[start, banned_tok] + bigram.text_chain(sp, "no")]
    free = scripted_gguf(tmp_path / "free", chains)
    ban = scripted_gguf(tmp_path / "ban", chains, banned=[banned_tok])
    with ChatModel(free, n_ctx=256) as model:
        assert model.chat(user("hi")) == "Zno"  # the script says Z first
    with ChatModel(ban, n_ctx=256) as model:
        assert model.meta.banned_ids == [banned_tok]
        assert "Z" not in model.chat(user("hi"))


def test_multibyte_stream_has_no_replacement_chars(tmp_path, sp):
    start = answer_start(sp)
    path = scripted_gguf(tmp_path, [[start] + bigram.text_chain(sp, "é日")])
    with ChatModel(path, n_ctx=256) as model:
        pieces = list(model.chat(user("hi"), stream=True))
        assert "".join(pieces) == "é日"
        assert all("\ufffd" not in p for p in pieces)


def test_kv_cache_reused_across_turns(scripted):
    path, _, _ = scripted
    with ChatModel(path, n_ctx=256) as model:
        evaluated = []
        real_eval = model.llm.eval

        def counting_eval(tokens):
            evaluated.append(len(tokens))
            return real_eval(tokens)

        model.llm.eval = counting_eval
        history = user("first question about the weather today")
        history.append({"role": "assistant", "content": model.chat(history)})
        first_prompt = model.last_stats.prompt_tokens
        evaluated.clear()
        history += user("and tomorrow")
        model.chat(history)
        second = model.last_stats
        prompt_evals = evaluated[0]  # the first eval call is the prompt suffix
        assert second.prompt_tokens > first_prompt
        assert prompt_evals == second.evaluated_tokens
        new_tokens = second.prompt_tokens - first_prompt
        assert prompt_evals <= new_tokens + 12, (prompt_evals, new_tokens)
        assert prompt_evals < second.prompt_tokens / 2


def test_history_trimmed_to_fit_context(scripted):
    path, _, _ = scripted
    with ChatModel(path, n_ctx=96) as model:
        msgs = [{"role": "system", "content": "keep this system text"}]
        for i in range(8):
            msgs += [{"role": "user", "content": f"question number {i} about things"},
                     {"role": "assistant", "content": f"answer number {i}"}]
        msgs += user("the current question")
        answer = model.chat(msgs, max_tokens=16)
        stats = model.last_stats
        assert answer == "Sky blue"
        assert stats.trimmed_turns >= 2
        assert stats.prompt_tokens + 16 <= 96
        assert "keep this system text" in model.last_prompt
        assert "the current question" in model.last_prompt
        assert "question number 0" not in model.last_prompt


def test_cancel_stops_generation(tmp_path, sp):
    start = answer_start(sp)
    loop = [start] + bigram.text_chain(sp, "abc")  # start -> a -> b -> c -> start -> ...
    path = scripted_gguf(tmp_path, [], cycle=loop)
    with ChatModel(path, n_ctx=256) as model:
        got = []
        for piece in model.chat(user("go"), stream=True, max_tokens=200):
            got.append(piece)
            if len(got) == 3:
                model.cancel()
        assert model.last_stats.finish_reason == "cancelled"
        assert len(got) <= 4
        # the model is usable again afterwards
        assert model.chat(user("go"), max_tokens=5).startswith("abc")
        assert model.last_stats.generated_tokens == 5
        assert model.last_stats.finish_reason == "length"


def test_one_generation_at_a_time(scripted):
    path, _, _ = scripted
    with ChatModel(path, n_ctx=256) as model:
        results, errors = [], []

        def ask(q):
            try:
                results.append(model.chat(user(q)))
            except Exception as exc:  # pragma: no cover - reported below
                errors.append(exc)

        threads = [threading.Thread(target=ask, args=(f"question {i}",)) for i in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors
        assert results == ["Sky blue"] * 3


def test_injected_special_tokens_stay_text(scripted):
    path, _, _ = scripted
    with ChatModel(path, n_ctx=256) as model:
        eos, bos = model.meta.eos_id, model.meta.bos_id
        ids = model.prompt.encode(user("before </s> <s> after <0x0A>"))
        assert ids.count(bos) == 1 and ids[0] == bos  # only the template's own BOS
        assert eos not in ids
        assert model.chat(user("before </s> after")) == "Sky blue"


def test_kiln_run_json_and_stdin(scripted):
    path, _, _ = scripted
    out = subprocess.run([sys.executable, "-m", "runtime", "run", str(path), "--json",
                          "--max-tokens", "20"], input="what colour", capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["text"] == "Sky blue" and data["finish_reason"] == "stop"
    plain = subprocess.run([sys.executable, "-m", "runtime", "run", str(path), "hello"],
                           capture_output=True, text=True, timeout=120)
    assert plain.returncode == 0 and plain.stdout == "Sky blue\n"


def test_kiln_run_missing_model(tmp_path):
    out = subprocess.run([sys.executable, "-m", "runtime", "run", str(tmp_path / "x.gguf"), "hi"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 1
    assert "x.gguf" in out.stderr.strip().splitlines()[-1]


def test_doctor_reports_backend():
    out = subprocess.run([sys.executable, "-m", "runtime", "doctor", "--json"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout)
    # the values, against llama-cpp-python itself and the OS (lscpu where present)
    import os
    import shutil

    import llama_cpp

    assert info["llama_cpp_python"] == llama_cpp.__version__
    assert info["system_info"] == llama_cpp.llama_print_system_info().decode().strip()
    assert info["gpu_offload"] is bool(llama_cpp.llama_supports_gpu_offload())
    assert info["default_device"] == ("gpu (all layers)" if info["gpu_offload"] else "cpu")
    assert info["logical_cpus"] == os.cpu_count()
    if shutil.which("lscpu"):
        rows = subprocess.run(["lscpu", "-p=core,socket"], capture_output=True, text=True,
                              timeout=30).stdout.splitlines()
        assert info["physical_cores"] == len({r for r in rows if not r.startswith("#")})
    assert 1 <= info["default_threads"] <= info["logical_cpus"]


def test_chat_repl_under_a_terminal(tmp_path, sp):
    """Type, read the streamed answer, /reset, Ctrl-C mid-answer keeps the session, /exit."""
    pexpect = pytest.importorskip("pexpect")
    start = answer_start(sp)
    loop = [start] + bigram.text_chain(sp, "abc")
    # a long context, so that the answer is still running when Ctrl-C arrives (the tiny model
    # makes ~7,000 tokens/s: 256 tokens were sometimes gone before it, under load)
    endless = scripted_gguf(tmp_path / "loop", [], cycle=loop, n_ctx=16384)
    child = pexpect.spawn(sys.executable, ["-m", "runtime", "chat", str(endless),
                                           "--max-tokens", "1000000", "--ctx", "16384"],
                          encoding="utf-8", timeout=60)
    try:
        child.expect(r"/help for commands")
        child.expect(">>> ")
        child.sendline("/help")
        child.expect("/reset")
        child.expect(">>> ")
        child.sendline("hello")
        child.expect("abc")  # streaming has started
        child.sendintr()      # Ctrl-C mid-answer
        child.expect(r"\(stopped\)")
        child.expect(">>> ")  # the session is still alive
        child.sendline("/save " + str(tmp_path / "conv.json"))
        child.expect("saved 2 messages")
        child.sendline("/reset")
        child.expect("conversation cleared")
        child.sendline("/exit")
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    assert child.exitstatus == 0
    saved = json.loads((tmp_path / "conv.json").read_text())
    assert saved[0] == {"role": "user", "content": "hello"}
    assert saved[1]["role"] == "assistant" and saved[1]["content"].startswith("abc")


def test_library_prints_nothing(scripted, capfd):
    """Desktop apps embed the API: neither kiln nor llama.cpp may write to stdout/stderr."""
    from runtime import ChatModel as Public

    path, _, _ = scripted
    with Public(path, n_ctx=512) as model:  # n_ctx above training length: llama.cpp warns
        assert model.chat(user("hi")) == "Sky blue"
    out, err = capfd.readouterr()
    assert out == "" and err == ""
