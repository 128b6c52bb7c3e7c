"""`kiln chat`, `kiln run` and `kiln doctor`."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from convert.errors import KilnError


def model_options(fn):
    """Options shared by chat and run: device, context and sampling."""
    opts = [
        click.option("--ctx", "n_ctx", type=click.IntRange(min=16), default=None,
                     help="Context size in tokens (default: the model's, at most 4096)."),
        click.option("--device", type=click.Choice(["auto", "cpu", "gpu"]), default="auto",
                     show_default=True, help="auto offloads to the GPU when this build has one."),
        click.option("--gpu-layers", type=int, default=None,
                     help="Layers to offload to the GPU (default: all when on GPU)."),
        click.option("-t", "--threads", type=click.IntRange(min=1), default=None,
                     help="CPU threads (default: physical cores minus one; kiln doctor says why)."),
        click.option("--temperature", type=float, default=None,
                     help="Sampling temperature (default: the model's; 0 = greedy)."),
        click.option("--top-p", type=float, default=None, help="Nucleus sampling (default: the model's)."),
        click.option("--top-k", type=int, default=None, help="Top-k sampling (default: the model's, else 50)."),
        click.option("--repeat-penalty", type=float, default=None,
                     help="Repetition penalty (default: the model's)."),
        click.option("--max-tokens", type=click.IntRange(min=1), default=512, show_default=True,
                     help="Longest answer."),
        click.option("--seed", type=int, default=0, show_default=True, help="Sampling seed."),
        click.option("--system", default=None, help="System prompt (where the family has one)."),
        click.option("--llama-log", is_flag=True, help="Show llama.cpp's own log."),
    ]
    for opt in reversed(opts):
        fn = opt(fn)
    return fn


def _load(model: str, o: dict):
    from .engine import ChatModel

    path = resolve(model)
    return ChatModel(path, n_ctx=o["n_ctx"], device=o["device"], gpu_layers=o["gpu_layers"],
                     threads=o["threads"], seed=o["seed"], verbose=o["llama_log"])


def resolve(model: str) -> Path:
    """MODEL as given on the command line: a GGUF path (store names and repo ids when the
    model store is available)."""
    path = Path(model)
    if path.is_file():
        return path
    try:
        from .store import resolve_model
    except ImportError:
        raise KilnError(model, "no such GGUF file") from None
    from .store_cli import ClickProgress

    return resolve_model(model, confirm=_confirm_download, progress=ClickProgress(),
                         on_status=lambda message: click.echo(message, err=True))


def _confirm_download(message: str) -> bool:
    click.echo(message, err=True)
    if not sys.stdin.isatty():
        return True
    return click.confirm("Download and convert it now?", default=True, err=True)


def _settings(o: dict):
    from .engine import Settings

    return Settings(temperature=o["temperature"], top_p=o["top_p"], top_k=o["top_k"],
                    repeat_penalty=o["repeat_penalty"], max_tokens=o["max_tokens"])


@click.command("run")
@click.argument("model")
@click.argument("prompt", required=False)
@model_options
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object (text and stats).")
def run_cmd(model: str, prompt: str | None, as_json: bool, **o) -> None:
    """Answer one PROMPT (or standard input) with MODEL and print the answer.

    MODEL is a GGUF file, a store name (see kiln list) or a hub repo id (downloaded and
    converted on first use). The prompt is wrapped in the model family's chat format.
    """
    if prompt is None:
        if sys.stdin.isatty():
            raise click.UsageError("give a PROMPT or pipe one on standard input")
        prompt = sys.stdin.read()
    messages = ([{"role": "system", "content": o["system"]}] if o["system"] else [])
    messages.append({"role": "user", "content": prompt})
    chat = _load(model, o)
    try:
        if as_json:
            text = chat.chat(messages, settings=_settings(o))
            s = chat.last_stats
            click.echo(json.dumps({"text": text, "finish_reason": s.finish_reason,
                                   "prompt_tokens": s.prompt_tokens,
                                   "generated_tokens": s.generated_tokens,
                                   "tokens_per_second": round(s.tokens_per_second, 2)},
                                  ensure_ascii=False))
            return
        for piece in chat.chat(messages, stream=True, settings=_settings(o)):
            click.echo(piece, nl=False)
        click.echo()
    finally:
        chat.close()


HELP = """commands: /system TEXT  set the system prompt   /reset  start over
          /save FILE   save the conversation (JSON)  /exit   quit (or Ctrl-D)
Ctrl-C stops an answer and keeps the session."""


@click.command("chat")
@click.argument("model")
@model_options
@click.option("--web", is_flag=True,
              help="Chat in the browser instead: start kiln serve with MODEL on this machine "
                   "(port 8080, else the next free one) and open its chat page. Sampling "
                   "then follows the model's defaults.")
def chat_cmd(model: str, web: bool, **o) -> None:
    """Chat with MODEL interactively, streaming its answers.

    MODEL is a GGUF file, a store name (see kiln list) or a hub repo id (downloaded and
    converted on first use). Type /help for commands.
    """
    if web:
        return _chat_in_browser(model, o)
    chat = _load(model, o)
    system = o["system"]
    history: list[dict] = []
    click.echo(f"kiln chat: {chat.meta.name} ({chat.meta.family or chat.meta.arch}), "
               f"context {chat.n_ctx}, {'GPU' if chat.gpu_layers else 'CPU'} "
               f"{chat.threads} threads. /help for commands.", err=True)
    try:
        while True:
            try:
                line = click.prompt(">>>", prompt_suffix=" ", default="", show_default=False,
                                    err=True)
            except click.Abort:
                click.echo("", err=True)
                break
            line = line.strip()
            if not line:
                continue
            if line.startswith("/"):
                cmd, _, arg = line.partition(" ")
                if cmd in ("/exit", "/quit", "/bye"):
                    break
                if cmd == "/help":
                    click.echo(HELP, err=True)
                elif cmd == "/reset":
                    history.clear()
                    click.echo("(conversation cleared)", err=True)
                elif cmd == "/system":
                    system = arg or None
                    click.echo(f"(system prompt {'set' if system else 'cleared'})", err=True)
                elif cmd == "/save":
                    if not arg:
                        click.echo("usage: /save FILE", err=True)
                        continue
                    msgs = ([{"role": "system", "content": system}] if system else []) + history
                    Path(arg).write_text(json.dumps(msgs, ensure_ascii=False, indent=2),
                                         encoding="utf-8")
                    click.echo(f"(saved {len(msgs)} messages to {arg})", err=True)
                else:
                    click.echo(f"unknown command {cmd}; /help lists them", err=True)
                continue
            history.append({"role": "user", "content": line})
            msgs = ([{"role": "system", "content": system}] if system else []) + history
            answer = []
            try:
                for piece in chat.chat(msgs, stream=True, settings=_settings(o)):
                    answer.append(piece)
                    click.echo(piece, nl=False)
            except KeyboardInterrupt:
                chat.cancel()
                chat.last_stats.finish_reason = "cancelled"
            click.echo()
            s = chat.last_stats
            history.append({"role": "assistant", "content": "".join(answer)})
            if s.trimmed_turns:  # the history is kept; the model saw less of it
                click.echo(f"(context full: the oldest {s.trimmed_turns} messages were left out)",
                           err=True)
            note = " (stopped)" if s.finish_reason == "cancelled" else ""
            click.echo(click.style(f"[{s.generated_tokens} tokens, {s.tokens_per_second:.1f} tok/s"
                                   f"{note}]", dim=True), err=True)
    finally:
        chat.close()


def _chat_in_browser(model: str, o: dict) -> None:
    """`kiln chat MODEL --web`: kiln serve on loopback, the browser opened on its page once it
    answers. Past chats live in the browser per address, so the port stays 8080 when it can."""
    import threading
    import time
    import urllib.request
    import webbrowser
    from urllib.parse import quote

    from .server.cli import serve_cmd

    port = _pick_port()
    url = f"http://127.0.0.1:{port}/#model={quote(model)}"

    def open_when_up() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2).close()
            except OSError:
                time.sleep(0.1)
                continue
            click.echo(f"chat page: {url}", err=True)
            webbrowser.open(url)
            return

    threading.Thread(target=open_when_up, daemon=True).start()
    click.get_current_context().invoke(
        serve_cmd, models=(model,), port=port, n_ctx=o["n_ctx"], device=o["device"],
        gpu_layers=o["gpu_layers"], threads=o["threads"], llama_log=o["llama_log"])


def _pick_port() -> int:
    import socket

    for port in [*range(8080, 8090), 0]:      # 0: any free port
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return sock.getsockname()[1]
    raise KilnError("127.0.0.1", "no free port to serve the chat page on")


@click.command("doctor")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def doctor_cmd(as_json: bool) -> None:
    """Report llama.cpp's backends, threads, and what kiln would choose."""
    from .device import GPU_INSTALL_HINT, report

    info = report()
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    for key, value in info.items():
        click.echo(f"{key:18} {value}")
    if not info["gpu_offload"]:
        click.echo(f"\nno GPU backend in this build; to use one: {GPU_INSTALL_HINT}")


COMMANDS = [chat_cmd, run_cmd, doctor_cmd]
