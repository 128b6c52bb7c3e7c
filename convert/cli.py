"""`kiln convert` and `kiln inspect`."""
from __future__ import annotations

import inspect
import json
import sys
from pathlib import Path

import click

from .errors import KilnError
from .families import FAMILY_NAMES
from .quants import QUANTS, quant_help


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return str(n)


def default_output(src: Path, quant: str) -> Path:
    return Path(f"{src.resolve().name}-{quant.lower()}.gguf")


def _fetch_from_hub(spec: str, quiet: bool) -> tuple[Path, str]:
    """SRC that is not a local path but a hub repo id: download what conversion needs."""
    from . import hub

    if not hub.looks_like_repo_id(spec):
        raise KilnError(spec, "no such folder (give a checkpoint folder or a hub repo id "
                              "such as llm-jp/llm-jp-3-1.8b)")
    repo, revision = hub.parse_repo_spec(spec)
    remote = hub.plan(repo, revision)
    if remote.download_bytes and not quiet:
        click.echo(f"downloading {repo}@{remote.commit[:7]}: {len(remote.files)} files, "
                   f"{_size(remote.download_bytes)} (cache: {remote.cache_dir})", err=True)
    bar = None
    if remote.download_bytes and not quiet:
        bar = click.progressbar(length=remote.download_bytes, label="download", file=sys.stderr,
                                show_eta=True, width=30)
        bar.__enter__()
    try:
        folder = hub.download(remote, progress=(lambda n, _name: bar.update(n)) if bar else None)
    finally:
        if bar is not None:
            bar.__exit__(None, None, None)
    return folder, repo


@click.command("convert")
@click.argument("src", type=click.Path(path_type=Path))
@click.option("-o", "--output", "out", type=click.Path(path_type=Path),
              help="Output .gguf file (default: ./<folder>-<quant>.gguf).")
@click.option("-q", "--quant", default="f16", show_default=True, metavar="TYPE",
              help="Output type, as llama.cpp spells it, any case, with its bits per weight "
                   f"(K-quant mixtures: as measured on Llama-3-8B): {quant_help()}.")
@click.option("--imatrix", "imatrix", metavar="FILE|auto", default=None,
              help="Importance matrix (kiln imatrix's or llama-imatrix's, GGUF or legacy .dat): "
                   "weights the quantization as llama-quantize --imatrix does. 'auto': make a "
                   "temporary Q8_0, calibrate it on kiln's bundled text in the family's "
                   "languages, quantize with that and keep it as OUT's name + .imatrix.")
@click.option("-t", "--threads", type=click.IntRange(min=1), default=None,
              help="Quantization threads (default: all cores).")
@click.option("--family", "family", type=click.Choice(FAMILY_NAMES, case_sensitive=False),
              default=None, help="Model family, overriding the detection (which clue chose "
              "it is printed: hub repo id, _name_or_path, folder name, tokenizer files, "
              "vocab size).")
@click.option("--quiet", is_flag=True, help="No progress bar, only the final line.")
def convert_cmd(src: Path, out: Path | None, quant: str, imatrix: str | None,
                threads: int | None, family: str | None, quiet: bool) -> None:
    """Convert the Hugging Face checkpoint SRC (a folder or a hub repo id) into one GGUF file.

    Tensors are streamed a few rows at a time, so memory use does not grow with model size.
    Quantized types get llama.cpp's per-tensor mixture (what llama-quantize would write, byte
    for byte): norms stay F32, the output projection and some layers' attn_v / ffn_down get
    more bits, rows that do not fit a type's blocks fall back to a smaller block type.
    The output appears only when complete: an error or Ctrl-C leaves nothing behind.

    \b
    Examples:
      kiln convert ./llm-jp-3-1.8b -o llm-jp-3-1.8b-q8_0.gguf --quant q8_0
      kiln convert ./RakutenAI-7B-instruct --quant Q4_K_M
      kiln convert ./RakutenAI-7B-instruct --quant q3_k_m --imatrix imatrix.gguf
      kiln convert llm-jp/llm-jp-3.1-1.8b-instruct4 --quant q8_0   # download, then convert
    """
    from .pipeline import convert  # heavy imports only when used
    from .quants import parse_quant

    qtype = parse_quant(quant)
    repo_id = None
    auto = imatrix is not None and imatrix.lower() == "auto"
    if auto:
        _imatrix_auto_hook().check_quant(qtype)
    matrix = None if auto else _load_imatrix(Path(imatrix) if imatrix else None)
    if not src.exists():
        src, repo_id = _fetch_from_hub(str(src), quiet)
        out = out or Path(f"{repo_id.split('/')[-1]}-{qtype.name.lower()}.gguf")
    out = out or default_output(src, qtype.name)
    cost = None
    if auto:
        matrix, cost = _imatrix_auto_hook().for_convert_cli(src, out, threads=threads,
                                                            repo_id=repo_id, family=family,
                                                            quiet=quiet)
    bar_state, progress, on_plan = progress_bar(src.name, out, qtype.name, quiet)
    try:
        summary = convert(src, out, qtype, threads=threads, progress=progress, on_plan=on_plan,
                          imatrix=matrix, repo_id=repo_id, family=family,
                          on_family=lambda text: click.echo(text, err=True))
    finally:
        if "bar" in bar_state:
            bar_state["bar"].__exit__(None, None, None)
    _report(summary, qtype.name)
    if cost is not None:
        click.echo(cost.describe())


# `--imatrix auto` runs the model (llama-cpp-python), which is the runtime's job: kiln's full
# command (runtime/cli.py) puts the runtime's module here (check_quant, for_convert_cli);
# convert never imports it.
IMATRIX_AUTO = None


def _imatrix_auto_hook():
    if IMATRIX_AUTO is None:
        raise KilnError("--imatrix", "'auto' needs kiln's runtime (run it as the kiln command)")
    return IMATRIX_AUTO


def _load_imatrix(path: Path | None):
    if path is None:
        return None
    from .imatrix import load

    return load(path)


def progress_bar(src_name: str, out: Path, label: str, quiet: bool):
    """A progress bar over bytes written, naming the tensor being written."""
    bar_state: dict = {}

    def on_plan(n_tensors: int, total: int) -> None:
        if quiet:
            return
        bar_state["n"], bar_state["i"], bar_state["last"] = n_tensors, 0, None
        bar_state["bar"] = click.progressbar(
            length=total, label=f"{src_name} -> {out.name} [{label}]", file=sys.stderr,
            show_eta=True, show_percent=True, width=30,
            item_show_func=lambda name: name and f"{bar_state['i']}/{bar_state['n']} {name}")
        bar_state["bar"].__enter__()

    def progress(nbytes: int, name: str) -> None:
        bar = bar_state.get("bar")
        if bar is None:
            return
        if name != bar_state["last"]:
            bar_state["i"] += 1
            bar_state["last"] = name
        bar.update(nbytes, name)

    return bar_state, progress, on_plan


def _report(summary, want: str) -> None:
    types = ", ".join(f"{n} {k}" for k, n in sorted(summary.types.items(), key=lambda x: -x[1]))
    click.echo(f"wrote {summary.path}: {_size(summary.file_bytes)}, {summary.n_tensors} tensors "
               f"({types}), {summary.n_params / 1e6:.1f}M params, "
               f"{summary.bits_per_weight:.2f} bits/weight, {summary.seconds:.1f} s")
    if summary.fallbacks:
        click.echo(f"{len(summary.fallbacks)} tensors kept another type than {want}:", err=True)
        for line in summary.fallbacks[:40]:
            click.echo(f"  {line}", err=True)
        if len(summary.fallbacks) > 40:
            click.echo(f"  ... and {len(summary.fallbacks) - 40} more", err=True)


@click.command("quantize")
@click.argument("src", metavar="IN.gguf", type=click.Path(path_type=Path))
@click.argument("out", metavar="OUT.gguf", type=click.Path(path_type=Path))
@click.argument("quant", metavar="TYPE")
@click.option("--imatrix", "imatrix", type=click.Path(path_type=Path), default=None,
              help="Importance matrix from llama-imatrix (GGUF or legacy .dat).")
@click.option("--allow-requantize", is_flag=True,
              help="Also requantize tensors that are already quantized. This rounds the "
                   "weights a second time: the result is worse than quantizing the F16/BF16 "
                   "original to TYPE.")
@click.option("-t", "--threads", type=click.IntRange(min=1), default=None,
              help="Quantization threads (default: all cores).")
@click.option("--quiet", is_flag=True, help="No progress bar, only the final line.")
def quantize_cmd(src: Path, out: Path, quant: str, imatrix: Path | None, allow_requantize: bool,
                 threads: int | None, quiet: bool) -> None:
    """Requantize the F32/F16/BF16 GGUF IN.gguf (kiln's or another tool's) to TYPE in OUT.gguf.

    Same mixture and bytes as llama.cpp's llama-quantize; every metadata key is kept and
    general.file_type is updated. TYPE as for kiln convert --quant, any case (bits per weight;
    for the K-quant mixtures as measured on Llama-3-8B):
    """
    from .quants import parse_quant
    from .requantize import quantize_file

    qtype = parse_quant(quant)
    matrix = _load_imatrix(imatrix)
    bar_state, progress, on_plan = progress_bar(src.name, out, qtype.name, quiet)
    try:
        summary = quantize_file(src, out, qtype, threads=threads, allow_requantize=allow_requantize,
                                imatrix=matrix, progress=progress, on_plan=on_plan)
    finally:
        if "bar" in bar_state:
            bar_state["bar"].__exit__(None, None, None)
    _report(summary, qtype.name)


quantize_cmd.help = inspect.cleandoc(quantize_cmd.help or "") + "\n\n\b\n" + "\n".join(f"  {name:7} {q.bpw:5.2f}" for name, q in QUANTS.items())


@click.command("inspect")
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--tensors", "list_tensors", is_flag=True, help="Also list every tensor.")
def inspect_cmd(path: Path, as_json: bool, list_tensors: bool) -> None:
    """Show a GGUF file's metadata and a summary of its tensor types."""
    from .gguf_info import read_info

    info = read_info(path, with_tensors=list_tensors or as_json)
    info["family"] = _family_of(info["metadata"])
    if as_json:
        click.echo(json.dumps(info, indent=2, ensure_ascii=False))
        return
    ftype = _file_type_name(info["metadata"].get("general.file_type"))
    click.echo(f"{path}: GGUF v{info['version']}, {ftype}{_size(info['file_bytes'])}, "
               f"{info['n_tensors']} tensors, {info['n_params'] / 1e6:.1f}M params, "
               f"{info['bits_per_weight']:.2f} bits/weight")
    click.echo(f"family: {info['family']}")
    click.echo("metadata:")
    for key, value in info["metadata"].items():
        click.echo(f"  {key} = {_show(value)}")
    click.echo("tensor types:")
    for name, row in info["types"].items():
        click.echo(f"  {name:7} {row['count']:5} tensors  {_size(row['bytes']):>10}")
    click.echo("mixture (per tensor kind: type x count):")
    width = max((len(k) for k in info["mixture"]), default=0)
    for kind, per in info["mixture"].items():
        parts = ", ".join(f"{t} x{n}" for t, n in sorted(per.items(), key=lambda x: -x[1]))
        click.echo(f"  {kind:{width}}  {parts}")
    if list_tensors:
        click.echo("tensors:")
        for t in info["tensors"]:
            click.echo(f"  {t['name']:40} {t['type']:6} {t['shape']}")


def _family_of(meta: dict) -> str:
    """kiln.family, or what the runtime would recognize in a GGUF made by another tool."""
    from .families import family_for_gguf

    if meta.get("kiln.family"):
        return str(meta["kiln.family"])
    arch = str(meta.get("general.architecture", ""))
    fam = family_for_gguf(arch, str(meta.get("general.name", "")))
    return (f"{fam.name} (recognized by architecture and name)" if fam
            else f"none (generic {arch or 'model'})")


def _file_type_name(ftype) -> str:
    from gguf import LlamaFileType

    try:
        name = LlamaFileType(int(ftype)).name
    except (TypeError, ValueError):
        return ""
    return name.replace("MOSTLY_", "").replace("ALL_", "") + ", "


def _show(value) -> str:
    if isinstance(value, dict) and "array" in value:
        head = ", ".join(repr(v) for v in value["head"])
        more = ", ..." if value["length"] > len(value["head"]) else ""
        return f"[{head}{more}] ({value['length']} {value['array']})"
    text = repr(value) if isinstance(value, str) else str(value)
    return text if len(text) <= 120 else text[:117] + "..."


def run_cli(group: click.Group, argv: list[str] | None = None) -> None:
    """Run a click group: KilnError -> one line on stderr, exit 1; Ctrl-C -> exit 130."""
    try:
        group.main(args=argv, prog_name="kiln", standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except KilnError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    except (click.Abort, KeyboardInterrupt):
        click.echo("interrupted; no output was written", err=True)
        sys.exit(130)
