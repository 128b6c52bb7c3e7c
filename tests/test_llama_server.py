"""Issue 12: llama.cpp's own server renders every family's prompt from kiln's GGUF exactly.

For each family, the tiny checkpoint its own tests build is converted with `kiln convert`, and
`llama-server -m X.gguf --jinja` (built from the installed llama-cpp-python's sdist, see
tests/llama_tools.py) is started on loopback, once per GGUF. For every golden case of that
family's tests (1-3 turns, with and without a system message, Jais in English and Arabic):

* `POST /apply-template` equals the official prompt (the family test's reference), less the
  leading BOS text when the GGUF's add_bos_token is true: llama.cpp's chat code strips a BOS the
  template printed (common/chat.cpp) because tokenizing adds it back;
* `POST /tokenize` of that text, with add_special = the GGUF's add_bos_token, gives the
  reference tokenizer's ids of the official prompt. Where kiln marks llama.cpp's tokenizer as
  inexact for the family (kiln.tokenizer = "huggingface": llm-jp's Unigram, XVERSE's
  punctuation/digit splitting, and XVERSE's official ids tokenize each turn on its own, which
  one /tokenize of the whole text cannot) the ids are counted, not asserted, and the template's
  special tokens must still be the reference's.

The table family x case is printed at the end. About 35 s on 2 cores
once llama-server is built (the build itself: about 20 min, once per machine).
"""
from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest

pytest.importorskip("llama_cpp")
pytest.importorskip("tokenizers")
pytest.importorskip("transformers")
pytest.importorskip("torch")

import llama_tools  # noqa: E402
from facts import need_llmjp_tokenizer, official  # noqa: E402
from hf_models import kiln, make_spm_tokenizer  # noqa: E402

FAMILIES = ["llm-jp", "rakutenai", "jais", "xverse", "alaya"]
RESULTS: dict[str, tuple] = {}   # family -> (Built, cases), for the table


@dataclass
class Case:
    name: str
    messages: list[dict]
    want: str                       # the official prompt, BOS text included where it has one
    want_ids: list[int] = field(default_factory=list)
    got: str | None = None          # llama-server's /apply-template
    got_ids: list[int] | None = None
    hf_text: str | None = None      # transformers' apply_chat_template with the GGUF's template
    kiln_text: str | None = None    # kiln's own sandbox (runtime.prompt)
    lcp_text: str | None = None     # llama-cpp-python's chat formatter (its server, Llama.chat)
    got_original: str | None = None  # llm-jp: llama-server with the checkpoint's own template


@dataclass
class Built:
    src: Path                       # the checkpoint folder
    gguf: Path
    bos: str                        # BOS text the template may print
    add_bos: bool
    exact_ids: bool                 # llama.cpp's tokenizer is the model's algorithm
    special_ids: set[int]
    cases: list[Case]


# ------------------------------------------------------------------------------ families

def _ids_hf(tokenizer_json: Path):
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tokenizer_json))
    return lambda text: tok.encode(text, add_special_tokens=False).ids


def build_llmjp(d: Path) -> Built:
    import test_templates_llama_families as tl

    tok_dir = need_llmjp_tokenizer()
    src = d / "llm-jp"
    src.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(tok_dir / name, src / name)
    tl.tiny_llama(src, 99584, "llm-jp/llm-jp-3.1-1.8b-instruct4")
    card = official("llm-jp-3.1-instruct4")["system"]
    ids = _ids_hf(src / "tokenizer.json")
    cases = []
    for system, label in ((None, ""), (card, " (card's)"), ("あなたは簡潔に答えます。", " (other)")):
        for msgs in tl.conversations(system):
            want = tl.llmjp_reference(msgs)
            cases.append(Case(_name(msgs) + label, msgs, want, ids(want)))
    return Built(src, _convert(src, d), "<s>", True, False, {1, 2}, cases)


def build_rakuten(d: Path) -> Built:
    import sentencepiece as spm
    import test_templates_llama_families as tl

    src = d / "rakuten"
    n_vocab = make_spm_tokenizer(src)
    tl.tiny_llama(src, n_vocab, "Rakuten/RakutenAI-7B-instruct")
    sp = spm.SentencePieceProcessor(model_file=str(src / "tokenizer.model"))
    card = official("rakutenai-7b-instruct")["template"]
    cases = []
    for with_system in (False, True):
        for msgs in tl.conversations("You are terse." if with_system else None):
            msgs = [dict(m, content=m["content"].replace("日本の首都はどこですか？ ", ""))
                    for m in msgs]
            want = tl.rakuten_reference(msgs, card)
            # as test_templates_llama_families: BOS, SentencePiece per text run, eos per </s>
            ref = [sp.bos_id()]
            for i, part in enumerate(want[len("<s>"):].split("</s>")):
                ref += ([sp.eos_id()] if i else []) + (sp.encode(part) if part else [])
            cases.append(Case(_name(msgs), msgs, want, ref))
    return Built(src, _convert(src, d), "<s>", True, True, {1, 2}, cases)


def build_jais(d: Path) -> Built:
    import test_jais as tj

    src = d / "jais"
    tj.build("core42", src)
    prompts = official("jais-30b-chat-v1")
    ids = _ids_hf(src / "tokenizer.json")
    cases = []
    for lang, texts in (("en", tj.EN), ("ar", tj.AR)):
        for system, label in ((None, ""), ("You are a concise assistant.", " (en)"),
                              ("أنت مساعد موجز.", " (ar)")):
            for turns in (1, 2, 3):
                msgs = tj.conversation(texts, turns, system)
                want = tj.expected_prompt(prompts, msgs)
                cases.append(Case(f"{lang}: {_name(msgs)}{label}", msgs, want, ids(want)))
    return Built(src, _convert(src, d), "<|endoftext|>", False, True, {0}, cases)


def _xverse_or_alaya_cases(turns_text, system_text, reference, ids) -> list[Case]:
    cases = []
    for system in (None, system_text):
        for n_turns in (1, 2, 3):
            msgs = [{"role": "system", "content": system}] if system else []
            for i in range(n_turns):
                user, answer = turns_text[i]
                msgs.append({"role": "user", "content": user})
                if i < n_turns - 1:
                    msgs.append({"role": "assistant", "content": answer or "ok"})
            want = reference(msgs)
            cases.append(Case(_name(msgs), msgs, want, ids(want) if ids else []))
    return cases


def build_xverse(d: Path) -> Built:
    import test_xverse as tx
    from tokenizers import Tokenizer

    src = tx.build_xverse(d / "xverse")
    cases = _xverse_or_alaya_cases(tx.TURNS, "You are a helpful assistant.",
                                   lambda m: tx.reference_prompt(m, "<|endoftext|>"), None)
    hf = Tokenizer.from_file(str(src / "tokenizer.json"))
    for case in cases:          # the official ids: XVERSE's code tokenizes each turn on its own
        case.want_ids = tx.official_ids(hf, case.messages)
    return Built(src, _convert(src, d), "<|startoftext|>", False, False, {2, 3}, cases)


def build_alaya(d: Path) -> Built:
    import test_alaya as ta

    spec = {k: v for k, v in ta.CASES["own-full"].items() if k != "kind"}
    src = ta.build_own(d / "alaya", **spec)
    cases = _xverse_or_alaya_cases(ta.TURNS, "You are a helpful assistant.",
                                   ta.reference_prompt, _ids_hf(src / "tokenizer.json"))
    return Built(src, _convert(src, d), "<s>", False, True, {1, 2}, cases)


BUILDERS = {"llm-jp": build_llmjp, "rakutenai": build_rakuten, "jais": build_jais,
            "xverse": build_xverse, "alaya": build_alaya}


def _name(msgs: list[dict]) -> str:
    turns = sum(m["role"] == "user" for m in msgs)
    system = any(m["role"] == "system" for m in msgs)
    return f"{turns} turn{'s' if turns > 1 else ''}{' + system' if system else ''}"


def _convert(src: Path, d: Path) -> Path:
    out = d / f"{src.name}.gguf"
    kiln("convert", src, "-o", out, "--quant", "f16", "--quiet")
    return out


# ------------------------------------------------------------------------------ the server

class Server:
    def __init__(self, exe: Path, gguf: Path, log: Path, extra: tuple[str, ...] = ()):
        with socket.socket() as s:                  # an ephemeral port, free right now
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.log = log
        self.proc = subprocess.Popen(
            [str(exe), "-m", str(gguf), "--jinja", "--host", "127.0.0.1", "--port", str(self.port),
             "-c", "1024", "-t", "2", "-np", "1", "--no-warmup", "--no-webui", *extra],
            stdout=open(log, "wb"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(f"llama-server exited {self.proc.returncode}:\n"
                                     + log.read_text(errors="replace")[-3000:])
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=2):
                    return
            except OSError:
                if time.monotonic() > deadline:
                    self.close()
                    raise AssertionError("llama-server not healthy after 60 s:\n"
                                         + log.read_text(errors="replace")[-3000:])
                time.sleep(0.2)

    def post(self, path: str, body: dict) -> dict:
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}",
                                     data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as resp:
            return json.loads(resp.read())

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture(scope="module")
def server_exe():
    return llama_tools.tool("llama-server")


@pytest.fixture(scope="module", params=FAMILIES)
def served(request, server_exe, tmp_path_factory):
    """One family: GGUF built, one server on it, every case sent once."""
    family = request.param
    d = tmp_path_factory.mktemp(family)
    built = BUILDERS[family](d)
    _render_elsewhere(built)
    server = Server(server_exe, built.gguf, d / "server.log")
    try:
        for case in built.cases:
            case.got = server.post("/apply-template", {"messages": case.messages})["prompt"]
            case.got_ids = server.post("/tokenize", {"content": case.got,
                                                     "add_special": built.add_bos,
                                                     "parse_special": True})["tokens"]
    finally:
        server.close()
    if family == "llm-jp":
        _serve_original_template(server_exe, built, d)
    RESULTS[family] = (built, built.cases)
    return family, built


def _serve_original_template(server_exe: Path, built: Built, d: Path) -> None:
    """The witness for the fix: the same GGUF served with the checkpoint's own template."""
    import gguf

    from convert.families.llmjp import ORIGINAL_KEY

    original = d / "original.jinja"
    original.write_text(gguf.GGUFReader(str(built.gguf)).fields[ORIGINAL_KEY].contents(),
                        encoding="utf-8")
    server = Server(server_exe, built.gguf, d / "server-original.log",
                    ("--chat-template-file", str(original)))
    try:
        for case in built.cases:
            case.got_original = server.post("/apply-template",
                                            {"messages": case.messages})["prompt"]
    finally:
        server.close()


def _render_elsewhere(built: Built) -> None:
    """The GGUF's template rendered by transformers' apply_chat_template (a tokenizer that
    knows only the GGUF's BOS / EOS texts: the template needs nothing else) and by kiln's
    runtime sandbox, and by llama-cpp-python's Jinja2ChatFormatter."""
    import gguf
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    from runtime.meta import read_meta
    from runtime.prompt import PromptBuilder

    fields = gguf.GGUFReader(str(built.gguf)).fields
    template = fields["tokenizer.chat_template"].contents()
    tokens = fields["tokenizer.ggml.tokens"].contents()
    bos = tokens[fields["tokenizer.ggml.bos_token_id"].contents()]
    eos = tokens[fields["tokenizer.ggml.eos_token_id"].contents()]
    tiny = Tokenizer(models.WordLevel({"<unk>": 0, bos: 1, eos: 2}, unk_token="<unk>"))
    hf = PreTrainedTokenizerFast(tokenizer_object=tiny, bos_token=bos, eos_token=eos,
                                 unk_token="<unk>")
    kiln_prompt = PromptBuilder(read_meta(built.gguf), None)
    lcp = Jinja2ChatFormatter(template, eos_token=eos, bos_token=bos)
    for case in built.cases:
        case.hf_text = hf.apply_chat_template(case.messages, chat_template=template,
                                              tokenize=False, add_generation_prompt=True)
        case.kiln_text = kiln_prompt.render(case.messages)
        case.lcp_text = lcp(messages=case.messages).prompt


# ------------------------------------------------------------------------------ tests

def served_text(built: Built, case: Case) -> str:
    """The official prompt as llama.cpp's chat code hands it out: a BOS the template printed is
    stripped when add_bos_token is true (tokenizing adds it back)."""
    if built.add_bos and case.want.startswith(built.bos):
        return case.want[len(built.bos):]
    return case.want


def test_apply_template_is_the_official_prompt(served):
    family, built = served
    for case in built.cases:
        assert case.got == served_text(built, case), (family, case.name)


def test_transformers_kiln_and_llama_cpp_python_render_the_official_prompt(served):
    """The same template in transformers' Jinja environment, in kiln's sandbox and in
    llama-cpp-python's chat formatter."""
    family, built = served
    for case in built.cases:
        assert case.hf_text == case.want, (family, case.name)
        assert case.kiln_text == case.want, (family, case.name)
        assert case.lcp_text == case.want, (family, case.name)


def test_tokenize_gives_the_reference_ids(served):
    family, built = served
    for case in built.cases:
        if built.exact_ids:
            assert case.got_ids == case.want_ids, (family, case.name)
        else:     # llama.cpp's tokenizer approximates this family's; the markers must agree
            marks = [t for t in case.got_ids if t in built.special_ids]
            assert marks == [t for t in case.want_ids if t in built.special_ids], \
                (family, case.name)
            assert case.got_ids[:1] == case.want_ids[:1], (family, case.name)


def test_gguf_template_keys(served):
    """llm-jp's GGUF holds the llama.cpp-friendly template and, under
    tokenizer.chat_template.original, the checkpoint's own (served with that one instead, the
    system message moves into the user turn); no other family needs a second one.
    add_bos_token is what the cases assumed."""
    import gguf

    from convert.families.llmjp import INSTRUCT_TEMPLATE, LLAMA_CPP_TEMPLATE, ORIGINAL_KEY

    family, built = served
    fields = gguf.GGUFReader(str(built.gguf)).fields
    # the BOS rule /tokenize was called with is the GGUF's
    assert bool(fields["tokenizer.ggml.add_bos_token"].contents()) is built.add_bos
    if family == "llm-jp":
        assert fields["tokenizer.chat_template"].contents() == LLAMA_CPP_TEMPLATE
        assert fields[ORIGINAL_KEY].contents() == INSTRUCT_TEMPLATE
        _original_loses_the_system_message(built)
    else:
        assert ORIGINAL_KEY not in fields and "tokenizer.chat_template" in fields


@pytest.fixture(scope="module", autouse=True)
def table(request):
    """The family x case table, printed at the end of the module."""
    yield
    if not RESULTS:
        return
    lines = ["", "| family | case | llama-server /apply-template | /tokenize ids | "
             "transformers | kiln | llama-cpp-python |", "|---|---|---|---|---|---|---|"]
    for family, (built, cases) in RESULTS.items():
        for c in cases:
            text = "exact" if c.got == served_text(built, c) else "DIFFERS"
            ids = "exact" if c.got_ids == c.want_ids else (
                "DIFFER" if built.exact_ids else "differ (kiln.tokenizer = huggingface)")
            hf = "exact" if c.hf_text == c.want else "DIFFERS"
            ours = "exact" if c.kiln_text == c.want else "DIFFERS"
            lcp = "exact" if c.lcp_text == c.want else "DIFFERS"
            lines.append(f"| {family} | {c.name} | {text} | {ids} | {hf} | {ours} | {lcp} |")
    capman = request.config.pluginmanager.getplugin("capturemanager")
    with capman.global_and_fixture_disabled():
        print("\n".join(lines))


@pytest.mark.parametrize("spelling", ["as shipped", "respelled", "reads the content", "other"])
def test_llmjp_template_recognized_by_rendering(spelling):
    """The llm-jp-3 instruct template is replaced whatever its spelling (recognized by what it
    renders, the original kept); a template that reads the system content, or another format,
    is the checkpoint's own choice and stays."""
    from types import SimpleNamespace

    from convert.families.llmjp import INSTRUCT_TEMPLATE, LLAMA_CPP_TEMPLATE, ORIGINAL_KEY, \
        LlmJpFamily

    own = {"as shipped": INSTRUCT_TEMPLATE,
           "respelled": INSTRUCT_TEMPLATE.replace("{{bos_token}}", "{{- bos_token -}}")
           .replace("message['role']", 'message.role').replace("{% for", "{%- for"),
           "reads the content": LLAMA_CPP_TEMPLATE.replace(
               "{{ message['content'] }}{% elif", "{{ '### システム:' + message['content'] }}{% elif"),
           "other": "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}{% endfor %}"}[spelling]
    fam = LlmJpFamily({}, Path("."))
    vocab = SimpleNamespace(chat_template=own, special={}, hf_json=None)
    got = fam.chat_template(vocab)
    meta = fam.kiln_metadata(vocab)
    assert spelling != "reads the content" or "### システム:" in own
    if spelling in ("as shipped", "respelled"):
        assert got == LLAMA_CPP_TEMPLATE and meta[ORIGINAL_KEY] == own
    else:
        assert got == own and ORIGINAL_KEY not in meta


def _original_loses_the_system_message(built: Built) -> None:
    """Why llm-jp's template had to change: served with the checkpoint's own template,
    llama.cpp's system-role probe fails and the system text lands in the first user turn."""
    import test_templates_llama_families as tl

    for case in built.cases:
        msgs = case.messages
        if msgs[0]["role"] != "system":
            assert case.got_original == served_text(built, case), case.name
            continue
        merged = [dict(msgs[1], content=msgs[0]["content"] + "\n" + msgs[1]["content"])]
        assert case.got_original == tl.llmjp_reference(merged + msgs[2:])[len("<s>"):]
        assert case.got_original != served_text(built, case), case.name
