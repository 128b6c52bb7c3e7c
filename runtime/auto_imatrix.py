"""`--imatrix auto`: calibrate a checkpoint on its own languages, then quantize it with that.

    checkpoint --kiln convert--> temporary Q8_0 --kiln imatrix (bundled text)--> importance matrix
    checkpoint --kiln convert --quant TYPE --imatrix that--> the output

The temporary Q8_0 lives in a hidden folder next to the output and is deleted whatever happens;
the importance matrix is kept where the caller says (next to the output for `kiln convert`,
nowhere for `kiln pull`). Q8_0 is what llama.cpp's own docs calibrate on: its activations are
within rounding of F16's at half the size.
"""
from __future__ import annotations

import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from convert.errors import KilnError
from convert.imatrix import Imatrix
from convert.imatrix import load as load_imatrix
from convert.quants import Quant, parse_quant

# Types whose quantization ignores an importance matrix (llama.cpp's quantize_q8_0 and the
# float types take no weights).
NO_IMATRIX = {"F32", "F16", "BF16", "Q8_0"}


@dataclass
class AutoCost:
    """What `--imatrix auto` cost, for the summary line."""
    q8_seconds: float
    q8_bytes: int
    imatrix_seconds: float
    chunks: int
    tokens: int
    ctx: int
    imatrix_path: Path | None

    def describe(self) -> str:
        where = f", kept in {self.imatrix_path}" if self.imatrix_path else ""
        return (f"imatrix auto: temporary Q8_0 ({self.q8_bytes / 2**20:.0f} MiB) "
                f"{self.q8_seconds:.1f} s, calibration {self.chunks} chunks x {self.ctx} tokens "
                f"({self.tokens} tokens) {self.imatrix_seconds:.1f} s{where}")


def check_quant(quant: str | Quant) -> Quant:
    q = parse_quant(quant) if not isinstance(quant, Quant) else quant
    if q.name in NO_IMATRIX:
        raise KilnError("--imatrix", f"{q.name} does not use an importance matrix "
                                     "(choose a K-quant, IQ or Q4/Q5 type)")
    return q


def auto_imatrix(src: Path, out_dir: Path, keep_as: Path | None = None, *,
                 threads: int | None = None, repo_id: str | None = None,
                 family: str | None = None, ctx: int = 512, chunks: int | None = None,
                 on_convert: Callable | None = None, on_chunks: Callable | None = None,
                 on_family: Callable[[str], None] | None = None) -> tuple[Imatrix, AutoCost]:
    """Compute the importance matrix of checkpoint `src` on the bundled calibration text.

    `out_dir` is where the temporary Q8_0 goes (the output's folder: same disk). `keep_as`:
    where the importance matrix is kept (None: deleted with the temporary folder).
    `on_convert()` -> (progress, on_plan, close) for the Q8_0 conversion; `on_chunks(done, total)`
    is passed to the imatrix collection as its progress callback. Chunks are `ctx` tokens (512,
    as llama-imatrix's default; less for a model trained on a shorter context), all of the text
    unless `chunks` limits them.
    """
    from convert.pipeline import convert

    from .imatrix import compute_imatrix
    from .imatrix_cli import default_text
    from .meta import read_meta

    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".kiln-imatrix-", dir=out_dir))
    try:
        q8 = tmp / "calibration-q8_0.gguf"
        started = time.perf_counter()
        progress, on_plan, close = on_convert() if on_convert else (None, None, lambda: None)
        try:
            convert(src, q8, "q8_0", threads=threads, progress=progress, on_plan=on_plan,
                    repo_id=repo_id, family=family, on_family=on_family)
        finally:
            close()
        q8_seconds, q8_bytes = time.perf_counter() - started, q8.stat().st_size
        text, datasets = default_text(q8)
        ctx = min(ctx, read_meta(q8).context_length or ctx)   # a model trained on less
        started = time.perf_counter()
        matrix_path = tmp / "auto.imatrix"
        result = compute_imatrix(q8, matrix_path, text, datasets=datasets, ctx=ctx,
                                 chunks=chunks, threads=threads, parse_special=True,
                                 progress=on_chunks)
        imatrix_seconds = time.perf_counter() - started
        q8.unlink()                            # free the disk before the real conversion
        kept = None
        if keep_as is not None:
            keep_as.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(matrix_path), str(keep_as))
            matrix_path, kept = keep_as, keep_as
        matrix = load_imatrix(matrix_path)
        cost = AutoCost(q8_seconds, q8_bytes, imatrix_seconds, int(result.chunks),
                        int(result.tokens), ctx, kept)
        return matrix, cost
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def for_convert_cli(src: Path, out: Path, *, threads: int | None, repo_id: str | None,
                    family: str | None, quiet: bool) -> tuple[Imatrix, AutoCost]:
    """`kiln convert --imatrix auto`: progress bars on stderr, the matrix kept beside OUT."""
    import click

    from convert.cli import progress_bar
    from .progress import ChunkBar

    def on_convert():
        state, progress, on_plan = progress_bar(src.name, out.parent / "calibration-q8_0.gguf",
                                             "Q8_0 for calibration", quiet)

        def close():
            if "bar" in state:
                state["bar"].__exit__(None, None, None)
        return progress, on_plan, close

    if not quiet:
        click.echo("imatrix auto: a temporary Q8_0, calibrated on the bundled text, then "
                   "the real conversion", err=True)
    keep = out.with_name(out.name[:-5] if out.name.endswith(".gguf") else out.name)
    keep = keep.with_name(keep.name + ".imatrix")
    bar = ChunkBar(f"calibrating -> {keep.name}", quiet)
    try:
        return auto_imatrix(src, out.parent, keep, threads=threads, repo_id=repo_id,
                            family=family, on_convert=on_convert, on_chunks=bar.update,
                            on_family=None if quiet else (lambda t: click.echo(t, err=True)))
    finally:
        bar.close()
