"""The model store: one GGUF per model and quantization under KILN_HOME, each with a manifest.

Layout (every name is validated, so no path can leave KILN_HOME):

    KILN_HOME/models/<name>/<quant>.gguf     the model
    KILN_HOME/models/<name>/<quant>.json     its manifest, written last: no manifest, no entry
    KILN_HOME/locks/<name>.<quant>.lock      held while an entry is made or removed

`resolve_model(spec)` is what the runtime calls: a GGUF path, a store name (`name`,
`name:quant`) or a Hugging Face repo id (`owner/name[@revision][:quant]`, pulled and converted on
first use, then served from the store with no network at all).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import sys
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Protocol

from convert.errors import KilnError

log = logging.getLogger(__name__)

DEFAULT_QUANT = "q8_0"
MANIFEST_FORMAT = 1
_NAME_RE = re.compile(r"[a-z0-9](?:[a-z0-9._-]{0,98}[a-z0-9_])?")
_QUANT_RE = re.compile(r"[a-z0-9][a-z0-9_]{0,31}")
_RESERVED = {"con", "prn", "aux", "nul", *(f"com{i}" for i in range(10)),
             *(f"lpt{i}" for i in range(10))}
_BITS = {"f32": 32.0, "f16": 16.0, "bf16": 16.0, "q8_0": 8.5, "q4_0": 4.5}
_MARGIN = 64 << 20                                      # headroom kept free on every disk check


# -- progress -------------------------------------------------------------------------------------
class Progress(Protocol):
    """What pull/import report: a stage ("download", "convert", "verify", "copy") with a byte
    total, then byte counts as they go (negative when a download restarts from zero)."""

    def start(self, stage: str, total: int, label: str) -> None: ...
    def advance(self, n: int, item: str = "") -> None: ...
    def finish(self) -> None: ...


class NullProgress:
    def start(self, stage: str, total: int, label: str) -> None:
        pass

    def advance(self, n: int, item: str = "") -> None:
        pass

    def finish(self) -> None:
        pass


class Cancelled(KilnError):
    """The user declined the download that a first use needs."""


# -- places ---------------------------------------------------------------------------------------
def default_home() -> Path:
    """KILN_HOME, else the platform's user data folder + /kiln."""
    env = os.environ.get("KILN_HOME")
    if env:
        return Path(os.path.expandvars(os.path.expanduser(env)))
    home = Path.home()
    if sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA") or home / "AppData" / "Local")
    elif sys.platform == "darwin":
        base = home / "Library" / "Application Support"
    else:
        xdg = os.environ.get("XDG_DATA_HOME", "")
        base = Path(xdg) if os.path.isabs(xdg) else home / ".local" / "share"
    return base / "kiln"


def fmt_size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1024 or unit == "TB":
            return f"{int(n)} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


def free_space(path: Path) -> tuple[int, Any]:
    """(free bytes, device id) of the filesystem that holds `path` (or would hold it)."""
    p = Path(path).absolute()
    while not p.exists() and p.parent != p:
        p = p.parent
    return shutil.disk_usage(p).free, os.stat(p).st_dev


def check_disk(needs: list[tuple[Path, int, str]]) -> None:
    """Refuse with needed vs free when the bytes to write (grouped by filesystem) do not fit."""
    by_dev: dict[Any, list] = {}
    for path, nbytes, what in needs:
        free, dev = free_space(path)
        row = by_dev.setdefault(dev, [path, free, 0, []])
        row[2] += nbytes
        row[3].append(f"{fmt_size(nbytes)} {what}")
    for path, free, total, parts in by_dev.values():
        if total + _MARGIN > free:
            detail = f" ({' + '.join(parts)})" if len(parts) > 1 else f" ({parts[0]})"
            raise KilnError(path, f"not enough disk space: needs {fmt_size(total)}{detail}, "
                                  f"{fmt_size(free)} free")


# -- names ----------------------------------------------------------------------------------------
def _is_name(n: str) -> bool:
    return bool(_NAME_RE.fullmatch(n)) and ".." not in n and n.split(".")[0] not in _RESERVED


def check_name(name: str) -> str:
    """A store name: lower-case letters, digits, '.', '_', '-'; one folder, never a path."""
    n = name.strip().lower()
    if not _is_name(n):
        raise KilnError(None, f"'{name}' is not a valid model name (use letters, digits, '.', "
                              "'_' and '-', starting with a letter or digit; no paths)")
    return n


def check_quant_tag(quant: str) -> str:
    q = quant.strip().lower()
    if not _QUANT_RE.fullmatch(q):
        raise KilnError(None, f"'{quant}' is not a valid quantization tag")
    return q


def name_for_repo(repo: str, owner_too: bool = False) -> str:
    owner, base = repo.split("/", 1)
    text = f"{owner}--{base}" if owner_too else base
    text = re.sub(r"[^a-z0-9._-]+", "-", text.lower()).strip("-._")
    text = re.sub(r"\.{2,}", ".", text)[:100].strip("-._") or "model"
    return check_name(text)


def split_ref(ref: str) -> tuple[str, str | None]:
    """`name[:quant]` -> (name, quant or None), both validated."""
    name, sep, quant = ref.strip().partition(":")
    return check_name(name), (check_quant_tag(quant) if sep else None)


# -- entries --------------------------------------------------------------------------------------
@dataclass
class Entry:
    name: str
    quant: str
    path: Path                                          # the GGUF
    manifest: dict

    @property
    def ref(self) -> str:
        return f"{self.name}:{self.quant}"

    @property
    def source(self) -> dict:
        return self.manifest.get("source") or {}

    @property
    def repo(self) -> str | None:
        return self.source.get("repo")

    @property
    def size(self) -> int:
        return int(self.manifest.get("size") or 0)

    def to_json(self) -> dict:
        return {"ref": self.ref, **self.manifest, "path": str(self.path)}


class Store:
    def __init__(self, home: str | os.PathLike | None = None):
        self.home = Path(home) if home is not None else default_home()
        self.models = self.home / "models"
        self.locks = self.home / "locks"

    # -- paths, always inside home ---------------------------------------------------------------
    def _dir(self, name: str) -> Path:
        d = self.models / check_name(name)
        if d.parent != self.models:                     # belt and braces: names are one component
            raise KilnError(None, f"'{name}' is not a valid model name")
        return d

    def gguf_path(self, name: str, quant: str) -> Path:
        return self._dir(name) / f"{check_quant_tag(quant)}.gguf"

    def manifest_path(self, name: str, quant: str) -> Path:
        return self._dir(name) / f"{check_quant_tag(quant)}.json"

    def lock(self, name: str, quant: str, on_wait: Callable[[str], None] | None = None):
        """An inter-process lock on one entry (filelock: fcntl/msvcrt, released if we die)."""
        return _EntryLock(self.locks / f"{check_name(name)}.{check_quant_tag(quant)}.lock",
                          f"{name}:{quant}", on_wait)

    # -- reading ---------------------------------------------------------------------------------
    def get(self, name: str, quant: str) -> Entry | None:
        mpath = self.manifest_path(name, quant)
        try:
            manifest = json.loads(mpath.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            log.warning("%s: unreadable manifest (%s)", mpath, exc)
            return None
        if not isinstance(manifest, dict):
            return None
        return Entry(check_name(name), check_quant_tag(quant), self.gguf_path(name, quant),
                     manifest)

    def list(self) -> list[Entry]:
        entries = []
        if not self.models.is_dir():
            return entries
        for d in sorted(self.models.iterdir()):
            if not d.is_dir() or not _is_name(d.name):
                continue
            for m in sorted(d.glob("*.json")):
                if _QUANT_RE.fullmatch(m.stem) and (e := self.get(d.name, m.stem)) is not None:
                    entries.append(e)
        return entries

    def entries(self, name: str) -> list[Entry]:
        return [e for e in self.list() if e.name == check_name(name)]

    def show(self, ref: str) -> list[Entry]:
        """Entries for `name` (all quants) or `name:quant`; KilnError when there are none."""
        name, quant = split_ref(ref)
        found = [e for e in self.entries(name) if quant is None or e.quant == quant]
        if not found:
            raise KilnError(None, f"no model named '{ref}' in the store ({self.home}); see "
                                  "`kiln list`")
        return found

    def find(self, ref: str, quant: str = DEFAULT_QUANT) -> Entry:
        """The one entry `ref` means: its explicit quant, else `quant`, else the only one."""
        name, explicit = split_ref(ref)
        entries = self.entries(name)
        if explicit:
            entries = [e for e in entries if e.quant == explicit]
        elif len(entries) > 1:
            entries = [e for e in entries if e.quant == quant.lower()] or entries
        if not entries:
            raise KilnError(None, f"no model named '{ref}' in the store (see `kiln list`); to "
                                  "download one, give its Hugging Face repo id (owner/name)")
        if len(entries) > 1:
            raise KilnError(None, f"'{ref}' is stored in several quantizations: "
                                  f"{', '.join(e.ref for e in entries)}; say which")
        return _usable(entries[0])

    def find_repo(self, repo: str, quant: str, revision: str | None = None) -> Entry | None:
        for e in self.list():
            src = e.source
            if (e.quant == quant and str(src.get("repo", "")).lower() == repo.lower()
                    and (revision is None or revision == src.get("revision")
                         or str(src.get("commit", "")).startswith(revision))):
                return e
        return None

    def name_for(self, repo: str, name: str | None = None) -> str:
        """The store name for a repo: the given one, else the repo's name, else owner--name when
        another repo already holds that name."""
        if name is not None:
            return check_name(name)
        for candidate in (name_for_repo(repo), name_for_repo(repo, owner_too=True)):
            others = [e for e in self.entries(candidate)
                      if str(e.repo or "").lower() != repo.lower()]
            if not others:
                return candidate
        raise KilnError(repo, "its store name is taken; choose one with --name")

    # -- removing --------------------------------------------------------------------------------
    def remove(self, ref: str) -> list[Entry]:
        """Remove `name:quant`, or every quant of `name`; returns what was removed."""
        removed = []
        for e in self.show(ref):
            with self.lock(e.name, e.quant):
                self.manifest_path(e.name, e.quant).unlink(missing_ok=True)   # entry gone first
                try:
                    e.path.unlink(missing_ok=True)
                except OSError as exc:
                    raise KilnError(e.path, f"cannot remove: {exc.strerror or exc}") from None
                removed.append(e)
        try:
            self._dir(split_ref(ref)[0]).rmdir()          # only when nothing else is in it
        except OSError:
            pass
        return removed

    # -- adding ----------------------------------------------------------------------------------
    def add_converted(self, src: str | os.PathLike, name: str, quant: str = DEFAULT_QUANT, *,
                      source: dict | None = None, threads: int | None = None,
                      progress: Progress | None = None, imatrix: str | None = None) -> Entry:
        """Convert checkpoint folder `src` into entry name:quant (replacing one that exists).
        `imatrix="auto"`: calibrate on the bundled text first (runtime/auto_imatrix.py)."""
        with self.lock(name, quant):
            return self._add_converted(Path(src), check_name(name), quant.lower(), source,
                                       threads, progress or NullProgress(), imatrix)

    def _add_converted(self, src: Path, name: str, quant: str, source: dict | None,
                       threads: int | None, progress: Progress,
                       imatrix: str | None = None) -> Entry:
        from convert.families import family_for
        from convert.pipeline import convert, load_config
        from convert.quants import parse_quant

        parse_quant(quant)
        config = load_config(src)
        repo_id = (source or {}).get("repo")             # a hub pull: its repo id is a clue
        family = family_for(config, src, repo_id=repo_id)
        staging = self._staging(name, quant)

        def on_plan(n_tensors: int, total: int) -> None:
            progress.start("convert", total, f"{name}:{quant}")

        def on_bytes(n: int, tensor: str) -> None:
            progress.advance(n, tensor)

        matrix, cost = None, None
        try:
            if imatrix == "auto":
                matrix, cost = self._auto_imatrix(src, staging.parent, name, quant, repo_id,
                                                  threads, progress)
            try:
                summary = convert(src, staging, quant, threads=threads, progress=on_bytes,
                                  on_plan=on_plan, repo_id=repo_id, imatrix=matrix)
            except KilnError as exc:
                if exc.path == str(staging):              # name the entry, not the temp file
                    raise KilnError(self.gguf_path(name, quant), exc.problem) from None
                raise
            progress.finish()
            sha, size = _sha256(staging, progress, f"{name}:{quant}")
            manifest = {
                "format": MANIFEST_FORMAT, "name": name, "quant": quant,
                "file": f"{quant}.gguf", "family": family.name,
                "architecture": (config.get("architectures") or [None])[0],
                "size": size, "sha256": sha, "n_params": summary.n_params,
                "n_tensors": summary.n_tensors, "created": _now(),
                "kiln_version": _kiln_version(), "source": source,
            }
            if cost is not None:
                manifest["imatrix"] = {"auto": True, "chunks": cost.chunks,
                                       "tokens": cost.tokens, "ctx": cost.ctx,
                                       "seconds": round(cost.q8_seconds + cost.imatrix_seconds, 1)}
            return self._commit(name, quant, staging, manifest)
        finally:
            staging.unlink(missing_ok=True)

    @staticmethod
    def _auto_imatrix(src: Path, folder: Path, name: str, quant: str, repo_id: str | None,
                      threads: int | None, progress: Progress):
        from .auto_imatrix import auto_imatrix, check_quant

        check_quant(quant)

        def on_convert():
            def on_plan(n_tensors: int, total: int) -> None:
                progress.start("convert", total, f"{name}: Q8_0 for calibration")
            return (lambda n, tensor: progress.advance(n, tensor)), on_plan, progress.finish

        seen = [0]

        def on_chunks(done: int, total: int) -> None:
            if done == 0:
                progress.start("calibrate", total, f"{name}: imatrix chunks")
            progress.advance(done - seen[0])
            seen[0] = done
            if done == total:
                progress.finish()
        return auto_imatrix(src, folder, None, threads=threads, repo_id=repo_id,
                            on_convert=on_convert, on_chunks=on_chunks)

    def import_gguf(self, path: str | os.PathLike, name: str | None = None, *,
                    quant: str | None = None, force: bool = False,
                    progress: Progress | None = None) -> Entry:
        """Copy a GGUF made elsewhere into the store (the original is left in place)."""
        from convert.gguf_info import read_info

        src = Path(path)
        progress = progress or NullProgress()
        name = None if name is None else check_name(name)
        quant = None if quant is None else check_quant_tag(quant)
        if not src.is_file():
            raise KilnError(src, "no such file")
        if not _is_gguf(src):
            raise KilnError(src, "not a GGUF file (it does not start with the GGUF magic)")
        info = read_info(src)
        meta = info["metadata"]
        name = name or _name_from_file(src)
        quant = quant or _quant_of(info)
        size = src.stat().st_size
        with self.lock(name, quant):
            if not force and self.get(name, quant) is not None:
                raise KilnError(None, f"'{name}:{quant}' is already in the store; remove it with "
                                      "`kiln rm` or import with --force")
            check_disk([(self._dir(name), size, "GGUF")])
            staging = self._staging(name, quant)
            try:
                progress.start("copy", size, f"{src.name} -> {name}:{quant}")
                sha = _copy_hashing(src, staging, progress)
                progress.finish()
                manifest = {
                    "format": MANIFEST_FORMAT, "name": name, "quant": quant,
                    "file": f"{quant}.gguf",
                    "family": meta.get("kiln.family") or meta.get("general.architecture"),
                    "architecture": meta.get("general.architecture"),
                    "size": size, "sha256": sha, "n_params": info.get("n_params"),
                    "n_tensors": info.get("n_tensors"), "created": _now(),
                    "kiln_version": _kiln_version(),
                    "source": {"imported_from": str(src.resolve()),
                               "url": meta.get("general.source.url")},
                }
                return self._commit(name, quant, staging, manifest)
            finally:
                staging.unlink(missing_ok=True)

    def _staging(self, name: str, quant: str) -> Path:
        """A fresh temp path next to the entry; leftovers of dead pulls (we hold the lock) go."""
        d = self._dir(name)
        try:
            d.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise KilnError(d, f"cannot create the store folder: {exc.strerror or exc}") from None
        for old in d.glob(f"*tmp-{quant}-*"):
            _remove_stale(old)
        return d / f".tmp-{quant}-{uuid.uuid4().hex[:12]}.gguf"

    def _commit(self, name: str, quant: str, staging: Path, manifest: dict) -> Entry:
        """Manifest last: the old entry disappears, the GGUF moves in, then the new manifest."""
        gguf, mpath = self.gguf_path(name, quant), self.manifest_path(name, quant)
        mtmp = mpath.with_name(f".tmp-{quant}-{uuid.uuid4().hex[:12]}.json")
        mtmp.write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        try:
            mpath.unlink(missing_ok=True)
            os.replace(staging, gguf)
            os.replace(mtmp, mpath)
        finally:
            mtmp.unlink(missing_ok=True)
        return Entry(name, quant, gguf, manifest)

    # -- pulling ---------------------------------------------------------------------------------
    def pull(self, repo: str, revision: str | None = None, quant: str = DEFAULT_QUANT, *,
             name: str | None = None, confirm: Callable[[str], bool] | None = None,
             progress: Progress | None = None, threads: int | None = None,
             on_status: Callable[[str], None] | None = None, update: bool = True,
             imatrix: str | None = None) -> Entry:
        """Download `repo` (only what conversion needs) into the HF cache and convert it into
        the store. An entry already made from the same commit is returned as it is (unless
        `imatrix="auto"` is asked for and it was made without one)."""
        from convert.quants import parse_quant

        from convert import hub

        quant = parse_quant(quant).name.lower()
        if imatrix == "auto":
            from .auto_imatrix import check_quant
            check_quant(quant)                        # refused before any download
        progress = progress or NullProgress()
        say = on_status or (lambda msg: log.info("%s", msg))
        hub.check_repo_id(repo)
        name = None if name is None else check_name(name)   # refused before any network use
        plan = hub.plan(repo, revision)
        if plan.note:
            say(f"{repo}: {plan.note}")
        name = self.name_for(repo, name)
        with self.lock(name, quant, on_wait=say):
            existing = self.get(name, quant)
            if existing is not None:
                if str(existing.repo or "").lower() != repo.lower():
                    owner = existing.repo or "an imported model"
                    raise KilnError(repo, f"store name '{name}' is taken by {owner}; choose "
                                          "another with --name")
                same = (existing.source.get("commit") == plan.commit
                        and (imatrix is None or existing.manifest.get("imatrix")))
                if same or not update:
                    say(f"{existing.ref} is up to date ({repo}@{plan.commit[:7]})")
                    return _usable(existing)
            est = estimate_gguf_bytes(plan.weight_bytes, plan.source_bits, quant)
            check_disk([(plan.cache_dir, plan.download_bytes, "download"),
                        (self._dir(name), est, f"{quant} GGUF")])
            message = describe_plan(plan, quant, est)
            if confirm is None:
                say(message)
            elif not confirm(message):
                raise Cancelled(repo, "download declined; nothing was changed")
            if any(not f.cached for f in plan.files):
                progress.start("download", plan.download_bytes, f"{repo}@{plan.commit[:7]}")
                hub.download(plan, progress=lambda n, f: progress.advance(n, f))
                progress.finish()
            source = {"repo": repo, "revision": plan.revision, "commit": plan.commit,
                      "endpoint": plan.endpoint, "format": plan.fmt,
                      "files": [f.name for f in plan.files]}
            return self._add_converted(plan.snapshot, name, quant, source, threads, progress,
                                       imatrix)


class _EntryLock:
    def __init__(self, path: Path, what: str, on_wait: Callable[[str], None] | None):
        self.path, self.what, self.on_wait = path, what, on_wait
        self._lock = None

    def __enter__(self):
        from filelock import FileLock, Timeout

        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise KilnError(self.path.parent, f"cannot create: {exc.strerror or exc}") from None
        self._lock = FileLock(self.path)
        try:
            self._lock.acquire(timeout=0.5)
        except Timeout:
            if self.on_wait:
                self.on_wait(f"waiting for another kiln process working on {self.what} ...")
            self._lock.acquire()
        return self

    def __exit__(self, *exc) -> None:
        if self._lock is not None:
            self._lock.release()


# -- resolve_model: what the runtime calls --------------------------------------------------------
def resolve_model(spec: str, *, quant: str = DEFAULT_QUANT,
                  confirm: Callable[[str], bool] | None = None,
                  progress: Progress | None = None, store: Store | None = None,
                  on_status: Callable[[str], None] | None = None) -> Path:
    """The GGUF file `spec` names.

    - an existing file (or anything ending in .gguf): that file, which must be a GGUF;
    - a store name, `name` or `name:quant`: its GGUF;
    - a repo id, `owner/name[@revision][:quant]`: the stored entry made from it, with no network;
      on first use it is pulled and converted, after `confirm(what will be downloaded and how
      large)` returns True (None: no question asked).
    """
    spec = str(spec).strip()
    if not spec:
        raise KilnError(None, "no model given")
    path = Path(os.path.expanduser(spec))
    if path.is_dir() and (path / "config.json").is_file():
        raise KilnError(path, "is a checkpoint folder; convert it with `kiln convert` first, or "
                              "give a GGUF file, a store name or a repo id")
    if path.is_file() or spec.lower().endswith(".gguf") or _looks_like_path(spec):
        if path.is_dir():
            raise KilnError(path, "is a folder; convert it with `kiln convert` or give a "
                                  ".gguf file")
        if not path.is_file():
            raise KilnError(path, "no such file")
        if not _is_gguf(path):
            raise KilnError(path, "not a GGUF file")
        return path
    store = store or Store()
    from convert import hub

    body, quant_tag = _split_quant(spec)
    want = quant_tag or quant.lower()
    if hub.looks_like_repo_id(body):
        repo, revision = hub.parse_repo_spec(body)
        entry = store.find_repo(repo, want, revision)
        if entry is not None:
            return _usable(entry).path
        entry = store.pull(repo, revision, want, confirm=confirm, progress=progress,
                           on_status=on_status, update=False)
        return entry.path
    return store.find(body + (f":{quant_tag}" if quant_tag else ""), quant).path


def estimate_gguf_bytes(weight_bytes: int, source_bits: int, quant: str) -> int:
    bits = _BITS.get(quant.lower(), 16.0)
    return int(weight_bytes * bits / max(source_bits, 1) * 1.05) + (1 << 20)


def describe_plan(plan, quant: str, est: int) -> str:
    n = len(plan.files)
    cached = sum(1 for f in plan.files if f.cached)
    if plan.from_cache:
        fetch = f"use {n} cached files ({fmt_size(plan.total_bytes)}, no download)"
    elif plan.download_bytes == 0:
        fetch = f"download nothing (all {n} files are cached, {fmt_size(plan.total_bytes)})"
    else:
        more = f"; {cached} already cached" if cached else ""
        fetch = (f"download {n - cached} files, {fmt_size(plan.download_bytes)}, from "
                 f"{plan.endpoint}{more}")
    return (f"{plan.repo}@{plan.commit[:7]}: {fetch}, then convert to {quant} "
            f"(about {fmt_size(est)})")


# -- helpers --------------------------------------------------------------------------------------
def _split_quant(spec: str) -> tuple[str, str | None]:
    body, sep, tag = spec.rpartition(":")
    if sep and tag and "/" not in tag and "\\" not in tag:
        return body, check_quant_tag(tag)
    return spec, None


def _looks_like_path(spec: str) -> bool:
    return (spec.startswith(("/", "./", "../", "~", ".\\", "..\\")) or "\\" in spec
            or os.path.isabs(spec) or (len(spec) > 1 and spec[1] == ":" and spec[0].isalpha())
            or spec in (".", ".."))


def _usable(e: Entry) -> Entry:
    if not e.path.is_file():
        raise KilnError(e.path, f"store entry {e.ref} is damaged (its GGUF is missing); run "
                                f"`kiln rm {e.ref}` and pull it again")
    return e


def _is_gguf(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(4) == b"GGUF"
    except OSError:
        return False


_QUANT_SUFFIX = r"(f32|f16|bf16|q\d(_k)?(_[a-z0-9]+)*|iq\d\w*)"


def _name_from_file(path: Path) -> str:
    """`Foo-7B.Q4_0.gguf` -> `foo-7b`; `q8_0.gguf` (named by its quant only) -> its folder's name."""
    stem = path.name[:-5] if path.name.lower().endswith(".gguf") else path.stem
    if re.fullmatch(_QUANT_SUFFIX, stem, flags=re.I) and path.resolve().parent.name:
        stem = path.resolve().parent.name
    stem = re.sub(rf"[-._]{_QUANT_SUFFIX}$", "", stem, flags=re.I)
    text = re.sub(r"[^a-z0-9._-]+", "-", stem.lower()).strip("-._")
    text = re.sub(r"\.{2,}", ".", text)[:100].strip("-._") or "model"
    return check_name(text)


def _quant_of(info: dict) -> str:
    import gguf

    ft = info["metadata"].get("general.file_type")
    if isinstance(ft, int):
        try:
            tag = gguf.LlamaFileType(ft).name
            return check_quant_tag(re.sub(r"^(MOSTLY|ALL)_", "", tag).lower())
        except (ValueError, KilnError):
            pass
    types = {k: v for k, v in info.get("types", {}).items() if k != "F32"} or info.get("types", {})
    if types:
        return check_quant_tag(max(types, key=lambda k: types[k]["bytes"]).lower())
    return "gguf"


def _sha256(path: Path, progress: Progress, label: str) -> tuple[str, int]:
    h = hashlib.sha256()
    size = path.stat().st_size
    progress.start("verify", size, label)
    with open(path, "rb") as f:
        while chunk := f.read(8 << 20):
            h.update(chunk)
            progress.advance(len(chunk))
    progress.finish()
    return h.hexdigest(), size


def _copy_hashing(src: Path, dst: Path, progress: Progress) -> str:
    h = hashlib.sha256()
    try:
        with open(src, "rb") as fin, open(dst, "wb") as fout:
            while chunk := fin.read(8 << 20):
                h.update(chunk)
                fout.write(chunk)
                progress.advance(len(chunk))
    except OSError as exc:
        raise KilnError(dst, f"cannot write: {exc.strerror or exc}") from None
    return h.hexdigest()


def _remove_stale(path: Path) -> None:
    try:
        path.unlink()
    except OSError:
        pass


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _kiln_version() -> str:
    from convert import __version__

    return __version__
