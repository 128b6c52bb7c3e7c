"""`kiln imatrix`: an importance matrix for quantizing, as llama-imatrix computes it."""
from __future__ import annotations

from pathlib import Path

import click

from convert.errors import KilnError

from .progress import ChunkBar


def default_text(model: Path) -> tuple[str, list[str]]:
    """The bundled multilingual calibration text for this model (its family's languages, chat
    turns in its template), and the dataset name recorded in the file."""
    try:
        from .corpus import calibration_text
    except ImportError:
        raise KilnError(None, "no bundled calibration text in this kiln yet: give one with "
                              "--text FILE") from None
    from .meta import read_meta

    meta = read_meta(model)
    return calibration_text(meta), [f"kiln calibration text ({meta.family or meta.arch})"]


@click.command("imatrix")
@click.argument("model", metavar="MODEL.gguf", type=click.Path(path_type=Path))
@click.option("-o", "--output", "out", required=True, type=click.Path(path_type=Path),
              help="The importance matrix to write (llama.cpp's imatrix GGUF, what "
                   "`kiln quantize --imatrix` and `llama-quantize --imatrix` read).")
@click.option("--text", "texts", multiple=True, type=click.Path(path_type=Path),
              help="Calibration text (UTF-8). Repeat for several files: they are joined in the "
                   "order given, a newline after a file that does not end with one, and one "
                   "final newline dropped (as llama-imatrix -f does). Default: kiln's bundled "
                   "multilingual text, weighted to the model family's languages.")
@click.option("--chunks", type=click.IntRange(min=1), default=None,
              help="Use at most N chunks of --ctx tokens (default: every whole chunk of the text).")
@click.option("--ctx", type=click.IntRange(min=1), default=512, show_default=True,
              help="Tokens per chunk (llama-imatrix -c); at most the model's training context.")
@click.option("-t", "--threads", type=click.IntRange(min=1), default=None,
              help="CPU threads (default: physical cores minus one, see kiln doctor).")
@click.option("--parse-special", is_flag=True, default=None,
              help="Read special-token texts such as <|im_start|> in --text as tokens (as "
                   "llama-imatrix --parse-special; always on for the bundled text, whose chat "
                   "turns carry the template's markers).")
@click.option("--process-output", is_flag=True,
              help="Also collect output.weight (as llama-imatrix --process-output).")
@click.option("--quiet", is_flag=True, help="No progress bar, only the final line.")
def imatrix_cmd(model: Path, out: Path, texts: tuple[Path, ...], chunks: int | None, ctx: int,
                threads: int | None, parse_special: bool | None, process_output: bool,
                quiet: bool) -> None:
    """Compute an importance matrix for MODEL.gguf (F32/F16/BF16/Q8_0 or any type llama.cpp
    runs): the text is run through the model in chunks of --ctx tokens and, for every matrix
    multiplication, the sum of squares of its input per column (per expert for MoE) is
    collected, exactly as llama.cpp's llama-imatrix does."""
    from .imatrix import check_model, compute_imatrix, read_text_files

    check_model(model, ctx)
    if texts:
        text, datasets = read_text_files(list(texts)), [str(p) for p in texts]
        source = texts[0] if len(texts) == 1 else None
        special = bool(parse_special)
    else:
        text, datasets = default_text(model)
        source, special = None, True
    bar = ChunkBar(f"{model.name} -> {out.name}", quiet)
    try:
        summary = compute_imatrix(model, out, text, datasets=datasets, ctx=ctx, chunks=chunks,
                                  threads=threads, parse_special=special,
                                  process_output=process_output, progress=bar.update,
                                  text_source=source)
    finally:
        bar.close()
    click.echo(f"wrote {summary.path}: {summary.entries} entries, {summary.chunks} chunks of "
               f"{summary.chunk_size} tokens ({summary.tokens} tokens), "
               f"{summary.tokens_per_second:.1f} tokens/s, {summary.seconds:.1f} s")


COMMANDS = [imatrix_cmd]
