"""`kiln pull`, `kiln list`, `kiln show`, `kiln rm`, `kiln import`: the model store from the shell.

Registered by runtime/cli.py with `for c in COMMANDS: cli.add_command(c)`. Errors are KilnError,
printed as one line by convert.cli.run_cli.
"""
from __future__ import annotations

import json
import sys
from datetime import datetime
from pathlib import Path

import click

from convert.quants import quant_help

from .store import Store, fmt_size

PULL_QUANT = "q4_k_m"   # what `kiln pull` stores unless told otherwise (Ollama's default)

_STAGES = {"download": "downloading", "convert": "converting", "verify": "checksumming",
           "copy": "copying", "calibrate": "calibrating"}


class ClickProgress:
    """store.Progress as click progress bars on stderr (one bar per stage)."""

    def __init__(self, quiet: bool = False):
        self.quiet = quiet
        self.bar = None

    def start(self, stage: str, total: int, label: str) -> None:
        self.finish()
        if self.quiet:
            return
        self.bar = click.progressbar(length=max(int(total), 1), file=sys.stderr, width=30,
                                     label=f"{_STAGES.get(stage, stage)} {label}",
                                     show_eta=True, show_percent=True)
        self.bar.__enter__()

    def advance(self, n: int, item: str = "") -> None:
        if self.bar is not None:
            self.bar.update(n)

    def finish(self) -> None:
        if self.bar is not None:
            bar, self.bar = self.bar, None
            bar.__exit__(None, None, None)


def _status(msg: str) -> None:
    click.echo(msg, err=True)


def _source(e) -> str:
    src = e.source
    if src.get("repo"):
        return f"{src['repo']}@{str(src.get('commit', ''))[:7]}"
    if src.get("imported_from"):
        return f"imported {Path(src['imported_from']).name}"
    return "-"


def _created(e) -> str:
    try:
        return datetime.fromisoformat(e.manifest["created"]).astimezone().strftime("%Y-%m-%d %H:%M")
    except (KeyError, TypeError, ValueError):
        return "-"


@click.command("pull")
@click.argument("repo_id", metavar="REPO_ID[@REVISION]")
@click.option("-q", "--quant", default=PULL_QUANT, show_default=True, metavar="TYPE",
              help="Quantization to store (default q4_k_m, llama.cpp's Q4_K_M mixture, as Ollama "
                   f"pulls by default), with bits per weight: {quant_help()}.")
@click.option("--name", default=None, help="Store name (default: the repo's name).")
@click.option("-t", "--threads", type=click.IntRange(min=1), default=None,
              help="Conversion threads (default: all cores).")
@click.option("--imatrix", type=click.Choice(["auto"], case_sensitive=False), default=None,
              help="'auto': calibrate an importance matrix on kiln's bundled text in the "
                   "family's languages (through a temporary Q8_0) and quantize with it.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def pull_cmd(repo_id: str, quant: str, name: str | None, threads: int | None,
             imatrix: str | None, quiet: bool) -> None:
    """Download a Hugging Face model and convert it into the local store.

    Only what conversion needs is fetched (config, tokenizer files, weights: safetensors in
    preference to .bin; never the repo's *.py code), into the Hugging Face cache, so HF_HOME,
    HF_ENDPOINT, HF_TOKEN or `hf auth login`, and HF_HUB_OFFLINE work as usual. A pull that was
    interrupted starts again from the files already fetched. The store is KILN_HOME (default:
    your user data folder); afterwards the model runs with no network.

    \b
    Examples:
      kiln pull llm-jp/llm-jp-3.1-1.8b-instruct4
      kiln pull core42/jais-30b-chat-v1 --quant q4_0
      kiln pull owner/model@v1.0 --name model-v1
      kiln pull rakuten/RakutenAI-7B-instruct --quant q3_k_m --imatrix auto
    """
    from convert import hub

    store = Store()
    repo, revision = hub.parse_repo_spec(repo_id)
    progress = ClickProgress(quiet)
    try:
        entry = store.pull(repo, revision, quant, name=name, threads=threads, progress=progress,
                           on_status=_status, imatrix=imatrix and imatrix.lower())
    finally:
        progress.finish()
    click.echo(f"{entry.ref}: {fmt_size(entry.size)}, {entry.manifest.get('family')}, "
               f"from {_source(entry)} -> {entry.path}")
    im = entry.manifest.get("imatrix")
    if im:
        click.echo(f"imatrix auto: {im['chunks']} chunks x {im['ctx']} tokens of the bundled "
                   f"text, {im['seconds']} s (temporary Q8_0 and calibration)")


@click.command("list")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def list_cmd(as_json: bool) -> None:
    """List the models in the store."""
    store = Store()
    entries = store.list()
    if as_json:
        click.echo(json.dumps([e.to_json() for e in entries], indent=2, ensure_ascii=False))
        return
    if not entries:
        click.echo(f"no models in {store.home} yet; add one with `kiln pull owner/name` or "
                   "`kiln import FILE.gguf`", err=True)
        return
    rows = [("NAME", "FAMILY", "SIZE", "SOURCE", "CREATED")]
    rows += [(e.ref, str(e.manifest.get("family") or "-"), fmt_size(e.size), _source(e),
              _created(e)) for e in entries]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        click.echo("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())


@click.command("show")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def show_cmd(name: str, as_json: bool) -> None:
    """Show a stored model's manifest: NAME or NAME:QUANT."""
    entries = Store().show(name)
    if as_json:
        data = [e.to_json() for e in entries]
        click.echo(json.dumps(data[0] if len(data) == 1 else data, indent=2, ensure_ascii=False))
        return
    for i, e in enumerate(entries):
        if i:
            click.echo("")
        m = e.manifest
        click.echo(f"{e.ref}")
        click.echo(f"  path:      {e.path}")
        click.echo(f"  family:    {m.get('family')} ({m.get('architecture')})")
        params = m.get("n_params")
        extra = f", {params / 1e6:.1f}M params" if isinstance(params, (int, float)) else ""
        click.echo(f"  size:      {fmt_size(e.size)}{extra}")
        click.echo(f"  sha256:    {m.get('sha256')}")
        src = e.source
        if src.get("repo"):
            click.echo(f"  source:    {src['repo']} (revision {src.get('revision')}, "
                       f"commit {src.get('commit')})")
        elif src.get("imported_from"):
            click.echo(f"  source:    imported from {src['imported_from']}")
        click.echo(f"  created:   {m.get('created')} (kiln {m.get('kiln_version')})")


@click.command("rm")
@click.argument("names", nargs=-1, required=True, metavar="NAME[:QUANT]...")
def rm_cmd(names: tuple[str, ...]) -> None:
    """Remove models from the store (every quantization of NAME, or just NAME:QUANT).

    The Hugging Face cache is left alone; `hf cache` manages it.
    """
    store = Store()
    for name in names:
        for e in store.remove(name):
            click.echo(f"removed {e.ref} ({fmt_size(e.size)})")


@click.command("import")
@click.argument("file", type=click.Path(path_type=Path))
@click.argument("name", required=False)
@click.option("-q", "--quant", default=None, metavar="TAG",
              help="Quantization tag (default: read from the file).")
@click.option("--force", is_flag=True, help="Replace an entry of the same name and tag.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def import_cmd(file: Path, name: str | None, quant: str | None, force: bool, quiet: bool) -> None:
    """Copy a GGUF made elsewhere into the store, as NAME (default: from the file name).

    \b
    Example:
      kiln import ~/Downloads/Mistral-7B-Instruct-v0.3.Q4_0.gguf mistral-7b-instruct
    """
    progress = ClickProgress(quiet)
    try:
        entry = Store().import_gguf(file, name, quant=quant, force=force, progress=progress)
    finally:
        progress.finish()
    click.echo(f"imported {entry.ref}: {fmt_size(entry.size)}, {entry.manifest.get('family')} "
               f"-> {entry.path}")


COMMANDS = [pull_cmd, list_cmd, show_cmd, rm_cmd, import_cmd]
