"""The model store and `kiln pull`, against a Hub imitation on loopback with the real
huggingface-hub client: what is fetched, resume, gated/missing repos, offline, concurrency,
interruptions, disk space, names that try to leave the store, and resolve_model end to end."""
from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import click
import pytest

from hub_imitation import HubImitation, files_from_dir, isolate_hf_env

pytest.importorskip("torch")
pytest.importorskip("transformers")

from convert.cli import run_cli  # noqa: E402
from convert.errors import KilnError  # noqa: E402
from runtime import store as store_mod  # noqa: E402
from runtime.store import Cancelled, Store, check_name, resolve_model  # noqa: E402
from runtime.store_cli import COMMANDS  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
REPO = "acme/tiny-llama"          # safetensors + .bin + index + *.py + training leftovers
BIN_REPO = "acme/tiny-bin"        # .bin shards only
GATED = "acme/gated-llama"
META = {"config.json", "generation_config.json", "tokenizer.model", "tokenizer_config.json"}
SHARDS = {"pytorch_model-00001-of-00002.bin", "pytorch_model-00002-of-00002.bin"}


@click.group()
def kiln_group() -> None:
    """The store commands, as runtime/cli.py registers them."""


for _cmd in COMMANDS:
    kiln_group.add_command(_cmd)


def kiln(*args: str) -> int:
    try:
        run_cli(kiln_group, [str(a) for a in args])
    except SystemExit as exc:
        return exc.code or 0
    return 0


class Stop(Exception):
    """Stands for Ctrl-C in the middle of a pull."""


# -- fixtures --------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory):
    from hf_models import build

    st = build("llama", tmp_path_factory.mktemp("st"))
    bins = build("llama", tmp_path_factory.mktemp("bin"), bin_shards=2)
    return st, bins


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """KILN_HOME and HF_HOME in tmp, no token, online, and no traffic beyond loopback."""
    monkeypatch.setenv("KILN_HOME", str(tmp_path / "kiln"))
    isolate_hf_env(monkeypatch, tmp_path / "hf")
    real_connect = socket.socket.connect

    def loopback_only(self, address):
        if self.family in (socket.AF_INET, socket.AF_INET6) and \
                address[0] not in ("127.0.0.1", "::1", "localhost"):
            raise ConnectionRefusedError(f"test blocked a connection to {address[0]}")
        return real_connect(self, address)

    monkeypatch.setattr(socket.socket, "connect", loopback_only)
    return tmp_path


@pytest.fixture
def hub(checkpoints, monkeypatch):
    st, bins = checkpoints
    h = HubImitation()
    both = files_from_dir(st)
    both.update({k: v for k, v in files_from_dir(bins).items()
                 if k.endswith(".bin") or k.endswith(".index.json")})
    both.update({"modeling_tiny.py": b"import os; os.system('echo pwned')\n",
                 "configuration_tiny.py": b"raise SystemExit\n",
                 "README.md": b"# tiny\n", ".gitattributes": b"*.bin filter=lfs\n",
                 "training_args.bin": b"\0" * 100, "optimizer.pt": b"\0" * 1000,
                 "original/consolidated.00.pth": b"\0" * 1000})
    h.add_repo(REPO, both)
    h.add_repo(BIN_REPO, bins)
    h.add_repo(GATED, st, gated=True, tokens={"hf_granted"})
    config = json.loads((st / "config.json").read_text())
    h.add_repo("acme/ggufs-only", {"config.json": json.dumps(config).encode(),
                                   "tiny-q4_0.gguf": b"GGUF" + b"\0" * 100})
    h.add_repo("acme/odd-arch", {**files_from_dir(st), "config.json": json.dumps(
        {**config, "architectures": ["FooForCausalLM"], "model_type": "foo"}).encode()})
    evil_index = json.dumps({"weight_map": {"x": "../../../etc/passwd"}}).encode()
    h.add_repo("acme/evil-index", {**files_from_dir(st),
                                   "model.safetensors.index.json": evil_index})
    h.start()
    monkeypatch.setenv("HF_ENDPOINT", h.endpoint)
    yield h
    h.stop()


def snapshot(repo: str, commit: str) -> Path:
    return Path(os.environ["HF_HOME"]) / "hub" / f"models--{repo.replace('/', '--')}" / \
        "snapshots" / commit


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def weights_fetched(h: HubImitation, repo: str) -> list[str]:
    return [f for f in h.fetched(repo) if f.endswith((".safetensors", ".bin"))]


# -- pull: what is fetched, what is stored ---------------------------------------------------------
def test_pull_fetches_only_what_conversion_needs(hub, capsys):
    assert kiln("pull", REPO, "--quant", "q8_0", "--quiet") == 0
    out = capsys.readouterr()
    assert "tiny-llama:q8_0" in out.out
    fetched = hub.fetched(REPO)
    assert set(fetched) == META | {"model.safetensors"}, fetched       # no .bin, no .py
    assert Counter(fetched)["model.safetensors"] == 1
    assert not any(f.endswith((".py", ".bin", ".pt", ".pth", ".md")) for f in fetched)
    # the weights went through the Hub's LFS redirect to the CDN origin
    assert hub.requests(origin="hub", method="HEAD", file="model.safetensors")[0].status == 302
    assert hub.requests(origin="cdn", method="GET", file="model.safetensors")

    entry = Store().get("tiny-llama", "q8_0")
    m = entry.manifest
    commit = hub.repos[REPO].commit
    assert m["source"]["repo"] == REPO and m["source"]["commit"] == commit
    assert m["source"]["revision"] == "main" and m["source"]["format"] == "safetensors"
    assert m["family"] == "llama" and m["quant"] == "q8_0"
    assert m["size"] == entry.path.stat().st_size and m["sha256"] == sha256(entry.path)
    assert entry.path == Path(os.environ["KILN_HOME"]) / "models" / "tiny-llama" / "q8_0.gguf"
    from convert.gguf_info import read_info

    info = read_info(entry.path)
    assert info["metadata"]["general.architecture"] == "llama"
    assert "Q8_0" in info["types"]

    assert kiln("list") == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["NAME", "FAMILY", "SIZE", "SOURCE", "CREATED"]
    assert table[1].startswith("tiny-llama:q8_0") and f"{REPO}@{commit[:7]}" in table[1]
    assert kiln("list", "--json") == 0
    listed = json.loads(capsys.readouterr().out)
    assert [e["ref"] for e in listed] == ["tiny-llama:q8_0"]
    assert kiln("show", "tiny-llama", "--json") == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["source"]["commit"] == commit and shown["path"] == str(entry.path)
    assert kiln("show", "tiny-llama:q8_0") == 0
    assert "sha256:" in capsys.readouterr().out

    hub.clear_log()                                       # a second pull of the same commit
    assert kiln("pull", REPO, "--quant", "q8_0", "--quiet") == 0
    assert "up to date" in capsys.readouterr().err
    assert weights_fetched(hub, REPO) == []

    assert kiln("rm", "tiny-llama") == 0
    assert "removed tiny-llama:q8_0" in capsys.readouterr().out
    assert Store().list() == [] and not entry.path.exists()
    assert kiln("rm", "tiny-llama") == 1
    assert "no model named 'tiny-llama'" in capsys.readouterr().err


def test_bin_only_repo(hub):
    entry = Store().pull(BIN_REPO, quant="f16")
    assert set(hub.fetched(BIN_REPO)) == META - {"generation_config.json"} | SHARDS | {
        "pytorch_model.bin.index.json"}
    assert entry.manifest["source"]["format"] == "bin" and entry.quant == "f16"
    assert entry.path.is_file()


def test_resume_after_dropped_connection(hub, monkeypatch):
    import huggingface_hub.constants as hfc

    # huggingface-hub hands bytes over (and so can resume) in 10 MB chunks; our file is 0.5 MB
    chunk = 64 << 10
    monkeypatch.setattr(hfc, "DOWNLOAD_CHUNK_SIZE", chunk)
    hub.drop_once.add("model.safetensors")
    entry = Store().pull(REPO)
    dropped = hub.requests(file="model.safetensors (dropped)")
    assert len(dropped) == 1 and dropped[0].range is None
    resumed = hub.requests(method="GET", file="model.safetensors")
    assert len(resumed) == 1 and resumed[0].status == 206
    size = len(hub.repos[REPO].files["model.safetensors"])
    assert resumed[0].range == f"bytes={size // 2 // chunk * chunk}-"
    cached = snapshot(REPO, hub.repos[REPO].commit) / "model.safetensors"
    assert cached.read_bytes() == hub.repos[REPO].files["model.safetensors"]
    assert entry.path.is_file()


def test_interrupted_download_keeps_finished_files(hub):
    class StopInShard2(store_mod.NullProgress):
        def advance(self, n, item=""):
            if item == "pytorch_model-00002-of-00002.bin":
                raise Stop()

    with pytest.raises(Stop):
        Store().pull(BIN_REPO, progress=StopInShard2())
    assert Store().list() == []
    snap = snapshot(BIN_REPO, hub.repos[BIN_REPO].commit)
    have = {p.name for p in snap.iterdir()}
    assert "pytorch_model-00002-of-00002.bin" not in have
    assert META - {"generation_config.json"} <= have
    assert not list((snap.parent.parent / "blobs").glob("*.incomplete"))
    hub.clear_log()
    Store().pull(BIN_REPO)
    again = set(hub.fetched(BIN_REPO))
    assert again == SHARDS - have                          # finished files are not fetched again
    assert Store().get("tiny-bin", "q8_0") is not None


def test_interrupted_conversion_leaves_no_entry(hub):
    class StopWhileConverting(store_mod.NullProgress):
        def start(self, stage, total, label):
            self.stage = stage

        def advance(self, n, item=""):
            if getattr(self, "stage", "") == "convert":
                raise Stop()

    with pytest.raises(Stop):
        Store().pull(REPO, progress=StopWhileConverting())
    folder = Path(os.environ["KILN_HOME"]) / "models" / "tiny-llama"
    assert Store().list() == [] and list(folder.iterdir()) == []
    hub.clear_log()
    entry = Store().pull(REPO)                            # the downloads are reused
    assert weights_fetched(hub, REPO) == [] and entry.path.is_file()
    assert sorted(p.name for p in folder.iterdir()) == ["q8_0.gguf", "q8_0.json"]


# -- errors a user meets -------------------------------------------------------------------------
def test_gated_repo(hub, monkeypatch):
    with pytest.raises(KilnError, match=r"acme/gated-llama: gated repo: accept its conditions at "
                                        r"http://127\.0\.0\.1:\d+/acme/gated-llama, then log in"):
        Store().pull(GATED)
    assert hub.requests(method="HEAD", file=None, status=401)
    monkeypatch.setenv("HF_TOKEN", "hf_not_granted")
    with pytest.raises(KilnError, match="gated repo, and your token has no access yet"):
        Store().pull(GATED)
    assert hub.requests(status=403)
    assert weights_fetched(hub, GATED) == []
    monkeypatch.setenv("HF_TOKEN", "hf_granted")
    hub.clear_log()
    entry = Store().pull(GATED)
    assert entry.path.is_file()
    assert all(r.auth == "hf_granted" for r in hub.requests(origin="hub", status=200))


def test_missing_repo_and_revision(hub, monkeypatch, capsys):
    assert kiln("pull", "acme/nope") == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: acme/nope: repository not found on http://127.0.0.1:")
    assert "\n" not in err and "HF_TOKEN" in err
    assert hub.requests(status=401)
    monkeypatch.setenv("HF_TOKEN", "hf_any")
    with pytest.raises(KilnError, match="acme/nope: repository not found"):
        Store().pull("acme/nope")
    assert hub.requests(status=404)
    with pytest.raises(KilnError, match=f"{REPO}: revision 'v9' not found"):
        Store().pull(REPO, "v9")


def test_no_supported_weights_and_unsupported_architecture(hub):
    with pytest.raises(KilnError, match=r"acme/ggufs-only: no weights in a supported format .*"
                                        r"tiny-q4_0\.gguf.*kiln import"):
        Store().pull("acme/ggufs-only")
    with pytest.raises(KilnError, match=r"acme/odd-arch: architecture FooForCausalLM is not "
                                        r"supported \(supported families: .*llama.*; "
                                        r"architectures: .*LlamaForCausalLM"):
        Store().pull("acme/odd-arch")
    assert hub.fetched("acme/odd-arch") == ["config.json"]       # refused before the weights
    with pytest.raises(KilnError, match="unsafe file name"):
        Store().pull("acme/evil-index")


def test_offline_with_and_without_a_cached_copy(hub, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(KilnError, match=r"acme/tiny-llama: offline \(HF_HUB_OFFLINE is set\), and "
                                        r"revision 'main' is not in the Hugging Face cache"):
        Store().pull(REPO)
    assert hub.log == []
    monkeypatch.delenv("HF_HUB_OFFLINE")
    Store().pull(REPO)
    Store().remove("tiny-llama")                          # the HF cache keeps the download
    hub.stop()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    said = []
    entry = Store().pull(REPO, on_status=said.append)
    assert entry.path.is_file() and entry.manifest["source"]["commit"] == hub.repos[REPO].commit
    assert any("offline" in s for s in said)
    # not offline, but the hub refuses connections: cached copy, or a clear error
    monkeypatch.delenv("HF_HUB_OFFLINE")
    Store().remove("tiny-llama")
    said.clear()
    assert Store().pull(REPO, on_status=said.append).path.is_file()
    assert any("cannot reach" in s for s in said)
    with pytest.raises(KilnError, match=r"acme/tiny-bin: cannot reach http://127\.0\.0\.1:\d+ "):
        Store().pull(BIN_REPO)


def test_disk_space_refusal(hub, monkeypatch):
    import shutil

    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage",
                        lambda p: real(p)._replace(free=3 << 20))
    with pytest.raises(KilnError, match=r"not enough disk space: needs .* \(.* download \+ .* "
                                        r"q8_0 GGUF\), 3\.0 MB free"):
        Store().pull(REPO)
    assert weights_fetched(hub, REPO) == [] and Store().list() == []


# -- concurrency ---------------------------------------------------------------------------------
def test_concurrent_pulls_make_one_entry(hub):
    """Two pulls of one model at once: the second waits for the first, then finds its entry."""
    said: list[list[str]] = [[], []]
    results, errors = [], []
    start = threading.Barrier(2)

    class SlowConvert(store_mod.NullProgress):
        def start(self, stage, total, label):
            if stage == "convert":
                time.sleep(1.0)                           # hold the entry lock a while

    def pull(i: int):
        try:
            start.wait()
            results.append(Store().pull(REPO, progress=SlowConvert(),
                                        on_status=said[i].append).path)
        except BaseException as exc:   # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=pull, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == [] and len(results) == 2 and results[0] == results[1]
    entries = Store().list()
    assert len(entries) == 1 and entries[0].manifest["sha256"] == sha256(entries[0].path)
    assert Counter(hub.fetched(REPO))["model.safetensors"] == 1
    waited = [i for i in (0, 1) if any("waiting for another kiln process working on "
                                       "tiny-llama:q8_0" in m for m in said[i])]
    assert len(waited) == 1, said
    assert any("is up to date" in m for m in said[waited[0]])
    assert not any("is up to date" in m for m in said[1 - waited[0]])


def test_concurrent_cli_processes_then_offline(hub, tmp_path):
    """Two `kiln pull` processes at once (a real inter-process lock; env read at import)."""
    code = ("import sys, click; from convert.cli import run_cli; "
            "from runtime.store_cli import COMMANDS; g = click.Group('kiln'); "
            "[g.add_command(c) for c in COMMANDS]; run_cli(g, sys.argv[1:])")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING"))}
    env.update(HF_ENDPOINT=hub.endpoint, HF_HOME=os.environ["HF_HOME"], KILN_HOME=os.environ[
        "KILN_HOME"], HF_HUB_DISABLE_TELEMETRY="1", PYTHONPATH=str(ROOT))

    def run(*args, **extra):
        return subprocess.Popen([sys.executable, "-c", code, *args], cwd=tmp_path,
                                env={**env, **extra}, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)

    procs = [run("pull", BIN_REPO, "--quiet") for _ in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert all("tiny-bin:q4_k_m" in out for out, _ in outs)   # pull's default quant
    assert sum("is up to date" in err for _, err in outs) == 1, outs   # one converted, one waited
    assert len(Store().list()) == 1
    assert Counter(hub.fetched(BIN_REPO))["pytorch_model-00001-of-00002.bin"] == 1
    p = run("pull", REPO, HF_HUB_OFFLINE="1")
    out, err = p.communicate(timeout=120)
    assert p.returncode == 1
    assert err.strip().splitlines() == [
        f"error: {REPO}: offline (HF_HUB_OFFLINE is set), and revision 'main' is not in the "
        f"Hugging Face cache ({os.environ['HF_HOME']}/hub); connect to the network once to pull it"]


# -- resolve_model: what `kiln chat/run` will call -------------------------------------------------
def test_resolve_model_end_to_end_then_offline(hub, monkeypatch):
    asked = []
    path = resolve_model(REPO, confirm=lambda msg: asked.append(msg) or True)
    assert path == Store().get("tiny-llama", "q8_0").path and path.read_bytes()[:4] == b"GGUF"
    assert len(asked) == 1 and asked[0].startswith(f"{REPO}@{hub.repos[REPO].commit[:7]}: ")
    assert "download 4 files" in asked[0] and "KB" in asked[0] and "convert to q8_0" in asked[0]

    hub.stop()                                            # network refused, then offline too
    never = lambda msg: pytest.fail("asked again: " + msg)   # noqa: E731
    assert resolve_model(REPO, confirm=never) == path
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert resolve_model(REPO, confirm=never) == path
    assert resolve_model(f"{REPO}:q8_0") == path
    assert resolve_model("tiny-llama") == path
    assert resolve_model("tiny-llama:q8_0") == path
    assert resolve_model(str(path)) == path
    with pytest.raises(KilnError, match=r"acme/tiny-bin: offline \(HF_HUB_OFFLINE is set\)"):
        resolve_model(BIN_REPO)
    with pytest.raises(KilnError, match="no model named 'tiny-bin'"):
        resolve_model("tiny-bin")


def test_resolve_model_declined_and_other_quants(hub):
    with pytest.raises(Cancelled, match="download declined"):
        resolve_model(BIN_REPO, confirm=lambda msg: False)
    assert weights_fetched(hub, BIN_REPO) == [] and Store().list() == []
    q4 = resolve_model(f"{REPO}:q4_0")
    q8 = resolve_model(REPO)
    assert q4.name == "q4_0.gguf" and q8.name == "q8_0.gguf"
    assert resolve_model("tiny-llama:q4_0") == q4
    assert resolve_model("tiny-llama") == q8              # the default quant among several
    assert resolve_model("tiny-llama", quant="q4_0") == q4
    assert Counter(hub.fetched(REPO))["model.safetensors"] == 1


def test_import_list_show_rm(checkpoints, tmp_path, capsys):
    from convert.pipeline import convert

    made = tmp_path / "Tiny-Llama.Q8_0.gguf"
    convert(checkpoints[0], made, "q8_0")
    assert kiln("import", made, "--quiet") == 0
    entry = Store().get("tiny-llama", "q8_0")
    assert entry.manifest["sha256"] == sha256(made) and entry.manifest["family"] == "llama"
    assert entry.manifest["source"]["imported_from"] == str(made.resolve())
    assert made.is_file()                                  # copied, not moved
    assert resolve_model("tiny-llama") == entry.path
    assert resolve_model(str(made)) == made
    capsys.readouterr()
    assert kiln("import", made) == 1
    assert "already in the store" in capsys.readouterr().err
    assert kiln("import", made, "other", "--quant", "custom_tag", "--quiet") == 0
    assert kiln("list") == 0
    table = capsys.readouterr().out
    assert "other:custom_tag" in table and "imported Tiny-Llama.Q8_0.gguf" in table
    not_gguf = tmp_path / "notes.gguf"
    not_gguf.write_text("hello")
    with pytest.raises(KilnError, match="not a GGUF file"):
        Store().import_gguf(not_gguf)
    with pytest.raises(KilnError, match="not a GGUF file"):
        resolve_model(str(not_gguf))
    with pytest.raises(KilnError, match="no such file"):
        resolve_model("missing.gguf")
    with pytest.raises(KilnError, match="is a checkpoint folder; convert it with `kiln convert`"):
        resolve_model(str(checkpoints[0]))
    assert kiln("rm", "other:custom_tag", "tiny-llama") == 0
    assert Store().list() == []


# -- names never leave the store -----------------------------------------------------------------
BAD_NAMES = ["../evil", "..", ".", "a/b", "/etc/passwd", "a\\b", "C:evil", "con", "nul.txt",
             "x" * 101, "", " ", "-x", ".hidden", "a..b", "évil", "a b", "name/../../x"]


@pytest.mark.parametrize("bad", BAD_NAMES)
def test_names_cannot_escape_the_store(bad, tmp_path, hub):
    with pytest.raises(KilnError):
        check_name(bad)
    with pytest.raises(KilnError):
        Store().show(bad)
    with pytest.raises(KilnError):
        Store().remove(bad)
    with pytest.raises(KilnError):
        Store().gguf_path(bad, "q8_0")
    with pytest.raises(KilnError, match="not a valid model name"):
        Store().import_gguf(tmp_path / "any.gguf", bad)
    with pytest.raises(KilnError):
        Store().pull("acme/tiny-llama", name=bad)
    if bad != "a/b":                                      # that one is a repo id's shape
        with pytest.raises(KilnError):
            resolve_model(bad)
    assert hub.log == []                                  # refused before any network use
    assert not (tmp_path / "evil").exists() and not (tmp_path / "kiln" / "evil").exists()


@pytest.mark.parametrize("bad", ["acme/../etc", "../acme/x", "a/b/c", "acme/x@../../y", "acme/",
                                 "/acme/x", "acme/x y", "acme--x/y"])
def test_bad_repo_ids_and_quant_tags(bad):
    from convert.hub import parse_repo_spec

    with pytest.raises(KilnError):
        parse_repo_spec(bad)
    with pytest.raises(KilnError):
        Store().gguf_path("fine", "../q8_0")
    with pytest.raises(KilnError):
        resolve_model("fine:../../x")


def test_default_home(monkeypatch, tmp_path):
    monkeypatch.delenv("KILN_HOME")
    monkeypatch.setattr(Path, "home", classmethod(lambda cls: tmp_path))
    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.setenv("XDG_DATA_HOME", "/data")
    assert store_mod.default_home() == Path("/data/kiln")
    monkeypatch.setenv("XDG_DATA_HOME", "relative/ignored")
    assert store_mod.default_home() == tmp_path / ".local" / "share" / "kiln"
    monkeypatch.setattr(sys, "platform", "darwin")
    assert store_mod.default_home() == tmp_path / "Library" / "Application Support" / "kiln"
    monkeypatch.setattr(sys, "platform", "win32")
    monkeypatch.setenv("LOCALAPPDATA", str(tmp_path / "Local"))
    assert store_mod.default_home() == tmp_path / "Local" / "kiln"
    monkeypatch.setenv("KILN_HOME", "~/models")
    assert store_mod.default_home() == Path(os.path.expanduser("~/models"))


def test_kiln_run_repo_id_then_network_refused(hub, monkeypatch, capsys):
    """`kiln run REPO_ID`: pulled and converted on first use, then served with no network."""
    pytest.importorskip("llama_cpp")
    from runtime.cli import cli

    def run() -> dict:
        try:
            run_cli(cli, ["run", REPO, "Hello", "--json", "--max-tokens", "4", "--ctx", "64",
                          "--device", "cpu", "--temperature", "0"])
        except SystemExit as exc:
            assert exc.code in (0, None), capsys.readouterr().err
        return json.loads(capsys.readouterr().out)

    first = run()
    assert first["generated_tokens"] >= 1
    assert Counter(hub.fetched(REPO))["model.safetensors"] == 1
    hub.stop()                                            # connections refused from here on
    refused = run()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    offline = run()
    for again in (refused, offline):
        assert (again["text"], again["prompt_tokens"]) == (first["text"], first["prompt_tokens"])


def test_kiln_convert_repo_id(hub, tmp_path, monkeypatch):
    """`kiln convert REPO_ID -o OUT`: downloads what conversion needs, then converts."""
    from convert.gguf_info import read_info
    from runtime.cli import cli

    out = tmp_path / "from-hub.gguf"
    try:
        run_cli(cli, ["convert", REPO, "-o", str(out), "--quant", "q8_0", "--quiet"])
    except SystemExit as exc:
        assert exc.code in (0, None)
    assert read_info(out)["metadata"]["general.file_type"] == 7
    assert Counter(hub.fetched(REPO))["model.safetensors"] == 1
    assert not any(name.endswith(".py") for name in hub.fetched(REPO))
