"""Jais (JAISLMHeadModel -> GGUF arch `jais`): tiny hand-built checkpoints in the exact HF layout,
converted with `kiln convert`, run in llama.cpp and compared with a reference forward pass written
here from the official modeling code's semantics (numpy, float64).

Two checkpoints cover both config dialects:
  core42: embeddings_scale / width_scale / scale_qk_dot_by_d, F32, tied head, 6 heads (ALiBi slopes
          of a non-power-of-two head count), causal-mask buffers, tokenizer.json.
  mup:    mup_embeddings_scale / mup_output_alpha x mup_width_scale / mup_scale_qk_dot_by_d, BF16,
          untied lm_head, 5 heads, n_inner 200 (not a multiple of 32: ffn_down falls back to F16),
          config written with the attribute-map aliases (hidden_size, ...), padded vocab, and the
          GPT-2 vocab.json + merges.txt that the original repos ship instead of tokenizer.json.
"""
from __future__ import annotations

import contextlib
import io
import json
import math
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest

from facts import official
from hf_models import check_types, compare, llama_cpp_logits, small_chunks

pytest.importorskip("llama_cpp")
pytest.importorskip("tokenizers")
pytest.importorskip("safetensors")

from convert.cli import run_cli  # noqa: E402
from runtime.cli import cli  # noqa: E402

# Same budgets as test_convert_e2e (max |delta logit| / std(logits)): F32 against the float64
# reference, F16 against it too, Q8_0/Q4_0 against the reference on gguf-py-rounded weights
# (what is left there is llama.cpp quantizing activations to 8 bits).
TOL = {"f32": 1e-4, "f16": 2e-2, "q8_0": 0.25, "q4_0": 0.25}
TOP1 = {"f32": 1.0, "f16": 0.9, "q8_0": 0.9, "q4_0": 0.9}
QUANTS = ("f32", "f16", "q8_0", "q4_0")


CORPUS = [
    "The quick brown fox jumps over the lazy dog. What is the capital of UAE?",
    "Jais is a bilingual Arabic and English model; numbers like 2048 and 3.14 appear too.",
    "ما هي عاصمة الامارات؟ أبوظبي هي عاصمة دولة الإمارات العربية المتحدة.",
    "اسمك جيس وسميت على اسم جبل جيس اعلى جبل في الامارات.",
    "def main():\n    return 42\n",
] * 30

CASES = {
    "core42": dict(dialect="core42", n_embd=96, n_head=6, n_inner=256, dtype="F32", tied=True,
                   tokenizer="json", extra_vocab=0, seed=1),
    "mup": dict(dialect="mup", n_embd=160, n_head=5, n_inner=200, dtype="BF16", tied=False,
                tokenizer="vocab+merges", extra_vocab=8, seed=2),
}
SCALES = {"core42": (3.5, 0.45), "mup": (4.0, 2.5 * 0.2)}   # (embedding scale, width scale)
N_LAYER, N_POSITIONS, EPS = 2, 256, 1e-5


# ------------------------------------------------------------------------------------------------
# Building checkpoints
# ------------------------------------------------------------------------------------------------

def train_tokenizer(out_dir: Path, kind: str) -> int:
    """Byte-level BPE with <|endoftext|> = id 0; returns the vocab size."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=420, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(CORPUS, trainer)
    assert tok.token_to_id("<|endoftext|>") == 0
    if kind == "json":
        tok.save(str(out_dir / "tokenizer.json"))
    else:
        tok.model.save(str(out_dir))           # vocab.json + merges.txt
    special = "<|endoftext|>"
    (out_dir / "tokenizer_config.json").write_text(json.dumps({
        "bos_token": special, "eos_token": special, "unk_token": special, "pad_token": special,
        "model_max_length": N_POSITIONS, "tokenizer_class": "GPT2Tokenizer"}))
    (out_dir / "special_tokens_map.json").write_text(json.dumps({
        "bos_token": special, "eos_token": special, "unk_token": special, "pad_token": special}))
    return tok.get_vocab_size()


def hf_alibi_slopes(n: int) -> list[float]:
    """The ALiBi reference implementation (Press et al.; the copy in modeling_jais.py)."""
    def power_of_2(n):
        start = 2 ** (-(2 ** -(math.log2(n) - 3)))
        return [start * start ** i for i in range(n)]

    if math.log2(n).is_integer():
        return power_of_2(n)
    closest = 2 ** math.floor(math.log2(n))
    return power_of_2(closest) + hf_alibi_slopes(2 * closest)[0::2][: n - closest]


def to_bf16(a: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bits (round to nearest even), as torch does."""
    bits = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32).astype(np.uint64)
    bits = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
    return bits.astype(np.uint16)


def from_bf16(bits: np.ndarray) -> np.ndarray:
    return (bits.astype(np.uint32) << 16).view(np.float32)


def save_safetensors(path: Path, tensors: dict[str, np.ndarray], dtype: str) -> None:
    """A .safetensors file in F32 or BF16 (numpy has no bfloat16, so the file is written here)."""
    if dtype == "F32":
        from safetensors.numpy import save_file
        save_file({k: np.ascontiguousarray(v, np.float32) for k, v in tensors.items()}, str(path),
                  metadata={"format": "pt"})
        return
    header, blobs, offset = {"__metadata__": {"format": "pt"}}, [], 0
    for name, arr in tensors.items():
        data = to_bf16(arr).tobytes()
        header[name] = {"dtype": "BF16", "shape": list(arr.shape),
                        "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + b"".join(blobs))


def build(case: str, out_dir: Path, *, slopes_factor: float = 1.0,
          slopes: bool = True) -> tuple[dict, dict]:
    """Write checkpoint `case` into out_dir; returns (config, weights as float64 numpy)."""
    spec = CASES[case]
    out_dir.mkdir(parents=True, exist_ok=True)
    n_real = train_tokenizer(out_dir, spec["tokenizer"])
    v, d, ff, nh = n_real + spec["extra_vocab"], spec["n_embd"], spec["n_inner"], spec["n_head"]
    rng = np.random.default_rng(spec["seed"])

    def mat(n_in, n_out, gain=1.0):           # Conv1D layout [in, out]
        return rng.standard_normal((n_in, n_out)) * gain / math.sqrt(n_in)

    def norm(n):                              # far from 1, some below, some above
        return rng.uniform(0.4, 2.2, n)

    def bias(n, gain=1.0):                    # qkv / MLP ones: large enough to matter at Q4_0
        return 0.3 * gain * rng.standard_normal(n)

    w: dict[str, np.ndarray] = {"transformer.wte.weight": rng.standard_normal((v, d))}
    for i in range(N_LAYER):
        p = f"transformer.h.{i}."
        w[p + "ln_1.weight"], w[p + "ln_1.bias"] = norm(d), bias(d)
        w[p + "attn.c_attn.weight"] = mat(d, 3 * d, 2.0)
        w[p + "attn.c_attn.bias"] = bias(3 * d, 2.5)
        w[p + "attn.c_proj.weight"], w[p + "attn.c_proj.bias"] = mat(d, d), bias(d)
        w[p + "ln_2.weight"], w[p + "ln_2.bias"] = norm(d), bias(d)
        w[p + "mlp.c_fc.weight"], w[p + "mlp.c_fc.bias"] = mat(d, ff), bias(ff, 3.0)
        w[p + "mlp.c_fc2.weight"], w[p + "mlp.c_fc2.bias"] = mat(d, ff), bias(ff, 3.0)
        w[p + "mlp.c_proj.weight"], w[p + "mlp.c_proj.bias"] = mat(ff, d), bias(d, 3.0)
    w["transformer.ln_f.weight"], w["transformer.ln_f.bias"] = norm(d), bias(d)
    if not spec["tied"]:
        w["lm_head.weight"] = rng.standard_normal((v, d)) / math.sqrt(d)
    if spec["dtype"] == "BF16":               # the reference sees exactly what is stored
        w = {k: from_bf16(to_bf16(a.astype(np.float32))).astype(np.float64) for k, a in w.items()}

    stored = {k: a.astype(np.float32) for k, a in w.items()}
    # Non-weights that the real checkpoints carry: ALiBi slopes [n_head, 1] and, in older ones,
    # the GPT-2 causal-mask buffers.
    if slopes:
        stored["transformer.relative_pe.slopes"] = (
            np.array(hf_alibi_slopes(nh), np.float32)[:, None] * slopes_factor)
    if spec["dialect"] == "core42":
        for i in range(N_LAYER):
            stored[f"transformer.h.{i}.attn.bias"] = np.tril(
                np.ones((1, 1, N_POSITIONS, N_POSITIONS), np.float32))
            stored[f"transformer.h.{i}.attn.masked_bias"] = np.array(-1e4, np.float32)
    save_safetensors(out_dir / "model.safetensors", stored, spec["dtype"])

    es, ws = SCALES[case]
    config = {"architectures": ["JAISLMHeadModel"], "model_type": "jais",
              "activation_function": "swiglu", "position_embedding_type": "alibi",
              "vocab_size": v, "n_inner": ff, "layer_norm_epsilon": EPS,
              "scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False,
              "reorder_and_upcast_attn": False, "tie_word_embeddings": spec["tied"],
              "bos_token_id": 0, "eos_token_id": 0, "pad_token_id": 0,
              "torch_dtype": "float32" if spec["dtype"] == "F32" else "bfloat16"}
    if spec["dialect"] == "core42":
        config.update(n_embd=d, n_head=nh, n_layer=N_LAYER, n_positions=N_POSITIONS,
                      embeddings_scale=es, width_scale=ws, scale_qk_dot_by_d=True)
    else:
        config.update(hidden_size=d, num_attention_heads=nh, num_hidden_layers=N_LAYER,
                      max_position_embeddings=N_POSITIONS, mup_embeddings_scale=es,
                      mup_output_alpha=2.5, mup_width_scale=0.2, mup_scale_qk_dot_by_d=True,
                      alibi_scaling=None)
        (out_dir / "generation_config.json").write_text(json.dumps(
            {"bos_token_id": 0, "eos_token_id": 0, "temperature": 0.7}))
    (out_dir / "config.json").write_text(json.dumps(config, indent=2))
    return config, w


# ------------------------------------------------------------------------------------------------
# Reference forward pass (official modeling_jais.py semantics, float64)
# ------------------------------------------------------------------------------------------------

def layer_norm(x, w, b):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + EPS) * w + b


def reference_logits(w: dict, case: str, ids: list[int], *, emb_scale: bool = True,
                     width_scale: bool = True, qk_power: float = 1.0,
                     drop: tuple[str, ...] = ()) -> np.ndarray:
    """Logits of every position. The keyword arguments break the model on purpose, to show
    that the tolerance catches each mistake: leave out a scale, use 1/sqrt(d), zero a bias."""
    spec = CASES[case]
    es, ws = SCALES[case]
    w = {k: np.zeros_like(a) if k in drop else a for k, a in w.items()}
    nh, d = spec["n_head"], spec["n_embd"]
    hd, t = d // nh, len(ids)
    h = w["transformer.wte.weight"][ids] * (es if emb_scale else 1.0)
    slopes = np.array(hf_alibi_slopes(nh))
    pos = np.arange(t)
    alibi = -slopes[:, None, None] * np.abs(pos[None, :] - pos[:, None])[None]   # [head, i, j]
    future = pos[None, :] > pos[:, None]
    for i in range(N_LAYER):
        p = f"transformer.h.{i}."
        x = layer_norm(h, w[p + "ln_1.weight"], w[p + "ln_1.bias"])
        qkv = x @ w[p + "attn.c_attn.weight"] + w[p + "attn.c_attn.bias"]
        q, k, v = (a.reshape(t, nh, hd).transpose(1, 0, 2) for a in np.split(qkv, 3, axis=-1))
        scores = q @ k.transpose(0, 2, 1) / hd ** qk_power + alibi
        scores[:, future] = -np.inf
        probs = np.exp(scores - scores.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        attn = (probs @ v).transpose(1, 0, 2).reshape(t, d)
        h = h + attn @ w[p + "attn.c_proj.weight"] + w[p + "attn.c_proj.bias"]
        x = layer_norm(h, w[p + "ln_2.weight"], w[p + "ln_2.bias"])
        up = x @ w[p + "mlp.c_fc.weight"] + w[p + "mlp.c_fc.bias"]
        gate = x @ w[p + "mlp.c_fc2.weight"] + w[p + "mlp.c_fc2.bias"]
        h = h + (up * gate / (1 + np.exp(-gate))) @ w[p + "mlp.c_proj.weight"] \
            + w[p + "mlp.c_proj.bias"]
    h = layer_norm(h, w["transformer.ln_f.weight"], w["transformer.ln_f.bias"])
    head = w.get("lm_head.weight", w["transformer.wte.weight"])
    return (h @ head.T) * (ws if width_scale else 1.0)


def round_like_kiln(w: dict, case: str, quant: str) -> dict:
    """The weights as a `quant` GGUF holds them, rounded by gguf-py's reference quantizer
    following kiln's type rules: 1-D stay F32; a matrix whose rows (input dimension) are not a
    multiple of 32 is F16; under q4_0 the output projection is Q8_0. Scales are baked in before
    rounding, as the converter does."""
    import gguf
    from gguf.quants import dequantize, quantize

    want = gguf.GGMLQuantizationType[quant.upper()]
    es, ws = SCALES[case]

    def rnd(rows: np.ndarray, qtype, scale: float = 1.0) -> np.ndarray:
        rows32 = rows.astype(np.float32) * np.float32(scale)
        if rows.shape[-1] % 32:
            back = rows32.astype(np.float16).astype(np.float32)
        else:
            back = dequantize(quantize(rows32, qtype), qtype)
        return back.astype(np.float64) / scale

    out = dict(w)
    head = w.get("lm_head.weight", w["transformer.wte.weight"])
    out["transformer.wte.weight"] = rnd(w["transformer.wte.weight"], want, es)
    q8 = gguf.GGMLQuantizationType.Q8_0
    out["lm_head.weight"] = rnd(head, q8 if quant == "q4_0" else want, ws)
    for name, a in w.items():
        if name.startswith("transformer.h.") and name.endswith(".weight") and a.ndim == 2:
            out[name] = rnd(a.T, want).T        # Conv1D [in, out]: GGUF rows run along `in`
    return out


# ------------------------------------------------------------------------------------------------
# Fixtures: build, convert and run each checkpoint once
# ------------------------------------------------------------------------------------------------

def kiln(*args) -> tuple[int, str, str]:
    """Run the kiln CLI in-process; (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            run_cli(cli, [str(a) for a in args])
        except SystemExit as exc:
            code = exc.code or 0
    return code, out.getvalue(), err.getvalue()


def ids_for(case: str, config: dict) -> list[int]:
    rng = np.random.default_rng(11)
    n_real = config["vocab_size"] - CASES[case]["extra_vocab"]
    return [int(x) for x in rng.integers(1, n_real, size=40)]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    made: dict = {}

    def get(case: str):
        if case not in made:
            model_dir = tmp_path_factory.mktemp(case)
            config, w = build(case, model_dir)
            made[case] = (model_dir, config, w)
        return made[case]
    return get


@pytest.fixture(scope="module")
def converted(models, tmp_path_factory):
    """(gguf path, llama.cpp logits, CLI stdout + stderr) per (case, quant)."""
    made: dict = {}

    def get(case: str, quant: str):
        if (case, quant) not in made:
            model_dir, config, _ = models(case)
            out = tmp_path_factory.mktemp("gguf") / f"{case}-{quant}.gguf"
            code, stdout, stderr = kiln("convert", model_dir, "-o", out, "--quant", quant,
                                        "--quiet")
            assert code == 0, stdout + stderr
            made[(case, quant)] = (out, llama_cpp_logits(out, ids_for(case, config)),
                                   stdout + stderr)
        return made[(case, quant)]
    return get


# ------------------------------------------------------------------------------------------------
# Logits
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("quant", QUANTS)
def test_logits_match_reference(models, converted, case, quant):
    _, config, w = models(case)
    ref_w = round_like_kiln(w, case, quant) if quant in ("q8_0", "q4_0") else w
    ref = reference_logits(ref_w, case, ids_for(case, config))
    path, got, _ = converted(case, quant)
    check_types(path, quant)
    assert got.shape == ref.shape
    stats = compare(ref, got)
    print(case, quant, stats)
    assert stats["max_rel"] < TOL[quant], stats
    assert stats["top1"] >= TOP1[quant], stats


@pytest.mark.parametrize("case", list(CASES))
def test_many_chunks_per_tensor(models, tmp_path, monkeypatch, case):
    """Every transposed Conv1D matrix in many chunks (2 rows of 96 columns, 1 of 160+) on 3
    threads: each chunk is a slice of the stored matrix's columns."""
    model_dir, config, w = models(case)
    sizes = small_chunks(monkeypatch, 2 * 96 + 7)
    out = tmp_path / "m.gguf"
    code, stdout, stderr = kiln("convert", model_dir, "-o", out, "--quant", "f32",
                                "--threads", 3, "--quiet")
    assert code == 0, stdout + stderr
    assert max(sizes) <= 2 and len(sizes) > 500, (max(sizes), len(sizes))
    ids = ids_for(case, config)
    stats = compare(reference_logits(w, case, ids), llama_cpp_logits(out, ids))
    print(case, "chunked", len(sizes), stats)
    assert stats["max_rel"] < TOL["f32"], stats


BROKEN = {
    "no embedding scale": dict(emb_scale=False),
    "no width scale": dict(width_scale=False),
    "1/sqrt(d) attention": dict(qk_power=0.5),
    "no qkv bias": dict(drop=("transformer.h.0.attn.c_attn.bias",)),
    "no gate bias": dict(drop=("transformer.h.1.mlp.c_fc2.bias",)),
    "no down bias": dict(drop=("transformer.h.0.mlp.c_proj.bias",)),
    "no final norm bias": dict(drop=("transformer.ln_f.bias",)),
}


@pytest.mark.parametrize("case", list(CASES))
def test_tolerance_catches_each_mistake(models, converted, case):
    """The F32 comparison fails by far when the reference leaves out any one scale or bias, or
    scales attention by 1/sqrt(d): so passing it shows kiln (and llama.cpp) get each one right,
    including the 1/head_dim attention scale that llama.cpp hard-codes."""
    _, config, w = models(case)
    _, got, _ = converted(case, "f32")
    ids = ids_for(case, config)
    for what, kw in BROKEN.items():
        stats = compare(reference_logits(w, case, ids, **kw), got)
        print("mistake", case, what, f"{stats['max_rel']:.3f}")
        # measured: 0.7 (a dropped bias) to 6 (no embedding scale), against 1e-6 when right;
        # at least twice the quantized budget, so the Q8_0/Q4_0 comparisons would catch it too
        assert stats["max_rel"] > 2 * TOL["q4_0"], (what, stats)


# ------------------------------------------------------------------------------------------------
# File contents
# ------------------------------------------------------------------------------------------------

def test_metadata_and_tensors(models, converted):
    from convert.gguf_info import read_info

    _, config, _ = models("core42")
    path, _, _ = converted("core42", "q8_0")
    info = read_info(path, with_tensors=True)
    md = info["metadata"]
    assert md["general.architecture"] == "jais"
    assert md["jais.context_length"] == N_POSITIONS
    assert md["jais.embedding_length"] == 96
    assert md["jais.feed_forward_length"] == 256
    assert md["jais.block_count"] == N_LAYER
    assert md["jais.attention.head_count"] == 6
    assert md["jais.attention.layer_norm_epsilon"] == pytest.approx(EPS)
    assert md["jais.attention.max_alibi_bias"] == 8.0
    assert md["tokenizer.ggml.model"] == "gpt2"
    # GPT-2's split; no clean_up_tokenization_spaces in tokenizer_config: "trillion", not "jais"
    assert md["tokenizer.ggml.pre"] == "trillion"
    assert md["tokenizer.ggml.bos_token_id"] == 0
    assert md["tokenizer.ggml.eos_token_id"] == 0
    assert md["tokenizer.ggml.padding_token_id"] == 0
    assert md["tokenizer.ggml.add_bos_token"] is False
    assert md["kiln.family"] == "jais"
    assert md["kiln.eos_token_ids"]["head"] == [0]
    assert md["kiln.stop_strings"]["head"] == ["### Input", "[|Human|]", "### Instruction"]
    # No generation_config.json: the model card's sampling values.
    assert md["kiln.sampling.temperature"] == pytest.approx(0.3)
    assert md["kiln.sampling.top_p"] == pytest.approx(0.9)
    assert md["kiln.sampling.repeat_penalty"] == pytest.approx(1.2)
    types = {t["name"]: t["type"] for t in info["tensors"]}
    shapes = {t["name"]: t["shape"] for t in info["tensors"]}
    # Tied checkpoint: llama.cpp still needs its own (width-scaled) output matrix.
    assert types["output.weight"] == "Q8_0" and types["token_embd.weight"] == "Q8_0"
    assert shapes["blk.0.attn_qkv.weight"] == [96, 3 * 96]         # GGUF order: [in, out]
    assert shapes["blk.0.ffn_down.weight"] == [256, 96]
    for name in ("attn_norm.bias", "attn_qkv.bias", "attn_output.bias", "ffn_norm.bias",
                 "ffn_up.bias", "ffn_gate.bias", "ffn_down.bias"):
        assert types[f"blk.1.{name}"] == "F32"
    assert types["output_norm.bias"] == "F32"
    assert not any("slopes" in n or "mask" in n for n in types)
    assert len(types) == 4 + 14 * N_LAYER


def test_generation_config_overrides_card_sampling(converted):
    from convert.gguf_info import read_info

    path, _, _ = converted("mup", "f16")
    md = read_info(path)["metadata"]
    assert md["kiln.sampling.temperature"] == pytest.approx(0.7)
    assert md["kiln.sampling.top_p"] == pytest.approx(0.9)
    assert md["jais.embedding_length"] == 160 and md["jais.attention.head_count"] == 5
    assert md["tokenizer.ggml.tokens"]["length"] == md["jais.vocab_size"]
    # Built from vocab.json + merges.txt: <|endoftext|> is still a special (CONTROL) token.
    assert md["tokenizer.ggml.token_type"]["head"][0] == 3
    assert md["tokenizer.ggml.pre"] == "trillion" and md["tokenizer.ggml.add_bos_token"] is False


def test_missing_slopes_default_to_max_bias_8(tmp_path):
    """Checkpoints that do not store relative_pe.slopes get llama.cpp's default 8."""
    from convert.gguf_info import read_info

    model_dir, out = tmp_path / "m", tmp_path / "m.gguf"
    config, w = build("core42", model_dir, slopes=False)
    code, stdout, stderr = kiln("convert", model_dir, "-o", out, "--quant", "f32", "--quiet")
    assert code == 0, stdout + stderr
    assert read_info(out)["metadata"]["jais.attention.max_alibi_bias"] == 8.0
    ids = ids_for("core42", config)
    stats = compare(reference_logits(w, "core42", ids), llama_cpp_logits(out, ids))
    assert stats["max_rel"] < TOL["f32"], stats


@pytest.mark.parametrize("quant", ["q8_0", "q4_0"])
def test_ffn_down_falls_back_to_f16(converted, quant):
    """n_inner 200 (like 13653 / 19114 in the real models) is no multiple of 32: ffn_down's
    rows cannot be block-quantized, stay F16, and the CLI summary says so."""
    from convert.gguf_info import read_info

    path, _, output = converted("mup", quant)
    types = {t["name"]: t["type"] for t in read_info(path, with_tensors=True)["tensors"]}
    want = quant.upper()
    for i in range(N_LAYER):
        assert types[f"blk.{i}.ffn_down.weight"] == "F16"
        assert types[f"blk.{i}.ffn_up.weight"] == want
        assert types[f"blk.{i}.ffn_gate.weight"] == want
        assert types[f"blk.{i}.attn_qkv.weight"] == want
    assert types["token_embd.weight"] == want
    assert types["output.weight"] == "Q8_0"
    assert f"{N_LAYER + (quant == 'q4_0')} tensors kept another type than {want}" in output
    assert "blk.0.ffn_down.weight: F16 (rows of 200 are not a multiple of 32)" in output


# ------------------------------------------------------------------------------------------------
# Tokenizer
# ------------------------------------------------------------------------------------------------

TEXTS = ["What is the capital of UAE?", "ما هي عاصمة الامارات؟",
         "Numbers 12345 and  two  spaces,\nnew lines\n\n and tabs\tend ", "jebel jais' top's"]


@pytest.mark.parametrize("case", list(CASES))
def test_tokenizer_matches_huggingface(models, converted, case):
    from llama_cpp import Llama
    from tokenizers import Tokenizer, models as tok_models, pre_tokenizers

    model_dir, _, _ = models(case)
    if (model_dir / "tokenizer.json").is_file():
        hf = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    else:
        hf = Tokenizer(tok_models.BPE.from_file(str(model_dir / "vocab.json"),
                                                str(model_dir / "merges.txt")))
        hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    path, _, _ = converted(case, "f16")
    llm = Llama(model_path=str(path), vocab_only=True, verbose=False)
    try:
        for text in TEXTS:
            ours = llm.tokenize(text.encode(), add_bos=False, special=False)
            assert ours == hf.encode(text).ids, text
        assert llm.tokenize(b"hi<|endoftext|>", add_bos=True, special=True)[-1] == 0
        assert llm.token_bos() == 0 and llm.token_eos() == 0
    finally:
        llm.close()


# ------------------------------------------------------------------------------------------------
# Refusals
# ------------------------------------------------------------------------------------------------

def _variant(models, tmp_path, case, **changes) -> Path:
    src, _, _ = models(case)
    dst = tmp_path / f"{case}-variant"
    shutil.copytree(src, dst)
    config = json.loads((dst / "config.json").read_text())
    for key, value in changes.items():
        if value is None:
            config.pop(key, None)
        else:
            config[key] = value
    (dst / "config.json").write_text(json.dumps(config))
    return dst


REFUSALS = {
    "gelu": ("core42", dict(activation_function="gelu_new"), ["activation_function", "swiglu"]),
    "learned positions": ("core42", dict(position_embedding_type="learned"),
                          ["position_embedding_type", "alibi"]),
    "1/sqrt(d), core42": ("core42", dict(scale_qk_dot_by_d=False),
                          ["scale_qk_dot_by_d", "1/head_dim"]),
    "1/sqrt(d), missing": ("core42", dict(scale_qk_dot_by_d=None),
                           ["scale_qk_dot_by_d", "1/head_dim"]),
    "1/sqrt(d), mup": ("mup", dict(mup_scale_qk_dot_by_d=False),
                       ["mup_scale_qk_dot_by_d", "1/head_dim"]),
    "alibi scaling": ("mup", dict(alibi_scaling={"type": "linear", "factor": 2.0}),
                      ["alibi_scaling", "llama.cpp ignores it"]),
    "unscaled attention": ("core42", dict(scale_attn_weights=False), ["scale_attn_weights"]),
}


@pytest.mark.parametrize("what", list(REFUSALS))
def test_refuses_what_llama_cpp_cannot_run(models, tmp_path, what):
    case, changes, words = REFUSALS[what]
    model_dir = _variant(models, tmp_path, case, **changes)
    out = tmp_path / "out.gguf"
    code, _, err = kiln("convert", model_dir, "-o", out, "--quant", "f16", "--quiet")
    assert code == 1
    assert str(model_dir / "config.json") in err
    for word in words:
        assert word in err, err
    assert not out.exists()
    assert not list(tmp_path.glob(".out.gguf.*"))


def test_refuses_nonstandard_alibi_slopes(tmp_path):
    model_dir = tmp_path / "m"
    build("core42", model_dir, slopes_factor=1.5)
    out = tmp_path / "out.gguf"
    code, _, err = kiln("convert", model_dir, "-o", out, "--quiet")
    assert code == 1 and "relative_pe.slopes" in err and "standard ALiBi slopes" in err, err
    assert not out.exists()


# ------------------------------------------------------------------------------------------------
# Chat template
# ------------------------------------------------------------------------------------------------

def official_prompts(size: str = "30b") -> dict:
    """The card prompts (tests/data/official_prompts.json); the 13B ones are [U] there: written
    out from the card's description, not seen verbatim."""
    return official("jais-30b-chat-v1" if size == "30b" else "jais-13b-chat")


def expected_prompt(prompts: dict, messages: list[dict]) -> str:
    """The card's prompt filled in: the language follows the last question; a system message
    replaces the default system text; earlier turns become '[|Human|] q' / '[|AI|] a' lines."""
    system = messages[0]["content"] if messages[0]["role"] == "system" else None
    turns = messages[1:] if system is not None else messages
    question = turns[-1]["content"]
    arabic = any("\u0621" <= ch <= "\u064a" for ch in question)
    prompt = prompts["prompt_ar" if arabic else "prompt_eng"]
    if system is not None:
        _, blank, rest = prompt.partition("\n\n")
        prompt = "### Instruction: " + system + blank + rest
    history = "".join(("[|Human|] " if m["role"] == "user" else "[|AI|] ") + m["content"] + "\n"
                      for m in turns[:-1])
    assert prompt.count("[|Human|] {Question}") == 1
    return prompt.replace("[|Human|] {Question}", history + "[|Human|] " + question)


def render(template: str, messages: list[dict], add_generation_prompt: bool = True) -> str:
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    return env.from_string(template).render(messages=messages,
                                            add_generation_prompt=add_generation_prompt,
                                            bos_token="<|endoftext|>", eos_token="<|endoftext|>")


EN = ["What is the capital of UAE?", "Abu Dhabi is the capital.", "And its population?",
      "About 1.5 million.", "Thank you! Where is Jebel Jais?"]
AR = ["ما هي عاصمة الامارات؟", "أبوظبي هي العاصمة.", "وكم عدد سكانها؟", "حوالي مليون ونصف.",
      "شكرا! أين يقع جبل جيس؟"]


def conversation(texts: list[str], turns: int, system: str | None) -> list[dict]:
    msgs = [{"role": "system", "content": system}] if system is not None else []
    for i in range(2 * turns - 1):
        msgs.append({"role": "user" if i % 2 == 0 else "assistant", "content": texts[i]})
    return msgs


@pytest.fixture(scope="module")
def gguf_template(converted):
    from convert.gguf_info import read_info

    path, _, _ = converted("core42", "f16")
    return read_info(path)["metadata"]["tokenizer.chat_template"]


@pytest.mark.parametrize("lang", ["en", "ar"])
@pytest.mark.parametrize("turns", [1, 2, 3])
@pytest.mark.parametrize("system", [None, "You are a concise assistant.", "أنت مساعد موجز."])
def test_chat_template_golden(gguf_template, lang, turns, system):
    prompts = official_prompts()
    messages = conversation(EN if lang == "en" else AR, turns, system)
    got = render(gguf_template, messages)
    assert got == expected_prompt(prompts, messages)
    if turns == 1 and system is None:      # exactly the card's prompt, no BOS
        key = "prompt_eng" if lang == "en" else "prompt_ar"
        assert got == prompts[key].replace("{Question}", messages[-1]["content"])
    assert not got.startswith("<|endoftext|>")


def test_chat_template_mixed_languages(gguf_template):
    """The language is the last question's: an English follow-up to an Arabic turn gets the
    English prompt, with the Arabic turn kept verbatim in the history."""
    prompts = official_prompts()
    messages = [{"role": "user", "content": AR[0]}, {"role": "assistant", "content": AR[1]},
                {"role": "user", "content": EN[2]}]
    assert render(gguf_template, messages) == expected_prompt(prompts, messages)
    assert render(gguf_template, messages).startswith("### Instruction: Your name is Jais")


def test_chat_template_final_answer_without_generation_prompt(gguf_template):
    prompts = official_prompts()
    messages = conversation(EN, 1, None) + [{"role": "assistant", "content": "Abu Dhabi."}]
    got = render(gguf_template, messages, add_generation_prompt=False)
    assert got == expected_prompt(prompts, messages[:1]) + " Abu Dhabi."


@pytest.mark.parametrize("lang", ["en", "ar"])
@pytest.mark.parametrize("turns", [1, 2])
def test_chat_template_13b(tmp_path, lang, turns):
    """jais-13b-chat's shape (40 layers x 5120) gets the 13B card text."""
    from convert.families.jais import JaisFamily

    prompts = official_prompts("13b")          # [U]: see tests/data/README.md
    fam = JaisFamily({"n_layer": 40, "n_embd": 5120, "n_head": 40}, tmp_path)
    template = fam.chat_template(None)
    messages = conversation(EN if lang == "en" else AR, turns, None)
    got = render(template, messages)
    assert got == expected_prompt(prompts, messages)
    assert ("Inception and MBZUAI" if lang == "en" else "Inception و MBZUAI") in got
    assert "Core42" not in got and "30b" not in got


def test_foreign_jais_gguf_gets_family_knowledge():
    from convert.families import family_for_gguf
    from convert.families.jais import JaisFamily

    assert family_for_gguf("jais", "jais-13b-chat") is JaisFamily
    assert family_for_gguf("jais2", "Jais-2-8B-Chat") is None
    fam = JaisFamily.for_gguf()
    assert "### Response: [|AI|]" in fam.chat_template(None)
    assert fam.stop_strings() == ["### Input", "[|Human|]", "### Instruction"]
    assert fam.sampling_defaults() == {"temperature": 0.3, "top_p": 0.9, "repeat_penalty": 1.2}
