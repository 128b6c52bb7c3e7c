"""Benchmark kiln's converter against llama.cpp's convert_hf_to_gguf.py on a full-size checkpoint.

What it does, in order:

1. Makes (or reuses, when already complete) a random checkpoint in the exact shape of
   llm-jp/llm-jp-3-1.8b: LlamaForCausalLM, hidden 2048, 24 layers, 16 heads (16 KV heads,
   head_dim 128), MLP 7168, vocab 99584, bf16, sharded safetensors (2 GB shards) with a
   model.safetensors.index.json as transformers writes it: about 3.5 GiB. It is written with
   numpy only, a few MB at a time, so the generator itself needs little memory. The weights are
   random bf16 bit patterns kept to sane magnitudes (|w| in [2^-7, 2^-3), norms in [1, 2)).
   The tokenizer is a small SentencePiece model (tokenizer.model, byte fallback, ~1000 pieces)
   trained on the spot, because llama.cpp's converter cannot read llm-jp's Unigram
   tokenizer.json; both converters pad the vocabulary up to the 99584 rows of the embeddings.

2. Runs each conversion in its own subprocess and measures its wall time and the child's own
   peak RSS (ru_maxrss of that one process, from os.wait4; not a RUSAGE_CHILDREN aggregate):
     kiln:      kiln convert MODEL -o OUT --quant q8_0      (and --quant f16)
     llama.cpp: python LLAMA/convert_hf_to_gguf.py MODEL --outtype q8_0 --outfile OUT  (and f16)
                with PYTHONPATH=LLAMA/gguf-py so it uses its own gguf-py;
                only when --llama-cpp points at a llama.cpp source tree.
   The page cache cannot be dropped here (no root/sysctl), so instead every run is preceded by a
   warm-up read of all shards (cat > /dev/null): every run starts with the checkpoint cached,
   i.e. the numbers are warm-cache numbers. Each output is checked (tensor count) and its size
   recorded, then deleted to save disk space. With --repeat N each (tool, type) runs N times,
   interleaved; the table shows the best wall time and the median peak RSS.

   For a K-quant type (q4_k_m, ...) llama.cpp needs two steps, measured one after the other and
   summed into its row: convert_hf_to_gguf.py --outtype bf16 (an intermediate BF16 GGUF, whose
   size is recorded) then llama-quantize INTERMEDIATE OUT Q4_K_M (--llama-quantize, default:
   the tool built from the llama-cpp-python sdist under ~/.cache/kiln-tests); the table also
   shows llama-quantize alone, the quantizer's own floor.
   --ggml-floor adds, per type, the CPU time ggml itself needs for the same tensors: one
   thread reading every row as kiln does (BF16 -> F32 by ggml) and quantizing it with
   ggml_quantize_chunk, nothing written; beside kiln's CPU seconds it says how close kiln
   gets to the quantizer's own cost.

3. Prints a table (tool, type, wall s, CPU s, peak RSS, output size) and the kiln/llama.cpp
   ratios, checks the targets of our issue (kiln Q8_0 at most 0.5x llama.cpp's wall time and at
   most 0.5x its peak RSS; PASS/FAIL), and writes every number plus machine info (cores, CPU
   model, memory, load average, Python/numpy/gguf/torch versions) to --json-out.

   Peak RSS (ru_maxrss, the target's measure) counts the resident pages of memory-mapped
   checkpoint files as well as the converter's own allocations. To tell them apart, the
   /proc/PID/status of each run is sampled every 20 ms and the table also shows the peaks of
   RssAnon ("anon": heap and buffers the converter allocates) and RssFile ("file": mapped
   checkpoint pages, reclaimable page cache), with a kiln/llama.cpp ratio for anon.

Sizes are in MiB (2^20 bytes). Timings on a shared machine are noisy: look at the load average
recorded in the JSON, and use --repeat to take the best of several runs.

Examples:
  python scripts/bench_convert.py --quick                      # smoke run, kiln only
  python scripts/bench_convert.py --llama-cpp /tmp/llama.cpp   # the full comparison
  python scripts/bench_convert.py --llama-cpp /tmp/llama.cpp --repeat 3 --types q8_0
  python scripts/bench_convert.py --llama-cpp DIR --types q4_k_m,q8_0 --ggml-floor

Exit status: 0 when every conversion succeeded, 1 when one failed, 2 with --check when a target
was missed.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
BENCH_OUT = REPO / "bench_out"
MARKER = "bench_checkpoint.json"   # written last: its presence means the checkpoint is complete
TARGET_WALL, TARGET_RSS = 0.5, 0.5  # kiln Q8_0 / llama.cpp Q8_0, from the first issue
TARGET_Q8_WALL, TARGET_Q8_CPU = 0.25, 1.7   # issue 9: Q8_0 wall vs llama.cpp, CPU s / wall s
# issue 9, K-quants: kiln one pass vs llama.cpp's two steps, vs llama-quantize alone, peak RSS
TARGET_K_WALL, TARGET_K_QUANTIZE, TARGET_K_RSS = 0.75, 1.1, 0.25
KQUANTS = ("q4_k_m", "q4_k_s", "q5_k_m", "q5_k_s", "q6_k", "q3_k_s", "q3_k_m", "q3_k_l", "q2_k",
           "iq4_xs", "iq4_nl", "q4_1", "q5_0", "q5_1")
CHUNK_ELEMENTS = 1 << 23            # 16 MiB of bf16 per write: the generator's memory bound
BF16_NBYTES = 2
SAMPLE_S = 0.02                     # /proc/PID/status sampling interval


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


# --------------------------------------------------------------------------------------------
# Running and measuring
# --------------------------------------------------------------------------------------------
@dataclass
class Run:
    tool: str
    qtype: str
    rep: int
    cmd: list[str]
    ok: bool = False
    returncode: int | None = None
    wall_s: float | None = None
    user_s: float | None = None
    sys_s: float | None = None
    peak_rss_bytes: int | None = None
    sampled_peak_anon_bytes: int | None = None
    sampled_peak_file_bytes: int | None = None
    output_bytes: int | None = None
    output_tensors: int | None = None
    output_check: str | None = None
    log: str | None = None
    error: str | None = None
    steps: list | None = None              # llama.cpp K-quants: the two steps, measured apart
    intermediate_bytes: int | None = None  # the BF16 GGUF between those steps


def warm_cache(model_dir: Path) -> float:
    """Read every file of the checkpoint once so that the run starts with it in page cache."""
    started = time.perf_counter()
    files = sorted(str(p) for p in model_dir.iterdir() if p.is_file())
    with open(os.devnull, "wb") as null:
        subprocess.run(["cat", *files], stdout=null, check=True)
    return time.perf_counter() - started


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS / RssAnon / RssFile / RssShmem of a live process, in bytes ({} once it is gone)."""
    out = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key = line.split(":", 1)[0]
                if key in ("VmRSS", "RssAnon", "RssFile", "RssShmem"):
                    out[key] = int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return {}
    return out


def measure(cmd: list[str], env: dict, log_path: Path, timeout: float) -> dict:
    """Run cmd; its wall time and its own rusage (ru_maxrss of that one process) via wait4.

    While it runs, /proc/PID/status is also sampled every SAMPLE_S seconds for the split of
    resident memory into anonymous (private heap: what the converter allocates) and file-backed
    pages (memory-mapped checkpoint pages, which the kernel counts in RSS and ru_maxrss too but
    can drop at any time). Those sampled peaks may miss a spike shorter than the interval.
    """
    peaks = {"VmRSS": 0, "RssAnon": 0, "RssFile": 0, "RssShmem": 0}
    with open(log_path, "wb") as log:
        started = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                                stdin=subprocess.DEVNULL)
        deadline = started + timeout
        while True:
            for key, value in proc_status(proc.pid).items():
                peaks[key] = max(peaks[key], value)
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid == proc.pid:
                break
            if time.perf_counter() > deadline:
                proc.kill()
                pid, status, usage = os.wait4(proc.pid, 0)
                break
            time.sleep(SAMPLE_S)
        wall = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
    return {"returncode": proc.returncode, "wall_s": wall, "user_s": usage.ru_utime,
            "sys_s": usage.ru_stime, "peak_rss_bytes": usage.ru_maxrss * 1024,  # KiB on Linux
            "sampled_peak_anon_bytes": peaks["RssAnon"] or None,
            "sampled_peak_file_bytes": peaks["RssFile"] or None,
            "timed_out": wall >= timeout}


def check_output(path: Path) -> tuple[int | None, str]:
    """Count the tensors of an output GGUF (a cheap sanity check that it is whole)."""
    try:
        from gguf import GGUFReader
        reader = GGUFReader(path)
        n = len(reader.tensors)
        field = reader.fields.get("tokenizer.ggml.tokens")
        n_tok = len(field.data) if field is not None else None
        del reader
        return n, f"{n} tensors, {n_tok} tokens"
    except Exception as exc:  # noqa: BLE001 - reported, never fatal
        return None, f"could not read: {exc}"


def kiln_command() -> list[str]:
    """kiln's console script next to this Python (not a pyenv shim), else `python -m runtime`."""
    script = Path(sys.executable).parent / "kiln"
    if script.is_file():
        return [str(script)]
    return [sys.executable, "-m", "runtime"]


def build_command(tool: str, qtype: str, model_dir: Path, out: Path, llama_cpp: Path | None,
                  kiln_threads: int | None) -> tuple[list[str], dict]:
    env = dict(os.environ)
    if tool == "kiln":
        cmd = [*kiln_command(), "convert", str(model_dir), "-o", str(out), "--quant", qtype]
        if kiln_threads:
            cmd += ["--threads", str(kiln_threads)]
        return cmd, env
    assert llama_cpp is not None
    env["PYTHONPATH"] = os.pathsep.join(
        [str(llama_cpp / "gguf-py")] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    cmd = [sys.executable, str(llama_cpp / "convert_hf_to_gguf.py"), str(model_dir),
           "--outtype", "bf16" if qtype in KQUANTS else qtype, "--outfile", str(out)]
    return cmd, env


def default_llama_quantize() -> Path | None:
    """llama-quantize built from the installed llama-cpp-python's sdist (tests/llama_tools.py)."""
    try:
        from importlib import metadata
        version = metadata.version("llama-cpp-python")
    except Exception:  # noqa: BLE001
        return None
    root = Path(os.environ.get("KILN_TEST_CACHE") or Path.home() / ".cache" / "kiln-tests")
    exe = root / f"llama-build-{version}" / "bin" / "llama-quantize"
    return exe if exe.is_file() else None


def run_one(tool: str, qtype: str, rep: int, model_dir: Path, out_dir: Path, log_dir: Path,
            llama_cpp: Path | None, kiln_threads: int | None, timeout: float,
            expected_tensors: int, weight_bytes: int, quantizer: Path | None = None) -> Run:
    if tool == "llama.cpp" and qtype in KQUANTS:
        return run_two_steps(qtype, rep, model_dir, out_dir, log_dir, llama_cpp, timeout,
                             expected_tensors, weight_bytes, quantizer)
    out = out_dir / f"bench-{tool}-{qtype}.gguf"
    out.unlink(missing_ok=True)
    cmd, env = build_command(tool, qtype, model_dir, out, llama_cpp, kiln_threads)
    run = Run(tool=tool, qtype=qtype, rep=rep, cmd=cmd)
    log_path = log_dir / f"{tool}-{qtype}-{rep}.log"
    run.log = str(log_path)
    free = shutil.disk_usage(out_dir).free
    if free < weight_bytes + (512 << 20):
        run.error = f"not enough disk space in {out_dir} ({free / 2**30:.1f} GiB free)"
        return run
    warm = warm_cache(model_dir)
    print(f"  [{tool} {qtype} #{rep + 1}] warm-up read {warm:.1f} s; running: "
          f"{' '.join(cmd)}", flush=True)
    m = measure(cmd, env, log_path, timeout)
    run.returncode, run.wall_s, run.user_s = m["returncode"], m["wall_s"], m["user_s"]
    run.sys_s, run.peak_rss_bytes = m["sys_s"], m["peak_rss_bytes"]
    run.sampled_peak_anon_bytes = m["sampled_peak_anon_bytes"]
    run.sampled_peak_file_bytes = m["sampled_peak_file_bytes"]
    try:
        if m["timed_out"]:
            run.error = f"timed out after {timeout:.0f} s"
        elif run.returncode != 0:
            tail = log_path.read_text(errors="replace").strip().splitlines()[-15:]
            run.error = f"exit status {run.returncode}: " + " | ".join(tail)
        elif not out.is_file():
            run.error = "exit status 0 but no output file"
        else:
            run.output_bytes = out.stat().st_size
            run.output_tensors, run.output_check = check_output(out)
            run.ok = True
            if run.output_tensors is not None and run.output_tensors != expected_tensors:
                run.output_check += f" (expected {expected_tensors})"
    finally:
        out.unlink(missing_ok=True)
        for stray in out_dir.glob(f".{out.name}.*.partial"):   # kiln's temp file, if killed
            stray.unlink(missing_ok=True)
    status = "ok" if run.ok else f"FAILED: {run.error[:300]}"
    print(f"    wall {run.wall_s:.1f} s, cpu {run.user_s + run.sys_s:.1f} s, peak RSS "
          f"{run.peak_rss_bytes / 2**20:.0f} MiB (sampled peaks: anon "
          f"{(run.sampled_peak_anon_bytes or 0) / 2**20:.0f} MiB, file-backed "
          f"{(run.sampled_peak_file_bytes or 0) / 2**20:.0f} MiB), output "
          f"{(run.output_bytes or 0) / 2**20:.0f} MiB; {status}", flush=True)
    return run


def run_two_steps(qtype: str, rep: int, model_dir: Path, out_dir: Path, log_dir: Path,
                  llama_cpp: Path | None, timeout: float, expected_tensors: int,
                  weight_bytes: int, quantizer: Path | None) -> Run:
    """llama.cpp's way to a K-quant: convert_hf_to_gguf.py --outtype bf16, then llama-quantize.
    The row sums both steps' wall and CPU time; peak RSS is the larger of the two."""
    if quantizer is None:
        return Run(tool="llama.cpp", qtype=qtype, rep=rep, cmd=[],
                   error="no llama-quantize (give --llama-quantize)")
    inter = out_dir / f"bench-llama.cpp-{qtype}-bf16.gguf"
    out = out_dir / f"bench-llama.cpp-{qtype}.gguf"
    cmd1, env = build_command("llama.cpp", qtype, model_dir, inter, llama_cpp, None)
    runs = []
    try:
        warm_cache(model_dir)
        print(f"  [llama.cpp bf16 for {qtype} #{rep + 1}] running: {' '.join(cmd1)}", flush=True)
        m1 = measure(cmd1, env, log_dir / f"llama.cpp-{qtype}-step1-{rep}.log", timeout)
        inter_bytes = inter.stat().st_size if inter.is_file() else None
        cmd2 = [str(quantizer), str(inter), str(out), qtype.upper(), "2"]
        print(f"  [llama-quantize {qtype} #{rep + 1}] running: {' '.join(cmd2)}", flush=True)
        m2 = measure(cmd2, dict(os.environ), log_dir / f"llama-quantize-{qtype}-{rep}.log", timeout)
        runs = [m1, m2]
        run = Run(tool="llama.cpp", qtype=qtype, rep=rep, cmd=cmd1 + ["&&"] + cmd2,
                  returncode=m1["returncode"] or m2["returncode"],
                  wall_s=m1["wall_s"] + m2["wall_s"], user_s=m1["user_s"] + m2["user_s"],
                  sys_s=m1["sys_s"] + m2["sys_s"],
                  peak_rss_bytes=max(m1["peak_rss_bytes"], m2["peak_rss_bytes"]),
                  sampled_peak_anon_bytes=max(m1["sampled_peak_anon_bytes"] or 0,
                                              m2["sampled_peak_anon_bytes"] or 0) or None,
                  sampled_peak_file_bytes=max(m1["sampled_peak_file_bytes"] or 0,
                                              m2["sampled_peak_file_bytes"] or 0) or None,
                  steps=[{"step": "convert_hf_to_gguf.py --outtype bf16", **m1},
                         {"step": "llama-quantize", **m2}],
                  intermediate_bytes=inter_bytes)
        if run.returncode == 0 and out.is_file():
            run.ok = True
            run.output_bytes = out.stat().st_size
            run.output_tensors, run.output_check = check_output(out)
        else:
            run.error = f"exit status {m1['returncode']} / {m2['returncode']}"
    finally:
        inter.unlink(missing_ok=True)
        out.unlink(missing_ok=True)
    if runs:
        print(f"    two steps: {runs[0]['wall_s']:.1f} s + {runs[1]['wall_s']:.1f} s, "
              f"intermediate {(run.intermediate_bytes or 0) / 2**20:.0f} MiB", flush=True)
    return run


def ggml_floor(model_dir: Path, qtype: str) -> dict:
    """One thread, kiln's row reading (BF16 -> F32 through ggml) and ggml_quantize_chunk per
    chunk of every tensor, nothing written: the quantizer's own CPU cost for these tensors."""
    sys.path.insert(0, str(REPO))
    from convert import pipeline
    from convert.quants import encode

    family, ckpt, tensors, _, _ = pipeline.plan(model_dir, qtype)
    read_s = quant_s = 0.0
    with ckpt:
        for t in tensors:
            step = max(1, pipeline.CHUNK_ELEMENTS // t.source.n_cols)
            for start in range(0, t.source.n_rows, step):
                stop = min(start + step, t.source.n_rows)
                c0 = time.thread_time()
                rows = t.source.rows(start, stop)
                c1 = time.thread_time()
                if t.qtype.name != "F32":
                    encode(rows, t.qtype)
                c2 = time.thread_time()
                t.source.done(start, stop)
                read_s += c1 - c0
                quant_s += c2 - c1
    return {"type": qtype, "read_cpu_s": round(read_s, 2), "quantize_cpu_s": round(quant_s, 2)}


# --------------------------------------------------------------------------------------------
# Summary
# --------------------------------------------------------------------------------------------
def summarize(runs: list[Run], tools: list[str], qtypes: list[str]) -> list[dict]:
    rows = []
    for tool in tools:
        for q in qtypes:
            mine = [r for r in runs if r.tool == tool and r.qtype == q]
            good = [r for r in mine if r.ok]
            row = {"tool": tool, "type": q, "runs": len(mine), "ok_runs": len(good)}
            if good:
                best = min(good, key=lambda r: r.wall_s)
                row |= {
                    "wall_s": round(best.wall_s, 3),
                    "wall_s_all": [round(r.wall_s, 3) for r in good],
                    "cpu_s": round(best.user_s + best.sys_s, 3),
                    "peak_rss_mib": round(statistics.median(r.peak_rss_bytes for r in good)
                                          / 2**20, 1),
                    "peak_rss_mib_all": [round(r.peak_rss_bytes / 2**20, 1) for r in good],
                    "peak_anon_mib": _median_mib(r.sampled_peak_anon_bytes for r in good),
                    "peak_file_mib": _median_mib(r.sampled_peak_file_bytes for r in good),
                    "output_mib": round(best.output_bytes / 2**20, 1),
                    "output_bytes": best.output_bytes,
                    "output_check": best.output_check,
                }
                if best.steps:
                    q_step = best.steps[1]
                    row |= {"convert_bf16_wall_s": round(best.steps[0]["wall_s"], 3),
                            "quantize_wall_s": round(q_step["wall_s"], 3),
                            "quantize_cpu_s": round(q_step["user_s"] + q_step["sys_s"], 3),
                            "quantize_peak_rss_mib": round(q_step["peak_rss_bytes"] / 2**20, 1),
                            "intermediate_mib": round((best.intermediate_bytes or 0) / 2**20, 1)}
                elif tool == "kiln":
                    row["intermediate_mib"] = 0.0
            else:
                row["error"] = mine[-1].error if mine else "not run"
            rows.append(row)
    return rows


def _median_mib(values) -> float | None:
    vals = [v for v in values if v]
    return round(statistics.median(vals) / 2**20, 1) if vals else None


def ratios(rows: list[dict], qtypes: list[str]) -> list[dict]:
    out = []
    for q in qtypes:
        k = next((r for r in rows if r["tool"] == "kiln" and r["type"] == q), None)
        ll = next((r for r in rows if r["tool"] == "llama.cpp" and r["type"] == q), None)
        if not k or not ll:
            continue
        entry: dict = {"type": q, "wall": None, "rss": None, "anon": None}
        if "wall_s" in k and "wall_s" in ll:
            entry["wall"] = round(k["wall_s"] / ll["wall_s"], 3)
            entry["rss"] = round(k["peak_rss_mib"] / ll["peak_rss_mib"], 3)
            if k.get("peak_anon_mib") and ll.get("peak_anon_mib"):
                entry["anon"] = round(k["peak_anon_mib"] / ll["peak_anon_mib"], 3)
        if q == "q8_0":
            entry["target_wall"], entry["target_rss"] = TARGET_WALL, TARGET_RSS
            entry["wall_pass"] = None if entry["wall"] is None else entry["wall"] <= TARGET_WALL
            entry["rss_pass"] = None if entry["rss"] is None else entry["rss"] <= TARGET_RSS
            if "wall_s" in k:
                entry["cpu_over_wall"] = round(k["cpu_s"] / k["wall_s"], 2)
                entry["cpu_pass"] = entry["cpu_over_wall"] >= TARGET_Q8_CPU
            if entry["wall"] is not None:
                entry["wall_pass_issue9"] = entry["wall"] <= TARGET_Q8_WALL
        if q in KQUANTS and "quantize_wall_s" in ll and "wall_s" in k:
            entry["wall_vs_quantize"] = round(k["wall_s"] / ll["quantize_wall_s"], 3)
            entry["wall_pass"] = entry["wall"] <= TARGET_K_WALL
            entry["quantize_pass"] = entry["wall_vs_quantize"] <= TARGET_K_QUANTIZE
            entry["rss_pass"] = entry["rss"] <= TARGET_K_RSS
            entry["intermediate_mib"] = ll.get("intermediate_mib")
        out.append(entry)
    return out


def verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("PASS" if ok else "FAIL")


def _fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def print_table(rows: list[dict], rat: list[dict], notes: list[str],
                floors: list[dict] | None = None) -> None:
    head = (f"{'tool':<10} {'type':<6} {'wall s':>7} {'CPU s':>7} {'peak RSS MiB':>12} "
            f"{'(anon':>6} {'file)':>6} {'output MiB':>10}  check")
    print()
    print(head)
    print("-" * len(head))
    for r in rows:
        if "wall_s" in r:
            print(f"{r['tool']:<10} {r['type']:<6} {r['wall_s']:>7.1f} {r['cpu_s']:>7.1f} "
                  f"{r['peak_rss_mib']:>12.0f} {_fmt(r['peak_anon_mib'], '6.0f'):>6} "
                  f"{_fmt(r['peak_file_mib'], '6.0f'):>6} {r['output_mib']:>10.0f}  "
                  f"{r['output_check']}")
            if "quantize_wall_s" in r:
                print(f"{'  of which':<10} {'':<6} {r['convert_bf16_wall_s']:>7.1f} (convert --outtype "
                      f"bf16, {r['intermediate_mib']:.0f} MiB intermediate) + "
                      f"{r['quantize_wall_s']:.1f} (llama-quantize: CPU {r['quantize_cpu_s']:.1f} s, "
                      f"peak RSS {r['quantize_peak_rss_mib']:.0f} MiB)")
        else:
            print(f"{r['tool']:<10} {r['type']:<6} {'FAILED':>7}  {str(r.get('error'))[:200]}")
    for f in floors or []:
        k = next((r for r in rows if r["tool"] == "kiln" and r["type"] == f["type"]), {})
        print(f"{'ggml floor':<10} {f['type']:<6} CPU s: read rows {f['read_cpu_s']:.1f} + "
              f"ggml_quantize_chunk {f['quantize_cpu_s']:.1f} = "
              f"{f['read_cpu_s'] + f['quantize_cpu_s']:.1f} (kiln's CPU s: {_fmt(k.get('cpu_s'), '.1f')})")
    if rat:
        print()
        print(f"{'kiln / llama.cpp':<17} {'wall':>6} {'peak RSS':>9} {'(anon)':>7}   "
              f"target (kiln Q8_0 vs llama.cpp Q8_0)")
        for e in rat:
            w = "n/a" if e["wall"] is None else f"{e['wall']:.2f}x"
            m = "n/a" if e["rss"] is None else f"{e['rss']:.2f}x"
            a = "n/a" if e["anon"] is None else f"{e['anon']:.2f}x"
            target = ""
            if "target_wall" in e:
                target = (f"wall <= {e['target_wall']}x: {verdict(e['wall_pass'])}, "
                          f"peak RSS <= {e['target_rss']}x: {verdict(e['rss_pass'])}")
            if "cpu_over_wall" in e:
                target += (f"; issue 9: wall <= {TARGET_Q8_WALL}x: {verdict(e.get('wall_pass_issue9'))}"
                           f", kiln CPU/wall {e['cpu_over_wall']:.2f} >= {TARGET_Q8_CPU}: "
                           f"{verdict(e.get('cpu_pass'))}")
            if "wall_vs_quantize" in e:
                target = (f"wall <= {TARGET_K_WALL}x of both steps: {verdict(e['wall_pass'])}, "
                          f"{e['wall_vs_quantize']:.2f}x of llama-quantize alone (<= "
                          f"{TARGET_K_QUANTIZE}x): {verdict(e['quantize_pass'])}, peak RSS <= "
                          f"{TARGET_K_RSS}x: {verdict(e['rss_pass'])}, intermediate "
                          f"{e['intermediate_mib']:.0f} MiB vs kiln 0")
            print(f"{e['type']:<17} {w:>6} {m:>9} {a:>7}   {target}")
    print()
    for n in notes:
        print(f"note: {n}")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def mem_total_mib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return None


def versions() -> dict:
    from importlib import metadata
    out = {"python": platform.python_version(), "numpy": np.__version__}
    for pkg in ("kiln", "gguf", "torch", "transformers", "sentencepiece", "safetensors"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = None
    return out


def llama_cpp_info(path: Path) -> dict:
    info: dict = {"path": str(path)}
    for parent in [path, *path.parents]:   # e.g. llama_cpp_python-0.3.36/vendor/llama.cpp
        if parent.name.startswith("llama_cpp_python-"):
            info["from_sdist"] = parent.name
            break
    pyproject = path / "gguf-py" / "pyproject.toml"
    if pyproject.is_file():
        for line in pyproject.read_text().splitlines():
            if line.startswith("version"):
                info["gguf_py_version"] = line.split("=", 1)[1].strip().strip('"')
                break
    return info


def machine_info() -> dict:
    return {
        "nproc": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "cpu_model": cpu_model(),
        "mem_total_mib": mem_total_mib(),
        "platform": platform.platform(),
        "loadavg_start": list(os.getloadavg()),
        "versions": versions(),
    }


# --------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="bench_convert.py",
        description=__doc__.split("\n\n", 1)[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--llama-cpp", type=Path, metavar="DIR",
                   help="llama.cpp source tree (holding convert_hf_to_gguf.py and gguf-py/); "
                        "without it only kiln is measured")
    p.add_argument("--model-dir", type=Path, metavar="DIR",
                   help="where the benchmark checkpoint is made or reused (default: "
                        "bench_out/llm-jp-3-1.8b-shape, or bench_out/llm-jp-3-1.8b-shape-quick "
                        "with --quick)")
    p.add_argument("--json-out", type=Path, metavar="FILE",
                   help="where to write the results (default: bench_out/bench_convert.json)")
    p.add_argument("--out-dir", type=Path, metavar="DIR",
                   help="where the GGUF outputs are written, measured and deleted, and where "
                        "each run's console output is kept (logs/) (default: bench_out)")
    p.add_argument("--types", default="q8_0,f16", metavar="LIST",
                   help="comma-separated output types to measure, spelled as both tools take "
                        "them (default: %(default)s)")
    p.add_argument("--repeat", type=int, default=1, metavar="N",
                   help="runs per (tool, type), interleaved; the best wall time and the median "
                        "peak RSS are reported (default: %(default)s)")
    p.add_argument("--quick", action="store_true",
                   help="smoke run on a smaller checkpoint: 4 layers, vocab 32000, 300 MB "
                        "shards (~0.7 GiB) instead of the full llm-jp-3-1.8b shape (~3.5 GiB)")
    p.add_argument("--regenerate", action="store_true",
                   help="rewrite the checkpoint even when a complete one is already there")
    p.add_argument("--generate-only", action="store_true",
                   help="make (or check) the checkpoint and stop")
    p.add_argument("--skip-kiln", action="store_true", help="measure llama.cpp only")
    p.add_argument("--kiln-threads", type=int, metavar="N",
                   help="pass --threads N to kiln convert (default: kiln's own default, all "
                        "cores; llama.cpp's converter has no such option)")
    p.add_argument("--timeout", type=float, default=3600, metavar="S",
                   help="kill a conversion that runs longer than this (default: %(default)s)")
    p.add_argument("--llama-quantize", type=Path, metavar="EXE", default=default_llama_quantize(),
                   help="llama-quantize for llama.cpp's second step on K-quant types (default: "
                        "the one built from the llama-cpp-python sdist, when present)")
    p.add_argument("--ggml-floor", action="store_true",
                   help="also measure ggml's own quantize CPU time for the same tensors, per type")
    p.add_argument("--check", action="store_true",
                   help="exit with status 2 when a kiln Q8_0 target is missed")
    args = p.parse_args(argv)
    args.json_out = args.json_out or BENCH_OUT / "bench_convert.json"
    args.out_dir = args.out_dir or BENCH_OUT
    if args.repeat < 1:
        p.error("--repeat must be at least 1")
    if args.llama_cpp is not None:
        args.llama_cpp = args.llama_cpp.resolve()
        if not (args.llama_cpp / "convert_hf_to_gguf.py").is_file():
            p.error(f"--llama-cpp {args.llama_cpp}: no convert_hf_to_gguf.py there")
        if not (args.llama_cpp / "gguf-py").is_dir():
            p.error(f"--llama-cpp {args.llama_cpp}: no gguf-py/ there")
    if args.skip_kiln and args.llama_cpp is None and not args.generate_only:
        p.error("--skip-kiln needs --llama-cpp (nothing would be measured)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    shape = QUICK if args.quick else FULL
    model_dir = (args.model_dir or BENCH_OUT / shape.name).resolve()
    info = make_checkpoint(model_dir, shape, regenerate=args.regenerate)
    if args.generate_only:
        return 0

    qtypes = [q.strip().lower() for q in args.types.split(",") if q.strip()]
    tools = ([] if args.skip_kiln else ["kiln"]) + (["llama.cpp"] if args.llama_cpp else [])
    out_dir = args.out_dir.resolve()
    log_dir = out_dir / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    machine = machine_info()
    notes = [
        "page cache cannot be dropped here; every run is preceded by a warm-up read of all "
        "checkpoint files, so all runs are warm-cache runs",
        f"{machine['nproc']} CPU(s) ({machine['cpu_model']}); load average at start "
        f"{machine['loadavg_start'][0]:.2f}: a shared machine makes timings noisy",
        f"best wall of {args.repeat} run(s) per row; peak RSS = the converter process's own "
        "ru_maxrss (os.wait4), median over runs; MiB = 2^20 bytes",
        "peak RSS (the target's measure) includes memory-mapped checkpoint pages; (anon file) "
        f"split it: peaks of RssAnon and RssFile sampled every {SAMPLE_S * 1000:.0f} ms from "
        "/proc/PID/status (anon = memory the converter itself allocates)",
    ]
    if not args.llama_cpp:
        notes.append("no --llama-cpp given: llama.cpp's converter was not measured")
    print(f"benchmark: {', '.join(tools)} x {', '.join(qtypes)} x {args.repeat} on "
          f"{model_dir} ({info['weight_bytes'] / 2**30:.2f} GiB bf16)", flush=True)

    runs: list[Run] = []
    for rep in range(args.repeat):
        for q in qtypes:
            for tool in tools:
                runs.append(run_one(tool, q, rep, model_dir, out_dir, log_dir, args.llama_cpp,
                                    args.kiln_threads, args.timeout, info["n_tensors"],
                                    info["weight_bytes"], args.llama_quantize))
    floors = []
    if args.ggml_floor:
        for q in qtypes:
            print(f"  [ggml floor {q}] one thread, rows read and quantized, nothing written", flush=True)
            floors.append(ggml_floor(model_dir, q))
    machine["loadavg_end"] = list(os.getloadavg())
    rows = summarize(runs, tools, qtypes)
    rat = ratios(rows, qtypes)
    print_table(rows, rat, notes, floors)

    result = {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": [sys.executable, *sys.argv],
        "checkpoint": {"dir": str(model_dir), "shape": info["shape"],
                       "weight_bytes": info["weight_bytes"], "n_params": info["n_params"],
                       "n_tensors": info["n_tensors"], "shards": info["shards"],
                       "spm_pieces": info["spm_pieces"], "reused": info["reused"]},
        "cache": "warm: all checkpoint files read (cat > /dev/null) before every run; "
                 "the page cache was not dropped",
        "machine": machine,
        "llama_cpp": llama_cpp_info(args.llama_cpp) if args.llama_cpp else None,
        "repeat": args.repeat,
        "targets": {"kiln_q8_0_wall_ratio_max": TARGET_WALL,
                    "kiln_q8_0_rss_ratio_max": TARGET_RSS,
                    "issue9_q8_0_wall_ratio_max": TARGET_Q8_WALL,
                    "issue9_q8_0_cpu_over_wall_min": TARGET_Q8_CPU,
                    "issue9_kquant_wall_ratio_max": TARGET_K_WALL,
                    "issue9_kquant_wall_vs_llama_quantize_max": TARGET_K_QUANTIZE,
                    "issue9_kquant_rss_ratio_max": TARGET_K_RSS},
        "results": rows,
        "ratios_kiln_over_llama_cpp": rat,
        "ggml_floor": floors,
        "runs": [asdict(r) for r in runs],
        "notes": notes,
    }
    args.json_out.parent.mkdir(parents=True, exist_ok=True)
    args.json_out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.json_out}")

    if any(not r.ok for r in runs):
        return 1
    if args.check and any(e.get("wall_pass") is False or e.get("rss_pass") is False
                          for e in rat):
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
