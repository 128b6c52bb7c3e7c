"""Fetch what conversion needs from the Hugging Face Hub, through huggingface-hub's own cache.

Everything goes through `huggingface_hub` (HfApi.model_info, hf_hub_download, snapshot_download
with local_files_only), so HF_HOME / HF_HUB_CACHE, HF_ENDPOINT, HF_TOKEN or a saved login,
HF_HUB_OFFLINE and the cache layout behave exactly as they do for transformers. The three
environment variables that huggingface-hub reads once at import (HF_ENDPOINT, the cache folder,
HF_HUB_OFFLINE) are read again here at call time and passed explicitly, so a process that sets
them late (a test, an embedding application) is honoured too.

Only what conversion reads is fetched: config, generation config, tokenizer files and the
weights (safetensors in preference to .bin), never the repo's *.py code or training leftovers.
"""
from __future__ import annotations

import errno
import json
import logging
import os
import re
import threading
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from convert.errors import KilnError

log = logging.getLogger(__name__)

DEFAULT_ENDPOINT = "https://huggingface.co"

# Small files conversion may read, fetched whenever the repo has them (top level only).
META_FILES = (
    "config.json", "generation_config.json",
    "tokenizer.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json",
    "added_tokens.json", "chat_template.jinja", "chat_template.json",
    "vocab.json", "merges.txt",
)
ST_INDEX = "model.safetensors.index.json"
BIN_INDEX = "pytorch_model.bin.index.json"
_NOT_WEIGHTS = re.compile(r"^(training_args|optimizer|scheduler|rng_state.*|trainer_state)\.bin$")
_OTHER_FORMATS = (".gguf", ".pth", ".pt", ".ckpt", ".h5", ".msgpack", ".onnx", ".tflite", ".ot")
_REPO_RE = re.compile(r"[A-Za-z0-9](?:[\w.-]{0,94}[A-Za-z0-9_])?/[A-Za-z0-9_](?:[\w.-]{0,94}[\w])?")
_COMMIT_RE = re.compile(r"[0-9a-f]{40}")

ByteProgress = Callable[[int, str], None]          # (bytes just received, file name)


# -- environment, read at call time ---------------------------------------------------------------
def _truthy(value: str | None) -> bool:
    return (value or "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def hub_endpoint() -> str:
    from huggingface_hub import constants

    return (os.environ.get("HF_ENDPOINT") or constants.ENDPOINT or DEFAULT_ENDPOINT).rstrip("/")


def hf_cache_dir() -> Path:
    """The hub cache folder, as huggingface-hub derives it (HF_HUB_CACHE > HF_HOME/hub > XDG)."""
    env = os.environ
    home = env.get("HF_HOME") or os.path.join(
        env.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "huggingface")
    cache = env.get("HF_HUB_CACHE") or env.get("HUGGINGFACE_HUB_CACHE") or os.path.join(home, "hub")
    return Path(os.path.expandvars(os.path.expanduser(cache)))


def is_offline() -> bool:
    from huggingface_hub import constants

    env = os.environ
    return (constants.HF_HUB_OFFLINE or _truthy(env.get("HF_HUB_OFFLINE"))
            or _truthy(env.get("TRANSFORMERS_OFFLINE")))


def has_token() -> bool:
    try:
        from huggingface_hub import get_token

        return get_token() is not None
    except Exception:
        return bool(os.environ.get("HF_TOKEN"))


# -- repo ids -------------------------------------------------------------------------------------
def looks_like_repo_id(spec: str) -> bool:
    return "/" in spec and not spec.startswith(("/", ".", "~")) and "\\" not in spec


def parse_repo_spec(spec: str) -> tuple[str, str | None]:
    """`owner/name[@revision]` -> (repo id, revision or None); refuses anything else."""
    repo, _, revision = spec.strip().partition("@")
    check_repo_id(repo)
    if "@" in spec and not revision:
        raise KilnError(None, f"'{spec}': empty revision after '@'")
    if revision and (".." in revision or revision.startswith("/")
                     or any(c.isspace() for c in revision)):
        raise KilnError(None, f"'{spec}': not a valid revision")
    return repo, revision or None


def check_repo_id(repo: str) -> str:
    if not _REPO_RE.fullmatch(repo) or ".." in repo or "--" in repo:
        raise KilnError(None, f"'{repo}' is not a Hugging Face repo id (expected owner/name, "
                              "letters, digits, '-', '_' and '.')")
    return repo


# -- choosing files -------------------------------------------------------------------------------
@dataclass
class Selection:
    meta: list[str]
    weights: list[str]
    index: str | None
    fmt: str                                            # "safetensors" or "bin"


def choose_files(names: list[str], weight_map: dict[str, str] | None = None) -> Selection:
    """What to fetch from a repo listing; mirrors convert.checkpoint's choice of weights.

    `weight_map`: the index's contents once known (the index lists the shards exactly).
    Raises KilnError when there are no weights in a supported format.
    """
    top = sorted(n for n in names if "/" not in n)
    have = set(top)
    meta = [n for n in META_FILES if n in have]
    st = [n for n in top if n.endswith(".safetensors")]
    if st:
        index = ST_INDEX if ST_INDEX in have else None
        if index and weight_map is not None:
            weights = sorted(set(weight_map.values()))
        elif index:
            weights = []                                   # known after reading the index
        elif "model.safetensors" in have:
            weights = ["model.safetensors"]
        else:
            weights = st
        return Selection(meta, weights, index, "safetensors")
    if BIN_INDEX in have:
        weights = sorted(set(weight_map.values())) if weight_map is not None else []
        return Selection(meta, weights, BIN_INDEX, "bin")
    if "pytorch_model.bin" in have:
        return Selection(meta, ["pytorch_model.bin"], None, "bin")
    bins = [n for n in top if n.startswith("pytorch_model") and n.endswith(".bin")]
    bins = bins or [n for n in top if n.endswith(".bin") and not _NOT_WEIGHTS.match(n)]
    if bins:
        return Selection(meta, bins, None, "bin")
    others = [n for n in names if n.lower().endswith(_OTHER_FORMATS)]
    found = f"found only {', '.join(others[:4])}{', ...' if len(others) > 4 else ''}" if others \
        else "found none"
    hint = "; it holds GGUF files already: download one and `kiln import` it" \
        if any(n.lower().endswith(".gguf") for n in names) else ""
    raise KilnError(None, "no weights in a supported format (expected *.safetensors or "
                          f"pytorch_model*.bin; {found}){hint}")


# -- the plan -------------------------------------------------------------------------------------
@dataclass
class HubFile:
    name: str
    size: int
    cached: bool


@dataclass
class RemotePlan:
    """What a pull of one repo at one commit needs, before any weight byte is fetched."""
    repo: str
    revision: str                                       # as asked ("main" when not given)
    commit: str
    files: list[HubFile]
    fmt: str
    config: dict
    endpoint: str
    cache_dir: Path
    from_cache: bool = False                            # offline or hub unreachable: cache only
    note: str = ""
    weights: list[str] = field(default_factory=list)

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)

    @property
    def download_bytes(self) -> int:
        return sum(f.size for f in self.files if not f.cached)

    @property
    def weight_bytes(self) -> int:
        names = set(self.weights)
        return sum(f.size for f in self.files if f.name in names)

    @property
    def snapshot(self) -> Path:
        return snapshot_dir(self.cache_dir, self.repo, self.commit)

    @property
    def source_bits(self) -> int:
        """Bits per weight of the stored checkpoint (from config's dtype; 16 when unsaid)."""
        dtype = str(self.config.get("torch_dtype") or self.config.get("dtype") or "").lower()
        return 32 if dtype in ("float32", "fp32") else 16


def snapshot_dir(cache_dir: Path, repo: str, commit: str) -> Path:
    return Path(cache_dir) / ("models--" + repo.replace("/", "--")) / "snapshots" / commit


def plan(repo: str, revision: str | None = None) -> RemotePlan:
    """Look the repo up (model_info), fetch config.json (and the shard index) to check the
    architecture and access before any weight is downloaded. Offline: the cached snapshot."""
    check_repo_id(repo)
    rev = revision or "main"
    endpoint, cache = hub_endpoint(), hf_cache_dir()
    if is_offline():
        return _plan_from_cache(repo, rev, endpoint, cache,
                                "offline (HF_HUB_OFFLINE is set)")
    from huggingface_hub import HfApi

    try:
        info = HfApi(endpoint=endpoint).model_info(repo, revision=rev, files_metadata=True)
    except Exception as exc:
        if _is_connection_error(exc):
            return _plan_from_cache(repo, rev, endpoint, cache,
                                    f"cannot reach {endpoint} ({_reason(exc)})",
                                    note=f"cannot reach {endpoint}; using the cached copy")
        raise hub_error(exc, repo, rev) from None
    commit = info.sha or ""
    if not _COMMIT_RE.fullmatch(commit):
        raise KilnError(repo, f"{endpoint} gave no commit id for revision '{rev}'")
    sizes: dict[str, int] = {}
    for s in info.siblings or []:
        size = s.lfs.size if s.lfs is not None else s.size
        sizes[s.rfilename] = int(size or 0)
    if "config.json" not in sizes:
        raise KilnError(repo, "no config.json: not a Hugging Face transformers checkpoint")
    try:
        sel = choose_files(list(sizes))
    except KilnError as exc:
        raise KilnError(repo, exc.problem) from None
    # config.json first: a gated repo or an unsupported architecture stops here, before gigabytes.
    # Asked for at the user's revision, so that huggingface-hub records refs/<revision> in its
    # cache and an offline run finds this snapshot by branch or tag name.
    config_path = _fetch(repo, rev, "config.json", endpoint, cache)
    if config_path.parent.name != commit:
        raise KilnError(repo, f"revision '{rev}' moved on the Hub during the pull; try again")
    config = _read_json(config_path, repo, "config.json")
    check_architecture(config, repo)
    weight_map = None
    if sel.index:
        weight_map = _read_index(_fetch(repo, commit, sel.index, endpoint, cache), repo, sel.index)
        sel = choose_files(list(sizes), weight_map)
        missing = [w for w in sel.weights if w not in sizes]
        if missing:
            raise KilnError(repo, f"{sel.index} lists {missing[0]}, which is not in the repo")
    names = sel.meta + ([sel.index] if sel.index else []) + sel.weights
    files = [HubFile(n, sizes[n], _is_cached(cache, repo, commit, n)) for n in dict.fromkeys(names)]
    return RemotePlan(repo, rev, commit, files, sel.fmt, config, endpoint, cache,
                      weights=list(sel.weights))


def _plan_from_cache(repo: str, rev: str, endpoint: str, cache: Path, why: str,
                     note: str = "") -> RemotePlan:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import IncompleteSnapshotError, LocalEntryNotFoundError

    try:
        folder = Path(snapshot_download(repo, revision=rev, cache_dir=cache, local_files_only=True))
    except IncompleteSnapshotError as exc:
        folder = Path(exc.snapshot_path)
    except (LocalEntryNotFoundError, OSError, ValueError):
        raise KilnError(repo, f"{why}, and revision '{rev}' is not in the Hugging Face cache "
                              f"({cache}); connect to the network once to pull it") from None
    names = [p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()]
    try:
        sel = choose_files(names)
        weight_map = _read_index(folder / sel.index, repo, sel.index) if sel.index else None
        sel = choose_files(names, weight_map) if weight_map is not None else sel
    except KilnError as exc:
        raise KilnError(repo, f"{why}, and the cached copy is not usable: {exc.problem}") from None
    wanted = ["config.json"] + ([sel.index] if sel.index else []) + sel.weights
    missing = [n for n in wanted if not (folder / n).is_file()]
    if missing:
        raise KilnError(repo, f"{why}, and the cached copy in {folder} is incomplete "
                              f"(missing {', '.join(missing[:3])}); connect to finish the pull")
    config = _read_json(folder / "config.json", repo, "config.json")
    check_architecture(config, repo)
    names = sel.meta + ([sel.index] if sel.index else []) + sel.weights
    files = [HubFile(n, (folder / n).stat().st_size, True) for n in dict.fromkeys(names)]
    return RemotePlan(repo, rev, folder.name, files, sel.fmt, config, endpoint, cache,
                      from_cache=True, note=note or why, weights=list(sel.weights))


def check_architecture(config: dict, repo: str) -> None:
    """Refuse before downloading weights when no kiln family takes the architecture."""
    from convert.families import FAMILIES, supported_architectures

    archs = config.get("architectures") or []
    if any(a in fam.architectures for fam in FAMILIES for a in archs):
        return
    shown = ", ".join(map(str, archs)) if archs else f"model_type '{config.get('model_type')}'"
    families = ", ".join(sorted({fam.name for fam in FAMILIES}))
    raise KilnError(repo, f"architecture {shown} is not supported (supported families: "
                          f"{families}; architectures: {', '.join(supported_architectures())})")


# -- downloading ----------------------------------------------------------------------------------
class _Cancelled(Exception):
    """Another download failed or the caller stopped: this one stops at its next chunk."""


class _Passthrough(Exception):
    """An exception raised by the caller's progress callback, carried through huggingface-hub."""

    def __init__(self, exc: BaseException):
        super().__init__(repr(exc))
        self.exc = exc


def download(p: RemotePlan, progress: ByteProgress | None = None, max_workers: int = 4) -> Path:
    """Fetch every file of the plan into the HF cache; returns the snapshot folder.

    Small files first, then the weights on a few threads. huggingface-hub resumes a dropped
    connection itself (HTTP Range, up to 5 tries); files finished before an interruption stay in
    the cache and are not fetched again.
    """
    if p.from_cache:
        return p.snapshot
    stop = threading.Event()
    lock = threading.Lock()

    def report(n: int, name: str) -> None:
        if stop.is_set():
            raise _Cancelled()
        if progress:
            with lock:
                try:
                    progress(n, name)
                except BaseException as exc:
                    raise _Passthrough(exc) from None

    small = [f for f in p.files if f.name not in p.weights]
    big = [f for f in p.files if f.name in p.weights]
    for f in small:
        _fetch(p.repo, p.commit, f.name, p.endpoint, p.cache_dir, report)
    if big:
        pool = ThreadPoolExecutor(max_workers=max(1, min(max_workers, len(big))),
                                  thread_name_prefix="kiln-download")
        futures = [pool.submit(_fetch, p.repo, p.commit, f.name, p.endpoint, p.cache_dir, report)
                   for f in big]
        try:
            wait(futures, return_when=FIRST_EXCEPTION)
            for fut in futures:
                if fut.done() and not fut.cancelled() and fut.exception() is not None:
                    raise fut.exception()
            for fut in futures:
                fut.result()
        except BaseException:
            stop.set()                      # running downloads stop at their next chunk
            for fut in futures:
                fut.cancel()
            raise
        finally:
            pool.shutdown(wait=True)
    return p.snapshot


def _fetch(repo: str, commit: str, name: str, endpoint: str, cache: Path,
           progress: ByteProgress | None = None) -> Path:
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(repo, name, revision=commit, cache_dir=cache, endpoint=endpoint,
                                    tqdm_class=_bar_class(name, progress)))
    except _Passthrough as p:
        raise p.exc from None
    except _Cancelled:
        raise
    except Exception as exc:
        raise hub_error(exc, repo, commit, name) from None


def _bar_class(name: str, progress: ByteProgress | None):
    """A tqdm stand-in for hf_hub_download: forwards byte counts (negative on a restart).

    It has `update_transfer`, so that for Xet-stored files huggingface-hub routes network bytes
    there (ignored) and only counts bytes written to the file through `update`, as for HTTP.
    """

    class Bar:
        def __init__(self, *args, **kwargs):
            initial = kwargs.get("initial") or 0
            if initial and progress:
                progress(initial, name)

        def update(self, n: int | float | None = 1) -> None:
            if progress and n:
                progress(int(n), name)

        def update_transfer(self, n: int | float | None = 1) -> None:
            pass

        def set_transfer_postfix_str(self, *a, **k) -> None:
            pass

        def __enter__(self):
            return self

        def __exit__(self, *exc) -> None:
            pass

        def close(self) -> None:
            pass

        def refresh(self, *a, **k) -> None:
            pass

        def set_description(self, *a, **k) -> None:
            pass

        def set_postfix_str(self, *a, **k) -> None:
            pass

    return Bar


def _is_cached(cache: Path, repo: str, commit: str, name: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    try:
        return isinstance(try_to_load_from_cache(repo, name, cache_dir=cache, revision=commit), str)
    except Exception:
        return False


def _read_json(path: Path, repo: str, name: str) -> dict:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise KilnError(repo, f"{name} is not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise KilnError(repo, f"{name} is not a JSON object")
    return data


def _read_index(path: Path, repo: str, name: str) -> dict[str, str]:
    wm = _read_json(path, repo, name).get("weight_map")
    if not isinstance(wm, dict) or not wm or not all(isinstance(v, str) for v in wm.values()):
        raise KilnError(repo, f"{name} has no usable weight_map")
    for v in wm.values():
        if v.startswith("/") or ".." in v.split("/") or "\\" in v:
            raise KilnError(repo, f"{name} lists an unsafe file name {v!r}")
    return wm


# -- errors ---------------------------------------------------------------------------------------
def _is_connection_error(exc: BaseException) -> bool:
    import httpx2

    seen = 0
    while exc is not None and seen < 5:
        if isinstance(exc, (httpx2.ConnectError, httpx2.TimeoutException, httpx2.NetworkError,
                            httpx2.RemoteProtocolError, httpx2.ProxyError, ConnectionError)):
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    reason = text[0] if text else exc.__class__.__name__
    return reason[:200]


def hub_error(exc: BaseException, repo: str, revision: str | None = None,
              filename: str | None = None) -> KilnError:
    """One line a user can act on, for anything huggingface-hub raised."""
    from huggingface_hub import errors as E

    if isinstance(exc, KilnError):
        return exc
    endpoint = hub_endpoint()
    page = f"{endpoint}/{repo}"
    if isinstance(exc, E.GatedRepoError):
        if has_token():
            return KilnError(repo, f"gated repo, and your token has no access yet: request it at "
                                   f"{page}, then try again")
        return KilnError(repo, f"gated repo: accept its conditions at {page}, then log in with "
                               "`hf auth login` or set HF_TOKEN")
    if isinstance(exc, E.RepositoryNotFoundError):
        hint = "" if has_token() else \
            "; if it is private, log in with `hf auth login` or set HF_TOKEN"
        return KilnError(repo, f"repository not found on {endpoint} (check the name{hint})")
    if isinstance(exc, E.RevisionNotFoundError):
        return KilnError(repo, f"revision '{revision}' not found")
    if isinstance(exc, E.RemoteEntryNotFoundError):
        return KilnError(repo, f"{filename} not found at revision {revision}")
    if isinstance(exc, (E.LocalEntryNotFoundError, E.OfflineModeIsEnabled)) and (
            is_offline() or isinstance(exc, E.OfflineModeIsEnabled)):
        return KilnError(repo, "offline (HF_HUB_OFFLINE is set), and it is not in the Hugging Face "
                               f"cache ({hf_cache_dir()}); connect to the network once to pull it")
    if _is_connection_error(exc):
        return KilnError(repo, f"cannot reach {endpoint} ({_reason(_root(exc))}); check the "
                               "connection (HF_ENDPOINT, proxy), or set HF_HUB_OFFLINE=1 to use "
                               "cached files only")
    if isinstance(exc, E.HfHubHTTPError) and getattr(exc, "response", None) is not None:
        status = exc.response.status_code
        server = exc.response.headers.get("X-Error-Message") or ""
        if status == 401:
            return KilnError(repo, "authentication failed (HTTP 401): HF_TOKEN or the saved "
                                   "login is not valid")
        if status == 403:
            return KilnError(repo, f"access denied (HTTP 403){': ' + server if server else ''}")
        if status == 429:
            return KilnError(repo, f"rate limited by {endpoint} (HTTP 429); try again later")
        if status >= 500:
            return KilnError(repo, f"{endpoint} failed (HTTP {status}); try again later")
        return KilnError(repo, f"{endpoint} answered HTTP {status}"
                               f"{': ' + server if server else ''}")
    if isinstance(exc, E.HFValidationError):
        return KilnError(repo, f"not a valid repo id ({_reason(exc)})")
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return KilnError(repo, f"disk full while downloading {filename or 'files'} into "
                               f"{hf_cache_dir()}")
    if isinstance(exc, OSError) and "Consistency check failed" in str(exc):
        return KilnError(repo, f"download of {filename} was cut short; run the command again")
    if isinstance(exc, E.LocalEntryNotFoundError):
        return KilnError(repo, f"{filename or 'files'} could not be fetched and are not cached "
                               f"({_reason(_root(exc))})")
    return KilnError(repo, f"download failed: {exc.__class__.__name__}: {_reason(exc)}")


def _root(exc: BaseException) -> BaseException:
    for _ in range(5):
        nxt = exc.__cause__ or exc.__context__
        if nxt is None:
            break
        exc = nxt
    return exc
