"""The command line as users meet it: help texts, inspect, and the README's demo."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def kiln(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "runtime", *map(str, args)], capture_output=True,
                          text=True, timeout=300, **kw)


def test_help_lists_commands():
    out = kiln("--help")
    assert out.returncode == 0
    for cmd in ("convert", "inspect", "chat", "run", "doctor"):
        assert cmd in out.stdout


def test_convert_help_explains_quant_types():
    out = kiln("convert", "--help")
    assert out.returncode == 0
    assert all(q in out.stdout for q in ("f32", "f16", "bf16", "q8_0", "q4_0"))


def test_demo_then_inspect(tmp_path):
    pytest.importorskip("llama_cpp")
    demo = subprocess.run([sys.executable, str(ROOT / "scripts" / "demo.py"), "--offline", "--out",
                           str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert demo.returncode == 0, demo.stderr
    assert "demo OK" in demo.stdout
    gguf_path = tmp_path / "tiny-llama-q8_0.gguf"
    info = json.loads(kiln("inspect", gguf_path, "--json").stdout)
    assert info["metadata"]["general.architecture"] == "llama"
    assert info["types"]["Q8_0"]["count"] == 16 and info["types"]["F32"]["count"] == 5
    assert len(info["tensors"]) == info["n_tensors"] == 21
    text = kiln("inspect", gguf_path).stdout
    assert "tokenizer.ggml.model = 'gpt2'" in text and "Q8_0" in text


def test_inspect_rejects_non_gguf(tmp_path):
    bad = tmp_path / "x.gguf"
    bad.write_bytes(b"not a gguf at all")
    out = kiln("inspect", bad)
    assert out.returncode == 1
    assert str(bad) in out.stderr and "not a readable GGUF" in out.stderr


def test_doctor_says_which_threads_and_why():
    pytest.importorskip("llama_cpp")
    from runtime.device import physical_cores

    out = kiln("doctor", "--json")
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout)
    cores = physical_cores() or info["logical_cpus"]
    assert info["default_threads"] == max(1, cores - 1)
    assert info["threads_why"].startswith(f"{info['default_threads']} ")
    assert "spin-wait" in info["threads_why"] or cores == 1
