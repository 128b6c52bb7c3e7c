"""Bad input: one clear line naming the file, a non-zero exit, and no output left behind."""
from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from hf_models import build

pytest.importorskip("torch")
pytest.importorskip("transformers")

from convert.cli import run_cli  # noqa: E402
from runtime.cli import cli  # noqa: E402


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    return build("llama", tmp_path_factory.mktemp("good"), shard="40KB")


@pytest.fixture
def model(good, tmp_path):
    """A fresh copy of the good checkpoint to break."""
    dst = tmp_path / "model"
    shutil.copytree(good, dst)
    return dst


def fails(capsys, *args) -> str:
    """Run kiln, expect a non-zero exit; return the one error line."""
    with pytest.raises(SystemExit) as exc:
        run_cli(cli, [str(a) for a in args])
    assert exc.value.code not in (0, None)
    err = capsys.readouterr().err.strip().splitlines()
    assert err, "no error message"
    return err[-1]


def no_output_left(out: Path) -> None:
    assert not out.exists()
    leftovers = [p.name for p in out.parent.iterdir() if ".partial" in p.name]
    assert leftovers == []


def test_missing_config(capsys, model, tmp_path):
    (model / "config.json").unlink()
    out = tmp_path / "o.gguf"
    line = fails(capsys, "convert", model, "-o", out)
    assert "config.json" in line and "not found" in line
    no_output_left(out)


def test_not_a_folder(capsys, tmp_path):
    out = tmp_path / "o.gguf"
    (tmp_path / "file").write_text("x")
    line2 = fails(capsys, "convert", tmp_path / "file", "-o", out)
    assert "file" in line2 and "not a folder" in line2
    line = fails(capsys, "convert", tmp_path / "nope", "-o", out)
    assert "nope" in line and "no such folder" in line


def test_unknown_architecture_lists_supported(capsys, model, tmp_path):
    cfg = json.loads((model / "config.json").read_text())
    cfg["architectures"] = ["FancyNetForCausalLM"]
    (model / "config.json").write_text(json.dumps(cfg))
    out = tmp_path / "o.gguf"
    line = fails(capsys, "convert", model, "-o", out)
    assert "FancyNetForCausalLM" in line and "not supported" in line
    assert "LlamaForCausalLM" in line and "MixtralForCausalLM" in line
    no_output_left(out)


def _shards(model: Path) -> list[Path]:
    return sorted(model.glob("model-*.safetensors"))


def test_missing_shard(capsys, model, tmp_path):
    victim = _shards(model)[1]
    victim.unlink()
    out = tmp_path / "o.gguf"
    line = fails(capsys, "convert", model, "-o", out)
    assert victim.name in line
    no_output_left(out)


def test_truncated_shard(capsys, model, tmp_path):
    victim = _shards(model)[-1]
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) - 100])
    out = tmp_path / "o.gguf"
    line = fails(capsys, "convert", model, "-o", out)
    assert victim.name in line and "truncated" in line.lower()
    no_output_left(out)


def test_index_names_missing_file(capsys, model, tmp_path):
    index = model / "model.safetensors.index.json"
    data = json.loads(index.read_text())
    first = next(iter(data["weight_map"]))
    data["weight_map"][first] = "model-99999-of-99999.safetensors"
    index.write_text(json.dumps(data))
    out = tmp_path / "o.gguf"
    line = fails(capsys, "convert", model, "-o", out)
    assert "model-99999-of-99999.safetensors" in line
    no_output_left(out)


def test_corrupt_safetensors_header(capsys, model, tmp_path):
    victim = _shards(model)[0]
    data = bytearray(victim.read_bytes())
    (n,) = struct.unpack("<Q", data[:8])
    data[8:8 + n] = b"{" + b"x" * (n - 1)  # same length, not JSON
    victim.write_bytes(bytes(data))
    out = tmp_path / "o.gguf"
    line = fails(capsys, "convert", model, "-o", out)
    assert victim.name in line and "header" in line.lower()
    no_output_left(out)


def test_unsupported_dtype(capsys, tmp_path):
    import torch

    model = build("llama", tmp_path / "m")
    from safetensors.torch import load_file, save_file
    path = model / "model.safetensors"
    state = load_file(path)
    state["model.norm.weight"] = state["model.norm.weight"].to(torch.float8_e4m3fn)
    save_file(state, path, metadata={"format": "pt"})
    out = tmp_path / "o.gguf"
    line = fails(capsys, "convert", model, "-o", out)
    assert "model.norm.weight" in line and "F8_E4M3" in line
    no_output_left(out)


def test_shape_disagrees_with_config(capsys, model, tmp_path):
    cfg = json.loads((model / "config.json").read_text())
    cfg["intermediate_size"] = 96
    (model / "config.json").write_text(json.dumps(cfg))
    out = tmp_path / "o.gguf"
    line = fails(capsys, "convert", model, "-o", out)
    assert "mlp.gate_proj.weight" in line and "config.json implies" in line
    assert ".safetensors" in line
    no_output_left(out)


def test_unknown_quant(capsys, model, tmp_path):
    line = fails(capsys, "convert", model, "-o", tmp_path / "o.gguf", "--quant", "q3_x")
    assert "q3_x" in line and "q8_0" in line


def test_output_folder_missing(capsys, model, tmp_path):
    out = tmp_path / "no" / "such" / "o.gguf"
    line = fails(capsys, "convert", model, "-o", out)
    assert str(out) in line and "does not exist" in line


def test_output_unwritable(capsys, model, tmp_path, monkeypatch):
    import builtins
    real_open = builtins.open

    def deny(file, mode="r", *a, **k):
        if "partial" in os.fspath(file) and "w" in mode:
            raise PermissionError(13, "Permission denied", os.fspath(file))
        return real_open(file, mode, *a, **k)

    monkeypatch.setattr(builtins, "open", deny)
    out = tmp_path / "o.gguf"
    line = fails(capsys, "convert", model, "-o", out)
    assert str(out) in line and "Permission denied" in line
    no_output_left(out)


def test_not_enough_disk_space(capsys, model, tmp_path, monkeypatch):
    monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(1 << 30, 1 << 30, 1000))
    out = tmp_path / "o.gguf"
    line = fails(capsys, "convert", model, "-o", out)
    assert str(out) in line and "not enough disk space" in line
    no_output_left(out)


def test_disk_full_mid_write(model, tmp_path):
    """A real write failure half way (file size limit), in a child process: message, no file."""
    out = tmp_path / "o.gguf"
    code = (
        "import resource, signal, sys\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))\n"
        "from runtime.cli import main\n"
        f"main(['convert', {str(model)!r}, '-o', {str(out)!r}, '--quant', 'f32'])\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 1, proc.stderr
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith("error: ") and str(out) in line and "too large" in line.lower()
    no_output_left(out)


def test_interrupt_leaves_nothing(capsys, model, tmp_path, monkeypatch):
    """Ctrl-C during quantization: exit 130, no output, no temp file."""
    import convert.pipeline as pipeline

    calls = {"n": 0}
    real = pipeline.encode

    def interrupted(x, qtype, *args):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(x, qtype, *args)

    monkeypatch.setattr(pipeline, "encode", interrupted)
    out = tmp_path / "o.gguf"
    with pytest.raises(SystemExit) as exc:
        run_cli(cli, ["convert", str(model), "-o", str(out)])
    assert exc.value.code == 130
    assert "interrupted" in capsys.readouterr().err
    no_output_left(out)


def test_existing_output_survives_failure(capsys, model, tmp_path):
    """A failed conversion must not clobber the file already at the output path."""
    out = tmp_path / "o.gguf"
    out.write_bytes(b"previous model")
    (model / "config.json").write_text("{not json")
    line = fails(capsys, "convert", model, "-o", out)
    assert "config.json" in line and "JSON" in line
    assert out.read_bytes() == b"previous model"
