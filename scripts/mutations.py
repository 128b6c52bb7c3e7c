#!/usr/bin/env python3
"""Mutation check: break kiln on purpose, one mistake at a time, and see which tests notice.

Each mutation of issue 16 is a one-place text edit of kiln's source. On a scratch copy of the
repository (tracked and untracked files, never this checkout), every mutation is applied alone
and its targeted tests run; a test catches the mutation when it fails with it and passes
without it (each test selection is also run once unmutated). A mutation nobody catches, or
whose source text is no longer found, is reported as such.

    python scripts/mutations.py                 # all mutations, table on stdout
    python scripts/mutations.py -k xverse       # the mutations whose id contains "xverse"
    python scripts/mutations.py --fresh-clone   # also: which tests skip without ../shared

Tests that need ../shared get it through KILN_SHARED (default: ../shared beside this
checkout). Writes bench_out/mutations.json and bench_out/mutations.md.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

import benchlib as bl

ROOT = bl.REPO


@dataclass
class Mutation:
    id: str
    what: str                        # the mistake, as issue 16 words it
    path: str                        # file to edit, relative to the repository
    old: str                         # exact text, must occur once
    new: str
    tests: list[str]                 # pytest arguments (files, -k expressions)
    env: dict[str, str] = field(default_factory=dict)


MUTATIONS = [
    Mutation("chunk-offset", "every chunk after the first reads the tensor's first rows",
             "convert/pipeline.py", "t.source.rows(start, stop)", "t.source.rows(0, stop - start)",
             ["tests/test_convert_e2e.py", "tests/test_jais.py", "-k", "many_chunks"]),
    Mutation("jais-prompt-no-shared", "Jais card text changed, run without ../shared",
             "convert/families/jais.py", '"Complete the conversation below between',
             '"Complete the conversation between',
             ["tests/test_jais.py", "-k", "chat_template"],
             env={"KILN_SHARED": "/nonexistent/shared"}),
    Mutation("unigram-logprob", "Unigram vocab written with raw log-probs, not merge gains",
             "convert/vocab/write.py",
             'scores = (unigram_gain_scores(vocab) if vocab.unigram and vocab.model == "llama"',
             'scores = (unigram_gain_scores(vocab) if False',
             ["tests/test_vocab.py", "-k", "unigram"]),
    Mutation("sampling-ignored", "the engine ignores the GGUF's sampling defaults",
             "runtime/engine.py", "    d = meta.sampling\n", "    d = {}\n",
             ["tests/test_sampling.py"]),
    Mutation("contents-apart", "message contents tokenized apart from the template text around",
             "runtime/prompt.py",
             "            if not own:\n                run += chunk\n                continue\n",
             "            if not own:\n                out += [(run, False)] if run else []\n"
             "                out.append((chunk, False))\n                run = \"\"\n"
             "                continue\n",
             ["tests/test_tokenizer_parity.py", "-k", "injected_prompt_ids"]),
    Mutation("router-quantized", "the MoE router ffn_gate_inp quantized like the experts",
             "convert/families/llama.py",
             'OutTensor(blk + "ffn_gate_inp.weight", (n, d), router, keep_f32=True)',
             'OutTensor(blk + "ffn_gate_inp.weight", (n, d), router, keep_f32=False)',
             ["tests/test_convert_e2e.py", "-k", "logits_match and mixtral and q"]),
    Mutation("jais-gate-bias", "Jais ffn_gate bias left out (zeroed)",
             "convert/families/jais.py",
             'add(f"{blk}{gguf_part}.bias", f"{hf}{hf_part}.bias", shape[:1])',
             'add(f"{blk}{gguf_part}.bias", f"{hf}{hf_part}.bias", shape[:1],\n'
             '                    scale=0.0 if gguf_part == "ffn_gate" else None)',
             ["tests/test_jais.py", "-k", "logits_match"]),
    Mutation("xverse-whole-string", "XVERSE prompt tokenized as one string",
             "convert/families/xverse.py",
             '    def prompt_segments(self) -> str:\n        return "message"',
             '    def prompt_segments(self) -> str:\n        return ""',
             ["tests/test_xverse.py", "-k", "per_segment or chat_template"]),
    Mutation("jais-13b-text", "Jais 13B prompt with a wrong size word",
             "convert/families/jais.py", '("with 30b parameters.", "with 13B parameters.")',
             '("with 30b parameters.", "with 13b parameters.")',
             ["tests/test_jais.py", "-k", "chat_template_13b"]),
    Mutation("llmjp-fixed-system", "llm-jp system content replaced by the card's sentence",
             "convert/families/llmjp.py",
             "LLAMA_CPP_TEMPLATE = INSTRUCT_TEMPLATE.replace(",
             "LLAMA_CPP_TEMPLATE = INSTRUCT_TEMPLATE or INSTRUCT_TEMPLATE.replace(",
             ["tests/test_templates_llama_families.py", "-k", "llmjp"]),
    Mutation("llmjp-model-logprob", "llm-jp tokenizer.model path written with raw log-probs",
             "convert/vocab/sp_model.py", 'unigram=kind == "unigram", sp=sp)', "unigram=False, sp=sp)",
             ["tests/test_vocab.py", "-k", "llmjp_sentencepiece_model"]),
    Mutation("doctor-gpu", "kiln doctor reports the wrong GPU offload",
             "runtime/device.py", '"gpu_offload": supported,', '"gpu_offload": not supported,',
             ["tests/test_runtime.py", "-k", "doctor"]),
]

# The files whose tests read ../shared or tests/data (for --fresh-clone).
SHARED_TESTS = ["tests/test_templates_llama_families.py", "tests/test_vocab.py",
                "tests/test_tokenizer_parity.py", "tests/test_jais.py", "tests/test_xverse.py",
                "tests/test_alaya.py", "-k", "chat_template or llmjp or llm_jp or rakuten or "
                "foreign or unigram or parity or injected or per_segment or specials"]


def copy_repo(dest: Path) -> Path:
    """Tracked and untracked (not ignored) files of this checkout into dest."""
    out = subprocess.run(["git", "ls-files", "-z", "-co", "--exclude-standard"], cwd=ROOT,
                         capture_output=True, check=True).stdout.decode()
    for rel in filter(None, out.split("\0")):
        src = ROOT / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    return dest


def run_tests(repo: Path, args: list[str], env: dict[str, str], timeout: int) -> dict:
    """pytest in `repo`; {node id: passed | failed | skipped (reason)}, seconds, rc."""
    report = repo / ".mutation-report.xml"
    report.unlink(missing_ok=True)
    full_env = {**os.environ, "PYTHONPATH": str(repo), **env}
    started = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                               f"--junitxml={report}", *args], cwd=repo, env=full_env,
                              capture_output=True, text=True, timeout=timeout)
        rc = proc.returncode
    except subprocess.TimeoutExpired:
        rc = "timeout"
    results: dict[str, str] = {}
    if report.is_file():
        for case in ET.parse(report).iter("testcase"):
            name = f"{case.get('classname', '').split('.')[-1]}::{case.get('name')}"
            if case.find("failure") is not None or case.find("error") is not None:
                results[name] = "failed"
            elif (skip := case.find("skipped")) is not None:
                results[name] = "skipped: " + (skip.get("message") or "")
            else:
                results[name] = "passed"
    return {"results": results, "seconds": round(time.perf_counter() - started, 1), "rc": rc}


def shared_dir() -> str:
    return os.environ.get("KILN_SHARED") or str(ROOT.parent / "shared")


def check_mutations(mutations: list[Mutation], timeout: int) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory(prefix="kiln-mutations-") as tmp:
        repo = copy_repo(Path(tmp) / "kiln")
        clean_runs: dict[tuple, dict] = {}
        for m in mutations:
            target = repo / m.path
            original = target.read_text(encoding="utf-8")
            row = {"id": m.id, "what": m.what, "file": m.path, "tests": m.tests}
            if original.count(m.old) != 1:
                row.update(status=f"source text found {original.count(m.old)} times: mutation "
                           "is stale", caught_by=[])
                rows.append(row)
                print(f"[{m.id}] {row['status']}", flush=True)
                continue
            env = {"KILN_SHARED": shared_dir(), **m.env}
            key = (tuple(m.tests), tuple(sorted(env.items())))
            if key not in clean_runs:
                clean_runs[key] = run_tests(repo, m.tests, env, timeout)
            clean = clean_runs[key]
            target.write_text(original.replace(m.old, m.new), encoding="utf-8")
            try:
                bad = run_tests(repo, m.tests, env, timeout)
            finally:
                target.write_text(original, encoding="utf-8")
            caught = sorted(t for t, r in bad["results"].items()
                            if r == "failed" and clean["results"].get(t) == "passed")
            clean_fail = sorted(t for t, r in clean["results"].items() if r == "failed")
            skipped = sorted(t for t, r in bad["results"].items() if r.startswith("skipped"))
            row.update(caught_by=caught, ran=len(bad["results"]), skipped=skipped,
                       failing_unmutated=clean_fail, seconds=bad["seconds"],
                       status="caught" if caught else ("timeout" if bad["rc"] == "timeout"
                                                       else "NOT CAUGHT"))
            rows.append(row)
            print(f"[{m.id}] {row['status']}: {len(caught)}/{row['ran']} tests fail "
                  f"({bad['seconds']} s)", flush=True)
    return rows


def fresh_clone(timeout: int) -> dict:
    """The shared-reading tests in a copy with no ../shared beside it and no KILN_SHARED."""
    with tempfile.TemporaryDirectory(prefix="kiln-fresh-") as tmp:
        repo = copy_repo(Path(tmp) / "kiln")
        saved = os.environ.pop("KILN_SHARED", None)
        try:
            run = run_tests(repo, SHARED_TESTS, {}, timeout)
        finally:
            if saved is not None:
                os.environ["KILN_SHARED"] = saved
    res = run["results"]
    skips = {t: r[len("skipped: "):] for t, r in res.items() if r.startswith("skipped")}
    return {"passed": sum(r == "passed" for r in res.values()),
            "failed": sorted(t for t, r in res.items() if r == "failed"),
            "skipped": skips,
            "all_skips_name_llmjp_tokenizer": all("llm-jp-3 tokenizer" in r
                                                  for r in skips.values()),
            "seconds": run["seconds"]}


def table(rows: list[dict]) -> str:
    cells = []
    for r in rows:
        caught = r.get("caught_by") or []
        if caught:
            shown = ", ".join(caught[:4]) + (f", ... (+{len(caught) - 4})" if len(caught) > 4
                                             else "")
            cell = f"{len(caught)}/{r['ran']}: {shown}"
        else:
            cell = f"**{r['status']}**"
        cells.append([r["id"], r["what"], cell])
    return bl.table(["mutation", "what", "caught by (tests failing, of those run)"], cells,
                    right=())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-k", default="", help="only mutations whose id contains this")
    ap.add_argument("--fresh-clone", action="store_true",
                    help="also run the shared-reading tests in a copy without ../shared")
    ap.add_argument("--timeout", type=int, default=1200, help="seconds per pytest run")
    ap.add_argument("--out", type=Path, default=ROOT / "bench_out")
    args = ap.parse_args()
    chosen = [m for m in MUTATIONS if args.k in m.id]
    if not chosen:
        ap.error(f"no mutation id contains {args.k!r}")
    print(f"{len(chosen)} mutations; KILN_SHARED={shared_dir()}", flush=True)
    rows = check_mutations(chosen, args.timeout)
    result: dict = {"mutations": rows}
    md = table(rows)
    if args.fresh_clone:
        fresh = result["fresh_clone"] = fresh_clone(args.timeout)
        md += (f"\n\nFresh copy without ../shared: {fresh['passed']} passed, "
               f"{len(fresh['failed'])} failed, {len(fresh['skipped'])} skipped"
               + (" (each skip names the real llm-jp-3 tokenizer)"
                  if fresh["all_skips_name_llmjp_tokenizer"] else " (OTHER SKIPS: see JSON)"))
    print("\n" + md)
    bl.write_json(args.out / "mutations.json", result)
    (args.out / "mutations.md").write_text(md + "\n")
    missed = [r for r in rows if r["status"] != "caught"]
    return 1 if missed or (args.fresh_clone and (result["fresh_clone"]["failed"] or not
                                                  result["fresh_clone"]
                                                  ["all_skips_name_llmjp_tokenizer"])) else 0


if __name__ == "__main__":
    sys.exit(main())
