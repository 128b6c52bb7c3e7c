"""One generation: waits its turn at the model's gate, runs on a worker thread (never on the
event loop), hands text pieces to the event loop, and stops within one token when cancelled
(client gone, server shutting down)."""
from __future__ import annotations

import asyncio
import logging
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, AsyncIterator

from ..engine import Prepared, Settings, Stats

if TYPE_CHECKING:
    from .pool import LoadedModel, ModelPool

log = logging.getLogger(__name__)


@dataclass
class CancelRecord:
    """How quickly a cancelled generation let go of its model (for tests and benchmarks)."""

    model: str
    tokens_at_cancel: int
    tokens_at_end: int
    seconds_to_free: float
    started: bool                 # False: it was still waiting in the queue
    freed_at: float               # time.perf_counter() when the model was free again


class Job:
    def __init__(self, pool: "ModelPool", lm: "LoadedModel", prepared: Prepared,
                 settings: Settings):
        self.pool, self.lm, self.prepared, self.settings = pool, lm, prepared, settings
        self.ticket = lm.gate.enter()          # QueueFull now, before any response is sent
        self.cancel = threading.Event()
        self.stats = Stats()
        self.queued_at = time.perf_counter()
        self.started_at: float | None = None
        self.ended_at: float | None = None
        self._thread: threading.Thread | None = None
        self._finished = False
        self._completed = False            # the worker delivered its last piece
        self._cancel_mark: tuple[float, int] | None = None
        pool.jobs.add(self)

    def stop(self) -> None:
        """Cancel from the event loop (client gone, shutdown)."""
        if self._cancel_mark is None and not self._finished:
            self._cancel_mark = (time.perf_counter(), self.stats.generated_tokens)
        self.cancel.set()

    def abandon(self) -> None:
        """The response is over, whatever happened: stop, and free the model if the worker
        never started (a worker frees it when it ends)."""
        if not self._finished:
            if not self._completed:
                self.stop()
            if self._thread is None:
                self._finish()

    async def pieces(self) -> AsyncIterator[str]:
        """The answer's text pieces; leaving early (cancellation, disconnect) stops the
        generation. Engine errors are raised here."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        done = False
        try:
            await self.ticket.wait()
            if self.cancel.is_set():
                done = self._completed = True
                self.stats.finish_reason = "cancelled"
                return
            self.started_at = time.perf_counter()
            gen = self.lm.model.generate(self.prepared, self.settings, cancel=self.cancel)
            self.stats = gen.stats

            def post(item) -> None:
                try:
                    loop.call_soon_threadsafe(queue.put_nowait, item)
                except RuntimeError:      # the event loop is gone (shutdown): nobody listens
                    pass

            def work() -> None:
                try:
                    for piece in gen:
                        post(("piece", piece))
                    post(("done", None))
                except BaseException as exc:  # handed to the request, which reports it
                    post(("error", exc))
                finally:
                    try:
                        loop.call_soon_threadsafe(self._finish)
                    except RuntimeError:
                        pass

            self._thread = threading.Thread(target=work, name=f"kiln-gen-{self.lm.id}",
                                            daemon=True)
            self._thread.start()
            while True:
                kind, value = await queue.get()
                if kind == "piece":
                    yield value
                elif kind == "error":
                    done = self._completed = True
                    raise value
                else:
                    done = self._completed = True
                    return
        finally:
            if not done:
                self.abandon()
            elif self._thread is None:
                self._finish()

    async def text(self) -> str:
        return "".join([p async for p in self.pieces()])

    def _finish(self) -> None:
        """The model is free again (called on the event loop once the worker is done)."""
        if self._finished:
            return
        self._finished = True
        self.ended_at = time.perf_counter()
        self.ticket.release()
        self.pool.jobs.discard(self)
        self.pool.release(self.lm)
        if self._cancel_mark is not None:
            at, tokens = self._cancel_mark
            self.pool.cancellations.append(CancelRecord(
                self.lm.id, tokens, self.stats.generated_tokens, self.ended_at - at,
                self._thread is not None, self.ended_at))


class ClientGone(Exception):
    """The client disconnected before its answer was ready."""


async def run_watching(request, job: Job) -> str:
    """A non-streaming answer, cancelled when the client disconnects while it waits."""
    task = asyncio.ensure_future(job.text())

    async def watch() -> None:
        while True:
            message = await request.receive()
            if message["type"] == "http.disconnect":
                return

    watcher = asyncio.ensure_future(watch())
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        if not task.done():           # the client is gone (or we are being cancelled)
            job.abandon()
            task.cancel()
        watcher.cancel()
    if not task.done():
        raise ClientGone()
    return task.result()
