"""Benchmark kiln's chat runtime against bare llama-cpp-python (and llama.cpp's llama-bench).

What it does, in order:

1. Makes (or reuses) the random checkpoint in the exact shape of llm-jp/llm-jp-3-1.8b that
   scripts/bench_convert.py generates (bench_out/llm-jp-3-1.8b-shape, ~3.5 GiB bf16), and
   converts it with kiln to each --types output (`kiln convert DIR -o OUT --quant q4_0`). The
   GGUFs are cached under bench_out/runtime/ (with a .json note of the checkpoint they came
   from) and reused by later runs; --reconvert makes them again.

2. For each type, loads the GGUF twice in this process: once as kiln's ChatModel (whose Llama
   is instance A), once as a bare `llama_cpp.Llama` (instance B) with the very arguments kiln
   passes (n_ctx, n_batch 512, n_threads, seed, GPU layers) plus n_threads_batch = the same
   thread count. Two instances of the same model in one process need not run at quite the same
   speed (on the 4-layer --quick model the first one loaded was ~1.3% slower in generation,
   whatever code drove it), so each repeat runs both tools on both instances, kiln@A, bare@B, bare@A, kiln@B (the
   reverse order on odd repeats; kiln is pointed at B by swapping its `llm` attribute for the
   run): the medians are balanced, and kiln@X / bare@X compare code paths on the very same
   instance. Each run starts from an empty KV cache:
     kiln: ChatModel.chat([user: PROMPT], stream=True, max_tokens=M, temperature=0,
           repeat_penalty=1) consumed to the end;
     bare: Llama.generate(SAME TOKEN IDS, temp=0, repeat_penalty=1, min_p=0), stopping after M.
   The prompt is made of words of the test corpus, sized so that kiln's prompt (template + BOS)
   is exactly N (--prompt-tokens) token ids; bare gets those very ids.
     pp t/s = N / time to first token     tg t/s = (M - 1) / time from first token to the end
   kiln's time to first token is measured from outside, from the call of chat() to its first
   token: it includes kiln's prompt building (chat template + tokenization), which bare does
   not do. (kiln's own last_stats.prompt_seconds, which starts later, is recorded too.)

   Greedy decoding and end of sequence. Both sides decode greedily (temperature 0: llama.cpp's
   greedy sampler, top-k/top-p ignored; repetition penalty 1 = off), so from the same ids they
   produce the same tokens. Random weights may still pick an end-of-sequence token before M.
   Rather than make either side ignore eos (kiln has no switch for it: patching its eos set would
   measure something kiln never runs), the prompt is chosen so that nothing stops early: before
   timing, bare generates M tokens greedily from a candidate prompt, and the candidate is
   rejected (the next one tried, up to 20) if those tokens hold an eos id of the model, a banned
   id, or text with one of the model's stop strings. Then kiln runs its normal, unmodified code
   path and must produce exactly M tokens (finish_reason "length"), the same ids as bare: every
   timed run checks both, and the result records any mismatch. Both sides thus do exactly the
   same llama.cpp work, and the difference is kiln's own per-turn and per-token Python work.

3. Second turn (KV-cache reuse). After a first turn (the N-token prompt, --turn1-tokens
   answered), kiln gets a second turn: the first one, the answer as kiln returned it, and a new
   user message sized so that exactly K tokens are new, i.e. not in the KV cache (K from
   --second-turn, default 16,64,256). Its time to first token ("warm") is compared with the time
   to first token of the same full prompt from an empty cache ("cold"), and with bare
   llama-cpp-python given the same ids after the same first turn. kiln's evaluated_tokens (prompt
   tokens actually run) is reported: it should be K, and warm TTFT should grow with K only.

4. Where kiln's time goes. In situ: eval() and sample() of kiln's Llama are timed (wrapped on
   the instance) during a kiln turn and a bare turn; what is left of each generation step is
   the Python around them (llama-cpp-python's generator, and kiln's loop: eos check, token ->
   bytes, UTF-8 decoding, stop scan), so "kiln adds X us per token" is measured to the
   microsecond instead of being read off 100 ms steps that vary by a few %. In isolation:
   each part of kiln's per-token work (token -> bytes, UTF-8 decoding, stop-string scanning
   with the model's stops and with llm-jp's, on real vocabulary pieces), its per-turn work
   (chat template + tokenization), and a logits processor as llama-cpp-python runs it (kiln
   adds one only for families with banned ids), timed through real samplers on real logits.
   --profile adds a cProfile of one kiln turn per type.

   What this checkpoint does not exercise: its files never mention LLM-jp, so kiln converts it
   as the plain "llama" family (native tokenizer, no stop strings, no banned ids), where the
   real llm-jp-3-1.8b gets the llm-jp family (HF tokenizer, stop string "\n\n### 指示:").
   And the random weights' greedy tokens are mostly vocabulary padding that decodes to no
   text. The isolated timings above cover those paths with real pieces and llm-jp's stop.

5. With --llama-bench PATH: llama.cpp's own llama-bench on the same GGUF, interleaved with the
   other runs: `-p N -n 0` (pp at depth 0) and `-p 0 -n M -d N` (tg after N tokens of context,
   like the other tools), with -t THREADS -b 512 -ub 512 -fa off -r 1, once per repeat. Note that
   llama-bench is its own build of llama.cpp (compile flags may differ from the Python wheel's).

The verdict is the ratio of the medians (all 2 x --repeat runs of each tool); the table also
shows the same-instance ratio (geometric mean of kiln@A/bare@A and kiln@B/bare@B, median over
repeats), and tg* = 1 / median step time, which a few steps slowed by another process barely
move.

Prints two tables (type, tool, pp t/s, tg t/s, kiln/bare ratios with the target >= 0.97
marked PASS/FAIL; and the second-turn table) and writes every number plus machine info to
--json-out (default bench_out/bench_runtime.json).

Noise: the numbers are medians of --repeat runs. A run during which this process got fewer
than --busy-min x threads cores on average (CPU time / wall time; another process took a
core, which slows llama.cpp's spinning threads down several times over) is marked disturbed,
left out, and run again (--retries). On a small shared machine (2 cores here, and
other people's tests may run at the same time) single runs can be off by 10-30%. Every run
records the load average and this process's CPU time over its wall time (busy cores: well
below --threads means we did not get the cores); the JSON keeps every run. Use --repeat 5 or
more, and compare ratios of interleaved runs rather than absolute speeds.

Examples:
  python scripts/bench_runtime.py --quick --repeat 1            # smoke run (4-layer model)
  python scripts/bench_runtime.py                                # full run, q4_0 and q8_0
  python scripts/bench_runtime.py --llama-bench /tmp/lbb/bin/llama-bench --repeat 5

6. With --load, only model load time and threads (scripts/bench_load.py has the details):
   kiln's ChatModel load against bare Llama() on a 99k-vocabulary GGUF (target <= 1.2x), and
   --threads 1 vs 2 with and without a competing CPU-bound process.

Exit status: 0 when every run succeeded, 1 when one failed, 2 with --check when a kiln/bare
ratio is below the target.
"""
from __future__ import annotations

import argparse
import codecs
import cProfile
import io
import json
import os
import pstats
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

import benchlib as bl
from bench_checkpoint import checkpoint, ensure_gguf, first_turn_messages, fit_words
from runtime.engine import _common_prefix

TARGET_RATIO = 0.97          # kiln / bare, pp and tg t/s
MAX_PROMPT_TRIES = 20        # candidate prompts tried before giving up on "no early eos"
LLMJP_STOP = "\n\n### 指示:"  # the stop string of the real llm-jp family, for the profile



# --------------------------------------------------------------------------------------------
# Model files
# --------------------------------------------------------------------------------------------
def load_pair(gguf: Path, threads: int, n_ctx: int | None):
    """kiln's ChatModel and a bare Llama built with the very arguments kiln passes."""
    from llama_cpp import Llama

    from runtime.engine import ChatModel

    kiln = ChatModel(gguf, n_ctx=n_ctx, threads=threads, device="auto", seed=0)
    bare = Llama(model_path=str(gguf), n_ctx=kiln.n_ctx, n_batch=512,
                 n_gpu_layers=kiln.gpu_layers, n_threads=threads, n_threads_batch=threads,
                 seed=0, verbose=False)
    return kiln, bare


def llama_params(llm) -> dict:
    return {"n_ctx": llm.n_ctx(), "n_batch": llm.n_batch,
            "n_ubatch": int(llm.context_params.n_ubatch), "n_threads": llm.n_threads,
            "n_threads_batch": llm.n_threads_batch,
            "flash_attn_type": int(llm.context_params.flash_attn_type),
            "n_gpu_layers": int(llm.model_params.n_gpu_layers)}


# --------------------------------------------------------------------------------------------
# One measured turn
# --------------------------------------------------------------------------------------------
def run_kiln(kiln, messages: list[dict], max_tokens: int, sampling: dict, reset: bool,
             step_stamps: bool = False) -> dict:
    """One kiln turn, consumed as a client would; TTFT measured from the call of chat().

    step_stamps: also time every generation step, by wrapping the instance's _piece (called
    once per generated token, as the token arrives; ~0.3 us added per token)."""
    if reset:
        kiln.reset()
    stamps: list[float] = []
    if step_stamps:
        orig = kiln._piece

        def stamped(tok, _orig=orig, _add=stamps.append, _now=time.perf_counter):
            _add(_now())
            return _orig(tok)
        kiln._piece = stamped
    load = os.getloadavg()[0]
    cpu0, flt0 = bl.cpu_seconds(), bl.machine_counters()
    t0 = time.perf_counter()
    pieces = []
    try:
        for piece in kiln.chat(messages, stream=True, max_tokens=max_tokens, **sampling):
            pieces.append(piece)
    finally:
        t_end = time.perf_counter()
        if step_stamps:
            del kiln._piece
    cpu = bl.cpu_seconds() - cpu0
    counters = bl.counters_since(flt0, cpu)
    s = kiln.last_stats
    n_prompt = s.prompt_tokens
    gen_ids = kiln.llm._input_ids[n_prompt:kiln.llm.n_tokens].tolist()
    ttft = (t_end - t0) - s.generate_seconds
    return {
        "tool": "kiln", "prompt_tokens": s.prompt_tokens, "evaluated_tokens": s.evaluated_tokens,
        "generated_tokens": s.generated_tokens, "finish_reason": s.finish_reason,
        "ttft_s": ttft, "ttft_internal_s": s.prompt_seconds, "gen_s": s.generate_seconds,
        "wall_s": t_end - t0, "pp_tps": s.evaluated_tokens / ttft if ttft > 0 else None,
        "tg_tps": ((s.generated_tokens - 1) / s.generate_seconds
                   if s.generated_tokens > 1 and s.generate_seconds > 0 else None),
        **_step_stats(stamps),
        "busy_cores": cpu / (t_end - t0), "loadavg_1m": load,
        **counters,
        "text": "".join(pieces), "token_ids": gen_ids,  # all but the last (never evaluated)
    }


def _step_stats(stamps: list[float]) -> dict:
    """Per-step times from token arrival stamps: the median step is robust to a few steps
    slowed down by another process, where the total time is not."""
    steps = [b - a for a, b in zip(stamps, stamps[1:])]
    if not steps:
        return {}
    med = statistics.median(steps)
    return {"step_median_s": med, "step_max_s": max(steps), "step_min_s": min(steps),
            "tg_tps_median_step": 1 / med if med > 0 else None}


def run_bare(llm, ids: list[int], max_tokens: int, sampling: dict, reset: bool,
             stop_ids: set[int] | None = None) -> dict:
    """The same turn with bare llama-cpp-python: generate() from the ids, greedy, M tokens."""
    if reset:
        llm.reset()
    cached = _common_prefix(llm._input_ids[: llm.n_tokens].tolist(), ids) if llm.n_tokens else 0
    evaluated = len(ids) - min(cached, len(ids) - 1)
    load = os.getloadavg()[0]
    cpu0, flt0 = bl.cpu_seconds(), bl.machine_counters()
    t0 = time.perf_counter()
    t1 = None
    tokens: list[int] = []
    stamps: list[float] = []
    it = llm.generate(ids, top_k=sampling["top_k"], top_p=sampling["top_p"], min_p=0.0,
                      temp=sampling["temperature"], repeat_penalty=sampling["repeat_penalty"])
    for tok in it:
        stamps.append(time.perf_counter())
        if t1 is None:
            t1 = stamps[0]
        if stop_ids and tok in stop_ids:
            break
        tokens.append(tok)
        if len(tokens) >= max_tokens:
            break
    it.close()
    t_end = time.perf_counter()
    cpu = bl.cpu_seconds() - cpu0
    counters = bl.counters_since(flt0, cpu)
    t1 = t1 or t_end
    gen_s = t_end - t1
    return {
        "tool": "bare", "prompt_tokens": len(ids), "evaluated_tokens": evaluated,
        "generated_tokens": len(tokens), "ttft_s": t1 - t0, "gen_s": gen_s,
        "wall_s": t_end - t0, "pp_tps": evaluated / (t1 - t0) if t1 > t0 else None,
        "tg_tps": (len(tokens) - 1) / gen_s if len(tokens) > 1 and gen_s > 0 else None,
        **_step_stats(stamps[: len(tokens)]),
        "busy_cores": cpu / (t_end - t0), "loadavg_1m": load,
        **counters, "tokens": tokens,
    }


def run_llama_bench(exe: Path, gguf: Path, args: list[str], threads: int) -> dict:
    cmd = [str(exe), "-m", str(gguf), *args, "-t", str(threads), "-b", "512", "-ub", "512",
           "-fa", "off", "-r", "1", "-o", "json"]
    load = os.getloadavg()[0]
    started = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - started
    out = {"tool": "llama-bench", "cmd": cmd, "loadavg_1m": load, "wall_s": wall,
           "returncode": proc.returncode}
    if proc.returncode != 0:
        out["error"] = (proc.stderr or proc.stdout).strip()[-1000:]
        return out
    try:
        rows = json.loads(proc.stdout)
    except json.JSONDecodeError as exc:
        out["error"] = f"unreadable JSON from llama-bench: {exc}: {proc.stdout[:300]}"
        return out
    out["rows"] = [{k: r.get(k) for k in ("n_prompt", "n_gen", "n_depth", "avg_ts", "avg_ns",
                                          "n_threads", "n_batch", "n_ubatch", "type_k",
                                          "flash_attn", "build_commit", "build_number",
                                          "cpu_info", "backends", "model_type")}
                   for r in rows]
    return out


# --------------------------------------------------------------------------------------------
# Setup per model: a prompt that runs M tokens without stopping, checked on both sides
# --------------------------------------------------------------------------------------------
def stop_reason(kiln, tokens: list[int]) -> str | None:
    """Why kiln would stop before the end of these tokens (eos, banned id, stop string)."""
    eos = set(kiln.eos_ids)
    for i, t in enumerate(tokens):
        if t in eos:
            return f"eos id {t} at token {i + 1}"
        if t in set(kiln.meta.banned_ids):
            return f"banned id {t} at token {i + 1}"
    text = b"".join(kiln._piece(t) for t in tokens).decode("utf-8", "replace")
    for stop in kiln.meta.stop_strings:
        if stop and stop in text:
            return f"stop string {stop!r} in the text"
    return None


def choose_prompt(kiln, bare, n_tokens: int, gen_tokens: int, sampling: dict) -> tuple:
    tried = []
    for seed in range(MAX_PROMPT_TRIES):
        messages = first_turn_messages(kiln, n_tokens, seed=1000 + seed)
        ids = kiln.prompt.encode(messages)
        probe = run_bare(bare, ids, gen_tokens, sampling, reset=True)   # also a warm-up
        why = stop_reason(kiln, probe["tokens"])
        tried.append({"seed": 1000 + seed, "rejected": why})
        if why is None:
            return messages, ids, probe["tokens"], tried
        print(f"    prompt seed {1000 + seed} rejected: {why}", flush=True)
    raise RuntimeError(f"no prompt out of {MAX_PROMPT_TRIES} ran {gen_tokens} tokens without "
                       f"stopping: {tried}")


def second_turn_messages(kiln, turn1: list[dict], answer: str, k: int, cache: list[int],
                         seed: int) -> list[dict]:
    """turn1 + the answer + a user message sized so that exactly k prompt ids are not cached."""
    def count(text: str) -> int:
        ids = kiln.prompt.encode(turn1 + [{"role": "assistant", "content": answer},
                                          {"role": "user", "content": text}])
        return len(ids) - min(_common_prefix(cache, ids), len(ids) - 1)
    text = fit_words(count, k, seed, prefix="next")
    return turn1 + [{"role": "assistant", "content": answer}, {"role": "user", "content": text}]


# --------------------------------------------------------------------------------------------
# Per-token overhead profile
# --------------------------------------------------------------------------------------------
def overhead_profile(kiln, bare, messages: list[dict], gen_ids: list[int],
                     tg_step_s: float | None) -> dict:
    """kiln's own work, timed in isolation: per turn and per generated token."""
    from runtime.engine import _StopScanner

    prof: dict = {}
    prof["prompt_build_ms"] = round(bl.median(bl.times(lambda: kiln.prompt.encode(messages),
                                                        10)) * 1e3, 3)
    prof["template_render_ms"] = round(bl.median(bl.times(lambda: kiln.prompt.render(messages),
                                                           10)) * 1e3, 3)

    # real text pieces (the generated ids of a random model are mostly padding with no text)
    real = [i for i in kiln.prompt.encode(messages) if kiln._piece(i)] or [0]
    gen = gen_ids or real
    pieces_gen = [kiln._piece(i) for i in gen]
    pieces_real = [kiln._piece(i) for i in real]
    prof["generated_pieces_with_text"] = sum(1 for p in pieces_gen if p)
    prof["generated_pieces"] = len(pieces_gen)

    def piece_loop(n):
        for j in range(n):
            kiln._piece(real[j % len(real)])
    prof["token_to_piece_us"] = round(bl.per_call_us(piece_loop, 2000), 2)

    def decode_loop(n):
        dec = codecs.getincrementaldecoder("utf-8")(errors="replace")
        for j in range(n):
            dec.decode(pieces_real[j % len(pieces_real)])
    prof["utf8_decode_us"] = round(bl.per_call_us(decode_loop, 2000), 2)

    texts = [p.decode("utf-8", "replace") for p in pieces_real]

    def scan(stops):
        def loop(n):
            sc = _StopScanner(stops)
            for j in range(n):
                sc.feed(texts[j % len(texts)])
        return loop
    prof["stop_scan_model_us"] = round(bl.per_call_us(scan(kiln.meta.stop_strings), 2000), 2)
    prof["stop_scan_llmjp_us"] = round(bl.per_call_us(scan([LLMJP_STOP]), 2000), 2)

    # the logits processor: kiln adds one (its ban function) for families with banned ids;
    # llama-cpp-python runs it as a custom sampler that calls back into Python once per token.
    # Timed through real samplers on the last logits of `bare`: greedy alone vs the same
    # chain with kiln's processor (as kiln builds it, banning one id).
    from llama_cpp import LogitsProcessorList

    banned = np.array([0])

    def ban(_input_ids, scores):
        scores[banned] = -np.inf
        return scores

    plain = bare._init_sampler(temp=0.0, repeat_penalty=1.0, min_p=0.0)
    with_proc = bare._init_sampler(temp=0.0, repeat_penalty=1.0, min_p=0.0,
                                   logits_processor=LogitsProcessorList([ban]))

    def sample_loop(sampler):
        def loop(n):
            for _ in range(n):
                sampler.sample(bare._ctx, -1)
        return loop
    best = {"plain": float("inf"), "proc": float("inf")}
    for _ in range(40):   # alternated, best of 40 batches of 50 calls each
        best["plain"] = min(best["plain"], bl.per_call_us(sample_loop(plain), 50, repeat=1))
        best["proc"] = min(best["proc"], bl.per_call_us(sample_loop(with_proc), 50, repeat=1))
    prof["greedy_sample_us"] = round(best["plain"], 2)
    prof["greedy_sample_with_processor_us"] = round(best["proc"], 2)
    prof["logits_processor_us"] = round(prof["greedy_sample_with_processor_us"]
                                        - prof["greedy_sample_us"], 2)
    plain.close()
    with_proc.close()

    per_token = prof["token_to_piece_us"] + prof["utf8_decode_us"] + prof["stop_scan_model_us"]
    prof["kiln_per_token_us_this_model"] = round(per_token, 2)
    prof["kiln_per_token_us_llmjp_stops"] = round(per_token - prof["stop_scan_model_us"]
                                                 + prof["stop_scan_llmjp_us"], 2)
    prof["kiln_per_token_us_with_banned_ids"] = round(per_token + prof["logits_processor_us"], 2)
    if tg_step_s:
        step_us = tg_step_s * 1e6
        prof["tg_step_us"] = round(step_us, 1)
        for key in ("kiln_per_token_us_this_model", "kiln_per_token_us_llmjp_stops",
                    "kiln_per_token_us_with_banned_ids"):
            prof[key.replace("_us_", "_share_of_tg_step_")] = round(prof[key] / step_us, 5)
    return prof


def in_situ_overhead(kiln, messages: list[dict], ids: list[int], gen_tokens: int,
                     sampling: dict, repeat: int = 3) -> dict:
    """Per generated token, the time spent outside llama-cpp-python's eval() and sample()
    during generation, for kiln and for bare on kiln's own Llama instance.

    eval (the decode) and sample are timed by wrapping them on the instance, so what remains of
    each generation step is the Python around them: llama-cpp-python's generator, and for kiln
    its own loop (eos check, token -> bytes, UTF-8 decoding, stop scan, yield). Unlike a whole
    step (~100 ms, noisy by a few %), this isolates microseconds."""
    llm = kiln.llm
    calls: list[float] = []
    orig_eval, orig_sample = llm.eval, llm.sample

    def timed(fn):
        def wrapper(*a, **kw):
            t0 = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                calls.append(time.perf_counter() - t0)
        return wrapper

    out: dict = {"kiln_us": [], "bare_us": [], "kiln_llama_us": [], "bare_llama_us": []}
    llm.eval, llm.sample = timed(orig_eval), timed(orig_sample)
    try:
        for _ in range(repeat):
            for tool in ("kiln", "bare"):
                calls.clear()
                if tool == "kiln":
                    r = run_kiln(kiln, messages, gen_tokens, sampling, reset=True)
                else:
                    r = run_bare(llm, ids, gen_tokens, sampling, reset=True)
                # calls: eval(prompt), sample, then (eval, sample) per later token
                inside = sum(calls[2:])
                n = r["generated_tokens"] - 1
                if n > 0:
                    out[f"{tool}_us"].append((r["gen_s"] - inside) / n * 1e6)
                    out[f"{tool}_llama_us"].append(inside / n * 1e6)
    finally:
        del llm.eval, llm.sample
    res = {"kiln_outside_llama_us_per_token": bl.rnd(bl.median(out["kiln_us"]), 1),
           "bare_outside_llama_us_per_token": bl.rnd(bl.median(out["bare_us"]), 1),
           "eval_plus_sample_us_per_token": bl.rnd(bl.median(out["kiln_llama_us"]
                                                     + out["bare_llama_us"]), 0),
           # the decode itself, driven by kiln or by bare: kiln's code should not slow it down
           "kiln_eval_plus_sample_us_per_token": bl.rnd(bl.median(out["kiln_llama_us"]), 0),
           "bare_eval_plus_sample_us_per_token": bl.rnd(bl.median(out["bare_llama_us"]), 0),
           "raw": {k: [round(x, 1) for x in v] for k, v in out.items()}}
    if res["kiln_outside_llama_us_per_token"] is not None and \
            res["bare_outside_llama_us_per_token"] is not None:
        extra = res["kiln_outside_llama_us_per_token"] - res["bare_outside_llama_us_per_token"]
        res["kiln_extra_us_per_token"] = round(extra, 1)
        if res["eval_plus_sample_us_per_token"]:
            res["kiln_extra_share_of_step"] = round(extra / res["eval_plus_sample_us_per_token"], 5)
    return res


def cprofile_turn(kiln, messages, max_tokens, sampling, top: int = 15) -> str:
    kiln.reset()
    prof = cProfile.Profile()
    prof.enable()
    for _ in kiln.chat(messages, stream=True, max_tokens=max_tokens, **sampling):
        pass
    prof.disable()
    buf = io.StringIO()
    pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(top)
    return buf.getvalue()


# --------------------------------------------------------------------------------------------
# Summary
# --------------------------------------------------------------------------------------------
def is_disturbed(r: dict, busy_min: float | None) -> bool:
    """A run during which this process did not get its cores (another process took them):
    with OpenMP threads spinning at barriers, that slows llama.cpp down several times over."""
    return busy_min is not None and r.get("busy_cores") is not None and r["busy_cores"] < busy_min


def _undisturbed(rs: list[dict]) -> list[dict]:
    """Runs not disturbed; all of them if every one was (then the result says so)."""
    good = [r for r in rs if not r.get("disturbed")]
    return good or rs


def print_run(r: dict) -> None:
    q, tool, rep = r["type"], r["tool"], r["rep"]
    tail = ""
    if r.get("disturbed"):
        tail = "  DISTURBED (busy cores below --busy-min): not counted, run again"
    if r.get("error"):
        tail += f"  ERROR {r['error'][:300]}"
    if tool == "llama-bench":
        got = {("pp" if row["n_prompt"] else "tg"): row["avg_ts"] for row in r.get("rows", [])}
        print(f"  [{q} #{rep + 1} llama-bench] pp {bl.fmt(got.get('pp'), '.1f')} t/s, "
              f"tg {bl.fmt(got.get('tg'), '.2f')} t/s{tail}", flush=True)
        return
    print(f"  [{q} #{rep + 1} {tool}@{r.get('llama', '')}] TTFT {r['ttft_s']:.3f} s -> pp {bl.fmt(r['pp_tps'], '.1f')} "
          f"t/s; {r['generated_tokens']} tokens in {r['gen_s']:.3f} s -> tg "
          f"{bl.fmt(r['tg_tps'], '.2f')} t/s (median step {bl.fmt(r.get('tg_tps_median_step'), '.2f')}); "
          f"busy cores {r['busy_cores']:.2f}, other processes {r['other_cpu_s']:.1f} CPU s, "
          f"steal {r['steal_s']:.1f} s, load {r['loadavg_1m']:.2f}{tail}", flush=True)


def summarize(runs: list[dict], qtypes: list[str], tools: list[str]) -> list[dict]:
    rows = []
    for q in qtypes:
        for tool in tools:
            every = [r for r in runs if r["type"] == q and r["tool"] == tool and not r.get("error")]
            mine = _undisturbed(every)
            if tool == "llama-bench":
                pp = [row["avg_ts"] for r in mine for row in r.get("rows", [])
                      if row["n_prompt"] and not row["n_gen"]]
                tg = [row["avg_ts"] for r in mine for row in r.get("rows", [])
                      if row["n_gen"] and not row["n_prompt"]]
            else:
                pp = [r["pp_tps"] for r in mine]
                tg = [r["tg_tps"] for r in mine]
                tgm = [r.get("tg_tps_median_step") for r in mine]
            if not pp and not tg:
                rows.append({"type": q, "tool": tool, "runs": len(mine), "error": "no result"})
                continue
            row = {"type": q, "tool": tool, "runs": len(mine),
                   "disturbed_runs": sum(1 for r in every if r.get("disturbed")),
                   "only_disturbed_runs": bool(every) and all(r.get("disturbed") for r in every),
                   "pp_tps": bl.rnd(bl.median(pp)), "tg_tps": bl.rnd(bl.median(tg)),
                   "pp_tps_all": [bl.rnd(v) for v in pp], "tg_tps_all": [bl.rnd(v) for v in tg],
                   "pp_spread": bl.rnd(bl.spread(pp), 3), "tg_spread": bl.rnd(bl.spread(tg), 3)}
            if tool != "llama-bench":
                row["tg_tps_median_step"] = bl.rnd(bl.median(tgm))
                row["ttft_s"] = bl.rnd(bl.median(r["ttft_s"] for r in mine), 4)
                row["gen_s"] = bl.rnd(bl.median(r["gen_s"] for r in mine), 4)
                row["busy_cores"] = bl.rnd(bl.median(r["busy_cores"] for r in mine), 2)
            if tool == "kiln":
                row["ttft_internal_s"] = bl.rnd(bl.median(r["ttft_internal_s"] for r in mine), 4)
                row["prompt_build_s"] = bl.rnd(bl.median(r["ttft_s"] - r["ttft_internal_s"]
                                                for r in mine), 5)
            rows.append(row)
    return rows


def ratios(runs: list[dict], rows: list[dict], qtypes: list[str]) -> list[dict]:
    """kiln / bare: ratio of the medians (the verdict), and the median over repeats of the
    same-instance pairs, sqrt(kiln@A / bare@A * kiln@B / bare@B): code path against code path."""
    out = []
    for q in qtypes:
        k = next((r for r in rows if r["type"] == q and r["tool"] == "kiln"), None)
        b = next((r for r in rows if r["type"] == q and r["tool"] == "bare"), None)
        if not k or not b or "pp_tps" not in k or "pp_tps" not in b:
            continue
        entry: dict = {"type": q, "target": TARGET_RATIO}
        for m in ("pp", "tg", "tg_median_step"):
            key = "tg_tps_median_step" if m == "tg_median_step" else f"{m}_tps"
            kv, bv = k.get(key), b.get(key)
            entry[m] = round(kv / bv, 3) if kv and bv else None
            paired = []
            for rep in sorted({r["rep"] for r in runs if r["type"] == q}):
                prods = []
                for inst in ("A", "B"):
                    kr = _last([r for r in runs if r["type"] == q and r["rep"] == rep
                                and r["tool"] == "kiln" and r.get("llama") == inst
                                and not r.get("disturbed")])
                    br = _last([r for r in runs if r["type"] == q and r["rep"] == rep
                                and r["tool"] == "bare" and r.get("llama") == inst
                                and not r.get("disturbed")])
                    if kr and br and kr.get(key) and br.get(key):
                        prods.append(kr[key] / br[key])
                if prods:
                    paired.append(float(np.prod(prods)) ** (1 / len(prods)))
            entry[f"{m}_paired"] = bl.rnd(bl.median(paired), 3)
            entry[f"{m}_paired_all"] = [round(p, 4) for p in paired]
            if m != "tg_median_step":
                entry[f"{m}_pass"] = None if entry[m] is None else entry[m] >= TARGET_RATIO
        for tool, row in (("kiln", k), ("bare", b)):
            for inst in ("A", "B"):
                mine = _undisturbed([r for r in runs if r["type"] == q and r["tool"] == tool
                                     and r.get("llama") == inst and not r.get("error")])
                entry[f"{tool}@{inst}_tg_tps_median_step"] = bl.rnd(
                    bl.median(r.get("tg_tps_median_step") for r in mine), 3)
        out.append(entry)
    return out


def _last(rs: list[dict]) -> dict | None:
    return rs[-1] if rs else None


def print_tables(rows, rat, second, notes, args) -> None:
    print()
    print(f"prompt {args.prompt_tokens} tokens, {args.gen_tokens} generated, "
          f"{args.threads} threads, median of {args.repeat}")
    table = []
    for r in rows:
        if "error" in r:
            table.append([r["type"], r["tool"], "FAILED", "", "", "", "", "", r["error"]])
            continue
        ra = next((e for e in rat if e["type"] == r["type"]), None)
        pp_ratio = tg_ratio = tgm_ratio = ""
        if r["tool"] == "kiln" and ra:
            pp_ratio = f"{bl.fmt(ra['pp'], '.3f')} {bl.verdict(ra['pp_pass'])}"
            tg_ratio = f"{bl.fmt(ra['tg'], '.3f')} {bl.verdict(ra['tg_pass'])}"
            tgm_ratio = bl.fmt(ra["tg_median_step"], ".3f")
        table.append([r["type"], r["tool"], bl.fmt(r["pp_tps"], ".1f"), bl.fmt(r["tg_tps"], ".2f"),
                      bl.fmt(r.get("tg_tps_median_step"), ".2f"), bl.fmt(r.get("ttft_s"), ".3f"),
                      pp_ratio, tg_ratio, tgm_ratio])
    print(bl.table(["type", "tool", "pp t/s", "tg t/s", "tg* t/s", "TTFT s", "kiln/bare pp",
                    "kiln/bare tg", "tg*"], table, right=range(2, 9)))
    if rat:
        print(f"target: kiln/bare >= {TARGET_RATIO} for pp and tg (ratio of the medians). "
              "tg* = 1 / median time of one generation step (robust to steps slowed by other "
              "processes). Same-instance kiln/bare (geometric mean of kiln@A/bare@A and "
              "kiln@B/bare@B, median over repeats): " + "; ".join(
                  f"{e['type']} pp {bl.fmt(e['pp_paired'], '.3f')}, tg {bl.fmt(e['tg_paired'], '.3f')}, "
                  f"tg* {bl.fmt(e['tg_median_step_paired'], '.3f')}" for e in rat))
    for e in rat:
        print(f"{e['type']} tg* by instance: kiln@A {bl.fmt(e['kiln@A_tg_tps_median_step'], '.2f')}, "
              f"bare@A {bl.fmt(e['bare@A_tg_tps_median_step'], '.2f')}, kiln@B "
              f"{bl.fmt(e['kiln@B_tg_tps_median_step'], '.2f')}, bare@B "
              f"{bl.fmt(e['bare@B_tg_tps_median_step'], '.2f')} t/s")
    if second:
        print()
        print("second turn: time to first token after a first turn, K new tokens "
              "(warm = KV cache reused, cold = same full prompt from an empty cache)")
        print(bl.table(["type", "K", "prompt", "evaluated", "kiln warm s", "bare warm s",
                        "kiln cold s", "warm/cold", "ms/new tok"],
                       [[s["type"], s["k"], bl.fmt(s["prompt_tokens"], "d"),
                         bl.fmt(s["kiln_evaluated_tokens"], "d"), bl.fmt(s["kiln_warm_ttft_s"], ".3f"),
                         bl.fmt(s["bare_warm_ttft_s"], ".3f"), bl.fmt(s["kiln_cold_ttft_s"], ".3f"),
                         bl.fmt(s["warm_over_cold"], ".3f"),
                         bl.fmt(s["kiln_warm_ms_per_new_token"], ".1f")] for s in second]))
        for q in dict.fromkeys(s["type"] for s in second):
            mine = sorted((s for s in second if s["type"] == q), key=lambda s: s["k"])
            exact = all(s["kiln_evaluated_tokens"] == s["k"] for s in mine)
            warm = [s["kiln_warm_ttft_s"] for s in mine]
            grows = all(a is not None and b is not None and a < b
                        for a, b in zip(warm, warm[1:]))
            line = (f"{q}: kiln evaluated exactly K new tokens: {'yes' if exact else 'NO'}; "
                    f"warm TTFT grows with K: {'yes' if grows else 'NO'}")
            lo, hi = mine[0], mine[-1]
            if len(mine) > 1 and lo["kiln_warm_ttft_s"] and hi["kiln_warm_ttft_s"]:
                slope = ((hi["kiln_warm_ttft_s"] - lo["kiln_warm_ttft_s"])
                         / (hi["kiln_evaluated_tokens"] - lo["kiln_evaluated_tokens"]) * 1e3)
                line += (f"; slope {slope:.1f} ms per new token (K {lo['k']}->{hi['k']}) vs cold "
                         f"{bl.fmt(hi['kiln_cold_ms_per_prompt_token'], '.1f')} ms per prompt token "
                         f"for the {hi['prompt_tokens']}-token prompt")
            print(line)
    print()
    for n in notes:
        print(f"note: {n}")


# --------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    from runtime.device import default_threads

    p = bl.parser(__doc__, "bench_runtime.py")
    p.add_argument("--types", default="q4_0,q8_0", metavar="LIST",
                   help="comma-separated quantizations to convert to and measure "
                        "(default: %(default)s)")
    p.add_argument("--prompt-tokens", type=int, default=256, metavar="N",
                   help="prompt length in tokens, template and BOS included (default: %(default)s)")
    p.add_argument("--gen-tokens", type=int, default=64, metavar="M",
                   help="tokens generated per run (default: %(default)s)")
    p.add_argument("--repeat", type=int, default=3, metavar="R",
                   help="interleaved repeats per type, each running kiln and bare once on each of "
                        "the two Llama instances; medians reported (default: %(default)s)")
    p.add_argument("--threads", type=int, default=default_threads(), metavar="T",
                   help="threads for every tool (default: physical cores, %(default)s here)")
    p.add_argument("--ctx", type=int, default=None, metavar="N",
                   help="context size for kiln and bare (default: kiln's, min(model, 4096))")
    p.add_argument("--second-turn", metavar="LIST",
                   help="K values: new tokens of the second turn; empty to skip (default: "
                        "16,64,256; 64 with --quick, whose template and first answer alone "
                        "make about 30 new tokens)")
    p.add_argument("--turn1-tokens", type=int, default=16, metavar="N",
                   help="tokens answered in the first turn before the second (default: "
                        "%(default)s)")
    p.add_argument("--busy-min", type=float, default=0.9, metavar="FRACTION",
                   help="a CPU run whose process used fewer than FRACTION x threads cores on "
                        "average (another process took them) is marked disturbed, left out of "
                        "the medians and run again; 0 turns this off (default: %(default)s)")
    p.add_argument("--retries", type=int, default=3, metavar="N",
                   help="runs again a disturbed run at most N times (default: %(default)s)")
    p.add_argument("--llama-bench", type=Path, metavar="PATH",
                   help="llama.cpp's llama-bench executable: measured too when given")
    p.add_argument("--model-dir", type=Path, metavar="DIR",
                   help="the checkpoint to make or reuse (default: bench_out/llm-jp-3-1.8b-shape, "
                        "or ...-quick with --quick)")
    p.add_argument("--gguf-dir", type=Path, metavar="DIR",
                   help="where the converted GGUFs are cached (default: bench_out/runtime)")
    p.add_argument("--json-out", type=Path, metavar="FILE",
                   help="where to write the results (default: bench_out/bench_runtime.json)")
    p.add_argument("--quick", action="store_true",
                   help="smoke run on bench_convert's 4-layer checkpoint (~0.7 GiB)")
    p.add_argument("--reconvert", action="store_true",
                   help="convert again even when a cached GGUF of this checkpoint exists")
    p.add_argument("--profile", action="store_true",
                   help="also print a cProfile of one kiln turn per type (top functions)")
    p.add_argument("--load", action="store_true",
                   help="only the load-time and threads section (scripts/bench_load.py: ChatModel "
                        "load vs bare Llama() on a 99k-vocabulary GGUF; --threads 1 vs 2 with a "
                        "competing process), --repeat runs each (7 if not given)")
    p.add_argument("--check", action="store_true",
                   help="exit with status 2 when a kiln/bare ratio is below the target")
    args = p.parse_args(argv)
    args.json_out = args.json_out or bl.BENCH_OUT / "bench_runtime.json"
    args.gguf_dir = args.gguf_dir or bl.BENCH_OUT / "runtime"
    for name in ("prompt_tokens", "gen_tokens", "repeat", "threads", "turn1_tokens"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.gen_tokens < 2:
        p.error("--gen-tokens must be at least 2 (tg needs a token after the first)")
    if args.second_turn is None:
        args.second_turn = "64" if args.quick else "16,64,256"
    try:
        args.ks = [int(k) for k in args.second_turn.split(",") if k.strip()]
    except ValueError:
        p.error(f"--second-turn {args.second_turn!r}: a comma-separated list of integers")
    if any(k < 1 for k in args.ks):
        p.error("--second-turn values must be at least 1")
    if args.llama_bench is not None:
        args.llama_bench = args.llama_bench.resolve()
        if not os.access(args.llama_bench, os.X_OK):
            p.error(f"--llama-bench {args.llama_bench}: not an executable")
    return args


def timed_runs(q: str, kiln, bare, gguf: Path, messages: list[dict], ids: list[int],
               probe_tokens: list[int], busy_min: float | None, args, sampling: dict,
               runs: list[dict], failures: list[str]) -> None:
    """--repeat rounds of kiln and bare on both Llama instances (and llama-bench), appended to
    runs; a disturbed run is run again (--retries)."""
    own = {"A": kiln.llm, "B": bare}
    for rep in range(args.repeat):
        # both tools on both Llama instances (A: built by kiln, B: built here), in an order
        # that alternates: the instance effect (~1%) cancels, and kiln@X / bare@X pairs
        # compare code paths on the very same instance
        order = bl.order([("kiln", "A"), ("bare", "B"), ("bare", "A"), ("kiln", "B")], rep)
        if args.llama_bench:
            order.append(("llama-bench", ""))
        for tool, inst in order:
            for attempt in range(args.retries + 1):
                if tool == "kiln":
                    kiln.llm = own[inst]
                    try:
                        r = run_kiln(kiln, messages, args.gen_tokens, sampling, reset=True,
                                     step_stamps=True)
                    finally:
                        kiln.llm = own["A"]
                    r["tokens_match_bare"] = r["token_ids"] == probe_tokens[:-1]
                    if (r["generated_tokens"] != args.gen_tokens
                            or r["finish_reason"] != "length"):
                        r["error"] = (f"kiln generated {r['generated_tokens']} tokens "
                                      f"({r['finish_reason']}), not {args.gen_tokens}")
                    del r["token_ids"], r["text"]
                elif tool == "bare":
                    r = run_bare(own[inst], ids, args.gen_tokens, sampling, reset=True)
                    r["tokens_match_probe"] = r["tokens"] == probe_tokens
                    del r["tokens"]
                else:
                    pp = run_llama_bench(args.llama_bench, gguf,
                                         ["-p", str(args.prompt_tokens), "-n", "0"],
                                         args.threads)
                    tg = run_llama_bench(args.llama_bench, gguf,
                                         ["-p", "0", "-n", str(args.gen_tokens), "-d",
                                          str(args.prompt_tokens)], args.threads)
                    r = {"tool": "llama-bench", "loadavg_1m": pp["loadavg_1m"],
                         "rows": pp.get("rows", []) + tg.get("rows", []),
                         "cmds": [pp["cmd"], tg["cmd"]]}
                    errs = [x["error"] for x in (pp, tg) if x.get("error")]
                    if errs:
                        r["error"] = " | ".join(errs)
                r |= {"type": q, "rep": rep, "llama": inst, "attempt": attempt,
                      "disturbed": is_disturbed(r, busy_min)}
                runs.append(r)
                if r.get("error"):
                    failures.append(f"{q} {tool} #{rep + 1}: {r['error']}")
                print_run(r)
                if not r["disturbed"]:
                    break


def second_turns(q: str, kiln, bare, messages: list[dict], ids: list[int],
                 busy_min: float | None, args, sampling: dict) -> list[dict]:
    """Per K of --second-turn: TTFT of a second turn with K new tokens, warm (KV cache reused)
    against cold (the same prompt from an empty cache) and against bare after the same turn."""
    second: list[dict] = []
    if args.ks:
        t1 = run_kiln(kiln, messages, args.turn1_tokens, sampling, reset=True)
        answer = t1["text"]
        cache = kiln.llm._input_ids[: kiln.llm.n_tokens].tolist()
        for k in args.ks:
            msgs2 = second_turn_messages(kiln, messages, answer, k, cache, seed=2000 + k)
            ids2 = kiln.prompt.encode(msgs2)
            per = {"kiln_warm": [], "bare_warm": [], "kiln_cold": []}
            for rep in range(args.repeat):
                for tool in bl.order(["kiln", "bare"], rep):
                    for attempt in range(args.retries + 1):
                        if tool == "kiln":
                            first = run_kiln(kiln, messages, args.turn1_tokens, sampling,
                                             reset=True)
                            w = run_kiln(kiln, msgs2, 1, sampling, reset=False)
                            c = run_kiln(kiln, msgs2, 1, sampling, reset=True)
                            got = (("kiln_warm", w), ("kiln_cold", c))
                            for _, r in got:
                                r.pop("token_ids"), r.pop("text")
                                r["turn1_answer_same"] = first["text"] == answer
                        else:
                            run_bare(bare, ids, args.turn1_tokens, sampling, reset=True)
                            w = run_bare(bare, ids2, 1, sampling, reset=False)
                            w.pop("tokens")
                            got = (("bare_warm", w),)
                        bad = any(is_disturbed(r, busy_min) for _, r in got)
                        for name, r in got:
                            r |= {"type": q, "rep": rep, "k": k, "turn": name,
                                  "attempt": attempt, "disturbed": bad}
                            per[name].append(r)
                        if not bad:
                            break
                        print(f"    [{q} second turn K={k} {tool} #{rep + 1}] disturbed "
                              f"(busy cores {min(r['busy_cores'] for _, r in got):.2f}), "
                              "again", flush=True)
            kw, bw, kc = (bl.median(r["ttft_s"] for r in _undisturbed(per[n]))
                          for n in ("kiln_warm", "bare_warm", "kiln_cold"))
            ev = per["kiln_warm"][0]["evaluated_tokens"]
            row = {"type": q, "k": k, "prompt_tokens": len(ids2),
                   "kiln_evaluated_tokens": ev,
                   "bare_evaluated_tokens": per["bare_warm"][0]["evaluated_tokens"],
                   "cold_evaluated_tokens": per["kiln_cold"][0]["evaluated_tokens"],
                   "kiln_warm_ttft_s": bl.rnd(kw, 4), "bare_warm_ttft_s": bl.rnd(bw, 4),
                   "kiln_cold_ttft_s": bl.rnd(kc, 4),
                   "kiln_over_bare_warm_ttft": bl.rnd(kw / bw, 3) if kw and bw else None,
                   "warm_over_cold": bl.rnd(kw / kc, 3) if kw and kc else None,
                   "kiln_warm_ms_per_new_token": bl.rnd(kw / ev * 1e3, 2) if kw and ev else None,
                   "kiln_cold_ms_per_prompt_token": bl.rnd(kc / len(ids2) * 1e3, 2) if kc else None,
                   "runs": [{kk: v for kk, v in r.items()} for n in per for r in per[n]]}
            second.append(row)
            print(f"  [{q} second turn K={k}] prompt {len(ids2)}, kiln evaluated {ev}: "
                  f"warm {bl.fmt(kw, '.3f')} s (bare {bl.fmt(bw, '.3f')} s), cold {bl.fmt(kc, '.3f')} s",
                  flush=True)
    return second


def run_notes(runs, second, setups, profiles, machine, args) -> list[str]:
    """The notes printed under the tables and kept in the JSON."""
    loads = [r["loadavg_1m"] for r in runs]
    busy = [r["busy_cores"] for r in runs if "busy_cores" in r]
    notes = [
        f"{machine['nproc']} CPU(s) ({machine['cpu_model']}), {args.threads} threads for every "
        f"tool; 1-minute load average {min(loads):.2f}..{max(loads):.2f} during the runs "
        f"(start {machine['loadavg_start'][0]:.2f}, end {machine['loadavg_end'][0]:.2f}); "
        f"busy cores per run {min(busy):.2f}..{max(busy):.2f}; CPU time of other processes "
        f"during the pp/tg runs {sum(r.get('other_cpu_s', 0) for r in runs):.1f} s in all "
        f"(max {max([r.get('other_cpu_s', 0) for r in runs] or [0]):.1f} s in one run), "
        f"hypervisor steal {sum(r.get('steal_s', 0) for r in runs):.1f} s; "
        f"{sum(1 for r in runs if r.get('disturbed'))} pp/tg run(s) and "
        f"{sum(1 for s in second for r in s['runs'] if r.get('disturbed'))} second-turn run(s) "
        "disturbed (process got under --busy-min x threads cores) were run again and left out: "
        "a shared machine makes timings noisy, compare interleaved ratios",
        "pp t/s = prompt tokens / time to first token (kiln's includes its chat template and "
        "tokenization); tg t/s = (tokens - 1) / time after the first token; greedy, "
        "repetition penalty off, same prompt ids and same generated ids on both sides",
        "the prompt is one chosen so that greedy decoding runs all tokens with no eos, banned "
        "id or stop string; kiln runs unmodified",
    ]
    for q, s in setups.items():
        k_ll, b_ll = s["kiln_llama"], s["bare_llama"]
        if k_ll["n_threads_batch"] != b_ll["n_threads_batch"]:
            notes.append(f"{q}: kiln's Llama has n_threads_batch={k_ll['n_threads_batch']} "
                         f"(llama-cpp-python's default, all logical CPUs), bare "
                         f"{b_ll['n_threads_batch']}: kiln passes only n_threads")
    for q, p in profiles.items():
        notes.append(
            f"{q} per-token overhead of kiln (isolated): token->bytes {p['token_to_piece_us']} us, "
            f"utf-8 decode {p['utf8_decode_us']} us, stop scan {p['stop_scan_model_us']} us "
            f"(with llm-jp's stop string {p['stop_scan_llmjp_us']} us), logits processor when "
            f"a family bans ids {p['logits_processor_us']} us; one tg step "
            f"{bl.fmt(p.get('tg_step_us'), '.0f')} us; prompt build {p['prompt_build_ms']} ms per turn")
        i = p.get("in_situ") or {}
        notes.append(
            f"{q} in situ, per generated token, time outside llama-cpp-python's eval+sample: "
            f"kiln {bl.fmt(i.get('kiln_outside_llama_us_per_token'), '.1f')} us, bare "
            f"{bl.fmt(i.get('bare_outside_llama_us_per_token'), '.1f')} us -> kiln adds "
            f"{bl.fmt(i.get('kiln_extra_us_per_token'), '.1f')} us per token = "
            f"{bl.fmt((i.get('kiln_extra_share_of_step') or 0) * 100, '.3f')}% of a step "
            f"(eval+sample per token: {bl.fmt(i.get('kiln_eval_plus_sample_us_per_token'), '.0f')} "
            f"us under kiln, {bl.fmt(i.get('bare_eval_plus_sample_us_per_token'), '.0f')} us under "
            "bare)")
    if args.llama_bench:
        notes.append("llama-bench: pp = -p N -n 0 (depth 0), tg = -p 0 -n M -d N (after N tokens "
                     "of context), -r 1 per repeat, its own build of llama.cpp")
    return notes


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.load:
        import bench_load

        return bench_load.main(args.repeat if "--repeat" in (argv or sys.argv) else 7)
    model_dir, ck_info = checkpoint(args.quick, args.model_dir)
    qtypes = [q.strip().lower() for q in args.types.split(",") if q.strip()]
    tools = ["kiln", "bare"] + (["llama-bench"] if args.llama_bench else [])
    machine = bl.machine_info(args.threads, llama=True)
    # temperature 0 = llama.cpp's greedy sampler (top_k / top_p unused); penalty 1 = off
    sampling = {"temperature": 0.0, "top_k": 40, "top_p": 0.95, "repeat_penalty": 1.0}

    ggufs = {q: ensure_gguf(model_dir, q, args.gguf_dir.resolve(), args.reconvert) for q in qtypes}
    runs: list[dict] = []
    second: list[dict] = []
    setups: dict = {}
    profiles: dict = {}
    cprofiles: dict = {}
    failures: list[str] = []

    for q in qtypes:
        gguf = ggufs[q][0]
        print(f"\n== {q}: {gguf.name} ({gguf.stat().st_size / 2**20:.0f} MiB), "
              f"{args.threads} threads", flush=True)
        t0 = time.perf_counter()
        kiln, bare = load_pair(gguf, args.threads, args.ctx)
        load_s = time.perf_counter() - t0
        setup = {"load_both_s": round(load_s, 2), "kiln_llama": llama_params(kiln.llm),
                 "bare_llama": llama_params(bare),
                 "family": kiln.meta.family, "tokenizer": kiln.meta.tokenizer,
                 "eos_ids": sorted(kiln.eos_ids), "stop_strings": kiln.meta.stop_strings,
                 "banned_ids": kiln.meta.banned_ids, "n_vocab": bare.n_vocab()}
        setups[q] = setup
        print(f"  loaded both in {load_s:.1f} s; choosing a {args.prompt_tokens}-token prompt "
              f"that runs {args.gen_tokens} tokens without stopping (bare warm-up)", flush=True)
        messages, ids, probe_tokens, tried = choose_prompt(kiln, bare, args.prompt_tokens,
                                                           args.gen_tokens, sampling)
        setup["prompt_tries"] = tried
        setup["prompt_ids"] = len(ids)
        setup["probe_tokens_head"] = probe_tokens[:16]
        warm = run_kiln(kiln, messages, args.gen_tokens, sampling, reset=True)  # kiln warm-up
        setup["warmup_kiln_tokens_match"] = warm["token_ids"] == probe_tokens[:-1]
        print(f"  warm-up: kiln {warm['generated_tokens']} tokens ({warm['finish_reason']}), "
              f"same ids as bare: {setup['warmup_kiln_tokens_match']}", flush=True)

        busy_min = (args.busy_min * min(args.threads, machine["usable_cpus"] or args.threads)
                    if args.busy_min and kiln.gpu_layers == 0 else None)
        setup["busy_min"] = busy_min
        timed_runs(q, kiln, bare, gguf, messages, ids, probe_tokens, busy_min, args, sampling,
                   runs, failures)
        kiln_tg = [r for r in runs if r["type"] == q and r["tool"] == "kiln" and r.get("tg_tps")]
        step = statistics.median(1 / r["tg_tps"] for r in kiln_tg) if kiln_tg else None
        profiles[q] = overhead_profile(kiln, bare, messages, probe_tokens, step)
        profiles[q]["in_situ"] = in_situ_overhead(kiln, messages, ids, args.gen_tokens, sampling)
        if args.profile:
            cprofiles[q] = cprofile_turn(kiln, messages, args.gen_tokens, sampling)
            print(cprofiles[q])

        second += second_turns(q, kiln, bare, messages, ids, busy_min, args, sampling)
        kiln.close()
        bare.close()
        del kiln, bare

    machine["loadavg_end"] = list(os.getloadavg())
    rows = summarize(runs, qtypes, tools)
    rat = ratios(runs, rows, qtypes)
    notes = run_notes(runs, second, setups, profiles, machine, args)
    print_tables(rows, rat, second, notes, args)

    result = {
        "created": bl.now(),
        "command": [sys.executable, *sys.argv],
        "checkpoint": {"dir": str(model_dir), "shape": ck_info["shape"],
                       "n_params": ck_info["n_params"], "reused": ck_info["reused"]},
        "ggufs": {q: {"path": str(g), **info} for q, (g, info) in ggufs.items()},
        "machine": machine,
        "settings": {"prompt_tokens": args.prompt_tokens, "gen_tokens": args.gen_tokens,
                     "repeat": args.repeat, "threads": args.threads, "ctx": args.ctx,
                     "second_turn_k": args.ks, "turn1_tokens": args.turn1_tokens,
                     "sampling": sampling, "llama_bench": str(args.llama_bench or "") or None},
        "target_kiln_over_bare_min": TARGET_RATIO,
        "setup": setups,
        "results": rows,
        "ratios_kiln_over_bare": rat,
        "second_turn": second,
        "overhead_profile": profiles,
        "cprofile": cprofiles or None,
        "runs": runs,
        "failures": failures,
        "notes": notes,
    }
    bl.write_json(args.json_out, result)
    if failures:
        for f in failures:
            print(f"FAILED: {f}")
        return 1
    if args.check and any(e.get("pp_pass") is False or e.get("tg_pass") is False for e in rat):
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
