"""Importance-matrix collection speed: `kiln imatrix` against llama.cpp's `llama-imatrix`.

Both run as fresh processes on the same GGUF, text, --ctx, --chunks and threads, interleaved,
--repeat times each. Reported per tool (medians):
  loop tok/s   tokens / seconds spent evaluating the chunks: kiln's summary line (the decode loop
               with its Python eval callback); llama-imatrix: from its log's time stamp of
               "computing over N chunks" to the end of the process (it prints no perf line)
  wall s       the whole process: start, model load, tokenization, collection, writing the file
  bare decode  the same decode loop in this process with no eval callback (llama-cpp-python's
               library alone): kiln / bare is what the Python callback costs
Target: kiln loop tok/s >= 0.8 x llama-imatrix's (the callback's Python cost stays small).

The model: SmolLM2-135M-Instruct (F16) when scripts/smollm2.py has its folder cached in
~/.cache/kiln/smollm2 (nothing is downloaded here), else a generated random model of the same
shape (576 wide, 30 layers, 9/3 heads, 1536 FFN, 49152 vocabulary); --tiny: a 2-layer toy.
The text: runtime/corpus/heldout/*.txt (English, Arabic, Japanese), joined.
llama-imatrix runs with --no-ppl (kiln computes no perplexity).

    python scripts/bench_imatrix.py [--repeat 3] [--chunks 8] [--ctx 512] [--threads 2] [--tiny]

Writes bench_out/bench_imatrix.json and prints the table.
"""
from __future__ import annotations

import argparse
import re
import subprocess
import tempfile
import time
from pathlib import Path

import benchlib as bl

TARGET = 0.8
WORK = bl.BENCH_OUT / "imatrix"


def model_gguf(tiny: bool) -> tuple[Path, str]:
    """(F16 GGUF, what it is)."""
    WORK.mkdir(parents=True, exist_ok=True)
    import smollm2

    if not tiny:
        folder = smollm2.cache_dir() / smollm2.FOLDER_NAME
        if (folder / ".kiln-build.json").is_file():
            out = WORK / "SmolLM2-135M-Instruct-f16.gguf"
            if not out.is_file():
                bl.kiln("convert", smollm2.build(quiet=True), "-o", out, "--quant", "f16",
                        "--quiet")
            return out, "SmolLM2-135M-Instruct (real weights, F16)"
    shape = (dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=4, extra_vocab=0) if tiny else
             dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                  num_attention_heads=9, num_key_value_heads=3, extra_vocab=49152 - 400))
    name = "tiny-llama" if tiny else "random-135M-shaped"
    out = WORK / f"{name}-f16.gguf"
    if not out.is_file():
        sys_path_tests()
        from hf_models import build

        with tempfile.TemporaryDirectory() as d:
            build("llama", Path(d), max_position_embeddings=2048, **shape)
            bl.kiln("convert", d, "-o", out, "--quant", "f16", "--quiet")
    what = ("a generated 2-layer toy Llama" if tiny else
            "a generated random Llama shaped like SmolLM2-135M (SmolLM2 not cached)")
    return out, what


def sys_path_tests() -> None:
    import sys
    tests = str(bl.REPO / "tests")
    if tests not in sys.path:
        sys.path.insert(0, tests)


def text_file() -> Path:
    parts = [p.read_text(encoding="utf-8") for p in sorted((bl.REPO / "runtime" / "corpus" /
                                                             "heldout").glob("*.txt"))]
    out = WORK / "heldout-all.txt"
    out.write_text("\n".join(parts), encoding="utf-8")
    return out


def run_kiln(model: Path, text: Path, ctx: int, chunks: int, threads: int) -> dict:
    out = WORK / "kiln.imatrix"
    t0 = time.perf_counter()
    res = bl.kiln("imatrix", model, "-o", out, "--text", text, "--ctx", ctx, "--chunks", chunks,
                  "--threads", threads, "--quiet", capture=True)
    wall = time.perf_counter() - t0
    m = re.search(r"\((\d+) tokens\), ([\d.]+) tokens/s", res.stdout)
    return {"wall": wall, "tokens": int(m.group(1)), "loop_tps": float(m.group(2))}


def run_llama(exe: Path, model: Path, text: Path, ctx: int, chunks: int, threads: int) -> dict:
    out = WORK / "llama.imatrix.gguf"
    t0 = time.perf_counter()
    res = subprocess.run([str(exe), "-m", str(model), "-f", str(text), "-o", str(out), "-c",
                          str(ctx), "--chunks", str(chunks), "-t", str(threads), "--no-ppl"],
                         capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if res.returncode != 0:
        raise SystemExit(f"llama-imatrix failed: {res.stderr[-1500:]}")
    # its log stamps lines with min.sec.ms.us since start; the loop runs from "computing over"
    # to the end of the process (saving the small file and freeing the model included)
    m = re.search(r"(\d+)\.(\d+)\.(\d+)\.(\d+) I compute_imatrix: computing over (\d+) chunks, "
                  r"n_ctx=(\d+)", res.stdout + res.stderr)
    started = int(m.group(1)) * 60 + int(m.group(2)) + int(m.group(3)) / 1e3 + int(m.group(4)) / 1e6
    tokens = int(m.group(5)) * int(m.group(6))
    return {"wall": wall, "tokens": tokens, "loop_tps": tokens / (wall - started)}


def run_bare(model: Path, text: Path, ctx: int, chunks: int, threads: int) -> dict:
    """The same decode loop as kiln imatrix (same batches, sequences, logits) with no eval
    callback: what the library does alone, so kiln - bare is the callback's whole cost."""
    import llama_cpp

    from runtime import imatrix as im
    from runtime.engine import _route_llama_log

    _route_llama_log(False)
    llama_cpp.llama_backend_init()
    t0 = time.perf_counter()
    mdl = llama_cpp.llama_model_load_from_file(str(model).encode(),
                                               llama_cpp.llama_model_default_params())
    vocab = llama_cpp.llama_model_get_vocab(mdl)
    tokens = im._tokenize(vocab, im.read_text_files([text]), False)
    n_chunk = min(chunks, len(tokens) // ctx)
    n_seq = max(1, im.N_BATCH // ctx)
    n_batch = min(im.N_BATCH, n_seq * ctx)
    p = llama_cpp.llama_context_default_params()
    p.n_ctx, p.n_batch, p.n_ubatch, p.n_seq_max = n_seq * ctx, n_batch, im.N_UBATCH, n_seq
    p.n_threads = p.n_threads_batch = threads
    p.swa_full = False
    lctx = llama_cpp.llama_init_from_model(mdl, p)
    batch = llama_cpp.llama_batch_init(n_batch, 0, 1)
    bos = llama_cpp.llama_vocab_bos(vocab)
    t1 = time.perf_counter()
    for i in range(0, n_chunk, n_seq):
        llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(lctx), True)
        for j in range((ctx + n_batch - 1) // n_batch):
            start, n = i * ctx + j * n_batch, 0
            size = min(i * ctx + ctx - start, n_batch)
            for seq in range(min(n_seq, n_chunk - i)):
                ids = tokens[start + seq * ctx: start + seq * ctx + size].copy()
                if j == 0 and llama_cpp.llama_vocab_get_add_bos(vocab):
                    ids[0] = bos
                im._fill(batch, n, ids, j * n_batch, seq)
                n += size
            batch.n_tokens = n
            assert llama_cpp.llama_decode(lctx, batch) == 0
    loop = time.perf_counter() - t1
    llama_cpp.llama_batch_free(batch)
    llama_cpp.llama_free(lctx)
    llama_cpp.llama_model_free(mdl)
    return {"wall": time.perf_counter() - t0, "tokens": n_chunk * ctx,
            "loop_tps": n_chunk * ctx / loop}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--chunks", type=int, default=8)
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tiny", action="store_true", help="a 2-layer toy model (a quick check)")
    args = ap.parse_args()
    exe = bl.llama_tool("llama-imatrix")
    if exe is None:
        print("llama-imatrix is not built (tests/llama_tools.py builds it); nothing to compare")
        return 1
    model, what = model_gguf(args.tiny)
    text = text_file()
    print(f"model: {model.name} ({what}); text {text.name}; ctx {args.ctx}, "
          f"{args.chunks} chunks, {args.threads} threads, {args.repeat} repeats")
    runs = bl.interleave({
        "kiln": lambda: run_kiln(model, text, args.ctx, args.chunks, args.threads),
        "llama-imatrix": lambda: run_llama(exe, model, text, args.ctx, args.chunks, args.threads),
        "bare decode (no callback)": lambda: run_bare(model, text, args.ctx, args.chunks,
                                                      args.threads),
    }, repeat=args.repeat, rotate=True)
    med = {k: {"loop_tps": bl.median(r["loop_tps"] for r in v),
               "wall": bl.median(r["wall"] for r in v), "tokens": v[0]["tokens"]}
           for k, v in runs.items()}
    ratio = bl.ratio(med["kiln"]["loop_tps"], med["llama-imatrix"]["loop_tps"])
    wall_ratio = bl.ratio(med["llama-imatrix"]["wall"], med["kiln"]["wall"])
    rows = [[k, m["tokens"], bl.fmt(m["loop_tps"], ".1f"), bl.fmt(m["wall"], ".2f"),
             bl.fmt(bl.spread(r["loop_tps"] for r in runs[k]), ".1%")] for k, m in med.items()]
    print(bl.table(["tool", "tokens", "loop tok/s", "wall s", "spread"], rows))
    ok = ratio is not None and ratio >= TARGET
    # the machine is shared: runs next to each other saw about the same load
    paired = bl.median(bl.ratio(a["loop_tps"], b["loop_tps"], None)
                       for a, b in zip(runs["kiln"], runs["llama-imatrix"]))
    cb_ratio = bl.ratio(med["kiln"]["loop_tps"], med["bare decode (no callback)"]["loop_tps"])
    print(f"kiln / llama-imatrix loop tokens/s: {bl.fmt_ratio(ratio)} (target >= {TARGET}x: "
          f"{bl.verdict(ok)}); median of per-repeat ratios {bl.fmt_ratio(paired)}; wall-time "
          f"speed ratio {bl.fmt_ratio(wall_ratio)}; kiln / bare decode in the same library: "
          f"{bl.fmt_ratio(cb_ratio)}")
    bl.write_json(bl.BENCH_OUT / "bench_imatrix.json", {
        "when": bl.now(), "machine": bl.machine_info(threads=args.threads, llama=True),
        "model": model.name, "model_is": what, "text": text.name, "ctx": args.ctx,
        "chunks": args.chunks, "repeat": args.repeat, "runs": runs, "median": med,
        "ratio_loop_tps": ratio, "ratio_wall": wall_ratio,
        "ratio_kiln_to_bare_decode": cb_ratio, "ratio_paired_median": paired,
        "target": TARGET, "pass": ok})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
