"""`kiln convert --imatrix auto` and `kiln pull --imatrix auto`: a temporary Q8_0, an importance
matrix computed on it from the bundled calibration text, the real conversion with it.

The references are llama.cpp's own tools: the output equals `llama-quantize --imatrix` applied
to an F32 GGUF of the same checkpoint with the importance matrix auto kept, and that matrix equals
what `llama-imatrix` computes on a Q8_0 of the checkpoint from the same text.
"""
from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest

import llama_tools
from hf_models import build

pytest.importorskip("torch")
pytest.importorskip("transformers")
gguf = pytest.importorskip("gguf")

from runtime.cli import cli  # noqa: E402


def kiln(*args, expect: int = 0) -> subprocess.CompletedProcess:
    import sys
    res = subprocess.run([sys.executable, "-m", "runtime", *map(str, args)],
                         capture_output=True, text=True)
    assert res.returncode == expect, (res.returncode, res.stdout, res.stderr)
    return res


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    # rows of 256 so that the K-quants (blocks of 256) apply to every matrix
    return build("llama", tmp_path_factory.mktemp("tiny-llama"), hidden_size=256,
                 intermediate_size=512, num_attention_heads=4, num_key_value_heads=2,
                 max_position_embeddings=512)


def tensors(path: Path) -> dict[str, tuple[int, bytes]]:
    r = gguf.GGUFReader(path)
    return {t.name: (int(t.tensor_type), bytes(t.data.tobytes())) for t in r.tensors}


def imatrix_entries(path: Path) -> dict[str, np.ndarray]:
    r = gguf.GGUFReader(path)
    return {t.name: np.array(t.data, dtype=np.float64).reshape(-1) for t in r.tensors}


def test_convert_imatrix_auto_equals_llama_tools(ckpt, tmp_path):
    out = tmp_path / "out" / "tiny-q4_k_m.gguf"
    out.parent.mkdir()
    res = kiln("convert", ckpt, "-o", out, "--quant", "q4_k_m", "--imatrix", "auto", "--quiet")
    kept = out.parent / "tiny-q4_k_m.imatrix"
    # the output, the kept matrix, nothing else (the temporary Q8_0 is gone)
    assert sorted(p.name for p in out.parent.iterdir()) == sorted([kept.name, out.name])
    assert "imatrix auto: temporary Q8_0" in res.stdout and "chunks" in res.stdout

    # 1. the output is llama-quantize --imatrix of an F32 GGUF of the checkpoint with that matrix
    f32, ref = tmp_path / "f32.gguf", tmp_path / "ref.gguf"
    kiln("convert", ckpt, "-o", f32, "--quant", "f32", "--quiet")   # the checkpoint is F32
    quantize = llama_tools.tool("llama-quantize")
    subprocess.run([quantize, "--imatrix", kept, f32, ref, "Q4_K_M"], check=True,
                   capture_output=True)
    got, want = tensors(out), tensors(ref)
    assert got.keys() == want.keys()
    differ = [n for n in want if got[n] != want[n]]
    assert not differ, differ[:5]
    # the imatrix changed the output: plain Q4_K_M differs
    plain = tmp_path / "plain.gguf"
    kiln("convert", ckpt, "-o", plain, "--quant", "q4_k_m", "--quiet")
    assert any(tensors(plain)[n] != got[n] for n in got)

    # 2. the matrix is llama-imatrix's on a Q8_0 of the checkpoint, from the same text
    from runtime.imatrix_cli import default_text

    q8 = tmp_path / "q8.gguf"
    kiln("convert", ckpt, "-o", q8, "--quant", "q8_0", "--quiet")
    text, _ = default_text(q8)
    text_file = tmp_path / "calibration.txt"
    text_file.write_text(text, encoding="utf-8")
    theirs = tmp_path / "theirs.imatrix"
    subprocess.run([llama_tools.tool("llama-imatrix"), "-m", q8, "-f", text_file, "-c", "512",
                    "-t", "2", "--parse-special", "-o", theirs, "--no-ppl"],
                   check=True, capture_output=True)
    a, b = imatrix_entries(kept), imatrix_entries(theirs)
    assert a.keys() == b.keys() and len(a) > 10
    for name in a:
        np.testing.assert_allclose(a[name], b[name], rtol=1e-4, atol=1e-6, err_msg=name)
    meta = {f.name: f for f in gguf.GGUFReader(out).fields.values()}
    assert "quantize.imatrix.file" in meta and "quantize.imatrix.entries_count" in meta


def test_imatrix_auto_refuses_types_that_ignore_it(ckpt, tmp_path):
    out = tmp_path / "x.gguf"
    res = kiln("convert", ckpt, "-o", out, "--quant", "q8_0", "--imatrix", "auto", expect=1)
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "Q8_0 does not use an importance matrix" in lines[0]
    assert list(tmp_path.iterdir()) == []


def test_convert_alone_says_auto_needs_the_runtime(ckpt, tmp_path, monkeypatch):
    import convert.cli as convert_cli
    from click.testing import CliRunner

    monkeypatch.setattr(convert_cli, "IMATRIX_AUTO", None)
    res = CliRunner().invoke(convert_cli.convert_cmd, [str(ckpt), "-o", str(tmp_path / "x.gguf"),
                                                       "--quant", "q4_k_m", "--imatrix", "auto"])
    assert res.exit_code != 0 and "needs kiln's runtime" in str(res.exception)
    assert list(tmp_path.iterdir()) == []


def test_pull_imatrix_auto(ckpt, tmp_path, monkeypatch, capsys):
    """`kiln pull --imatrix auto` through the real huggingface-hub client against a loopback
    Hub imitation: the entry is quantized with an importance matrix and its manifest says so;
    a second pull without --imatrix keeps it, one asking for it when it lacks one re-makes it."""
    from convert.cli import run_cli
    from hub_imitation import HubImitation, files_from_dir, isolate_hf_env
    from runtime.store import Store

    monkeypatch.setenv("KILN_HOME", str(tmp_path / "kiln"))
    isolate_hf_env(monkeypatch, tmp_path / "hf")

    def kiln_in(*args) -> int:
        try:
            run_cli(cli, [str(a) for a in args])
        except SystemExit as exc:
            return exc.code or 0
        return 0

    with HubImitation() as hub:
        hub.add_repo("acme/tiny", files_from_dir(ckpt))
        monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
        assert kiln_in("pull", "acme/tiny", "--quant", "q4_k_m", "--quiet") == 0
        plain = Store().get("tiny", "q4_k_m")
        assert "imatrix" not in plain.manifest
        plain_bytes = plain.path.read_bytes()
        assert kiln_in("pull", "acme/tiny", "--quant", "q4_k_m", "--imatrix", "auto",
                       "--quiet") == 0
        out = capsys.readouterr().out
        assert "imatrix auto:" in out
        entry = Store().get("tiny", "q4_k_m")
        assert entry.manifest["imatrix"]["auto"] is True and entry.manifest["imatrix"]["chunks"] > 0
        assert entry.path.read_bytes() != plain_bytes
        meta = gguf.GGUFReader(entry.path).fields
        assert "quantize.imatrix.entries_count" in meta
        # nothing left behind in the store folder but the entry and its manifest
        leftovers = [p.name for p in entry.path.parent.iterdir()
                     if p.name.startswith(".kiln-imatrix") or "tmp" in p.name]
        assert leftovers == []
        # refused before any download: a type that ignores an importance matrix
        assert kiln_in("pull", "acme/tiny", "--quant", "q8_0", "--imatrix", "auto") == 1
        assert "Q8_0 does not use an importance matrix" in capsys.readouterr().err
