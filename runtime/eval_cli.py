"""`kiln eval BASE.gguf OTHER.gguf...`: perplexity, KL divergence, top-1 agreement per language."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from convert.errors import KilnError

from .progress import ChunkBar

from .evaluate import ALL, Evaluation, evaluate


@click.command("eval")
@click.argument("base", metavar="BASE.gguf", type=click.Path(path_type=Path))
@click.argument("others", metavar="[OTHER.gguf]...", nargs=-1, type=click.Path(path_type=Path))
@click.option("--text", "texts", multiple=True, type=click.Path(path_type=Path),
              help="UTF-8 text file to evaluate on, one section named after the file (its stem); "
                   "repeatable. Default: kiln's bundled held-out multilingual text, one section "
                   "per language.")
@click.option("--ctx", default=512, show_default=True, type=click.IntRange(min=16),
              help="Tokens per chunk; the second half of each chunk is scored (as "
                   "llama-perplexity -c).")
@click.option("--chunks", type=click.IntRange(min=1), default=None,
              help="At most N chunks per section. Default: every whole chunk.")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="CPU threads. Default: physical cores minus one.")
@click.option("--device", type=click.Choice(["auto", "cpu", "gpu"]), default="auto",
              show_default=True, help="Where llama.cpp runs the models.")
@click.option("--json", "as_json", is_flag=True,
              help="Print the results as JSON instead of a table.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
def eval_cmd(base: Path, others: tuple[Path, ...], texts: tuple[Path, ...], ctx: int,
             chunks: int | None, threads: int | None, device: str, as_json: bool,
             quiet: bool) -> None:
    """Measure what a quantization costs: the perplexity of BASE.gguf and of each OTHER.gguf,
    and for each OTHER its KL divergence from BASE (mean and 99th percentile) and how often
    both agree on the most likely next token, per language and over all text. Chunking and
    scoring follow llama-perplexity (--kl-divergence), so the numbers compare with its own.
    BASE alone gives just its perplexity. The models must share one vocabulary."""
    sections = [_read_text(p) for p in texts] if texts else _default_sections()
    names = [n for n, _ in sections]
    dup = next((n for n in names if names.count(n) > 1), None)
    if dup is not None:
        raise KilnError(None, f"two --text files are named {dup!r}: sections are named after "
                              "the file stem")
    bar = ChunkBar("eval", quiet or not sys.stderr.isatty())
    try:
        result = evaluate(base, others, sections, ctx=ctx, chunks=chunks, threads=threads,
                          device=device, progress=bar.update,
                          on_note=lambda text: click.echo(text, err=True))
    finally:
        bar.close()
    if as_json:
        click.echo(json.dumps(result.to_dict(), indent=2, ensure_ascii=False))
    else:
        click.echo(table(result))


def table(result: Evaluation) -> str:
    """One row per model and section, then the model over all sections."""
    names = {p: Path(p).name for p in [result.base, *result.others]}
    head = ("model", "section", "tokens", "PPL", "KLD mean", "KLD p99", "top-1")
    rows = []
    for s in result.scores:
        dash = s.kld_mean is None
        rows.append((names[s.model], s.section, str(s.positions), f"{s.ppl:.4f}",
                     "-" if dash else f"{s.kld_mean:.6f}", "-" if dash else f"{s.kld_p99:.6f}",
                     "-" if dash else f"{100 * s.top1:.2f}%"))
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]

    def line(r):
        return "  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in
                         enumerate(zip(r, widths))).rstrip()

    parts = ", ".join(f"{s.name} {s.tokens} tokens ({s.chunks} chunk{'s' * (s.chunks != 1)})"
                      for s in result.sections)
    out = [f"ctx {result.ctx}, tokens scored = second half of each chunk; {parts}",
           f"base: {result.base}", "", line(head), line(["-" * w for w in widths])]
    for r in rows:
        out.append(line(r))
    out.append("")
    out.append(f"{result.seconds:.1f} s, {result.tokens_per_second:.0f} tokens/s evaluated; "
               f"KLD = KL(base || model) per token; top-1 = same most likely token as the base; "
               f"'{ALL}' = every section together")
    return "\n".join(out)


def _read_text(path: Path) -> tuple[str, str]:
    if not path.is_file():
        raise KilnError(path, "no such file")
    data = path.read_bytes()
    if b"\x00" in data:
        raise KilnError(path, "a binary file, not text")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise KilnError(path, f"not UTF-8 text (byte {exc.start})") from None
    if not text.strip():
        raise KilnError(path, "the text file is empty")
    return path.stem, text


def _default_sections() -> list[tuple[str, str]]:
    from .corpus import heldout_sections

    sections = heldout_sections()
    if not sections:
        raise KilnError(None, "this kiln ships no held-out text; give --text FILE")
    return sections


COMMANDS = [eval_cmd]
