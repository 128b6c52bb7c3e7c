"""Which models the server has, and the loaded ones: loaded on first use, kept for the
keep-alive time, at most `max_loaded` at once (the least recently used idle one goes first)."""
from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from convert.errors import KilnError

from .config import ServerConfig
from .errors import model_not_found, queue_full
from .gate import Gate, QueueFull

log = logging.getLogger(__name__)


@dataclass
class ModelInfo:
    """A model the server can serve, loaded or not."""

    id: str                       # NAME:QUANT for store entries, the file's stem for a path
    path: Path
    size: int
    modified: float
    entry: object | None = None   # the store Entry, when it is one


@dataclass
class LoadedModel:
    id: str
    path: Path
    model: object                 # runtime.engine.ChatModel
    gate: Gate
    loaded_at: float
    load_seconds: float
    users: int = 0                # requests holding it (it is never unloaded while > 0)
    last_used: float = field(default_factory=time.monotonic)
    keep_alive: float | None = None   # a request's keep_alive, else the server's

    def expires_in(self, default: float) -> float:
        keep = self.keep_alive if self.keep_alive is not None else default
        return float("inf") if keep < 0 else keep - (time.monotonic() - self.last_used)


def strip_latest(name: str) -> str:
    """Open WebUI and others add `:latest` to names without a tag: it means the default."""
    name = name.strip()
    return name[: -len(":latest")] if name.endswith(":latest") else name


class ModelPool:
    def __init__(self, config: ServerConfig):
        self.config = config
        self.loaded: dict[str, LoadedModel] = {}
        self.jobs: set = set()
        self.cancellations: list = []          # jobs.CancelRecord, newest last
        self._loading: dict[str, asyncio.Lock] = {}
        self._changed: asyncio.Condition | None = None
        self._given: dict[str, ModelInfo] = {}  # the MODEL arguments, by id and as given
        self.closing = False

    # -- names ------------------------------------------------------------------------------
    def store(self):
        from ..store import Store

        return Store(self.config.store_home)

    def add_given(self, spec: str, path: Path) -> ModelInfo:
        """A MODEL argument, resolved at startup."""
        info = self._info_for_path(path)
        other = self._given.get(info.id)
        if other is not None and other.path.resolve() != info.path.resolve():
            info.id = f"{info.path.resolve().parent.name}/{info.id}"   # two files, one name
        self._given[info.id] = info
        self._given[spec] = info
        return info

    def _info_for_path(self, path: Path) -> ModelInfo:
        path = Path(path)
        st = path.stat()
        store = self.store()
        try:
            rel = path.resolve().relative_to(store.models.resolve())
        except ValueError:
            rel = None
        if rel is not None and len(rel.parts) == 2 and rel.suffix == ".gguf":
            entry = store.get(rel.parts[0], rel.stem)
            if entry is not None:
                return ModelInfo(entry.ref, path, st.st_size, st.st_mtime, entry)
        stem = path.name[:-5] if path.name.lower().endswith(".gguf") else path.name
        return ModelInfo(stem, path, st.st_size, st.st_mtime)

    def models(self) -> list[ModelInfo]:
        """The MODEL arguments first, then every store entry (each once)."""
        seen: dict[str, ModelInfo] = {}
        for info in self._given.values():
            seen.setdefault(info.id, info)
        try:
            entries = self.store().list()
        except KilnError as exc:
            log.warning("cannot list the store: %s", exc)
            entries = []
        for e in entries:
            if e.ref not in seen and e.path.is_file():
                st = e.path.stat()
                seen[e.ref] = ModelInfo(e.ref, e.path, st.st_size, st.st_mtime, e)
        return list(seen.values())

    def resolve(self, name: str | None) -> ModelInfo:
        """The model a request names: a MODEL argument (by id or as given) or a store name
        NAME[:QUANT] (`:latest` meaning the default). 404 otherwise, never another model.
        Paths are not taken from requests: only from the command line."""
        if not isinstance(name, str) or not name.strip():
            raise model_not_found(str(name or ""))
        raw = name.strip()
        for key in (raw, strip_latest(raw)):
            if key in self._given:
                return self._given[key]
        key = strip_latest(raw)
        try:
            entry = self.store().find(key)
        except KilnError:
            raise model_not_found(raw) from None
        st = entry.path.stat()
        return ModelInfo(entry.ref, entry.path, st.st_size, st.st_mtime, entry)

    # -- loading ----------------------------------------------------------------------------
    def _condition(self) -> asyncio.Condition:
        if self._changed is None:
            self._changed = asyncio.Condition()
        return self._changed

    async def get(self, name: str | None) -> LoadedModel:
        """The loaded model `name` means (loading it first if need be), held for one request:
        call release() when done (Job does)."""
        info = self.resolve(name)
        lock = self._loading.setdefault(info.id, asyncio.Lock())
        async with lock:
            lm = self.loaded.get(info.id)
            if lm is None:
                await self._make_room()
                lm = await self._load(info)
            lm.users += 1
            lm.last_used = time.monotonic()
            return lm

    def release(self, lm: LoadedModel) -> None:
        lm.users = max(0, lm.users - 1)
        lm.last_used = time.monotonic()
        cond = self._condition()

        async def notify():
            async with cond:
                cond.notify_all()
        asyncio.ensure_future(notify())
        if lm.users == 0 and lm.keep_alive == 0:
            asyncio.ensure_future(self.unload(lm.id))

    async def _make_room(self) -> None:
        cond = self._condition()
        while len(self.loaded) >= self.config.max_loaded:
            idle = [m for m in self.loaded.values() if m.users == 0]
            if idle:
                await self.unload(min(idle, key=lambda m: m.last_used).id)
                continue
            async with cond:          # every model is busy: wait for one to finish
                await cond.wait()

    async def _load(self, info: ModelInfo) -> LoadedModel:
        from ..engine import ChatModel

        c = self.config
        started = time.perf_counter()
        log.info("loading %s (%s)", info.id, info.path)
        try:
            model = await asyncio.to_thread(ChatModel, info.path, n_ctx=c.n_ctx, device=c.device,
                                            gpu_layers=c.gpu_layers, threads=c.threads,
                                            verbose=c.verbose)
        except KilnError as exc:
            from .errors import ApiError

            raise ApiError(500, f"could not load model '{info.id}': {exc}",
                           type="server_error", code="model_load_failed") from None
        lm = LoadedModel(info.id, info.path, model, Gate(c.queue), time.time(),
                         time.perf_counter() - started)
        self.loaded[info.id] = lm
        return lm

    async def unload(self, model_id: str) -> bool:
        lm = self.loaded.get(model_id)
        if lm is None or lm.users:
            return False
        del self.loaded[model_id]
        log.info("unloading %s", model_id)
        await asyncio.to_thread(lm.model.close)
        return True

    async def reap(self) -> None:
        """Unload models idle past their keep-alive (runs for the server's lifetime)."""
        while not self.closing:
            await asyncio.sleep(min(1.0, max(self.config.keep_alive / 4, 0.05)))
            for lm in list(self.loaded.values()):
                if lm.users == 0 and lm.expires_in(self.config.keep_alive) <= 0:
                    await self.unload(lm.id)

    def job(self, lm: LoadedModel, prepared, settings):
        """A generation on `lm`, in line now (503 when the line is full)."""
        from .errors import ApiError
        from .jobs import Job

        if self.closing:
            raise ApiError(503, "the server is shutting down", type="server_error",
                           code="shutting_down")
        try:
            return Job(self, lm, prepared, settings)
        except QueueFull as full:
            raise queue_full(full.waiting) from None

    def stop_all(self) -> None:
        """Shutdown: every generation stops within a token, its stream ends cleanly."""
        self.closing = True
        for job in list(self.jobs):
            job.stop()

    async def close(self) -> None:
        self.stop_all()
        for _ in range(200):              # the workers finish within a token or so
            if not self.jobs:
                break
            await asyncio.sleep(0.01)
        for lm in list(self.loaded.values()):
            lm.users = 0
            await self.unload(lm.id)
