"""The shipped calibration corpus (runtime/corpus) and the family languages it is weighted by.

* every file is UTF-8 text without control characters, each natural-language file mostly in
  its own script, chat.jsonl parses, and calibration and held-out texts share no sentence;
* `kiln convert` writes each family's languages as `kiln.languages` and read_meta reads them;
* `calibration_text` puts a GGUF's languages first and in full, and renders the chat part with
  the GGUF's own template.
"""
from __future__ import annotations

import functools
import json
import re
import unicodedata
from pathlib import Path

import pytest

from convert.families import FAMILIES

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("safetensors")

from hf_models import build as build_llama  # noqa: E402
from hf_models import kiln  # noqa: E402
from runtime.meta import read_meta  # noqa: E402

# What each family is made for (shared/families.md and the model cards): stated here, not
# read from kiln's own modules, so a wrong attribute fails.
EXPECTED_LANGUAGES = {"jais": ["ar", "en"], "llm-jp": ["ja", "en"], "rakutenai": ["ja", "en"],
                      "xverse": ["zh", "en"], "alaya": ["zh", "en"], "llama": ["en"],
                      "mpt": ["en"]}


CHATML = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + "
          "'<|im_end|>' + '\\n' }}{% endfor %}"
          "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")


def _checkpoint(family: str, root: Path) -> Path:
    """A tiny checkpoint in exact HF layout that kiln detects as `family`."""
    if family == "llama":
        return build_llama("llama", root / "tiny-llama")
    if family == "chatml":                       # a generic Llama with its own template
        folder = build_llama("llama", root / "tiny-chatml")
        cfg_path = folder / "tokenizer_config.json"
        cfg = json.loads(cfg_path.read_text())
        cfg["chat_template"] = CHATML
        cfg_path.write_text(json.dumps(cfg))
        return folder
    if family == "llm-jp":                       # clue: the folder name
        return build_llama("llama", root / "llm-jp-3-1.8b-instruct")
    if family == "rakutenai":
        return build_llama("mistral", root / "RakutenAI-7B-instruct")
    if family == "jais":
        from test_jais import build as build_jais

        build_jais("core42", root / "jais")
        return root / "jais"
    if family == "xverse":
        from test_xverse import build_xverse

        return build_xverse(root / "xverse")
    from test_alaya import build_hf as build_mpt

    name = "DataCanvas/Alaya-7B-Chat" if family == "alaya" else "mosaicml/mpt-tiny"
    (root / family).mkdir()
    return build_mpt(root / family, name=name)


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """family -> the F16 GGUF `kiln convert` made from a tiny checkpoint of that family."""
    made: dict[str, Path] = {}

    def get(family: str) -> Path:
        if family not in made:
            root = tmp_path_factory.mktemp(family.replace("-", ""))
            out = root / f"{family}.gguf"
            kiln("convert", _checkpoint(family, root), "-o", out, "--quant", "f16", "--quiet")
            made[family] = out
        return made[family]
    return get


def test_every_family_is_covered():
    assert sorted(EXPECTED_LANGUAGES) == sorted(f.name for f in FAMILIES)


@pytest.mark.parametrize("family", sorted(EXPECTED_LANGUAGES))
def test_convert_writes_languages_and_read_meta_reads_them(converted, family):
    import gguf

    path = converted(family)
    field = gguf.GGUFReader(path).fields["kiln.languages"]       # gguf-py, not kiln's reader
    assert field.types == [gguf.GGUFValueType.ARRAY, gguf.GGUFValueType.STRING]
    assert field.contents() == EXPECTED_LANGUAGES[family]
    meta = read_meta(path)
    assert meta.family == family
    assert meta.languages == EXPECTED_LANGUAGES[family]


# -- the files ---------------------------------------------------------------------------------

CORPUS = Path(__file__).resolve().parent.parent / "runtime" / "corpus"
CALIBRATION, HELDOUT = CORPUS / "calibration", CORPUS / "heldout"
SECTIONS = ("ar", "ja", "zh", "ko", "en", "code", "math")


def _script(ch: str) -> str:
    """This test's own classification of a letter by its Unicode name."""
    name = unicodedata.name(ch, "")
    for prefix, script in (("ARABIC", "arabic"), ("HIRAGANA", "kana"), ("KATAKANA", "kana"),
                           ("CJK UNIFIED", "han"), ("CJK COMPATIBILITY", "han"),
                           ("HANGUL", "hangul"), ("LATIN", "latin")):
        if name.startswith(prefix):
            return script
    return "other"


def _shares(text: str) -> dict[str, float]:
    letters = [_script(c) for c in text if unicodedata.category(c).startswith("L")]
    return {s: letters.count(s) / max(len(letters), 1)
            for s in ("arabic", "kana", "han", "hangul", "latin", "other")}


# section -> (letters that count as its script, minimum share)
OWN_SCRIPT = {"ar": (("arabic",), 0.95), "ja": (("kana", "han"), 0.90),
              "zh": (("han",), 0.95), "ko": (("hangul",), 0.90), "en": (("latin",), 0.98)}


def _files() -> list[Path]:
    files = sorted(CALIBRATION.iterdir())
    return files + (sorted(HELDOUT.glob("*.txt")) if HELDOUT.is_dir() else [])


def test_calibration_has_every_section_and_chat():
    assert sorted(p.name for p in CALIBRATION.iterdir()) == sorted(
        [f"{s}.txt" for s in SECTIONS] + ["chat.jsonl"])


@pytest.mark.parametrize("path", _files(), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_file_is_clean_utf8(path):
    text = path.read_bytes().decode("utf-8")          # strict: a bad byte raises
    assert text.strip() and text.endswith("\n")
    bad = [(i, hex(ord(c))) for i, c in enumerate(text)
           if (unicodedata.category(c) == "Cc" and c not in "\n\t")
           or c in "\ufeff\ufffd\u200b" or unicodedata.category(c) in ("Co", "Cs", "Cn")]
    assert not bad, f"control or odd characters at {bad[:5]}"


@pytest.mark.parametrize("section", sorted(OWN_SCRIPT))
def test_natural_language_file_is_in_its_script(section):
    shares = _shares((CALIBRATION / f"{section}.txt").read_text(encoding="utf-8"))
    scripts, minimum = OWN_SCRIPT[section]
    assert sum(shares[s] for s in scripts) >= max(minimum, 0.60), shares
    if section == "ja":      # Japanese, not Chinese: kana throughout
        assert shares["kana"] >= 0.30, shares
    if section == "zh":      # Simplified Chinese: no kana, and simplified forms
        text = (CALIBRATION / "zh.txt").read_text(encoding="utf-8")
        assert shares["kana"] == 0
        simplified, traditional = "们这说个国时", "們這說個國時"
        assert sum(map(text.count, simplified)) > 10 * sum(map(text.count, traditional))


def test_sizes():
    chars = {s: len((CALIBRATION / f"{s}.txt").read_text(encoding="utf-8")) for s in SECTIONS}
    size = {s: (CALIBRATION / f"{s}.txt").stat().st_size for s in SECTIONS}
    assert size["en"] >= 9000 and size["code"] >= 7000 and size["math"] >= 4500
    assert size["ar"] >= 5500
    assert all(chars[s] >= 3000 for s in ("ja", "zh", "ko")), chars


def test_chat_jsonl_parses():
    lines = (CALIBRATION / "chat.jsonl").read_text(encoding="utf-8").splitlines()
    convs = [json.loads(line) for line in lines]
    assert 20 <= len(convs) <= 30
    langs = []
    for conv in convs:
        assert list(conv) == ["messages"]
        msgs = conv["messages"]
        roles = [m["role"] for m in msgs]
        assert all(sorted(m) == ["content", "role"] and m["content"].strip() for m in msgs)
        assert set(roles) <= {"system", "user", "assistant"}
        assert "system" not in roles[1:] and roles[-1] == "assistant"
        turns = [r for r in roles if r != "system"]
        assert turns == ["user", "assistant"] * (len(turns) // 2), roles
        text = " ".join(m["content"] for m in msgs if m["role"] != "system")
        shares = _shares(text)
        langs.append(max(("arabic", "kana", "han", "hangul", "latin"),
                         key=lambda s: shares[s] + (shares["han"] if s == "kana" and
                                                    shares["kana"] else 0)))
    counts = {s: langs.count(s) for s in set(langs)}
    assert all(counts.get(s, 0) >= 3 for s in ("arabic", "kana", "han", "hangul", "latin")), counts
    assert any(c["messages"][0]["role"] == "system" for c in convs)
    assert any(len(c["messages"]) >= 4 for c in convs)


def _segments(text: str) -> set[str]:
    """Lines and sentences of at least 30 characters."""
    out = set()
    for line in text.splitlines():
        line = line.strip()
        if len(line) >= 30:
            out.add(line)
        for s in re.split(r"(?<=[.!?。！？؟])\s*", line):
            if len(s.strip()) >= 30:
                out.add(s.strip())
    return out


@pytest.mark.skipif(not HELDOUT.is_dir(), reason="no runtime/corpus/heldout in this checkout")
def test_calibration_and_heldout_share_no_sentence():
    cal = set().union(*(_segments(p.read_text(encoding="utf-8")) for p in CALIBRATION.iterdir()))
    held = set().union(*(_segments(p.read_text(encoding="utf-8"))
                         for p in HELDOUT.glob("*.txt")))
    assert len(cal) > 300 and len(held) > 300
    assert not cal & held, sorted(cal & held)[:5]


# -- the package API ----------------------------------------------------------------------------

def test_sections_come_from_the_package():
    from runtime import corpus

    assert corpus.LANGS == SECTIONS
    got = corpus.calibration_sections()
    assert [n for n, _ in got] == list(SECTIONS)
    for name, text in got:
        assert text == (CALIBRATION / f"{name}.txt").read_text(encoding="utf-8")
    held = corpus.heldout_sections()
    if HELDOUT.is_dir():
        assert [n for n, _ in held] == list(SECTIONS)
        assert held[0][1] == (HELDOUT / "ar.txt").read_text(encoding="utf-8")
    assert len(corpus.conversations()) == len(
        (CALIBRATION / "chat.jsonl").read_text(encoding="utf-8").splitlines())


def test_heldout_folder_missing_a_section_is_an_error(tmp_path, monkeypatch):
    from convert.errors import KilnError
    from runtime import corpus

    (tmp_path / "heldout").mkdir()
    for name in SECTIONS[:-1]:
        (tmp_path / "heldout" / f"{name}.txt").write_text("text\n", encoding="utf-8")
    monkeypatch.setattr(corpus, "_folder", lambda name: tmp_path / name)
    with pytest.raises(KilnError, match="math.txt"):
        corpus.heldout_sections()
    (tmp_path / "heldout" / "math.txt").write_text("text\n", encoding="utf-8")
    assert len(corpus.heldout_sections()) == len(SECTIONS)
    import shutil

    shutil.rmtree(tmp_path / "heldout")
    assert corpus.heldout_sections() == []


def test_wheel_ships_the_texts(tmp_path):
    """A wheel built from this tree (setuptools, no network) holds every corpus file."""
    import shutil
    import subprocess
    import sys
    import zipfile

    repo = CORPUS.parents[1]
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(repo / name, src / name)
    for pkg in ("convert", "runtime"):
        shutil.copytree(repo / pkg, src / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    res = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps",
                          "--no-build-isolation", "-q", "-w", str(tmp_path / "dist"), str(src)],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    (wheel,) = (tmp_path / "dist").glob("kiln-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    want = {f"runtime/corpus/{p.relative_to(CORPUS).as_posix()}" for p in _files()}
    want |= {"runtime/corpus/README.md", "runtime/corpus/__init__.py"}
    assert want <= names, sorted(want - names)


# -- calibration_text ---------------------------------------------------------------------------

def _section(name: str) -> str:
    return (CALIBRATION / f"{name}.txt").read_text(encoding="utf-8").strip("\n")


def _kept_share(name: str, text: str) -> float:
    """Share of section `name` (in characters) whose paragraphs appear in `text`; asserts
    they are the section's first paragraphs."""
    paras = _section(name).split("\n\n")
    present = [p in text for p in paras]
    n = present.index(False) if False in present else len(paras)
    assert not any(present[n:]), f"{name}: kept paragraphs are not a prefix"
    return sum(len(p) + 2 for p in paras[:n]) / (len(_section(name)) + 2)


def _conversations() -> list[list[dict]]:
    lines = (CALIBRATION / "chat.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line)["messages"] for line in lines]


def _language(msgs: list[dict]) -> str:
    """The script most of a conversation's letters are in (Han and kana together: Japanese
    when there is kana, else Chinese)."""
    sh = _shares(" ".join(m["content"] for m in msgs))
    best = max(("arabic", "cjk", "hangul", "latin"),
               key=lambda s: sh["kana"] + sh["han"] if s == "cjk" else sh[s])
    if best == "cjk":
        return "ja" if sh["kana"] else "zh"
    return {"arabic": "ar", "hangul": "ko", "latin": "en"}[best]


@functools.lru_cache(maxsize=None)
def _template_and_eos(path: Path) -> tuple[str, str]:
    import gguf

    fields = gguf.GGUFReader(path).fields
    tokens = fields["tokenizer.ggml.tokens"]
    eos = tokens.contents(int(fields["tokenizer.ggml.eos_token_id"].contents()))
    return fields["tokenizer.chat_template"].contents(), eos


def _reference_render(path: Path, msgs: list[dict]) -> str:
    """The GGUF's own template (read with gguf-py), rendered by jinja2 as transformers does,
    with an empty BOS text."""
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    template, eos = _template_and_eos(path)
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    return env.from_string(template).render(messages=msgs, bos_token="", eos_token=eos,
                                            add_generation_prompt=False).strip("\n")


def test_calibration_text_puts_the_family_languages_first(converted):
    from runtime.corpus import calibration_text

    jais = calibration_text(read_meta(converted("jais")))
    llmjp = calibration_text(read_meta(converted("llm-jp")))
    assert jais.startswith(_section("ar") + "\n\n" + _section("en"))
    assert llmjp.startswith(_section("ja") + "\n\n" + _section("en"))
    # the other sections: their first third (cut at a paragraph break)
    for text, others in ((jais, ("ja", "zh", "ko", "code", "math")),
                         (llmjp, ("ar", "zh", "ko", "code", "math"))):
        for name in others:
            assert 0.15 <= _kept_share(name, text) <= 1 / 3 + 1e-9, name
    assert _kept_share("ar", jais) == _kept_share("ja", llmjp) == 1.0
    # so the scripts' shares of all letters differ accordingly
    sj, sl = _shares(jais), _shares(llmjp)
    assert sj["arabic"] > 2.5 * sl["arabic"] and sl["kana"] > 2.5 * sj["kana"], (sj, sl)
    assert calibration_text(read_meta(converted("jais"))) == jais        # deterministic


@pytest.mark.parametrize("family,markers", [
    ("llm-jp", ("### 指示:\n", "\n\n### 応答:\n")),
    ("jais", ("### Input: [|Human|] ", "### Response: [|AI|] ")),
    ("chatml", ("<|im_start|>user\n", "<|im_end|>\n<|im_start|>assistant\n")),
])
def test_chat_part_is_rendered_with_the_file_template(converted, family, markers):
    from runtime.corpus import calibration_text

    path = converted(family)
    text = calibration_text(read_meta(path))
    assert all(m in text for m in markers)
    langs = {"llm-jp": ("ja", "en"), "jais": ("ar", "en"), "chatml": ("en",)}[family]
    kept: dict[str, int] = {}
    total: dict[str, int] = {}
    preambles: dict[str, list[bool]] = {}    # a long preamble -> whole (True) or cut, in order
    for msgs in _conversations():
        lang = _language(msgs)
        total[lang] = total.get(lang, 0) + 1
        ref = _reference_render(path, msgs)
        assert ref and not ref.startswith(("<s>", "<|endoftext|>"))
        at = ref.find(msgs[0]["content"])
        if ref in text:
            kept[lang] = kept.get(lang, 0) + 1
            if at >= 300:
                preambles.setdefault(ref[:at], []).append(True)
        elif at >= 300 and ref[at - 200:] in text:  # kept, its long preamble cut to 200 chars
            kept[lang] = kept.get(lang, 0) + 1
            preambles.setdefault(ref[:at], []).append(False)
    for whole in preambles.values():   # a repeated preamble whole in the first two only
        assert whole == [True] * min(2, len(whole)) + [False] * (len(whole) - 2), whole
    if family == "jais":               # the default system prompt given twice, not a dozen times
        (preamble,) = [p for p, w in preambles.items() if len(w) > 2]
        assert text.count(preamble) == 2 and 2 * len(preamble) < 0.15 * len(text)
    for lang, n in total.items():   # the model's languages all, each other one a third
        assert kept.get(lang, 0) == (n if lang in langs else -(-n // 3)), (lang, kept, total)


def test_no_template_gives_role_lines(converted):
    from runtime.corpus import calibration_text

    import gguf

    path = converted("llama")
    assert "tokenizer.chat_template" not in gguf.GGUFReader(path).fields
    text = calibration_text(read_meta(path))
    msgs = _conversations()[0]
    assert "\n".join(f"{m['role']}: {m['content']}" for m in msgs) in text
    assert text.startswith(_section("en"))


def test_languages_fall_back_to_the_family_then_english(converted):
    import dataclasses

    from runtime.corpus import calibration_text

    meta = read_meta(converted("llama"))
    for family, first in (("jais", "ar"), ("xverse", "zh"), ("rakutenai", "ja"), (None, "en")):
        text = calibration_text(dataclasses.replace(meta, languages=[], family=family))
        assert text.startswith(_section(first) + "\n\n"), family


def test_read_meta_fills_languages_for_files_without_the_key(tmp_path):
    """A kiln file older than kiln.languages, and a GGUF made elsewhere that kiln recognizes by
    name, get their family's languages; an unknown one none."""
    import gguf

    def write(name: str, gname: str, family: str | None) -> Path:
        path = tmp_path / name
        w = gguf.GGUFWriter(path, "llama")
        w.add_name(gname)
        if family:
            w.add_string("kiln.family", family)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        return path

    assert read_meta(write("old.gguf", "tiny", "jais")).languages == ["ar", "en"]
    assert read_meta(write("foreign.gguf", "llm-jp-3-1.8b-instruct", None)).languages == \
        ["ja", "en"]
    assert read_meta(write("other.gguf", "some-model", None)).languages == []
