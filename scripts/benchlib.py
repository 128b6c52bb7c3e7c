"""What every benchmark in scripts/ shares: machine info, repeated runs and their medians,
kiln/other ratios, the markdown table and the JSON file.

A benchmark script is a driver: it makes its inputs, times kiln's own functions against a
reference side by side (interleaved, in one run: the machine is shared, so only ratios measured
together mean anything), and reports through these helpers:

    import benchlib as bl
    times = bl.interleave({"bare": load_bare, "kiln": load_kiln}, repeat=5)
    s = bl.stats(times["kiln"])                        # {"median", "min", "max", "runs"}
    print(bl.table(["tool", "median s"], [["kiln", bl.fmt(s["median"], ".3f")]]))
    bl.write_json(bl.BENCH_OUT / "bench_x.json", {"machine": bl.machine_info(), ...})

  the machine   machine_info, cpu_model, mem_total_mib, versions, now
  runs          timed, times, order, interleave, per_call_us; cpu_seconds, machine_counters,
                counters_since (what other processes took during a run)
  numbers       median, spread, stats, rnd, ratio
  processes     measure_process (wall, CPU, peak RSS of a child), warm_cache, proc_status
  reporting     fmt, fmt_ratio, verdict, table, write_json, parser
  tools         kiln_command, kiln, llama_tool (llama.cpp's tools as tests/llama_tools.py
                builds them)
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Callable, Iterable

REPO = Path(__file__).resolve().parent.parent
BENCH_OUT = REPO / "bench_out"
SHARED = Path(os.environ.get("KILN_SHARED") or REPO.parent / "shared")
for _p in (REPO, REPO / "scripts"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

SAMPLE_S = 0.02                     # /proc/PID/status sampling interval of measure_process
PACKAGES = ("kiln", "gguf", "torch", "transformers", "sentencepiece", "safetensors")


# -------------------------------------------------------------------------------- the machine

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
    """Python, numpy and the packages a benchmark's numbers depend on (None: not installed)."""
    import numpy as np

    out = {"python": platform.python_version(), "numpy": np.__version__}
    for pkg in PACKAGES:
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = None
    return out


def machine_info(threads: int | None = None, llama: bool = False) -> dict:
    """Cores, CPU model, memory, load average and versions; with llama=True also what
    llama-cpp-python was built with (system info, GPU offload) and the physical cores."""
    info = {
        "nproc": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "cpu_model": cpu_model(),
        "mem_total_mib": mem_total_mib(),
        "platform": platform.platform(),
        "loadavg_start": list(os.getloadavg()),
        "versions": versions(),
    }
    if llama:
        import llama_cpp

        from runtime.device import physical_cores

        info["versions"]["llama_cpp_python"] = llama_cpp.__version__
        info["llama_system_info"] = llama_cpp.llama_print_system_info().decode("utf-8", "replace")
        info["gpu_offload"] = bool(llama_cpp.llama_supports_gpu_offload())
        info["physical_cores"] = physical_cores()
    if threads is not None:
        info["threads"] = threads
    return info


def now() -> str:
    """The time of a result, UTC, ISO 8601 to the second."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


# -------------------------------------------------------------------------------- runs

def timed(fn: Callable[[], object]) -> tuple[float, object]:
    """(wall seconds, result) of one call."""
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def times(fn: Callable[[], object], n: int) -> list[float]:
    """Wall seconds of n calls, one after the other."""
    return [timed(fn)[0] for _ in range(n)]


def order(names: list[str], rep: int, rotate: bool = False) -> list[str]:
    """The order of repeat `rep`: reversed on odd repeats (or rotated by one each repeat), so
    that no tool always runs first or right after another."""
    if rotate:
        k = rep % len(names) if names else 0
        return names[k:] + names[:k]
    return list(reversed(names)) if rep % 2 else list(names)


def interleave(fns: dict[str, Callable[[], object]], repeat: int,
               rotate: bool = False) -> dict[str, list]:
    """Each function `repeat` times, interleaved (see order()); per name the list of what it
    returned, or of its wall seconds when it returned None."""
    out: dict[str, list] = {name: [] for name in fns}
    for rep in range(repeat):
        for name in order(list(fns), rep, rotate):
            seconds, got = timed(fns[name])
            out[name].append(seconds if got is None else got)
    return out


def per_call_us(fn: Callable[[int], object], n: int, repeat: int = 5) -> float:
    """Microseconds per call of fn(n) (which makes n calls), the best of `repeat` tries."""
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn(n)
        best = min(best, time.perf_counter() - t0)
    return best / n * 1e6


def cpu_seconds() -> float:
    """CPU seconds (user + system) this process has used."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


_HZ = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def machine_counters() -> tuple[float, ...]:
    """Counters to difference over a run (counters_since): major faults, involuntary context switches, CPU seconds stolen by
    the hypervisor, and CPU seconds all processes ran (from /proc/stat's cpu line; 0 if none)."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    steal = busy = 0.0
    try:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        # user nice system idle iowait irq softirq steal ...
        busy = (v[0] + v[1] + v[2] + v[5] + v[6]) / _HZ
        steal = v[7] / _HZ
    except (OSError, ValueError, IndexError):
        pass
    return r.ru_majflt, r.ru_nivcsw, steal, busy


def counters_since(before: tuple, cpu_s: float) -> dict:
    """What changed since machine_counters() gave `before`, for a run that used cpu_s of this
    process's CPU: other processes' CPU seconds (a shared machine's noise), steal, faults."""
    d = [b - a for a, b in zip(before, machine_counters())]
    return {"major_faults": int(d[0]), "involuntary_switches": int(d[1]),
            "steal_s": round(d[2], 2), "other_cpu_s": round(max(d[3] - cpu_s, 0.0), 2)}


def median(values: Iterable) -> float | None:
    """The median of the values that are not None (None when there are none)."""
    vals = [v for v in values if v is not None]
    return statistics.median(vals) if vals else None


def spread(values: Iterable) -> float | None:
    """max / min - 1 of the non-zero values (None with fewer than two)."""
    vals = [v for v in values if v]
    return (max(vals) / min(vals) - 1) if len(vals) > 1 else None


def stats(values: Iterable) -> dict:
    """median, min and max of the values that are not None, and the values themselves."""
    vals = [v for v in values if v is not None]
    if not vals:
        return {"median": None, "min": None, "max": None, "runs": []}
    return {"median": statistics.median(vals), "min": min(vals), "max": max(vals), "runs": vals}


def rnd(v, nd: int = 2):
    """round() that lets None through."""
    return None if v is None else round(v, nd)


def ratio(a, b, nd: int | None = 3) -> float | None:
    """a / b (rounded to nd places unless nd is None); None when either is missing or b is 0."""
    if a is None or not b:
        return None
    return a / b if nd is None else round(a / b, nd)


# -------------------------------------------------------------------------------- processes

def warm_cache(folder: Path) -> float:
    """Read every file of the folder once so that a run starts with it in page cache; seconds."""
    started = time.perf_counter()
    files = sorted(str(p) for p in folder.iterdir() if p.is_file())
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


def measure_process(cmd: list[str], env: dict, log_path: Path, timeout: float) -> dict:
    """Run cmd (output to log_path); its wall time and its own rusage (ru_maxrss of that one
    process, not a RUSAGE_CHILDREN aggregate) via wait4.

    While it runs, /proc/PID/status is also sampled every SAMPLE_S seconds for the split of
    resident memory into anonymous (private heap: what the process allocates) and file-backed
    pages (memory-mapped files such as checkpoint pages, which the kernel counts in RSS and
    ru_maxrss too but can drop at any time). Sampled peaks may miss a spike shorter than that.
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


# -------------------------------------------------------------------------------- reporting

def fmt(v, spec: str) -> str:
    """format(v, spec), "-" for None."""
    return "-" if v is None else format(v, spec)


def fmt_ratio(r, nd: int = 2) -> str:
    """A ratio as "0.42x", "n/a" for None."""
    return "n/a" if r is None else f"{r:.{nd}f}x"


def verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("PASS" if ok else "FAIL")


def table(header: list[str], rows: list[list], right: Iterable[int] | None = None) -> str:
    """A markdown table, its columns padded so that it reads as plain text too. `right`: the
    columns aligned right (default: every column but the first)."""
    cells = [[str(c) for c in header]] + [["" if c is None else str(c) for c in r] for r in rows]
    n = max(len(r) for r in cells)
    cells = [r + [""] * (n - len(r)) for r in cells]
    width = [max(3, *(len(r[i]) for r in cells)) for i in range(n)]
    right = set(range(1, n) if right is None else right)

    def line(r: list[str]) -> str:
        return "| " + " | ".join(c.rjust(w) if i in right else c.ljust(w)
                                 for i, (c, w) in enumerate(zip(r, width))) + " |"
    rule = "|" + "|".join(("-" * (w + 1) + ":") if i in right else ("-" * (w + 2))
                          for i, w in enumerate(width)) + "|"
    return "\n".join([line(cells[0]), rule, *(line(r) for r in cells[1:])])


def write_json(path: Path, result: dict) -> Path:
    """The result as indented JSON (written to a temp file, renamed at the end)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial")
    tmp.write_text(json.dumps(result, indent=2, ensure_ascii=False, default=str) + "\n")
    os.replace(tmp, path)
    print(f"wrote {path}")
    return path


# -------------------------------------------------------------------------------- tools

def parser(doc: str, prog: str) -> argparse.ArgumentParser:
    """A benchmark's argument parser: the docstring's first paragraph as the description, the
    rest (what it measures, examples) as the epilog of --help."""
    head, _, rest = doc.partition("\n\n")
    return argparse.ArgumentParser(prog=prog, description=head, epilog=rest,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)



def kiln_command() -> list[str]:
    """kiln's console script next to this Python (not a pyenv shim), else `python -m runtime`."""
    script = Path(sys.executable).parent / "kiln"
    if script.is_file():
        return [str(script)]
    return [sys.executable, "-m", "runtime"]


def kiln(*args, capture: bool = False) -> subprocess.CompletedProcess:
    """Run `kiln ARGS...` (python -m runtime), failing loudly on a non-zero exit."""
    return subprocess.run([sys.executable, "-m", "runtime", *map(str, args)], check=True,
                          capture_output=capture, text=True)


def llama_tool(name: str) -> Path | None:
    """llama.cpp's tool `name` (llama-quantize, llama-imatrix, ...) as tests/llama_tools.py
    builds it from the installed llama-cpp-python's sdist; None when not built."""
    try:
        version = metadata.version("llama-cpp-python")
    except metadata.PackageNotFoundError:
        return None
    root = Path(os.environ.get("KILN_TEST_CACHE") or Path.home() / ".cache" / "kiln-tests")
    exe = root / f"llama-build-{version}" / "bin" / name
    return exe if exe.is_file() and os.access(exe, os.X_OK) else None
