"""XVERSE: tiny checkpoints in XVERSE's exact HF layout (XverseForCausalLM config.json, Llama
tensor names, sharded `pytorch_model-*.bin`, a tokenizer.json-only byte-fallback BPE), converted
with `kiln convert` and run in llama.cpp.

The reference is transformers' LlamaForCausalLM on the same shards, with a Llama config made from
the XVERSE one (XVERSE is "no different from llama"), independent of kiln's conversion.
Run with `pytest -s tests/test_xverse.py` to see the logit and tokenizer parity numbers.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

import tokenizer_json as tj
from facts import official
from hf_models import (check_types, compare, convert_and_compare, kiln, llama_cpp_logits,
                       randomize, reference_logits, save_bin_shards)

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("llama_cpp")
tokenizers = pytest.importorskip("tokenizers")

from convert.cli import run_cli  # noqa: E402
from convert.gguf_info import read_info  # noqa: E402
from runtime.cli import cli  # noqa: E402


# Budgets of tests/test_convert_e2e.py (max |delta logit| / std(logits)), here over 96 positions
# instead of 32 (top-1 agreement over 32 random-weight positions is too noisy a statistic).
# BF16 gets 0.1 instead of 0.06: even for weights stored in bf16 (lossless), llama.cpp's bf16
# matmul rounds the activations to bf16 (8-bit mantissa, the same kind of error as Q8_0's 8-bit
# activations); measured 0.08 at the worst of 96 positions, median 0.02.
TOL = {"f32": 1e-4, "f16": 2e-2, "bf16": 0.1, "q8_0": 0.25, "q4_0": 0.25}
TOP1 = {"f32": 1.0, "f16": 0.9, "bf16": 0.95, "q8_0": 0.9, "q4_0": 0.9}

SPECIALS = ["<unk>", "<pad>", "<|startoftext|>", "<|endoftext|>"]   # pad 1, bos 2, eos 3
BYTES = tj.BYTES

ENGLISH = [
    "The quick brown fox jumps over the lazy dog.",
    "Hello, world! How are you doing today?",
    "A converter streams tensors one at a time, so memory stays small.",
    "Numbers like 12345 and 3.14159 appear in text too.",
    "She said that the weather in London was cold, wet and grey.",
    "def main():\n    return 42\n",
    "Line one\nLine two\n\nLine four with  two spaces.",
    "Trailing space and (parentheses), [brackets]: 1/2 = 0.5; 100% sure! ",
]
# llama.cpp's SPM tokenizer always puts a space in front (add_space_prefix), where HF's Metaspace
# does not add one to text that already starts with a space: "▁", "▁l" vs "▁l". Reported only.
EDGE = [" leading space", "  two leading spaces"]
CHINESE = [
    "我们正在测试分词器的效果。",
    "北京今天的天气非常好。",
    "机器学习很有意思，我喜欢学习中文。",
    "这个问题很重要，请仔细回答。",
    "元宇宙和大语言模型",            # characters outside the training corpus: byte fallback
]
_ZH_WORDS = ("我们 正在 测试 分词 效果 北京 今天 天气 非常 好 机器 学习 很 有意思 我 喜欢 中文 这个 问题 "
             "重要 请 仔细 回答 人工 智能 改变 世界 语言 模型 可以 中国 首都 的 是 在 和 了 一个 大").split()


def _train_corpus() -> list[str]:
    import random

    rnd = random.Random(0)
    zh = ["".join(rnd.choice(_ZH_WORDS) for _ in range(rnd.randint(3, 9))) + rnd.choice("。，！？")
          for _ in range(300)]
    return (ENGLISH[:6] + [
        "Tokenizers turn text into integer ids, and models turn ids into text.",
        "It's 2024 and we're testing the tokenizer: 3 models, 12 sentences.",
    ]) * 30 + zh


TRAIN = _train_corpus()


def _held_out(n: int = 120) -> list[str]:
    """Random English / Chinese / mixed sentences, not in the training text."""
    import random

    rnd = random.Random(99)
    en = ("the quick brown fox over lazy dog hello world how are you doing today model text "
          "tokenizer ids memory small numbers appear weather london cold wet grey converter "
          "streams tensors one time line two four spaces return main def").split()
    out = []
    for i in range(n):
        if i % 3 == 0:
            t = " ".join(rnd.choice(en) for _ in range(rnd.randint(3, 12)))
            t = t.capitalize() + rnd.choice([".", "!", "?", ",", " 42.", " (x)."])
        elif i % 3 == 1:
            t = "".join(rnd.choice(_ZH_WORDS) for _ in range(rnd.randint(2, 10))) + "。"
        else:
            t = (rnd.choice(en).capitalize() + " " + "".join(rnd.sample(_ZH_WORDS, 3)) + "，"
                 + " ".join(rnd.choice(en) for _ in range(3)) + f" {rnd.randint(0, 9999)}")
        out.append(t)
    return out


# ------------------------------------------------------------------------------- building

def make_tokenizer(out_dir: Path, with_byte_nul: bool = True) -> int:
    """XVERSE-style tokenizer.json: Metaspace + BPE with byte fallback, specials at 0..3, the
    256 <0xXX> pieces, and a "\\x00" piece as in XVERSE's vocabulary; returns its size."""
    tok = tj.byte_fallback_bpe(TRAIN, 900, SPECIALS, tj.xverse_pre_tokenizer(),
                               pieces=(BYTES if with_byte_nul else BYTES[1:]) + ["\x00"])
    tj.save(out_dir, tok, {
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>", "pad_token": "<pad>", "unk_token": "<unk>"})
    return tok.get_vocab_size()


def xverse_config(n_vocab: int, tie: bool, rope_theta: float | None) -> dict:
    """An XVERSE config.json: no num_key_value_heads, rope_theta only when given."""
    cfg = {
        "architectures": ["XverseForCausalLM"],
        "auto_map": {"AutoConfig": "configuration_xverse.XverseConfig",
                     "AutoModelForCausalLM": "modeling_xverse.XverseForCausalLM"},
        "model_type": "xverse", "_name_or_path": "xverse/XVERSE-tiny-Chat",
        "hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4,
        "num_hidden_layers": 2, "max_position_embeddings": 256, "max_tokenizer_truncation": 192,
        "rms_norm_eps": 1e-6, "hidden_act": "silu", "initializer_range": 0.02,
        "vocab_size": n_vocab, "tie_word_embeddings": tie, "use_cache": True,
        "pad_token_id": 1, "bos_token_id": 2, "eos_token_id": 3, "torch_dtype": "bfloat16",
    }
    if rope_theta is not None:
        cfg["rope_theta"] = rope_theta
    return cfg


def llama_config_from(xcfg: dict) -> dict:
    """What XVERSE means, spelled for transformers' Llama (the independent reference)."""
    keys = ("hidden_size", "intermediate_size", "num_attention_heads", "num_hidden_layers",
            "max_position_embeddings", "rms_norm_eps", "vocab_size", "tie_word_embeddings",
            "pad_token_id", "bos_token_id", "eos_token_id", "hidden_act")
    cfg = {k: xcfg[k] for k in keys}
    cfg.update(architectures=["LlamaForCausalLM"], model_type="llama",
               num_key_value_heads=xcfg["num_attention_heads"],
               rope_theta=xcfg.get("rope_theta", 10000.0),
               attention_bias=False, mlp_bias=False)
    return cfg


def build_xverse(out_dir: Path, *, dtype: str = "float32", tie: bool = False,
                 rope_theta: float | None = None, seed: int = 0) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    n_vocab = make_tokenizer(out_dir)
    xcfg = xverse_config(n_vocab, tie, rope_theta)
    lcfg = llama_config_from(xcfg)
    model = LlamaForCausalLM(LlamaConfig(**{k: v for k, v in lcfg.items()
                                           if k not in ("architectures", "model_type")}))
    randomize(model, seed)
    if tie:
        model.tie_weights()
    model = model.to(getattr(torch, dtype))
    save_bin_shards(model.state_dict(), out_dir, 3, tie)
    (out_dir / "config.json").write_text(json.dumps(xcfg, indent=2))
    (out_dir / "generation_config.json").write_text(json.dumps({
        "bos_token_id": 2, "eos_token_id": 3, "pad_token_id": 1, "do_sample": True,
        "temperature": 0.5, "top_k": 30, "top_p": 0.85, "repetition_penalty": 1.1,
        "max_new_tokens": 2048}))
    # The reference folder: the same shards, read by transformers as Llama.
    ref = out_dir.parent / (out_dir.name + "-llama-ref")
    ref.mkdir()
    (ref / "config.json").write_text(json.dumps(lcfg, indent=2))
    for f in out_dir.glob("pytorch_model*"):
        os.symlink(f, ref / f.name)
    return out_dir


CASES = {
    "xverse-f32": dict(),
    "xverse-bf16": dict(dtype="bfloat16", seed=1),
    "xverse-tied-theta": dict(tie=True, rope_theta=250000.0, seed=2),
}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    made: dict = {}

    def get(case: str, quant: str | None = None):
        if case not in made:
            made[case] = build_xverse(tmp_path_factory.mktemp("x") / case, **CASES[case])
            n = json.loads((made[case] / "config.json").read_text())["vocab_size"]
            made[case, "ids"] = [int(x) for x in np.random.default_rng(7).integers(4, n, 96)]
        model_dir, ids = made[case], made[case, "ids"]
        key = (case, quant if quant in ("q8_0", "q4_0") else None)
        if key not in made:
            ref_dir = model_dir.parent / (model_dir.name + "-llama-ref")
            made[key] = reference_logits(ref_dir, ids, key[1])
        return model_dir, ids, made[key]
    return get


@pytest.fixture(scope="module")
def converted(checkpoints, tmp_path_factory):
    """The f32 conversion of the main case (metadata, tokenizer and template tests share it)."""
    model_dir, _, _ = checkpoints("xverse-f32")
    out = tmp_path_factory.mktemp("xc") / "xverse-f32.gguf"
    kiln("convert", model_dir, "-o", out, "--quant", "f32")
    return model_dir, out


# ------------------------------------------------------------------------------- numerics

MATRIX = ([("xverse-f32", q) for q in ("f32", "f16", "q8_0", "q4_0")]
          + [("xverse-bf16", q) for q in ("f32", "bf16", "q8_0")]
          + [("xverse-tied-theta", "f32")])


@pytest.mark.parametrize("case,quant", MATRIX)
def test_logits_match_transformers_llama(checkpoints, tmp_path, case, quant):
    model_dir, ids, ref = checkpoints(case, quant)
    out = tmp_path / f"{case}-{quant}.gguf"
    stats = convert_and_compare(model_dir, out, quant, ids, ref, case)
    check_types(out, quant)
    assert stats["max_rel"] < TOL[quant], stats
    assert stats["top1"] >= TOP1[quant], stats


def test_skipping_qk_unpermute_fails(checkpoints, tmp_path, monkeypatch):
    """The budget is meaningful: without the q/k un-permutation the F32 error is far above it."""
    import convert.families.llama as llama_mod

    model_dir, ids, ref = checkpoints("xverse-f32")
    out = tmp_path / "bad.gguf"
    with monkeypatch.context() as m:
        m.setattr(llama_mod, "rope_permutation", lambda n_rows, n_head: np.arange(n_rows))
        kiln("convert", model_dir, "-o", out, "--quant", "f32")
    stats = compare(ref, llama_cpp_logits(out, ids))
    assert stats["max_rel"] > 2 * TOL["q4_0"], stats      # caught at every output type


def gguf_fields(path: Path) -> dict:
    import gguf

    return {k: f.contents() for k, f in gguf.GGUFReader(path).fields.items()}


def test_metadata(converted, checkpoints):
    model_dir, out = converted
    info = read_info(out, with_tensors=True)
    md = gguf_fields(out)
    cfg = json.loads((model_dir / "config.json").read_text())
    assert md["general.architecture"] == "xverse"
    assert md["xverse.context_length"] == 256
    assert md["xverse.embedding_length"] == 64
    assert md["xverse.block_count"] == 2
    assert md["xverse.feed_forward_length"] == 128
    assert md["xverse.attention.head_count"] == md["xverse.attention.head_count_kv"] == 4
    assert md["xverse.rope.dimension_count"] == 16
    assert md["xverse.rope.freq_base"] == pytest.approx(10000.0)     # no rope_theta key
    assert md["xverse.attention.layer_norm_rms_epsilon"] == pytest.approx(1e-6)
    assert md["xverse.vocab_size"] == cfg["vocab_size"]
    assert md["tokenizer.ggml.model"] == "llama"
    assert (md["tokenizer.ggml.bos_token_id"], md["tokenizer.ggml.eos_token_id"],
            md["tokenizer.ggml.padding_token_id"]) == (2, 3, 1)
    assert md["tokenizer.ggml.add_bos_token"] is False
    assert md["kiln.family"] == "xverse"
    # XVERSE-style pre-tokenizer (punctuation / digit splitting): the runtime uses the exact
    # embedded tokenizer.json.
    assert md["kiln.tokenizer"] == "huggingface"
    assert json.loads(md["tokenizer.huggingface.json"]) == json.loads(
        (model_dir / "tokenizer.json").read_text())
    assert md["kiln.eos_token_ids"] == [3]
    assert md["kiln.stop_strings"] == ["Human:"]
    assert "kiln.banned_token_ids" not in md
    assert md["kiln.sampling.temperature"] == pytest.approx(0.5)
    assert md["kiln.sampling.top_p"] == pytest.approx(0.85)
    assert md["kiln.sampling.top_k"] == pytest.approx(30)
    assert md["kiln.sampling.repeat_penalty"] == pytest.approx(1.1)
    names = {t["name"] for t in info["tensors"]}
    assert "output.weight" in names and "blk.1.ffn_gate.weight" in names


def test_tied_and_rope_theta_read_from_config(checkpoints, tmp_path):
    model_dir, _, _ = checkpoints("xverse-tied-theta")
    out = tmp_path / "t.gguf"
    kiln("convert", model_dir, "-o", out, "--quant", "q4_0")
    info = read_info(out, with_tensors=True)
    assert info["metadata"]["xverse.rope.freq_base"] == pytest.approx(250000.0)
    types = {t["name"]: t["type"] for t in info["tensors"]}
    # llama.cpp's xverse loader requires output.weight: the tied embedding is written twice.
    assert types["output.weight"] == "Q8_0" and types["token_embd.weight"] == "Q4_0"


# ------------------------------------------------------------------------------- tokenizer

def _ll_vocab(path: Path):
    from llama_cpp import Llama

    return Llama(model_path=os.fspath(path), vocab_only=True, verbose=False)


def test_native_tokenizer_matches_hf(converted):
    from tokenizers import Tokenizer

    model_dir, out = converted
    hf = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    llm = _ll_vocab(out)
    try:
        def same(texts):
            return sum(llm.tokenize(t.encode(), add_bos=False, special=False)
                       == hf.encode(t, add_special_tokens=False).ids for t in texts)
        en, zh = same(ENGLISH), same(CHINESE)
        nul = ["a\x00b", "\x00", "Hello\x00世界"]
        nul_eq, edge = same(nul), same(EDGE)
        held = _held_out()
        held_eq = same(held)
        print(f"\n[parity] xverse native llama.cpp vs HF tokenizers: English {en}/{len(ENGLISH)}, "
              f"Chinese {zh}/{len(CHINESE)}, held-out en/zh/mixed {held_eq}/{len(held)}, "
              f"NUL texts {nul_eq}/{len(nul)}, leading-space texts {edge}/{len(EDGE)} "
              "(known llama.cpp difference)")
        assert (en, zh, nul_eq, held_eq) == (len(ENGLISH), len(CHINESE), len(nul), len(held))
        # Round trip through llama.cpp's detokenizer, NUL included (without a BOS in front,
        # llama.cpp keeps the space of the leading "▁").
        for t in ENGLISH[:5] + CHINESE + nul:
            ids = llm.tokenize(t.encode(), add_bos=False, special=False)
            assert llm.detokenize(ids).decode("utf-8") in (t, " " + t)
        # Without BOS by default; the chat markers parse as control tokens only on request.
        assert llm.tokenize(b"Hi", add_bos=True, special=False)[0] != 2
        assert llm.tokenize(b"x<|endoftext|>", add_bos=False, special=True)[-1] == 3
        assert 3 not in llm.tokenize(b"x<|endoftext|>", add_bos=False, special=False)
    finally:
        llm.close()


def test_native_tokenizer_kept_for_plain_metaspace(tmp_path):
    """With only Metaspace before BPE (llama.cpp does the same), no exact-tokenizer flag."""
    from tokenizers import Tokenizer, pre_tokenizers

    from convert.families.xverse import XverseFamily

    make_tokenizer(tmp_path)
    cfg = xverse_config(100, False, None)
    assert XverseFamily(cfg, tmp_path).exact_tokenizer() == "huggingface"
    tok = Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first")
    tok.save(str(tmp_path / "tokenizer.json"))
    assert XverseFamily(cfg, tmp_path).exact_tokenizer() is None


def test_nul_token_renamed_as_byte(converted, tmp_path):
    """The "\\x00" piece becomes BYTE "<0x00>"; an existing "<0x00>" piece takes the llama.cpp
    converter spelling. Either way HF's id for a NUL character is what llama.cpp produces."""
    from convert.families.xverse import NUL_ALT_TEXT
    from tokenizers import Tokenizer

    model_dir, out = converted
    hf = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    md = gguf_fields(out)
    nul_id = hf.token_to_id("\x00")
    byte_id = hf.token_to_id("<0x00>")
    tokens, types = md["tokenizer.ggml.tokens"], md["tokenizer.ggml.token_type"]
    assert "\x00" not in tokens
    assert tokens[nul_id] == "<0x00>" and types[nul_id] == 6
    assert tokens[byte_id] == NUL_ALT_TEXT and types[byte_id] == 6
    assert len(set(tokens)) == len(tokens)


# ------------------------------------------------------------------------------- chat

def _template_and_eos(path: Path) -> tuple[str, str]:
    md = gguf_fields(path)
    eos = md["tokenizer.ggml.tokens"][md["tokenizer.ggml.eos_token_id"]]
    return md["tokenizer.chat_template"], eos


def _official() -> dict:
    return official("xverse-13b-chat")


def reference_prompt(messages: list[dict], eos: str, add_generation_prompt: bool = True) -> str:
    """modeling_xverse.py's _build_chat_input as text, from official_prompts.json; a system
    message is kiln's documented choice ('{system}\\n\\n' where it stands)."""
    p = _official()
    out = ""
    for m in messages:
        if m["role"] == "system":
            out += m["content"] + "\n\n"
        elif m["role"] == "user":
            out += p["user"].replace("{content}", m["content"])
        else:
            out += p["assistant"].replace("{content}", m["content"]) + eos
    return out + (p["generation_prompt"] if add_generation_prompt else "")


TURNS = [
    ("你好，请介绍一下你自己。", "我是XVERSE，一个大语言模型。"),
    ("What is 2 + 2? Answer with {braces} and 'quotes'.", "It is 4.\nDone."),
    ("Thanks!\n\nOne more: write a haiku.", None),
]


@pytest.mark.parametrize("n_turns", [1, 2, 3])
@pytest.mark.parametrize("system", [None, "You are a helpful assistant."])
def test_chat_template_golden(converted, n_turns, system):
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    _, out = converted
    template, eos = _template_and_eos(out)
    assert eos == "<|endoftext|>"
    messages = [{"role": "system", "content": system}] if system else []
    for i in range(n_turns):
        user, answer = TURNS[i]
        messages.append({"role": "user", "content": user})
        if i < n_turns - 1:
            messages.append({"role": "assistant", "content": answer or "ok"})
    want = reference_prompt(messages, eos)
    for env in (ImmutableSandboxedEnvironment(),
                ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)):
        got = env.from_string(template).render(messages=messages, eos_token=eos,
                                               bos_token="<|startoftext|>",
                                               add_generation_prompt=True)
        assert got == want
    assert not want.startswith("<|startoftext|>")


def test_chat_template_without_generation_prompt(converted):
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    _, out = converted
    template, eos = _template_and_eos(out)
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    got = ImmutableSandboxedEnvironment().from_string(template).render(
        messages=messages, eos_token=eos, add_generation_prompt=False)
    assert got == reference_prompt(messages, eos, add_generation_prompt=False)
    assert got == "Human: hi\n\nAssistant: hello<|endoftext|>"


def official_ids(hf, messages: list[dict], eos_id: int = 3) -> list[int]:
    """The prompt ids as modeling_xverse.py's _build_chat_input builds them: each segment of
    official_prompts.json encoded on its own (no BOS: [U] whether XVERSE's encode adds one; its
    config and kiln say no), 'Assistant: ' in the last user turn's segment, eos after each
    earlier answer; a system message is its own segment '{system}\\n\\n' (kiln's choice)."""
    p = _official()

    def enc(text: str) -> list[int]:
        return hf.encode(text, add_special_tokens=False).ids

    ids: list[int] = []
    for i, m in enumerate(messages):
        if m["role"] == "system":
            ids += enc(m["content"] + "\n\n")
        elif m["role"] == "user":
            last = i == len(messages) - 1
            ids += enc(p["user"].replace("{content}", m["content"])
                       + (p["generation_prompt"] if last else ""))
        else:
            ids += enc(p["assistant"].replace("{content}", m["content"])) + [eos_id]
    return ids


@pytest.mark.parametrize("system", [None, "You are a helpful assistant."])
def test_prompt_ids_built_per_segment(converted, system):
    """kiln's prompt ids equal the official per-segment construction: every turn starts with
    Metaspace's "▁" ('▁Human', '▁', 'A' ...), where one whole-string tokenization has none."""
    from tokenizers import Tokenizer

    from runtime.engine import ChatModel

    model_dir, out = converted
    hf = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    with ChatModel(out, n_ctx=256) as model:
        assert model.meta.prompt_segments == "message"
        for n_turns in (1, 2, 3):
            messages = [{"role": "system", "content": system}] if system else []
            for i in range(n_turns):
                user, answer = TURNS[i]
                messages.append({"role": "user", "content": user})
                if i < n_turns - 1:
                    messages.append({"role": "assistant", "content": answer or "ok"})
            want = official_ids(hf, messages)
            got = model.prompt.encode(messages)
            whole = hf.encode(model.prompt.render(messages), add_special_tokens=False).ids
            assert got == want, (hf.decode(got), [hf.id_to_token(i) for i in got])
            if len(messages) > 1:
                assert whole != want       # the case tells the two constructions apart
        # a typed end-of-text in a turn stays text, the turns still tokenized apart
        messages = [{"role": "user", "content": "hi <|endoftext|> there"},
                    {"role": "assistant", "content": "ok"}, {"role": "user", "content": "go"}]
        got = model.prompt.encode(messages)
        assert got.count(3) == 1
        assert got[got.index(3) + 1:] == official_ids(hf, messages[2:])


# ------------------------------------------------------------------------------- refusals

def _fails(capsys, *args) -> str:
    with pytest.raises(SystemExit) as exc:
        run_cli(cli, [str(a) for a in args])
    assert exc.value.code not in (0, None)
    return capsys.readouterr().err.strip().splitlines()[-1]


@pytest.mark.parametrize("patch,words", [
    ({"rope_scaling": {"rope_type": "llama3", "factor": 8.0}}, "rope_scaling"),
    ({"bias": True}, "bias"),
])
def test_refusals(checkpoints, tmp_path, capsys, patch, words):
    import shutil

    model_dir, _, _ = checkpoints("xverse-f32")
    bad = tmp_path / "bad"
    shutil.copytree(model_dir, bad)
    cfg = json.loads((bad / "config.json").read_text())
    cfg.update(patch)
    (bad / "config.json").write_text(json.dumps(cfg))
    out = tmp_path / "o.gguf"
    line = _fails(capsys, "convert", bad, "-o", out, "--quant", "f32")
    assert "config.json" in line and words in line
    assert not out.exists() and not [p for p in tmp_path.iterdir() if ".partial" in p.name]


def test_foreign_gguf_recognized():
    """A GGUF of arch xverse made by another tool gets kiln's XVERSE chat knowledge."""
    from convert.families import family_for_gguf
    from convert.families.xverse import CHAT_TEMPLATE, XverseFamily

    fam = family_for_gguf("xverse", "XVERSE-13B-Chat")
    assert fam is XverseFamily
    inst = fam.for_gguf()
    assert inst.chat_template(None) == CHAT_TEMPLATE
    assert inst.stop_strings() == ["Human:"] and inst.sampling_defaults() == {}
    assert inst.prompt_segments() == "message"      # read_meta applies it to foreign GGUFs


def test_foreign_gguf_tokenized_turn_by_turn(checkpoints, tmp_path, monkeypatch):
    """Without kiln's metadata (another tool's GGUF), the runtime still encodes turn by turn."""
    from convert.families.base import Family
    from runtime.meta import read_meta

    model_dir, _, _ = checkpoints("xverse-f32")
    out = tmp_path / "foreign.gguf"
    with monkeypatch.context() as m:
        m.setattr(Family, "kiln_metadata", lambda self, vocab: {})
        kiln("convert", model_dir, "-o", out, "--quant", "f16")
    meta = read_meta(out)
    assert meta.family == "xverse" and meta.prompt_segments == "message"
