"""Importance-matrix collection speed: `kiln imatrix` against llama.cpp's `llama-imatrix`.

Both run as fresh processes on the same GGUF, text, --ctx, --chunks and threads, interleaved,
--repeat times each. Reported per tool (medians):
  loop tok/s   tokens / seconds spent evaluating the chunks: kiln's summary line (the decode loop
               with its Python eval callback), llama-imatrix's "prompt eval time" (llama_perf)
  wall s       the whole process: start, model load, tokenization, collection, writing the file
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
                bl.kiln("convert", smollm2.build(quiet=True), "-o", out, "--quant", "f16", "--quiet")
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
    m = re.search(r"prompt eval time =\s*([\d.]+) ms /\s*(\d+) tokens", res.stdout + res.stderr)
    ms, tokens = float(m.group(1)), int(m.group(2))
    return {"wall": wall, "tokens": tokens, "loop_tps": tokens / (ms / 1000)}


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
    }, repeat=args.repeat)
    med = {k: {"loop_tps": bl.median(r["loop_tps"] for r in v),
               "wall": bl.median(r["wall"] for r in v), "tokens": v[0]["tokens"]}
           for k, v in runs.items()}
    ratio = bl.ratio(med["kiln"]["loop_tps"], med["llama-imatrix"]["loop_tps"])
    wall_ratio = bl.ratio(med["llama-imatrix"]["wall"], med["kiln"]["wall"])
    rows = [[k, m["tokens"], bl.fmt(m["loop_tps"], ".1f"), bl.fmt(m["wall"], ".2f"),
             bl.fmt(bl.spread(r["loop_tps"] for r in runs[k]), ".1%")] for k, m in med.items()]
    print(bl.table(["tool", "tokens", "loop tok/s", "wall s", "spread"], rows))
    ok = ratio is not None and ratio >= TARGET
    print(f"kiln / llama-imatrix loop tokens/s: {bl.fmt_ratio(ratio)} (target >= {TARGET}x: "
          f"{bl.verdict(ok)}); wall-time speed ratio {bl.fmt_ratio(wall_ratio)}")
    bl.write_json(bl.BENCH_OUT / "bench_imatrix.json", {
        "when": bl.now(), "machine": bl.machine_info(threads=args.threads, llama=True),
        "model": model.name, "model_is": what, "text": text.name, "ctx": args.ctx,
        "chunks": args.chunks, "repeat": args.repeat, "runs": runs, "median": med,
        "ratio_loop_tps": ratio, "ratio_wall": wall_ratio, "target": TARGET, "pass": ok})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
