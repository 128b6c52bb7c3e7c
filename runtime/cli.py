"""The `kiln` command."""
from __future__ import annotations

import logging
import os

import click

from convert import __version__
import convert.cli as convert_cli
from convert.cli import convert_cmd, inspect_cmd, quantize_cmd, run_cli

from . import auto_imatrix, chat_cli, store_cli
from .eval_cli import eval_cmd
from .imatrix_cli import imatrix_cmd
from .server.cli import serve_cmd


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="kiln")
@click.option("-v", "--verbose", is_flag=True, help="Log details to stderr.")
def cli(verbose: bool) -> None:
    """kiln: convert Hugging Face checkpoints to GGUF and run them offline with llama.cpp."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")


convert_cli.IMATRIX_AUTO = auto_imatrix     # `kiln convert --imatrix auto` runs the model
cli.add_command(convert_cmd)
cli.add_command(inspect_cmd)
cli.add_command(quantize_cmd)
for _cmd in chat_cli.COMMANDS + store_cli.COMMANDS:
    cli.add_command(_cmd)
cli.add_command(serve_cmd)
cli.add_command(eval_cmd)
cli.add_command(imatrix_cmd)


def main(argv: list[str] | None = None) -> None:
    # huggingface-hub otherwise phones home once a day when building request headers
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    run_cli(cli, argv)
