"""convert.checkpoint / convert.torch_bin: real files written by torch and safetensors, plus
hand-made corrupt and malicious ones."""
from __future__ import annotations

import io
import json
import os
import pickle
import struct
import subprocess
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from convert.checkpoint import Checkpoint, TensorInfo
from convert.errors import KilnError


# --- helpers ---------------------------------------------------------------------------------

def ref(t: torch.Tensor) -> np.ndarray:
    t = t.detach().contiguous()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(np.uint16)
    return t.numpy()


def assert_same(ck: Checkpoint, tensors: dict[str, torch.Tensor]) -> None:
    for name, t in tensors.items():
        a = ck.array(name)
        want = ref(t)
        assert a.dtype == want.dtype, name
        assert a.shape == tuple(t.shape), name
        assert np.array_equal(a, want), name
        assert not a.flags.writeable, name


def raises(match_path: Path, *fragments: str):
    """Context: a KilnError whose path is `match_path` and whose text holds every fragment."""
    class _Ctx:
        def __enter__(self):
            self.cm = pytest.raises(KilnError)
            self.info = self.cm.__enter__()
            return self.info

        def __exit__(self, *exc):
            handled = self.cm.__exit__(*exc)
            err = self.info.value
            assert err.path == os.fspath(match_path), str(err)
            text = str(err)
            assert text.startswith(os.fspath(match_path) + ": "), text
            assert "\n" not in err.problem
            for frag in fragments:
                assert frag in text, text
            return handled
    return _Ctx()


def st_bytes(header: dict, data: bytes = b"", raw_header: bytes | None = None) -> bytes:
    h = raw_header if raw_header is not None else json.dumps(header).encode()
    return struct.pack("<Q", len(h)) + h + data


def write_index(path: Path, weight_map: dict[str, str], total: int = 0) -> None:
    path.write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map},
                               indent=2, sort_keys=True))


def torch_zip(path: Path, pkl: bytes, storages: dict[str, bytes] | None = None,
              prefix: str = "archive", compression: int = zipfile.ZIP_STORED) -> Path:
    """A zip laid out like torch.save's, with a hand-written data.pkl."""
    with zipfile.ZipFile(path, "w", compression=compression) as z:
        z.writestr(f"{prefix}/data.pkl", pkl)
        z.writestr(f"{prefix}/byteorder", "little")
        for key, data in (storages or {}).items():
            z.writestr(f"{prefix}/data/{key}", data)
        z.writestr(f"{prefix}/version", "3\n")
    return path


def rchar() -> int | None:
    try:
        with open("/proc/self/io") as f:
            for line in f:
                if line.startswith("rchar:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


@pytest.fixture(scope="module")
def weights() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "model.embed_tokens.weight": torch.randn(16, 8, generator=g).to(torch.bfloat16),
        "model.layers.0.attn.q_proj.weight": torch.randn(8, 8, generator=g).to(torch.float16),
        "model.layers.0.attn.k_proj.weight": torch.randn(4, 8, generator=g),
        "model.layers.0.mlp.up.weight": torch.randn(12, 8, generator=g).to(torch.bfloat16),
        "model.norm.weight": torch.randn(8, generator=g, dtype=torch.float64),
        "model.pos_ids": torch.arange(5, dtype=torch.int64),
        "model.mask": torch.tensor([True, False, True]),
        "model.scalar": torch.tensor(2.5),
    }


# --- safetensors -----------------------------------------------------------------------------

def test_single_safetensors(tmp_path, weights):
    save_file(weights, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with Checkpoint(tmp_path) as ck:
        assert ck.format == "safetensors"
        assert ck.files == [tmp_path / "model.safetensors"]
        assert set(ck.tensors) == set(weights)
        info = ck.tensors["model.embed_tokens.weight"]
        assert info == TensorInfo("model.embed_tokens.weight", (16, 8), "BF16",
                                  tmp_path / "model.safetensors")
        assert ck.tensors["model.layers.0.attn.q_proj.weight"].dtype == "F16"
        assert ck.tensors["model.norm.weight"].dtype == "F64"
        assert ck.tensors["model.mask"].dtype == "BOOL"
        assert ck.tensors["model.scalar"].shape == ()
        assert ck.total_bytes == sum(t.numel() * t.element_size() for t in weights.values())
        assert_same(ck, weights)
        a = ck.array("model.embed_tokens.weight")
        assert a.dtype == np.uint16 and not a.flags.owndata
        with pytest.raises(ValueError):
            a[0, 0] = 1
        # one map per file, kept
        ck.array("model.norm.weight")
        assert len(ck._maps) == 1


def test_sharded_safetensors_with_index(tmp_path, weights):
    names = list(weights)
    shards = {"model-00001-of-00002.safetensors": names[:3],
              "model-00002-of-00002.safetensors": names[3:]}
    wm = {}
    for fname, part in shards.items():
        save_file({n: weights[n] for n in part}, tmp_path / fname)
        wm.update({n: fname for n in part})
    write_index(tmp_path / "model.safetensors.index.json", wm)
    # a pytorch copy next to it must be ignored: safetensors wins
    torch.save({"other": torch.zeros(1)}, tmp_path / "pytorch_model.bin")
    with Checkpoint(tmp_path) as ck:
        assert ck.format == "safetensors"
        assert ck.files == [tmp_path / f for f in shards]
        order = list(ck.tensors)
        assert set(order[:3]) == set(shards["model-00001-of-00002.safetensors"])
        assert ck.tensors[names[4]].path == tmp_path / "model-00002-of-00002.safetensors"
        assert_same(ck, weights)


def test_several_safetensors_without_index(tmp_path, weights):
    names = list(weights)
    save_file({n: weights[n] for n in names[4:]}, tmp_path / "b.safetensors")
    save_file({n: weights[n] for n in names[:4]}, tmp_path / "a.safetensors")
    with Checkpoint(tmp_path) as ck:
        assert ck.files == [tmp_path / "a.safetensors", tmp_path / "b.safetensors"]
        assert set(list(ck.tensors)[:4]) == set(names[:4])
        assert_same(ck, weights)


def test_safetensors_preferred_over_bin_index(tmp_path, weights):
    save_file(weights, tmp_path / "model.safetensors")
    torch.save({"x": torch.zeros(1)}, tmp_path / "pytorch_model-00001-of-00001.bin")
    write_index(tmp_path / "pytorch_model.bin.index.json",
                {"x": "pytorch_model-00001-of-00001.bin"})
    with Checkpoint(tmp_path) as ck:
        assert ck.format == "safetensors" and set(ck.tensors) == set(weights)


def test_array_refuses_fp8(tmp_path):
    save_file({"w": torch.zeros(4, dtype=torch.float8_e4m3fn), "ok": torch.ones(2)},
              tmp_path / "model.safetensors")
    with Checkpoint(tmp_path) as ck:
        assert ck.tensors["w"].dtype == "F8_E4M3"
        assert ck.array("ok").tolist() == [1.0, 1.0]
        with raises(tmp_path / "model.safetensors",
                    "tensor 'w' has dtype F8_E4M3, which kiln cannot convert"):
            ck.array("w")


def test_opening_reads_no_tensor_data(tmp_path):
    """A 512 MiB (sparse) safetensors file and a 16 MiB .bin open without reading their data."""
    n = 128 * 1024 * 1024
    path = tmp_path / "model.safetensors"
    header = json.dumps({"big": {"dtype": "F32", "shape": [n // 1024, 1024],
                                 "data_offsets": [0, 4 * n]}}).encode()
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(header)) + header)
        f.truncate(8 + len(header) + 4 * n)
    torch.save({"w": torch.zeros(4 * 1024 * 1024)}, tmp_path / "w.bin")

    before = rchar()
    with Checkpoint(path) as ck:
        a = ck.array("big")
        assert a.shape == (n // 1024, 1024) and a.dtype == np.float32
        with Checkpoint(tmp_path / "w.bin") as cb:
            b = cb.array("w")
            assert b.shape == (4 * 1024 * 1024,)
            after = rchar()
            if before is not None:
                assert after - before < 1024 * 1024, after - before
            assert b[-3:].tolist() == [0.0, 0.0, 0.0]
        assert a[-1, -2:].tolist() == [0.0, 0.0]
        del a, b


# --- torch .bin ------------------------------------------------------------------------------

def test_bin_values_and_noncontiguous(tmp_path, weights):
    base = torch.arange(48, dtype=torch.float32).reshape(6, 8)
    shared = torch.arange(20, dtype=torch.float16)
    sd = dict(weights)
    sd.update({
        "transposed": base.t(),                     # stride (1, 8)
        "sliced": base[2:5, 1:7],                   # storage offset 17, row stride 8
        "strided": base[::2, ::3],                  # step slicing
        "shared.a": shared[:10].view(2, 5),         # two tensors on one storage
        "shared.b": shared[10:],
        "param": torch.nn.Parameter(torch.randn(3, 3)),
        "u16": torch.tensor([0, 1, 65535], dtype=torch.uint16),  # written with _rebuild_tensor_v3
        "empty": torch.zeros(0, 4),
        "expanded": torch.ones(1, 4).expand(3, 4),  # stride 0
    })
    torch.save(sd, tmp_path / "pytorch_model.bin")
    with Checkpoint(tmp_path) as ck:
        assert ck.format == "bin" and ck.files == [tmp_path / "pytorch_model.bin"]
        assert list(ck.tensors) == list(sd)
        assert ck.tensors["transposed"] == TensorInfo("transposed", (8, 6), "F32",
                                                      tmp_path / "pytorch_model.bin")
        assert ck.tensors["model.embed_tokens.weight"].dtype == "BF16"
        assert ck.tensors["u16"].dtype == "U16"
        assert_same(ck, sd)
        assert ck.array("transposed").strides == (4, 32)
        assert ck._locs["shared.a"].member == ck._locs["shared.b"].member   # one storage
        assert ck.total_bytes == sum(t.numel() * t.element_size() for t in sd.values())


def test_bin_tied_weights(tmp_path):
    """Two names on one tensor (tied embeddings) are stored once and both names are listed."""
    emb = torch.randn(32, 16)
    torch.save({"embed.weight": emb, "lm_head.weight": emb, "norm": torch.ones(16)},
               tmp_path / "pytorch_model.bin")
    with zipfile.ZipFile(tmp_path / "pytorch_model.bin") as z:
        assert len([n for n in z.namelist() if "/data/" in n]) == 2   # stored once
    with Checkpoint(tmp_path) as ck:
        assert list(ck.tensors) == ["embed.weight", "lm_head.weight", "norm"]
        a, b = ck.array("embed.weight"), ck.array("lm_head.weight")
        assert np.array_equal(a, emb.numpy()) and np.array_equal(b, emb.numpy())
        assert np.shares_memory(a, b)


@pytest.mark.parametrize("wrap", ["state_dict", "model"])
def test_bin_nested_state_dict(tmp_path, wrap):
    sd = {"a.weight": torch.randn(3, 2), "a.bias": torch.randn(3)}
    torch.save({wrap: sd, "epoch": 3, "lr": 0.1}, tmp_path / "pytorch_model.bin")
    with Checkpoint(tmp_path) as ck:
        assert list(ck.tensors) == ["a.weight", "a.bias"]
        assert_same(ck, sd)


def test_bin_module_state_dict(tmp_path):
    """A real nn.Module state_dict (OrderedDict with a _metadata attribute, BUILD opcode)."""
    m = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.LayerNorm(3))
    torch.save(m.state_dict(), tmp_path / "pytorch_model.bin")
    with Checkpoint(tmp_path) as ck:
        assert list(ck.tensors) == list(m.state_dict())
        assert_same(ck, m.state_dict())


def test_bin_sharded_with_index(tmp_path, weights):
    names = list(weights)
    shards = {"pytorch_model-00001-of-00002.bin": names[:5],
              "pytorch_model-00002-of-00002.bin": names[5:]}
    wm = {}
    for fname, part in shards.items():
        torch.save({n: weights[n] for n in part}, tmp_path / fname)
        wm.update({n: fname for n in part})
    write_index(tmp_path / "pytorch_model.bin.index.json", wm)
    (tmp_path / "training_args.bin").write_bytes(b"not weights")
    with Checkpoint(tmp_path) as ck:
        assert ck.format == "bin"
        assert ck.files == [tmp_path / f for f in shards]
        assert list(ck.tensors) == names
        assert_same(ck, weights)


def test_bin_shards_without_index(tmp_path, weights):
    names = list(weights)
    torch.save({n: weights[n] for n in names[4:]}, tmp_path / "pytorch_model-00002-of-00002.bin")
    torch.save({n: weights[n] for n in names[:4]}, tmp_path / "pytorch_model-00001-of-00002.bin")
    (tmp_path / "training_args.bin").write_bytes(b"\x80\x04junk")
    with Checkpoint(tmp_path) as ck:
        assert list(ck.tensors) == names
        assert_same(ck, weights)


def test_bin_compressed_member(tmp_path):
    """A zip re-packed with deflate (torch never does this) is still readable."""
    sd = {"w": torch.randn(4, 5).t(), "b": torch.randn(3).to(torch.bfloat16)}
    torch.save(sd, tmp_path / "src.bin")
    dst = tmp_path / "pytorch_model.bin"
    with zipfile.ZipFile(tmp_path / "src.bin") as zi, \
            zipfile.ZipFile(dst, "w", compression=zipfile.ZIP_DEFLATED) as zo:
        for n in zi.namelist():
            zo.writestr(n, zi.read(n))
    (tmp_path / "src.bin").unlink()
    with Checkpoint(tmp_path) as ck:
        assert_same(ck, sd)


def test_bin_legacy_format_refused(tmp_path):
    torch.save({"w": torch.zeros(2)}, tmp_path / "pytorch_model.bin",
               _use_new_zipfile_serialization=False)
    with raises(tmp_path / "pytorch_model.bin",
                "old PyTorch format; re-save it with torch>=1.6 or as safetensors"):
        Checkpoint(tmp_path)


# --- malicious pickles -----------------------------------------------------------------------

def test_pickle_os_system_refused(tmp_path):
    marker = tmp_path / "pwned"
    pkl = b"cos\nsystem\n(V" + f"touch {marker}".encode() + b"\ntR."
    # the payload works when unpickled naively (checked with a different marker)
    probe = tmp_path / "probe"
    pickle.loads(pkl.replace(str(marker).encode(), str(probe).encode()))
    assert probe.exists()

    torch_zip(tmp_path / "pytorch_model.bin", pkl)
    with raises(tmp_path / "pytorch_model.bin",
                "refusing to load: the pickle asks for 'os.system', which is not tensor data"):
        Checkpoint(tmp_path)
    assert not marker.exists()


def test_pickle_eval_refused(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return eval, (f"open({str(marker)!r}, 'w').write('x')",)

    pkl = pickle.dumps({"w": Evil()}, protocol=4)     # STACK_GLOBAL
    torch_zip(tmp_path / "pytorch_model.bin", pkl)
    with raises(tmp_path / "pytorch_model.bin", "the pickle asks for 'builtins.eval'"):
        Checkpoint(tmp_path)
    assert not marker.exists()


def test_pickle_subprocess_in_real_checkpoint_refused(tmp_path):
    """A payload hidden next to real tensors in a file written by torch.save itself."""
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return subprocess.call, (["touch", str(marker)],)

    torch.save({"w": torch.ones(3), "x": Evil()}, tmp_path / "pytorch_model.bin")
    with raises(tmp_path / "pytorch_model.bin", "refusing to load",
                "the pickle asks for 'subprocess.call', which is not tensor data"):
        Checkpoint(tmp_path)
    assert not marker.exists()


def test_pickle_build_on_allowed_global_refused(tmp_path):
    """BUILD may not set attributes (e.g. __code__) on the allowed stand-ins."""
    pkl = b"\x80\x02ctorch._utils\n_rebuild_tensor_v2\n}X\x08\x00\x00\x00__code__K\x01sb."
    torch_zip(tmp_path / "pytorch_model.bin", pkl)
    with raises(tmp_path / "pytorch_model.bin", "corrupt data.pkl"):
        Checkpoint(tmp_path)


# --- errors ----------------------------------------------------------------------------------

def test_no_weights(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "training_args.bin").write_bytes(b"x")
    with raises(tmp_path, "no model weights found (expected *.safetensors or pytorch_model*.bin)"):
        Checkpoint(tmp_path)


@pytest.mark.parametrize("index_name", ["model.safetensors.index.json",
                                        "pytorch_model.bin.index.json"])
@pytest.mark.parametrize("text", ["{not json", '{"metadata": {}}', '{"weight_map": {"a": 1}}'])
def test_index_unreadable(tmp_path, index_name, text):
    (tmp_path / index_name).write_text(text)
    with raises(tmp_path / index_name, "cannot read the index"):
        Checkpoint(tmp_path)


def test_index_names_missing_file(tmp_path):
    save_file({"a": torch.zeros(2)}, tmp_path / "model-00001-of-00002.safetensors")
    write_index(tmp_path / "model.safetensors.index.json",
                {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"})
    with raises(tmp_path / "model-00002-of-00002.safetensors", "shard file missing",
                "model.safetensors.index.json"):
        Checkpoint(tmp_path)


def test_unindexed_shard_missing(tmp_path):
    for i in (1, 3):
        save_file({f"t{i}": torch.zeros(2)}, tmp_path / f"model-0000{i}-of-00003.safetensors")
    with raises(tmp_path / "model-00002-of-00003.safetensors", "shard file missing",
                "2 of 3"):
        Checkpoint(tmp_path)


def test_tensor_in_index_but_not_in_shard(tmp_path):
    save_file({"a": torch.zeros(2)}, tmp_path / "model-00001-of-00002.safetensors")
    save_file({"b": torch.zeros(2)}, tmp_path / "model-00002-of-00002.safetensors")
    write_index(tmp_path / "model.safetensors.index.json",
                {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors",
                 "c": "model-00002-of-00002.safetensors"})
    with raises(tmp_path / "model-00002-of-00002.safetensors", "tensor 'c'",
                "does not contain it"):
        Checkpoint(tmp_path)


def test_bin_tensor_in_index_but_not_in_shard(tmp_path):
    torch.save({"a": torch.zeros(2)}, tmp_path / "pytorch_model-00001-of-00001.bin")
    write_index(tmp_path / "pytorch_model.bin.index.json",
                {"a": "pytorch_model-00001-of-00001.bin", "z": "pytorch_model-00001-of-00001.bin"})
    with raises(tmp_path / "pytorch_model-00001-of-00001.bin", "tensor 'z'"):
        Checkpoint(tmp_path)


def test_same_tensor_in_two_shards(tmp_path):
    save_file({"a": torch.zeros(2), "dup": torch.ones(2)}, tmp_path / "a.safetensors")
    save_file({"dup": torch.ones(2)}, tmp_path / "b.safetensors")
    with raises(tmp_path / "b.safetensors", "tensor 'dup'", "a.safetensors", "two shards"):
        Checkpoint(tmp_path)


def test_same_tensor_in_two_bin_shards(tmp_path):
    torch.save({"dup": torch.ones(2)}, tmp_path / "pytorch_model-00001-of-00002.bin")
    torch.save({"dup": torch.ones(2)}, tmp_path / "pytorch_model-00002-of-00002.bin")
    with raises(tmp_path / "pytorch_model-00002-of-00002.bin", "tensor 'dup'", "two shards"):
        Checkpoint(tmp_path)


def test_truncated_safetensors_data(tmp_path):
    path = tmp_path / "model.safetensors"
    save_file({"a": torch.zeros(100), "b": torch.ones(100)}, path)
    full = path.stat().st_size
    with open(path, "r+b") as f:
        f.truncate(full - 10)
    with raises(path, "truncated", f"ends at byte {full}", f"only {full - 10} bytes"):
        Checkpoint(tmp_path)


def test_truncated_safetensors_header(tmp_path):
    path = tmp_path / "model.safetensors"
    save_file({"a": torch.zeros(4)}, path)
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    path.write_bytes(data[:20])
    with raises(path, "truncated", f"needs {8 + n} bytes", "only 20 bytes"):
        Checkpoint(tmp_path)
    path.write_bytes(data[:5])
    with raises(path, "truncated", "only 5 bytes"):
        Checkpoint(tmp_path)


F32_4 = {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}


@pytest.mark.parametrize("blob, expect", [
    (struct.pack("<Q", 2**62) + b"{}", "header length 4611686018427387904 is absurd"),
    (st_bytes({}, b"", raw_header=b"{\"a\": [1, 2"), "not JSON"),
    (st_bytes({}, b"", raw_header=b"\xff\xfe{}  "), "not JSON"),
    (st_bytes({}, raw_header=b"[1, 2]"), "not a JSON object"),
    (st_bytes({"a": {"dtype": "F32", "shape": [4]}}, bytes(16)), "tensor 'a' lacks data_offsets"),
    (st_bytes({"a": {"shape": [4], "data_offsets": [0, 16]}}, bytes(16)), "lacks dtype"),
    (st_bytes({"a": F32_4, "b": {"dtype": "F32", "shape": [4], "data_offsets": [8, 24]}},
              bytes(24)), "overlap"),
    (st_bytes({"a": {"dtype": "F32", "shape": [5], "data_offsets": [0, 16]}}, bytes(16)),
     "which is 20 bytes"),
    (st_bytes({"a": {"dtype": "F32", "shape": [4], "data_offsets": [16, 0]}}, bytes(16)),
     "bad data_offsets"),
    (st_bytes({"a": {"dtype": "F32", "shape": [-4], "data_offsets": [0, 16]}}, bytes(16)),
     "bad shape"),
    (st_bytes({"a": {"dtype": "Q4", "shape": [4], "data_offsets": [0, 16]}}, bytes(16)),
     "unknown dtype"),
    (st_bytes({}, raw_header=b'{"a": %s, "a": %s}' % ((json.dumps(F32_4).encode(),) * 2))
     + bytes(16), "listed twice"),
])
def test_corrupt_safetensors_header(tmp_path, blob, expect):
    path = tmp_path / "model.safetensors"
    path.write_bytes(blob)
    with raises(path, "corrupt safetensors header", expect):
        Checkpoint(tmp_path)


def test_lfs_pointer(tmp_path):
    path = tmp_path / "model.safetensors"
    path.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 123\n")
    with raises(path, "Git LFS pointer"):
        Checkpoint(tmp_path)


def test_truncated_bin(tmp_path):
    path = tmp_path / "pytorch_model.bin"
    torch.save({"w": torch.randn(1000)}, path)
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.truncate(size // 2)
    with raises(path, "truncated", f"{size // 2} bytes"):
        Checkpoint(tmp_path)


def test_bin_missing_storage_member(tmp_path):
    buf = io.BytesIO()
    torch.save({"w": torch.randn(4)}, buf)
    with zipfile.ZipFile(io.BytesIO(buf.getvalue())) as z:
        pkl = z.read("archive/data.pkl")
    torch_zip(tmp_path / "pytorch_model.bin", pkl)          # no archive/data/0
    with raises(tmp_path / "pytorch_model.bin", "storage '0' is missing"):
        Checkpoint(tmp_path)


def test_bin_storage_too_small(tmp_path):
    buf = io.BytesIO()
    torch.save({"w": torch.randn(4)}, buf)
    with zipfile.ZipFile(io.BytesIO(buf.getvalue())) as z:
        pkl = z.read("archive/data.pkl")
    torch_zip(tmp_path / "pytorch_model.bin", pkl, {"0": bytes(8)})
    with raises(tmp_path / "pytorch_model.bin", "storage '0' should hold 16 bytes"):
        Checkpoint(tmp_path)


def test_bin_not_a_checkpoint(tmp_path):
    (tmp_path / "pytorch_model.bin").write_bytes(b"GGUF\x03\x00\x00\x00" + bytes(64))
    with raises(tmp_path / "pytorch_model.bin", "not a PyTorch checkpoint"):
        Checkpoint(tmp_path)


def test_array_after_close(tmp_path):
    save_file({"a": torch.ones(3)}, tmp_path / "model.safetensors")
    ck = Checkpoint(tmp_path)
    kept = ck.array("a")
    ck.close()
    assert kept.tolist() == [1.0, 1.0, 1.0]     # views handed out stay valid
    with pytest.raises(ValueError):
        ck.array("a")
