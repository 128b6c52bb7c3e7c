"""Benchmark kiln's converter against llama.cpp's convert_hf_to_gguf.py on a full-size checkpoint.

What it does, in order:

1. Makes (or reuses, when already complete) the random checkpoint in the exact shape of
   llm-jp/llm-jp-3-1.8b (scripts/bench_checkpoint.py: ~3.5 GiB bf16 in 2 GB safetensors shards,
   a small SentencePiece tokenizer; --quick: 4 layers, vocab 32000, ~0.7 GiB).

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
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import benchlib as bl
from bench_checkpoint import checkpoint

TARGET_WALL, TARGET_RSS = 0.5, 0.5  # kiln Q8_0 / llama.cpp Q8_0, from the first issue
TARGET_Q8_WALL, TARGET_Q8_CPU = 0.25, 1.7   # issue 9: Q8_0 wall vs llama.cpp, CPU s / wall s
# issue 9, K-quants: kiln one pass vs llama.cpp's two steps, vs llama-quantize alone, peak RSS
TARGET_K_WALL, TARGET_K_QUANTIZE, TARGET_K_RSS = 0.75, 1.1, 0.25
KQUANTS = ("q4_k_m", "q4_k_s", "q5_k_m", "q5_k_s", "q6_k", "q3_k_s", "q3_k_m", "q3_k_l", "q2_k",
           "iq4_xs", "iq4_nl", "q4_1", "q5_0", "q5_1")


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


def build_command(tool: str, qtype: str, model_dir: Path, out: Path, llama_cpp: Path | None,
                  kiln_threads: int | None) -> tuple[list[str], dict]:
    env = dict(os.environ)
    if tool == "kiln":
        cmd = [*bl.kiln_command(), "convert", str(model_dir), "-o", str(out), "--quant", qtype]
        if kiln_threads:
            cmd += ["--threads", str(kiln_threads)]
        return cmd, env
    assert llama_cpp is not None
    env["PYTHONPATH"] = os.pathsep.join(
        [str(llama_cpp / "gguf-py")] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    cmd = [sys.executable, str(llama_cpp / "convert_hf_to_gguf.py"), str(model_dir),
           "--outtype", "bf16" if qtype in KQUANTS else qtype, "--outfile", str(out)]
    return cmd, env


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
    warm = bl.warm_cache(model_dir)
    print(f"  [{tool} {qtype} #{rep + 1}] warm-up read {warm:.1f} s; running: "
          f"{' '.join(cmd)}", flush=True)
    m = bl.measure_process(cmd, env, log_path, timeout)
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
        bl.warm_cache(model_dir)
        print(f"  [llama.cpp bf16 for {qtype} #{rep + 1}] running: {' '.join(cmd1)}", flush=True)
        m1 = bl.measure_process(cmd1, env, log_dir / f"llama.cpp-{qtype}-step1-{rep}.log", timeout)
        inter_bytes = inter.stat().st_size if inter.is_file() else None
        cmd2 = [str(quantizer), str(inter), str(out), qtype.upper(), "2"]
        print(f"  [llama-quantize {qtype} #{rep + 1}] running: {' '.join(cmd2)}", flush=True)
        m2 = bl.measure_process(cmd2, dict(os.environ), log_dir / f"llama-quantize-{qtype}-{rep}.log", timeout)
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
                    "peak_rss_mib": _mib(bl.median(r.peak_rss_bytes for r in good)),
                    "peak_rss_mib_all": [round(r.peak_rss_bytes / 2**20, 1) for r in good],
                    "peak_anon_mib": _mib(bl.median(r.sampled_peak_anon_bytes or None for r in good)),
                    "peak_file_mib": _mib(bl.median(r.sampled_peak_file_bytes or None for r in good)),
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


def _mib(n: float | None) -> float | None:
    return None if n is None else round(n / 2**20, 1)


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


def print_table(rows: list[dict], rat: list[dict], notes: list[str],
                floors: list[dict] | None = None) -> None:
    table = []
    for r in rows:
        if "wall_s" not in r:
            table.append([r["tool"], r["type"], "FAILED", "", "", "", "", "",
                          str(r.get("error"))[:200]])
            continue
        table.append([r["tool"], r["type"], f"{r['wall_s']:.1f}", f"{r['cpu_s']:.1f}",
                      f"{r['peak_rss_mib']:.0f}", bl.fmt(r["peak_anon_mib"], ".0f"),
                      bl.fmt(r["peak_file_mib"], ".0f"), f"{r['output_mib']:.0f}",
                      r["output_check"]])
        if "quantize_wall_s" in r:
            table.append(["  of which", "", f"{r['convert_bf16_wall_s']:.1f}", "", "", "", "", "",
                          f"convert --outtype bf16 ({r['intermediate_mib']:.0f} MiB intermediate)"
                          f" + {r['quantize_wall_s']:.1f} s llama-quantize (CPU "
                          f"{r['quantize_cpu_s']:.1f} s, peak RSS "
                          f"{r['quantize_peak_rss_mib']:.0f} MiB)"])
    for f in floors or []:
        k = next((r for r in rows if r["tool"] == "kiln" and r["type"] == f["type"]), {})
        table.append(["ggml floor", f["type"], "", f"{f['read_cpu_s'] + f['quantize_cpu_s']:.1f}",
                      "", "", "", "", f"CPU s: read rows {f['read_cpu_s']:.1f} + "
                      f"ggml_quantize_chunk {f['quantize_cpu_s']:.1f} (kiln's CPU s: "
                      f"{bl.fmt(k.get('cpu_s'), '.1f')})"])
    print()
    print(bl.table(["tool", "type", "wall s", "CPU s", "peak RSS MiB", "anon", "file",
                    "output MiB", "check"], table, right=range(2, 8)))
    if rat:
        table = []
        for e in rat:
            target = ""
            if "target_wall" in e:
                target = (f"wall <= {e['target_wall']}x: {bl.verdict(e['wall_pass'])}, "
                          f"peak RSS <= {e['target_rss']}x: {bl.verdict(e['rss_pass'])}")
            if "cpu_over_wall" in e:
                target += (f"; issue 9: wall <= {TARGET_Q8_WALL}x: "
                           f"{bl.verdict(e.get('wall_pass_issue9'))}, kiln CPU/wall "
                           f"{e['cpu_over_wall']:.2f} >= {TARGET_Q8_CPU}: "
                           f"{bl.verdict(e.get('cpu_pass'))}")
            if "wall_vs_quantize" in e:
                target = (f"wall <= {TARGET_K_WALL}x of both steps: {bl.verdict(e['wall_pass'])}, "
                          f"{e['wall_vs_quantize']:.2f}x of llama-quantize alone (<= "
                          f"{TARGET_K_QUANTIZE}x): {bl.verdict(e['quantize_pass'])}, peak RSS <= "
                          f"{TARGET_K_RSS}x: {bl.verdict(e['rss_pass'])}, intermediate "
                          f"{e['intermediate_mib']:.0f} MiB vs kiln 0")
            table.append([e["type"], bl.fmt_ratio(e["wall"]), bl.fmt_ratio(e["rss"]),
                          bl.fmt_ratio(e["anon"]), target])
        print()
        print(bl.table(["kiln / llama.cpp", "wall", "peak RSS", "anon", "target"], table,
                       right=(1, 2, 3)))
    print()
    for n in notes:
        print(f"note: {n}")


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


# --------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = bl.parser(__doc__, "bench_convert.py")
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
    p.add_argument("--llama-quantize", type=Path, metavar="EXE", default=bl.llama_tool("llama-quantize"),
                   help="llama-quantize for llama.cpp's second step on K-quant types (default: "
                        "the one built from the llama-cpp-python sdist, when present)")
    p.add_argument("--ggml-floor", action="store_true",
                   help="also measure ggml's own quantize CPU time for the same tensors, per type")
    p.add_argument("--check", action="store_true",
                   help="exit with status 2 when a kiln Q8_0 target is missed")
    args = p.parse_args(argv)
    args.json_out = args.json_out or bl.BENCH_OUT / "bench_convert.json"
    args.out_dir = args.out_dir or bl.BENCH_OUT
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
    model_dir, info = checkpoint(args.quick, args.model_dir, args.regenerate)
    if args.generate_only:
        return 0

    qtypes = [q.strip().lower() for q in args.types.split(",") if q.strip()]
    tools = ([] if args.skip_kiln else ["kiln"]) + (["llama.cpp"] if args.llama_cpp else [])
    out_dir = args.out_dir.resolve()
    log_dir = out_dir / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    machine = bl.machine_info()
    notes = [
        "page cache cannot be dropped here; every run is preceded by a warm-up read of all "
        "checkpoint files, so all runs are warm-cache runs",
        f"{machine['nproc']} CPU(s) ({machine['cpu_model']}); load average at start "
        f"{machine['loadavg_start'][0]:.2f}: a shared machine makes timings noisy",
        f"best wall of {args.repeat} run(s) per row; peak RSS = the converter process's own "
        "ru_maxrss (os.wait4), median over runs; MiB = 2^20 bytes",
        "peak RSS (the target's measure) includes memory-mapped checkpoint pages; (anon file) "
        f"split it: peaks of RssAnon and RssFile sampled every {bl.SAMPLE_S * 1000:.0f} ms from "
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
        "created": bl.now(),
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
    bl.write_json(args.json_out, result)

    if any(not r.ok for r in runs):
        return 1
    if args.check and any(e.get("wall_pass") is False or e.get("rss_pass") is False
                          for e in rat):
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
