"""Alaya-7B / MPT: tiny checkpoints in MPT's exact HF layout, converted with `kiln convert` and run
in llama.cpp, against two references:

* transformers' own `MptForCausalLM` for what it can express (ALiBi with bias max 8, no biases,
  LayerNorm without bias, expansion ratio 4, clip_qkv, tied head);
* `mpt_reference` below, a small float64 forward pass written from llm-foundry's semantics, for
  what transformers cannot (biases everywhere, LayerNorm biases, expansion_ratio != 4, qk_ln,
  grouped / multi-query attention, learned position embeddings, alibi_bias_max != 8 with a head
  count that is not a power of two, logit_scale, an untied head). It is itself checked against
  transformers on the configurations both can run.

Run with `pytest -s tests/test_alaya.py` to see the numbers.
"""
from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

import tokenizer_json as tj
from facts import official
from hf_models import (check_types, compare, convert_and_compare, kiln, llama_cpp_logits,
                       randomize)

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("llama_cpp")
pytest.importorskip("tokenizers")

from convert.cli import run_cli  # noqa: E402
from runtime.cli import cli  # noqa: E402


# Budgets as in tests/test_convert_e2e.py, over 96 positions, except F32: llama.cpp's GELU
# rounds its input to fp16 and reads a tanh-approximation table (ggml-cpu vec.h), while MPT's is
# the exact erf GELU; measured up to ~1e-3 of the logits' spread. A dropped norm, bias or scale
# costs > 0.1 (see test_leaving_one_out_fails).
TOL = {"f32": 3e-3, "f16": 2e-2, "bf16": 0.1, "q8_0": 0.25, "q4_0": 0.25}
TOP1 = {"f32": 1.0, "f16": 0.9, "bf16": 0.9, "q8_0": 0.9, "q4_0": 0.9}

SPECIALS = ["<unk>", "<s>", "</s>", "<pad>"]        # eos 2, id 3 banned by Alaya's api.py
ENGLISH = [
    "The quick brown fox jumps over the lazy dog.",
    "Hello, world! How are you doing today?",
    "A converter streams tensors one at a time, so memory stays small.",
    "Numbers like 12345 and 3.14159 appear in text too.",
    "def main():\n    return 42\n",
]
CHINESE = ["我们正在测试分词器的效果。", "北京今天的天气非常好。"]
TRAIN = (ENGLISH + CHINESE + [
    "Tokenizers turn text into integer ids, and models turn ids into text.",
    "She said that the weather in London was cold, wet and grey.",
    "人工智能正在改变世界，语言模型可以回答问题。",
]) * 20


# ------------------------------------------------------------------------------- tokenizers

def spm_tokenizer(out_dir: Path) -> int:
    """SentencePiece BPE (tokenizer.model): unk 0, <s> 1, </s> 2, <pad> 3. Llama-style: no
    normalization, whitespace kept (llama.cpp applies neither NFKC nor whitespace folding)."""
    import sentencepiece as spm

    out_dir.mkdir(parents=True, exist_ok=True)
    corpus = out_dir / "corpus.txt"
    corpus.write_text("\n".join(TRAIN), encoding="utf-8")
    spm.SentencePieceTrainer.train(
        input=str(corpus), model_prefix=str(out_dir / "tokenizer"), vocab_size=500,
        model_type="bpe", byte_fallback=True, character_coverage=1.0, unk_id=0, bos_id=1,
        eos_id=2, pad_id=3, minloglevel=2, hard_vocab_limit=False, num_threads=1,
        normalization_rule_name="identity", remove_extra_whitespaces=False)   # as Llama's
    corpus.unlink()
    (out_dir / "tokenizer.vocab").unlink()
    (out_dir / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>",
        "unk_token": "<unk>", "pad_token": "<pad>"}))
    return spm.SentencePieceProcessor(model_file=str(out_dir / "tokenizer.model")).get_piece_size()


def bpe_tokenizer(out_dir: Path) -> int:
    """GPT-NeoX-style byte-level BPE (tokenizer.json only) with <unk> <s> </s> <pad> at 0..3."""
    from tokenizers import processors

    tok = tj.bytelevel_bpe(TRAIN, 700, SPECIALS,
                           post_processor=processors.ByteLevel(trim_offsets=True))
    tj.save(out_dir, tok, {
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>", "eos_token": "</s>",
        "unk_token": "<unk>", "pad_token": "<pad>"})
    return tok.get_vocab_size()


# ------------------------------------------------------------------------------- checkpoints

ATTN_DEFAULTS = {"attn_type": "multihead_attention", "attn_pdrop": 0.0, "attn_impl": "torch",
                 "qk_ln": False, "clip_qkv": None, "softmax_scale": None, "prefix_lm": False,
                 "attn_uses_sequence_id": False, "alibi": True, "alibi_bias_max": 8}


def mpt_config(n_vocab: int, name: str = "DataCanvas/Alaya-7B-Chat", **over) -> dict:
    """config.json as MPT's remote code (and Alaya's repo) writes it."""
    attn = {**ATTN_DEFAULTS, **over.pop("attn", {})}
    cfg = {
        "_name_or_path": name, "architectures": ["MPTForCausalLM"], "model_type": "mpt",
        "auto_map": {"AutoConfig": "configuration_mpt.MPTConfig",
                     "AutoModelForCausalLM": "modeling_mpt.MPTForCausalLM"},
        "d_model": 64, "n_heads": 4, "n_layers": 2, "expansion_ratio": 4, "max_seq_len": 128,
        "vocab_size": n_vocab, "resid_pdrop": 0.0, "emb_pdrop": 0.0, "learned_pos_emb": True,
        "attn_config": attn, "init_device": "cpu", "logit_scale": None, "no_bias": True,
        "verbose": 0, "embedding_fraction": 1.0, "norm_type": "low_precision_layernorm",
        "use_cache": False, "init_config": {"name": "kaiming_normal_", "fan_mode": "fan_in"},
        "torch_dtype": "bfloat16", "transformers_version": "4.30.2",
    }
    cfg.update(over)
    return cfg


def _pad(n: int) -> int:
    return -(-n // 64) * 64 + 64          # embedding padded above the tokenizer, as Alaya's


def build_hf(out_dir: Path, *, tokenizer=spm_tokenizer, dtype: str = "float32", seed: int = 0,
             **over) -> Path:
    """transformers' MptForCausalLM (what it supports), saved with its save_pretrained."""
    from transformers import MptForCausalLM

    n_vocab = _pad(tokenizer(out_dir))
    cfg = mpt_config(n_vocab, **over)
    model = MptForCausalLM(hf_mpt_config(cfg))
    randomize(model, seed)
    model.tie_weights()
    model = model.to(getattr(torch, dtype))
    model.save_pretrained(out_dir)
    cfg["torch_dtype"] = dtype
    (out_dir / "config.json").write_text(json.dumps(cfg, indent=2))
    return out_dir


def hf_mpt_config(cfg: dict):
    """transformers' MptConfig for a remote-code style config.json (its strict dataclass
    rejects some of the float zeros those files carry)."""
    from transformers import MptConfig

    keys = ("d_model", "n_heads", "n_layers", "expansion_ratio", "max_seq_len", "vocab_size",
            "no_bias", "learned_pos_emb", "norm_type", "logit_scale")
    attn = {k: v for k, v in cfg["attn_config"].items() if k != "attn_pdrop"}
    return MptConfig(**{k: cfg[k] for k in keys}, attn_config=attn,
                     layer_norm_epsilon=cfg.get("layer_norm_epsilon", 1e-5))


def random_state(cfg: dict, seed: int) -> dict:
    """llm-foundry parameter names and shapes for `cfg`; every norm, bias and scale matters."""
    gen = torch.Generator().manual_seed(seed)
    d, v, nl = cfg["d_model"], cfg["vocab_size"], cfg["n_layers"]
    attn = cfg["attn_config"]
    hd = d // cfg["n_heads"]
    kv = {"multiquery_attention": 1, "grouped_query_attention": attn.get("kv_n_heads")}.get(
        attn["attn_type"], cfg["n_heads"])
    ff = int(d * cfg["expansion_ratio"])
    bias = not cfg.get("no_bias", False)

    def mat(rows, cols):
        return torch.randn(rows, cols, generator=gen) / cols ** 0.5

    def vec(n, base):
        return base + 0.3 * torch.randn(n, generator=gen)

    sd = {"transformer.wte.weight": mat(v, d)}
    if cfg.get("learned_pos_emb"):
        sd["transformer.wpe.weight"] = mat(cfg["max_seq_len"], d)

    def norm(name, n):
        sd[name + ".weight"] = vec(n, 1.0)
        if bias:
            sd[name + ".bias"] = vec(n, 0.0)

    def lin(name, rows, cols):
        sd[name + ".weight"] = mat(rows, cols)
        if bias:
            sd[name + ".bias"] = vec(rows, 0.0)

    for i in range(nl):
        p = f"transformer.blocks.{i}."
        norm(p + "norm_1", d)
        lin(p + "attn.Wqkv", d + 2 * kv * hd, d)
        if attn.get("qk_ln"):
            norm(p + "attn.q_ln", d)
            norm(p + "attn.k_ln", kv * hd)
        lin(p + "attn.out_proj", d, d)
        norm(p + "norm_2", d)
        lin(p + "ffn.up_proj", ff, d)
        lin(p + "ffn.down_proj", d, ff)
    norm("transformer.norm_f", d)
    if cfg.get("tie_word_embeddings") is False:
        sd["lm_head.weight"] = mat(v, d)
    return sd


def build_own(out_dir: Path, *, tokenizer=bpe_tokenizer, seed: int = 0, bin_shards: int = 0,
              **over) -> Path:
    """A checkpoint transformers cannot express, in llm-foundry's layout."""
    from safetensors.torch import save_file

    from hf_models import save_bin_shards

    n_vocab = _pad(tokenizer(out_dir))
    cfg = mpt_config(n_vocab, **over)
    sd = random_state(cfg, seed)
    if bin_shards:
        save_bin_shards(sd, out_dir, bin_shards, tie=False)
    else:
        save_file({k: t.contiguous() for k, t in sd.items()}, str(out_dir / "model.safetensors"),
                  metadata={"format": "pt"})
    (out_dir / "config.json").write_text(json.dumps(cfg, indent=2))
    return out_dir


# ------------------------------------------------------------------------------- reference

def alibi_slopes(n_heads: int, bias_max: float) -> torch.Tensor:
    """llm-foundry's gen_slopes."""
    n2 = 2 ** math.ceil(math.log2(n_heads))
    m = torch.arange(1, n2 + 1, dtype=torch.float64) * (bias_max / n2)
    slopes = 1.0 / torch.pow(2, m)
    if n2 != n_heads:
        slopes = torch.cat([slopes[1::2], slopes[::2]])[:n_heads]
    return slopes


def load_state(model_dir: Path) -> dict:
    from convert.checkpoint import Checkpoint
    from convert.quants import to_f32

    with Checkpoint(model_dir) as ck:
        return {n: torch.from_numpy(np.array(to_f32(ck.array(n), i.dtype), dtype=np.float64))
                for n, i in ck.tensors.items()}


def round_like_kiln(sd: dict, cfg: dict, quant: str) -> dict:
    """Every matrix through gguf-py's reference quantize/dequantize, with kiln's type rules:
    1-D tensors and the position embeddings stay float, the output projection is Q8_0 for Q4_0; logit_scale is folded into
    the output matrix before rounding, as kiln writes it."""
    import gguf
    from gguf.quants import dequantize, quantize

    want = gguf.GGMLQuantizationType[quant.upper()]
    q8 = gguf.GGMLQuantizationType.Q8_0
    out = dict(sd)
    scale = _logit_scale(cfg)
    head = sd.get("lm_head.weight")
    explicit = head is not None or scale != 1.0
    if explicit:
        out["_output"] = (head if head is not None else sd["transformer.wte.weight"]) * scale
        out.pop("lm_head.weight", None)

    def rnd(t, qt):
        w = t.numpy().astype(np.float32)
        return torch.from_numpy(dequantize(quantize(w, qt), qt).astype(np.float64))

    for name, t in list(out.items()):
        if t.ndim < 2 or name == "transformer.wpe.weight":   # llama.cpp keeps position_embd
            continue
        is_output = name == "_output" or (not explicit and name == "transformer.wte.weight")
        out[name] = rnd(t, q8 if (quant == "q4_0" and is_output) else want)
    return out


def _logit_scale(cfg: dict) -> float:
    s = cfg.get("logit_scale")
    if s is None:
        return 1.0
    return 1 / math.sqrt(cfg["d_model"]) if s == "inv_sqrt_d_model" else float(s)


def mpt_reference(sd: dict, cfg: dict, ids: list[int]) -> np.ndarray:
    """Logits of every position, llm-foundry MPT semantics, in float64."""
    import torch.nn.functional as F

    attn = cfg["attn_config"]
    d, nh = cfg["d_model"], cfg["n_heads"]
    hd = d // nh
    kv = {"multiquery_attention": 1, "grouped_query_attention": attn.get("kv_n_heads")}.get(
        attn["attn_type"], nh)
    eps = cfg.get("layer_norm_epsilon", cfg.get("norm_eps", 1e-5))
    n = len(ids)

    def ln(x, name):
        return F.layer_norm(x, x.shape[-1:], sd[name + ".weight"], sd.get(name + ".bias"), eps)

    def lin(x, name):
        y = x @ sd[name + ".weight"].T
        return y + sd[name + ".bias"] if name + ".bias" in sd else y

    x = sd["transformer.wte.weight"][torch.tensor(ids)]
    if "transformer.wpe.weight" in sd:
        x = x + sd["transformer.wpe.weight"][:n]
    pos = torch.arange(n, dtype=torch.float64)
    bias = torch.zeros(nh, n, n, dtype=torch.float64)
    if attn["alibi"]:
        slopes = alibi_slopes(nh, attn.get("alibi_bias_max", 8)).view(nh, 1, 1)
        bias = slopes * (pos[None, :] - pos[:, None])
    causal = torch.triu(torch.ones(n, n, dtype=torch.bool), 1)
    scale = attn.get("softmax_scale") or 1 / math.sqrt(hd)
    for i in range(cfg["n_layers"]):
        p = f"transformer.blocks.{i}."
        a = ln(x, p + "norm_1")
        qkv = lin(a, p + "attn.Wqkv")
        if attn.get("clip_qkv"):
            qkv = qkv.clamp(-attn["clip_qkv"], attn["clip_qkv"])
        q, k, v = qkv.split([d, kv * hd, kv * hd], dim=-1)
        if attn.get("qk_ln"):
            q, k = ln(q, p + "attn.q_ln"), ln(k, p + "attn.k_ln")
        q = q.view(n, nh, hd).transpose(0, 1)
        k = k.view(n, kv, hd).transpose(0, 1).repeat_interleave(nh // kv, dim=0)
        v = v.view(n, kv, hd).transpose(0, 1).repeat_interleave(nh // kv, dim=0)
        s = q @ k.transpose(1, 2) * scale + bias
        s = s.masked_fill(causal, float("-inf")).softmax(-1)
        o = (s @ v).transpose(0, 1).reshape(n, d)
        x = x + lin(o, p + "attn.out_proj")
        m = ln(x, p + "norm_2")
        x = x + lin(F.gelu(lin(m, p + "ffn.up_proj")), p + "ffn.down_proj")
    x = ln(x, "transformer.norm_f")
    if "_output" in sd:
        return (x @ sd["_output"].T).numpy().astype(np.float32)
    head = sd.get("lm_head.weight", sd["transformer.wte.weight"])
    return (x @ head.T * _logit_scale(cfg)).numpy().astype(np.float32)


def transformers_logits(model_dir: Path, ids: list[int]) -> np.ndarray:
    from transformers import MptForCausalLM

    cfg = hf_mpt_config(json.loads((model_dir / "config.json").read_text()))
    model = MptForCausalLM.from_pretrained(model_dir, config=cfg, dtype=torch.float32).eval()
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].float().numpy()


# ------------------------------------------------------------------------------- cases

CASES = {
    # transformers can run these: it is the reference (and checks mpt_reference)
    "hf-alibi-bf16": dict(kind="hf", dtype="bfloat16"),
    "hf-clip-qkv": dict(kind="hf", seed=1, attn={"clip_qkv": 0.8}),
    # everything else, against mpt_reference
    "own-full": dict(kind="own", seed=2, d_model=96, n_heads=6, expansion_ratio=3,
                     no_bias=False, logit_scale=0.35, layer_norm_epsilon=1e-4, bin_shards=3,
                     attn={"alibi_bias_max": 6, "clip_qkv": 1.5}),
    # converted only with the qk_ln refusal lifted, run one token per batch (see test_qk_ln)
    "own-qkln": dict(kind="own", seed=5, no_bias=False,
                     attn={"qk_ln": True, "clip_qkv": 1.5}),
    "own-gqa-wpe": dict(kind="own", seed=3, tokenizer=spm_tokenizer, expansion_ratio=2.5,
                        logit_scale="inv_sqrt_d_model", tie_word_embeddings=False,
                        norm_type="layernorm", embedding_fraction=0.1, norm_eps=1e-5,
                        attn={"attn_type": "grouped_query_attention", "kv_n_heads": 2,
                              "alibi": False}),
    "own-mqa": dict(kind="own", seed=4, no_bias=False,
                    attn={"attn_type": "multiquery_attention", "kv_n_heads": 3}),
}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    made: dict = {}

    def get(case: str, quant: str | None = None):
        if case not in made:
            spec = dict(CASES[case])
            kind = spec.pop("kind")
            out_dir = tmp_path_factory.mktemp("mpt") / case
            made[case] = (build_hf if kind == "hf" else build_own)(out_dir, **spec)
            cfg = json.loads((made[case] / "config.json").read_text())
            n_real = len(_real_tokens(made[case]))
            made[case, "ids"] = [int(x) for x in np.random.default_rng(7).integers(4, n_real, 96)]
            made[case, "cfg"] = cfg
            made[case, "state"] = load_state(made[case])
        model_dir, ids, cfg = made[case], made[case, "ids"], made[case, "cfg"]
        key = (case, quant if quant in ("q8_0", "q4_0") else None)
        if key not in made:
            if CASES[case]["kind"] == "hf" and key[1] is None:
                made[key] = transformers_logits(model_dir, ids)
            else:
                sd = made[case, "state"]
                made[key] = mpt_reference(round_like_kiln(sd, cfg, key[1]) if key[1] else sd,
                                          cfg, ids)
        return model_dir, ids, made[key]
    return get


def _real_tokens(model_dir: Path) -> list:
    if (model_dir / "tokenizer.model").is_file():
        import sentencepiece as spm
        sp = spm.SentencePieceProcessor(model_file=str(model_dir / "tokenizer.model"))
        return list(range(sp.get_piece_size()))
    from tokenizers import Tokenizer
    return list(range(Tokenizer.from_file(str(model_dir / "tokenizer.json")).get_vocab_size()))


# ------------------------------------------------------------------------------- numerics

def test_own_reference_matches_transformers(checkpoints):
    """mpt_reference is trustworthy where transformers can run the model too."""
    for case in ("hf-alibi-bf16", "hf-clip-qkv"):
        model_dir, ids, ref = checkpoints(case)
        mine = mpt_reference(load_state(model_dir), json.loads(
            (model_dir / "config.json").read_text()), ids)
        stats = compare(ref, mine)
        print(f"\n[reference] mpt_reference vs transformers, {case}: {stats}")
        assert stats["max_rel"] < 1e-5, stats


MATRIX = ([("hf-alibi-bf16", q) for q in ("f32", "f16", "bf16", "q8_0", "q4_0")]
          + [("hf-clip-qkv", q) for q in ("f32", "q8_0")]
          + [("own-full", q) for q in ("f32", "f16", "q8_0", "q4_0")]
          + [("own-gqa-wpe", q) for q in ("f32", "f16", "q8_0", "q4_0")]
          + [("own-mqa", "f32")])


@pytest.mark.parametrize("case,quant", MATRIX)
def test_logits_match_reference(checkpoints, tmp_path, case, quant):
    model_dir, ids, ref = checkpoints(case, quant)
    out = tmp_path / f"{case}-{quant}.gguf"
    stats = convert_and_compare(model_dir, out, quant, ids, ref, case)
    check_types(out, quant)
    assert stats["max_rel"] < TOL[quant], stats
    assert stats["top1"] >= TOP1[quant], stats


def _drop(name: str):
    """Patches of the conversion, each leaving out one thing the model needs."""
    from convert.tensors import ArrayRows

    def zero(tensor):
        def patch(tensors):
            for t in tensors:
                if t.name == tensor:
                    t.source = ArrayRows(np.zeros(t.shape, dtype=np.float32))
            return tensors
        return patch

    def ones(tensor):
        def patch(tensors):
            for t in tensors:
                if t.name == tensor:
                    t.source = ArrayRows(np.ones(t.shape, dtype=np.float32))
            return tensors
        return patch

    def unscaled(tensors):
        return [t for t in tensors if t.name != "output.weight"]

    tensor_patches = {
        "attn_norm bias": zero("blk.0.attn_norm.bias"),
        "ffn_norm weight": ones("blk.1.ffn_norm.weight"),
        "qkv bias": zero("blk.0.attn_qkv.bias"),
        "ffn_down bias": zero("blk.1.ffn_down.bias"),
        "logit_scale": unscaled,
    }
    hparam_patches = {
        "clamp_kqv": lambda hp: {k: v for k, v in hp.items() if "clamp_kqv" not in k},
        "alibi_bias_max": lambda hp: {**hp, "mpt.attention.max_alibi_bias": 8.0},
        "alibi": lambda hp: {**hp, "mpt.attention.max_alibi_bias": 0.0},
    }
    return tensor_patches.get(name), hparam_patches.get(name)


LEAVE_OUT = ["attn_norm bias", "ffn_norm weight", "qkv bias", "ffn_down bias", "logit_scale",
             "clamp_kqv", "alibi_bias_max", "alibi"]


@pytest.mark.parametrize("what", LEAVE_OUT)
def test_leaving_one_out_fails(checkpoints, tmp_path, monkeypatch, what):
    """Each norm, bias, scale and attention setting of own-full matters: without it the F32
    error is far above the budget."""
    from convert.families.mpt import MptFamily

    model_dir, ids, ref = checkpoints("own-full")
    tpatch, hpatch = _drop(what)
    tensors, hparams = MptFamily.tensors, MptFamily.hparams
    with monkeypatch.context() as m:
        if tpatch:
            m.setattr(MptFamily, "tensors", lambda self, ck: tpatch(tensors(self, ck)))
        if hpatch:
            m.setattr(MptFamily, "hparams", lambda self: hpatch(hparams(self)))
        out = tmp_path / "bad.gguf"
        kiln("convert", model_dir, "-o", out, "--quant", "f32")
    stats = compare(ref, llama_cpp_logits(out, ids))
    print(f"\n[leave-out] {what}: max|d|/std={stats['max_rel']:.3f}")
    # measured 0.43 (ffn_norm weight) to 7.6: clear of the quantized budget as well
    assert stats["max_rel"] > 1.5 * TOL["q4_0"], (what, stats)


def test_leaving_out_position_embeddings_fails(checkpoints, tmp_path, monkeypatch):
    from convert.families.mpt import MptFamily

    model_dir, ids, ref = checkpoints("own-gqa-wpe")
    tensors = MptFamily.tensors
    with monkeypatch.context() as m:
        m.setattr(MptFamily, "tensors", lambda self, ck: [
            t for t in tensors(self, ck) if t.name != "position_embd.weight"])
        out = tmp_path / "bad.gguf"
        kiln("convert", model_dir, "-o", out, "--quant", "f32")
    stats = compare(ref, llama_cpp_logits(out, ids))
    assert stats["max_rel"] > 30 * TOL["f32"], stats


def llama_cpp_logits_stepwise(gguf_path: Path, ids: list[int]) -> np.ndarray:
    """llama.cpp logits with one token per batch (its mpt q/k-norm path aborts on more)."""
    from llama_cpp import GGML_TYPE_F32, Llama

    llm = Llama(model_path=os.fspath(gguf_path), n_ctx=128, logits_all=True, verbose=False,
                n_threads=2, n_batch=1, n_ubatch=1, type_k=GGML_TYPE_F32, type_v=GGML_TYPE_F32)
    try:
        llm.eval(ids)
        return np.array(llm.scores[: len(ids)], dtype=np.float32)
    finally:
        llm.close()


def test_qk_ln(checkpoints, tmp_path, monkeypatch, capsys):
    """qk_ln is refused (llama.cpp aborts on multi-token batches); with the refusal lifted, the
    attn_q_norm / attn_k_norm mapping matches llm-foundry token by token, and matters."""
    import convert.families.mpt as mpt

    model_dir, ids, ref = checkpoints("own-qkln")
    ids = ids[:48]
    out = tmp_path / "q.gguf"
    with pytest.raises(SystemExit):
        run_cli(cli, ["convert", str(model_dir), "-o", str(out), "--quant", "f32"])
    assert "qk_ln" in capsys.readouterr().err and not out.exists()

    monkeypatch.setattr(mpt, "QK_LN_RUNS", True)
    kiln("convert", model_dir, "-o", out, "--quant", "f32")
    stats = compare(ref[:48], llama_cpp_logits_stepwise(out, ids))
    print(f"\n[logits] own-qkln f32 (one token per batch): {stats}")
    assert stats["max_rel"] < TOL["f32"] and stats["top1"] == 1.0, stats

    tensors = mpt.MptFamily.tensors
    monkeypatch.setattr(mpt.MptFamily, "tensors", lambda self, ck: [
        t for t in tensors(self, ck) if not t.name.split(".")[-2].startswith(("attn_q_norm",
                                                                             "attn_k_norm"))])
    bad = tmp_path / "bad.gguf"
    kiln("convert", model_dir, "-o", bad, "--quant", "f32")
    stats = compare(ref[:48], llama_cpp_logits_stepwise(bad, ids))
    assert stats["max_rel"] > 30 * TOL["f32"], stats


# ------------------------------------------------------------------------------- metadata

def gguf_fields(path: Path) -> dict:
    import gguf

    return {k: f.contents() for k, f in gguf.GGUFReader(path).fields.items()}


@pytest.fixture(scope="module")
def full_gguf(checkpoints, tmp_path_factory):
    model_dir, _, _ = checkpoints("own-full")
    out = tmp_path_factory.mktemp("full") / "own-full-q8_0.gguf"
    kiln("convert", model_dir, "-o", out, "--quant", "q8_0")
    return model_dir, out


def test_metadata_reads_every_field(full_gguf, checkpoints, tmp_path):
    model_dir, out = full_gguf
    md = gguf_fields(out)
    cfg = json.loads((model_dir / "config.json").read_text())
    assert md["general.architecture"] == "mpt"
    assert md["mpt.context_length"] == 128
    assert md["mpt.embedding_length"] == 96
    assert md["mpt.block_count"] == 2
    assert md["mpt.feed_forward_length"] == 3 * 96          # expansion_ratio, not 4
    assert md["mpt.attention.head_count"] == md["mpt.attention.head_count_kv"] == 6
    assert md["mpt.attention.layer_norm_epsilon"] == pytest.approx(1e-4)
    assert md["mpt.attention.clamp_kqv"] == pytest.approx(1.5)
    assert md["mpt.attention.max_alibi_bias"] == pytest.approx(6.0)
    assert md["mpt.vocab_size"] == cfg["vocab_size"]
    assert len(md["tokenizer.ggml.tokens"]) == cfg["vocab_size"]       # padded above tokenizer
    assert md["tokenizer.ggml.tokens"][-1].startswith("[PAD")
    assert md["tokenizer.ggml.model"] == "gpt2"
    assert (md["tokenizer.ggml.eos_token_id"], md["tokenizer.ggml.add_bos_token"]) == (2, False)
    assert md["tokenizer.ggml.tokens"][2] == "</s>"
    assert md["kiln.family"] == "alaya"
    assert md["kiln.eos_token_ids"] == [2]
    assert md["kiln.banned_token_ids"] == [3]
    assert md["kiln.stop_strings"] == ["### Instruction"]
    assert (md["kiln.sampling.temperature"], md["kiln.sampling.top_p"],
            md["kiln.sampling.repeat_penalty"]) == pytest.approx((1.0, 0.9, 1.0))
    from convert.gguf_info import read_info
    types = {t["name"]: t["type"] for t in read_info(out, with_tensors=True)["tensors"]}
    assert types["output.weight"] == "Q8_0"                 # logit_scale baked in
    assert types["blk.0.attn_norm.bias"] == "F32" and types["blk.0.attn_qkv.bias"] == "F32"
    assert "position_embd.weight" in types                  # learned_pos_emb + alibi: both

    # GQA / MQA head counts (llm-foundry's kv_n_heads default of 1 is ignored for MHA)
    for case, kv in (("own-gqa-wpe", 2), ("own-mqa", 1)):
        d, _, _ = checkpoints(case)
        o = tmp_path / f"{case}.gguf"
        kiln("convert", d, "-o", o, "--quant", "f16")
        f = gguf_fields(o)
        assert f["mpt.attention.head_count_kv"] == kv
        if case == "own-gqa-wpe":
            assert f["mpt.attention.max_alibi_bias"] == 0.0
            assert f["mpt.feed_forward_length"] == 160
            assert f["tokenizer.ggml.model"] == "llama"
            assert f["tokenizer.ggml.eos_token_id"] == 2 and f["kiln.banned_token_ids"] == [3]


def test_generation_config_overrides_api_defaults(checkpoints, tmp_path):
    model_dir, _, _ = checkpoints("hf-clip-qkv")
    d = tmp_path / "m"
    shutil.copytree(model_dir, d)
    (d / "generation_config.json").write_text(json.dumps({
        "eos_token_id": 2, "temperature": 0.7, "top_p": 0.8, "do_sample": True}))
    out = tmp_path / "g.gguf"
    kiln("convert", d, "-o", out, "--quant", "f16")
    md = gguf_fields(out)
    assert (md["kiln.sampling.temperature"], md["kiln.sampling.top_p"],
            md["kiln.sampling.repeat_penalty"]) == pytest.approx((0.7, 0.8, 1.0))


def test_generic_mpt_is_not_alaya(checkpoints, tmp_path):
    """An MPT checkpoint that is not Alaya keeps its own tokens: no ban, its own eos."""
    model_dir, _, _ = checkpoints("hf-clip-qkv")
    d = tmp_path / "mpt-7b-tiny"
    shutil.copytree(model_dir, d)
    cfg = json.loads((d / "config.json").read_text())
    cfg.update(_name_or_path="mosaicml/mpt-7b", architectures=["MptForCausalLM"])
    (d / "config.json").write_text(json.dumps(cfg))
    (d / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<pad>"}))
    out = tmp_path / "g.gguf"
    kiln("convert", d, "-o", out, "--quant", "f16")
    md = gguf_fields(out)
    assert md["kiln.family"] == "mpt"
    assert "kiln.banned_token_ids" not in md and "kiln.stop_strings" not in md
    assert md["tokenizer.ggml.eos_token_id"] == 3


# ------------------------------------------------------------------------------- tokenizer

@pytest.mark.parametrize("case", ["own-full", "own-gqa-wpe"])
def test_native_tokenizer(checkpoints, tmp_path, case):
    """Both tokenizer kinds: llama.cpp's ids equal the HF tokenizer's on plain text."""
    from llama_cpp import Llama

    model_dir, _, _ = checkpoints(case)
    out = tmp_path / "v.gguf"
    kiln("convert", model_dir, "-o", out, "--quant", "f16")
    if (model_dir / "tokenizer.model").is_file():
        import sentencepiece as spm
        sp = spm.SentencePieceProcessor(model_file=str(model_dir / "tokenizer.model"))
        ref, kind = sp.encode, "sentencepiece tokenizer.model"
    else:
        from tokenizers import Tokenizer
        tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        ref, kind = (lambda t: tok.encode(t, add_special_tokens=False).ids), "byte-level BPE"
    llm = Llama(model_path=os.fspath(out), vocab_only=True, verbose=False)
    try:
        texts = ENGLISH + CHINESE + ["She said: the weather in London was cold."]
        eq = sum(llm.tokenize(t.encode(), add_bos=False, special=False) == ref(t) for t in texts)
        print(f"\n[parity] alaya {kind}: {eq}/{len(texts)}")
        assert eq == len(texts)
        assert llm.token_eos() == 2
        assert llm.tokenize(b"x</s>", add_bos=False, special=True)[-1] == 2
    finally:
        llm.close()


# ------------------------------------------------------------------------------- chat

def _official() -> dict:
    return official("alaya-7b-chat")


def reference_prompt(messages: list[dict], add_generation_prompt: bool = True) -> str:
    """api.py's PROMPT_FORMAT / OUTPUT_FORMAT from official_prompts.json; the generation prompt
    is OUTPUT_FORMAT's header (kiln's documented choice), a system message goes at the top of
    the first instruction (kiln's documented choice)."""
    p = _official()
    system = "".join(m["content"] + "\n\n" for m in messages if m["role"] == "system")
    out = ""
    for m in messages:
        if m["role"] == "user":
            out += p["prompt"].replace("{instruction}", system + m["content"])
            system = ""
        elif m["role"] == "assistant":
            out += p["output"].replace("{output}", m["content"])
    if add_generation_prompt:
        out += p["output"].split("{output}")[0]
    return out


TURNS = [
    ("你好，请介绍一下你自己。", "我是Alaya，九章云极开发的语言模型。"),
    ("What is 2 + 2? Answer with {braces} and 'quotes'.", "It is 4.\nDone."),
    ("Thanks!\n\nOne more: write a haiku.", None),
]


@pytest.mark.parametrize("n_turns", [1, 2, 3])
@pytest.mark.parametrize("system", [None, "You are a helpful assistant."])
def test_chat_template_golden(full_gguf, n_turns, system):
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    _, out = full_gguf
    md = gguf_fields(out)
    template = md["tokenizer.chat_template"]
    eos = md["tokenizer.ggml.tokens"][md["tokenizer.ggml.eos_token_id"]]
    assert eos == "</s>"
    messages = [{"role": "system", "content": system}] if system else []
    for i in range(n_turns):
        user, answer = TURNS[i]
        messages.append({"role": "user", "content": user})
        if i < n_turns - 1:
            messages.append({"role": "assistant", "content": answer})
    want = reference_prompt(messages)
    for env in (ImmutableSandboxedEnvironment(),
                ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)):
        got = env.from_string(template).render(messages=messages, eos_token=eos, bos_token="<s>",
                                               add_generation_prompt=True)
        assert got == want
    assert want.endswith("### Output:\t\n") and not want.startswith("<s>")


def test_chat_template_training_format(full_gguf):
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    _, out = full_gguf
    md = gguf_fields(out)
    got = ImmutableSandboxedEnvironment().from_string(md["tokenizer.chat_template"]).render(
        messages=[{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}],
        eos_token="</s>", add_generation_prompt=False)
    assert got == "### Instruction:\t\nQ\n\n### Output:\t\nA </s>"     # sft.py, byte for byte


# ------------------------------------------------------------------------------- refusals

REFUSE = [
    ({"attn": {"prefix_lm": True}}, "prefix_lm"),
    ({"attn": {"attn_uses_sequence_id": True}}, "attn_uses_sequence_id"),
    ({"attn": {"attn_type": "multihead_latent_attention"}}, "attn_type"),
    ({"attn": {"softmax_scale": 0.5}}, "softmax_scale"),
    ({"attn": {"rope": True}}, "rope"),
    ({"attn": {"qk_ln": True, "attn_type": "grouped_query_attention", "kv_n_heads": 2}}, "qk_ln"),
    ({"attn": {"qk_ln": True}}, "qk_ln"),
    ({"attn": {"fused_qkv": False}}, "fused_qkv"),
    ({"attn": {"sliding_window_size": 64}}, "sliding_window_size"),
    ({"attn": {"alibi": None}}, "alibi"),
    ({"norm_type": "rmsnorm"}, "norm_type"),
    ({"norm_type": "low_precision_rmsnorm"}, "norm_type"),
    ({"ffn_config": {"ffn_type": "mptglu"}}, "ffn_type"),
    ({"ffn_config": {"ffn_type": "te_ln_mlp"}}, "ffn_type"),
    ({"ffn_config": {"ffn_type": "mptmlp", "ffn_act_fn": {"name": "silu"}}}, "ffn_act_fn"),
    ({"logit_scale": "bogus"}, "logit_scale"),
]


@pytest.mark.parametrize("patch,words", REFUSE, ids=[w + str(i) for i, (_, w) in enumerate(REFUSE)])
def test_refusals(checkpoints, tmp_path, capsys, patch, words):
    model_dir, _, _ = checkpoints("hf-clip-qkv")
    bad = tmp_path / "bad"
    shutil.copytree(model_dir, bad)
    cfg = json.loads((bad / "config.json").read_text())
    patch = dict(patch)
    for k, v in patch.pop("attn", {}).items():
        if v is None:
            cfg["attn_config"].pop(k)
        else:
            cfg["attn_config"][k] = v
    cfg.update(patch)
    (bad / "config.json").write_text(json.dumps(cfg))
    out = tmp_path / "o.gguf"
    with pytest.raises(SystemExit) as exc:
        run_cli(cli, ["convert", str(bad), "-o", str(out), "--quant", "f16"])
    assert exc.value.code not in (0, None)
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert "config.json" in line and words in line, line
    assert not out.exists() and not [p for p in tmp_path.iterdir() if ".partial" in p.name]


def test_default_softmax_scale_and_embedding_fraction_accepted(checkpoints, tmp_path):
    """softmax_scale spelled out at its default, and a training-only embedding_fraction, convert."""
    model_dir, _, _ = checkpoints("hf-clip-qkv")
    d = tmp_path / "m"
    shutil.copytree(model_dir, d)
    cfg = json.loads((d / "config.json").read_text())
    cfg["attn_config"]["softmax_scale"] = 1 / math.sqrt(cfg["d_model"] // cfg["n_heads"])
    cfg["embedding_fraction"] = 0.1
    (d / "config.json").write_text(json.dumps(cfg))
    kiln("convert", d, "-o", tmp_path / "o.gguf", "--quant", "f16")
    assert (tmp_path / "o.gguf").is_file()


def test_foreign_gguf_recognized():
    """An mpt GGUF named Alaya made by another tool gets kiln's Alaya knowledge; other MPTs not."""
    from convert.families import family_for_gguf
    from convert.families.alaya import ALAYA_TEMPLATE, AlayaFamily

    assert family_for_gguf("mpt", "Alaya-7B-Chat") is AlayaFamily
    assert family_for_gguf("mpt", "mpt-7b-chat") is None
    fam = AlayaFamily.for_gguf()
    assert fam.chat_template(None) == ALAYA_TEMPLATE and fam.banned_ids() == [3]
    assert fam.stop_strings() == ["### Instruction"]
    assert fam.sampling_defaults() == {"temperature": 1.0, "top_p": 0.9, "repeat_penalty": 1.0}
