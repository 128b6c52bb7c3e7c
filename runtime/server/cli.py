"""`kiln serve`."""
from __future__ import annotations

import contextlib
import logging
import signal
import socket
import sys
import threading

import click

from convert.errors import KilnError

from .config import ServerConfig, duration_seconds

log = logging.getLogger(__name__)


def parse_duration(text: str) -> float:
    """Seconds from "300", "5m", "1h30m", "90s"; negative means forever."""
    seconds = duration_seconds(text)
    if seconds is None:
        raise click.BadParameter(f"'{text}' is not a duration (e.g. 300, 5m, 1h, -1)")
    return seconds


class _Duration(click.ParamType):
    name = "DURATION"

    def convert(self, value, param, ctx):
        return value if isinstance(value, float) else parse_duration(value)


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host.strip("[]"), port))
    except OSError as exc:
        sock.close()
        raise KilnError(None, f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def make_server(config: ServerConfig, pool=None, sock: socket.socket | None = None):
    """A uvicorn server for `config`: signals stop generations and end streams cleanly, and a
    stop by signal exits 0 (uvicorn would re-raise the signal)."""
    import uvicorn

    from .app import create_app
    from .pool import ModelPool

    pool = pool or ModelPool(config)
    app = create_app(config, pool)

    class Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self):
            if threading.current_thread() is not threading.main_thread():
                yield
                return
            sigs = [signal.SIGINT, signal.SIGTERM]
            original = {s: signal.signal(s, self.handle_exit) for s in sigs}
            try:
                yield
            finally:
                for s, handler in original.items():
                    signal.signal(s, handler)

        def handle_exit(self, sig, frame) -> None:
            pool.stop_all()
            super().handle_exit(sig, frame)

    uconfig = uvicorn.Config(app, log_level="info" if config.verbose else "warning",
                             access_log=config.verbose, timeout_graceful_shutdown=10,
                             lifespan="on")
    server = Server(uconfig)
    server.pool = pool
    return server


@click.command("serve")
@click.argument("models", nargs=-1)
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on (another than loopback exposes the models to your "
                   "network: use --api-key).")
@click.option("--port", type=click.IntRange(0, 65535), default=8080, show_default=True)
@click.option("--api-key", envvar="KILN_API_KEY", default=None,
              help="Require 'Authorization: Bearer KEY' on /v1 and /api (also KILN_API_KEY).")
@click.option("--cors", "cors", multiple=True, metavar="ORIGIN",
              help="Allow browser pages from ORIGIN (repeatable; localhost and app://, "
                   "tauri://, file://, vscode-webview:// are always allowed).")
@click.option("--keep-alive", type=_Duration(), default="5m", show_default=True,
              help="How long an idle model stays loaded (e.g. 30s, 10m, -1 = forever).")
@click.option("--max-loaded", type=click.IntRange(min=1), default=1, show_default=True,
              help="Models loaded at once (the least recently used idle one is unloaded).")
@click.option("--queue", type=click.IntRange(min=0), default=16, show_default=True,
              help="Requests waiting per model; past this the answer is 503 + Retry-After.")
@click.option("--ctx", "n_ctx", type=click.IntRange(min=16), default=None,
              help="Context size in tokens (default: the model's, at most 4096).")
@click.option("--device", type=click.Choice(["auto", "cpu", "gpu"]), default="auto",
              show_default=True, help="auto offloads to the GPU when this build has one.")
@click.option("--gpu-layers", type=int, default=None,
              help="Layers to offload to the GPU (default: all when on GPU).")
@click.option("-t", "--threads", type=click.IntRange(min=1), default=None,
              help="CPU threads (default: physical cores).")
@click.option("--max-body", type=click.IntRange(min=1024), default=8 << 20, show_default=True,
              help="Largest request body in bytes.")
@click.option("--llama-log", is_flag=True, help="Show llama.cpp's own log.")
def serve_cmd(models, host, port, api_key, cors, keep_alive, max_loaded, queue, n_ctx, device,
              gpu_layers, threads, max_body, llama_log) -> None:
    """Serve MODELs over OpenAI's API (/v1) and Ollama's (/api) on one port.

    MODEL is a GGUF file or a store name (see kiln list); every model in the store can also
    be asked for by name. Models load on first use. Point an OpenAI SDK at
    http://HOST:PORT/v1 and Ollama apps at http://HOST:PORT.
    """
    from ..chat_cli import resolve
    from .pool import ModelPool
    from .security import is_loopback_bind

    config = ServerConfig(models=list(models), host=host, port=port, api_key=api_key or None,
                          cors=list(cors), keep_alive=keep_alive, max_loaded=max_loaded,
                          queue=queue, n_ctx=n_ctx, device=device, gpu_layers=gpu_layers,
                          threads=threads, max_body=max_body, verbose=llama_log)
    pool = ModelPool(config)
    given = [pool.add_given(spec, resolve(spec)) for spec in models]
    sock = bind(host, port)
    port = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{shown}:{port}"
    if not is_loopback_bind(host) and not config.api_key:
        click.echo(click.style(f"warning: listening on {host} without --api-key: anyone who "
                               "can reach this machine can use the models", fg="yellow"),
                   err=True)
    listed = pool.models()
    click.echo(f"kiln serve: {url}  (OpenAI: {url}/v1, Ollama: {url})", err=True)
    if listed:
        for m in listed:
            mark = " (given)" if any(g.id == m.id for g in given) else ""
            click.echo(f"  {m.id}{mark}  {m.path}", err=True)
    else:
        click.echo("  no models yet: give a GGUF or pull one (kiln pull OWNER/NAME)", err=True)
    click.echo("Ctrl-C stops.", err=True)
    sys.stderr.flush()
    server = make_server(config, pool)
    server.run(sockets=[sock])
