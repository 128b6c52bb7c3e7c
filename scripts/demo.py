"""The bundled demo: make a tiny Llama checkpoint, convert it, inspect it, generate a few tokens.

Needs only kiln's own dependencies (no torch): the checkpoint is written with numpy in exact
Hugging Face layout (config.json, model.safetensors, tokenizer.json). Its weights are random,
so the generated text is gibberish: the point is that every step of the pipeline runs.

    python scripts/demo.py [--out demo_out] [--quant q8_0]
"""
from __future__ import annotations

import argparse
import json
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np


def byte_unicode() -> dict[int, str]:
    """GPT-2's printable stand-in character for every byte."""
    keep = list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256))
    chars, extra = {}, 0
    for b in range(256):
        if b in keep:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return chars


def write_tokenizer(out: Path) -> int:
    """A small byte-level BPE tokenizer.json (GPT-2 style) with a few merges."""
    chars = byte_unicode()
    vocab = {chars[b]: b for b in range(256)}
    merges = []
    for a, b in [("Ġ", "t"), ("h", "e"), ("Ġt", "he"), ("i", "n"), ("Ġ", "a"), ("e", "r"),
                 ("o", "n"), ("Ġ", "w"), ("r", "e"), ("Ġ", "s"), ("l", "l"), ("Ġ", "h")]:
        vocab[a + b] = len(vocab)
        merges.append(f"{a} {b}")
    vocab["<|endoftext|>"] = len(vocab)
    tok = {
        "version": "1.0", "truncation": None, "padding": None,
        "added_tokens": [{"id": vocab["<|endoftext|>"], "content": "<|endoftext|>",
                          "single_word": False, "lstrip": False, "rstrip": False,
                          "normalized": False, "special": True}],
        "normalizer": None,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
                          "use_regex": True},
        "post_processor": None,
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True,
                    "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None,
                  "continuing_subword_prefix": None, "end_of_word_suffix": None,
                  "fuse_unk": False, "byte_fallback": False, "vocab": vocab, "merges": merges},
    }
    (out / "tokenizer.json").write_text(json.dumps(tok, ensure_ascii=False))
    (out / "tokenizer_config.json").write_text(json.dumps({
        "bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>", "add_bos_token": False,
        "tokenizer_class": "GPT2Tokenizer"}))
    return len(vocab)


def write_safetensors(path: Path, tensors: dict[str, np.ndarray]) -> None:
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    tensors = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in tensors.items()}
    for name, arr in tensors.items():
        header[name] = {"dtype": "F32", "shape": list(arr.shape),
                        "data_offsets": [offset, offset + arr.nbytes]}
        offset += arr.nbytes
    blob = json.dumps(header).encode()
    blob += b" " * (-len(blob) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for arr in tensors.values():
            f.write(arr.tobytes())


def make_checkpoint(out: Path, seed: int = 0) -> None:
    out.mkdir(parents=True, exist_ok=True)
    n_vocab = write_tokenizer(out)
    d, ff, layers, heads = 128, 256, 2, 4
    eos = n_vocab - 1
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": d,
              "intermediate_size": ff, "num_hidden_layers": layers, "num_attention_heads": heads,
              "num_key_value_heads": heads, "max_position_embeddings": 512, "rms_norm_eps": 1e-5,
              "rope_theta": 10000.0, "vocab_size": n_vocab, "tie_word_embeddings": False,
              "bos_token_id": eos, "eos_token_id": eos, "torch_dtype": "float32",
              "_name_or_path": "kiln-demo-tiny-llama"}
    (out / "config.json").write_text(json.dumps(config, indent=2))
    rng = np.random.default_rng(seed)

    def mat(rows, cols):
        return (rng.standard_normal((rows, cols)) / np.sqrt(cols)).astype(np.float32)

    t = {"model.embed_tokens.weight": mat(n_vocab, d), "model.norm.weight": np.ones(d, np.float32),
         "lm_head.weight": mat(n_vocab, d)}
    for i in range(layers):
        p = f"model.layers.{i}."
        t.update({p + "input_layernorm.weight": np.ones(d, np.float32),
                  p + "post_attention_layernorm.weight": np.ones(d, np.float32),
                  p + "self_attn.q_proj.weight": mat(d, d), p + "self_attn.k_proj.weight": mat(d, d),
                  p + "self_attn.v_proj.weight": mat(d, d), p + "self_attn.o_proj.weight": mat(d, d),
                  p + "mlp.gate_proj.weight": mat(ff, d), p + "mlp.up_proj.weight": mat(ff, d),
                  p + "mlp.down_proj.weight": mat(d, ff)})
    write_safetensors(out / "model.safetensors", t)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("demo_out"))
    ap.add_argument("--quant", default="q8_0")
    args = ap.parse_args()
    ckpt, gguf_path = args.out / "tiny-llama", args.out / f"tiny-llama-{args.quant}.gguf"

    print(f"1. writing a tiny random Llama checkpoint to {ckpt}/")
    make_checkpoint(ckpt)
    kiln = [sys.executable, "-m", "runtime"]
    print(f"2. kiln convert {ckpt} -o {gguf_path} --quant {args.quant}")
    subprocess.run(kiln + ["convert", str(ckpt), "-o", str(gguf_path), "--quant", args.quant],
                   check=True)
    print(f"3. kiln inspect {gguf_path}")
    subprocess.run(kiln + ["inspect", str(gguf_path)], check=True)

    print("4. generating 12 tokens with llama-cpp-python (random weights: expect gibberish)")
    from llama_cpp import Llama

    llm = Llama(model_path=str(gguf_path), n_ctx=128, verbose=False, seed=0)
    out = llm("the weather", max_tokens=12, temperature=0.0)
    text = out["choices"][0]["text"]
    print(f"   prompt 'the weather' -> {text!r} ({out['usage']['completion_tokens']} tokens)")
    llm.close()
    print("demo OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
