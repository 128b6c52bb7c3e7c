"""kiln imatrix: importance matrices collected through llama.cpp's eval callback, checked against
llama.cpp's own `llama-imatrix` binary on the same GGUF, text, context and threads (built from
the llama-cpp-python sdist; that tier is skipped, with the reason, when it cannot be built).

Also: kiln's file loads in `llama-quantize --imatrix` and quantizes byte for byte as `kiln
quantize --imatrix`; llama-imatrix's file loads in kiln; the bad inputs of the CLI.
"""
from __future__ import annotations

import subprocess

import numpy as np
import pytest

pytest.importorskip("llama_cpp")
pytest.importorskip("torch")
pytest.importorskip("transformers")

import gguf  # noqa: E402
from hf_models import CORPUS, kiln, kiln_fails, nothing_left  # noqa: E402
from kquant_ref import build_case, differences  # noqa: E402

from convert import imatrix as imatrix_file  # noqa: E402
from convert.gguf_file import GGUFFile  # noqa: E402
from convert.pipeline import convert  # noqa: E402
from runtime import imatrix as collect  # noqa: E402

CTX, THREADS, RTOL = 128, 2, 1e-4
# (case of kquant_ref, GGUF type): dense llama (F16, BF16), MoE mixtral (F16, Q8_0), MPT's fused
# qkv, Jais (ALiBi, muP, its own arch), XVERSE
MODELS = [("llama-8layers", "f16"), ("llama-8layers", "bf16"), ("mixtral-4experts", "f16"),
          ("mixtral-4experts", "q8_0"), ("mpt-fused-qkv", "f16"), ("jais-mup-bf16", "f16"),
          ("xverse", "f16")]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    made: dict = {}

    def get(case: str, quant: str = "f16"):
        if case not in made:
            d = tmp_path_factory.mktemp(case)
            made[case] = (d, build_case(case, d / "hf"))
        d, hf = made[case]
        out = d / f"{case}-{quant}.gguf"
        if not out.exists():
            convert(hf, out, quant, threads=THREADS)
        return out
    return get


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    """29 chunks of 128 tokens: a full group of 16 sequences, then one of 13."""
    path = tmp_path_factory.mktemp("text") / "calibration.txt"
    path.write_text("\n".join(CORPUS) + "\n", encoding="utf-8")
    return path


def tool(name: str):
    import llama_tools
    return llama_tools.tool(name)


def llama_imatrix(model, text, out, ctx=CTX, extra=()):
    run = subprocess.run([str(tool("llama-imatrix")), "-m", str(model), "-f", str(text),
                          "-o", str(out), "-c", str(ctx), "-t", str(THREADS), "--no-ppl", *extra],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    return out


def kiln_imatrix(model, text, out, ctx=CTX, **kw):
    return collect.compute_imatrix(model, out, collect.read_text_files([text]),
                                   datasets=[str(text)], ctx=ctx, threads=THREADS, **kw)


def raw(path):
    """What the file holds, read with gguf-py: (keys, {entry: (in_sum2, counts)}, header bytes)."""
    r = gguf.GGUFReader(path)
    keys = {}
    for k, f in r.fields.items():
        if k.startswith("GGUF."):
            continue
        if f.types[0] == gguf.GGUFValueType.ARRAY:
            keys[k] = [bytes(f.parts[i]).decode() for i in f.data]
        elif f.types[0] == gguf.GGUFValueType.STRING:
            keys[k] = bytes(f.parts[f.data[0]]).decode()
        else:
            keys[k] = int(f.parts[f.data[0]][0])
    entries: dict = {}
    for t in r.tensors:
        base, kind = t.name.rsplit(".", 1)
        arr = np.array(t.data, dtype=np.float32)
        entries.setdefault(base, {})[kind] = (arr, [int(n) for n in t.shape])
    header = path.read_bytes()[: min(t.data_offset for t in r.tensors)]
    return keys, entries, header


def max_rel(a: np.ndarray, b: np.ndarray) -> float:
    scale = np.maximum(np.abs(b), np.finfo(np.float32).tiny)
    return float(np.max(np.abs(a - b) / scale))


def assert_same_imatrix(ours, ref, label, same_dataset=True):
    k1, e1, h1 = raw(ours)
    k2, e2, h2 = raw(ref)
    if not same_dataset:
        k1.pop("imatrix.datasets"), k2.pop("imatrix.datasets")
    assert k1 == k2, (label, k1, k2)
    assert sorted(e1) == sorted(e2), (label, sorted(set(e1) ^ set(e2)))
    worst = 0.0
    for name in e2:
        (s1, sh1), (s2, sh2) = e1[name]["in_sum2"], e2[name]["in_sum2"]
        (c1, csh1), (c2, csh2) = e1[name]["counts"], e2[name]["counts"]
        assert (sh1, csh1) == (sh2, csh2), (label, name, sh1, sh2, csh1, csh2)
        assert np.array_equal(c1, c2), (label, name, c1, c2)
        worst = max(worst, max_rel(s1, s2))
        np.testing.assert_allclose(s1, s2, rtol=RTOL, atol=0, err_msg=f"{label} {name}")
    # same keys, entries, shapes and order: the bytes before the data are llama-imatrix's
    assert h1 == h2 or not same_dataset, label
    print(f"\n[imatrix] {label}: {len(e2)} entries, chunks {k2['imatrix.chunk_count']}, "
          f"max rel diff of sums vs llama-imatrix {worst:.2e}")
    return worst


@pytest.mark.parametrize("case,quant", MODELS, ids=[f"{c}-{q}" for c, q in MODELS])
def test_equals_llama_imatrix(models, text_file, tmp_path, case, quant):
    gguf_path = models(case, quant)
    ref = llama_imatrix(gguf_path, text_file, tmp_path / "ref.gguf")
    ours = tmp_path / "ours.imatrix"
    summary = kiln_imatrix(gguf_path, text_file, ours)
    assert_same_imatrix(ours, ref, f"{case} {quant}")
    keys, entries, _ = raw(ours)
    assert keys["imatrix.chunk_size"] == CTX
    assert summary.chunks == keys["imatrix.chunk_count"] >= 17       # two groups of sequences
    # the ggml_tensor struct read right: names and ne seen in the callback are the GGUF's
    with GGUFFile(gguf_path) as g:
        shapes = {t.name: tuple(reversed(t.shape)) for t in g.tensors}
    assert set(summary.shapes) == set(entries)
    for name, ne in summary.shapes.items():
        assert ne[: len(shapes[name])] == shapes[name], (name, ne, shapes[name])
        assert all(n == 1 for n in ne[len(shapes[name]):]), (name, ne)
    if "mixtral" in case:
        assert any(name.endswith("_exps.weight") for name in entries)


def test_chunk_longer_than_a_batch(tmp_path):
    """--ctx 2560 > n_batch 2048: each chunk is two decode calls (positions run on)."""
    from hf_models import build

    hf = build("llama", tmp_path / "hf", max_position_embeddings=4096)
    model = tmp_path / "long-f16.gguf"
    convert(hf, model, "f16", threads=THREADS)
    text = tmp_path / "long.txt"
    text.write_text("\n".join(CORPUS * 2) + "\n", encoding="utf-8")
    ref = llama_imatrix(model, text, tmp_path / "ref.gguf", ctx=2560)
    ours = tmp_path / "ours.imatrix"
    summary = kiln_imatrix(model, text, ours, ctx=2560)
    assert summary.chunks == 2
    assert_same_imatrix(ours, ref, "llama ctx 2560")


def test_llama_quantize_reads_kiln_imatrix(models, text_file, tmp_path):
    """kiln's file in llama-quantize --imatrix == kiln quantize --imatrix, byte for byte."""
    for case in ("llama-8layers", "mixtral-4experts"):
        f16 = models(case)
        ours = tmp_path / f"{case}.imatrix"
        kiln_imatrix(f16, text_file, ours)
        for quant in ("Q4_K_M", "IQ3_XXS"):
            ref, mine = tmp_path / f"ref-{quant}.gguf", tmp_path / f"kiln-{quant}.gguf"
            run = subprocess.run([str(tool("llama-quantize")), "--imatrix", str(ours), str(f16),
                                  str(ref), quant, str(THREADS)], capture_output=True, text=True)
            assert run.returncode == 0, run.stderr[-2000:]
            assert "loaded" in run.stdout + run.stderr
            kiln("quantize", f16, mine, quant, "--imatrix", ours, "--threads", THREADS, "--quiet")
            assert differences(mine, ref) == [], (case, quant)


def test_kiln_loads_llama_imatrix(models, text_file, tmp_path):
    f16 = models("mixtral-4experts")
    ref = llama_imatrix(f16, text_file, tmp_path / "ref.gguf")
    loaded = imatrix_file.load(ref)
    _, entries, _ = raw(ref)
    assert sorted(loaded.entries) == sorted(entries)
    for name, parts in entries.items():
        sums, counts = parts["in_sum2"][0], parts["counts"][0].reshape(-1)
        per = sums.reshape(counts.size, -1)
        want = np.where(counts[:, None] > 0, per / np.maximum(counts, 1)[:, None], 1.0)
        np.testing.assert_allclose(loaded.entries[name], want.reshape(-1), rtol=1e-6)
    assert loaded.chunk_size == CTX and loaded.datasets == [str(text_file)]


# ------------------------------------------------------------------------------ the CLI

def test_cli_writes_and_reports(models, text_file, tmp_path, capsys):
    out = tmp_path / "x.imatrix"
    kiln("imatrix", models("llama-8layers"), "-o", out, "--text", text_file, "--ctx", CTX,
         "--threads", THREADS, "--chunks", 3)
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith(f"wrote {out}: ") and "3 chunks of 128 tokens (384 tokens)" in line
    assert "tokens/s" in line
    im = imatrix_file.load(out)
    assert im.chunk_count == 3 and im.datasets == [str(text_file)]


def test_several_texts_join_in_order(tmp_path):
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text("first", encoding="utf-8")
    b.write_text("second\n", encoding="utf-8")
    assert collect.read_text_files([a, b]) == "first\nsecond"
    assert collect.read_text_files([b, a]) == "second\nfirst"


def test_quantize_refuses_imatrix_of_another_model(models, text_file, tmp_path, capsys):
    other = tmp_path / "mixtral.imatrix"
    kiln_imatrix(models("mixtral-4experts"), text_file, other)
    out = tmp_path / "q.gguf"
    err = kiln_fails(capsys, "quantize", models("llama-8layers"), out, "Q4_K_M",
                     "--imatrix", other, "--quiet")
    assert str(other) in err and "another model" in err
    nothing_left(out)


@pytest.mark.parametrize("kind", ["missing", "not-gguf", "empty", "nul", "not-utf8", "ctx",
                                  "short", "imatrix-as-model"])
def test_bad_input(models, text_file, tmp_path, capsys, kind):
    model, text = models("llama-8layers"), text_file
    args = ["--ctx", CTX]
    if kind == "missing":
        model = tmp_path / "nope.gguf"
        want = "no such model file"
    elif kind == "not-gguf":
        model = tmp_path / "model.gguf"
        model.write_text("hello")
        want = "not a readable GGUF"
    elif kind == "imatrix-as-model":
        model = tmp_path / "m.imatrix"
        kiln_imatrix(models("llama-8layers"), text_file, model, chunks=1)
        want = "importance matrix, not a model"
    elif kind == "ctx":
        args = ["--ctx", 4096]
        want = "larger than the context the model was trained on (256 tokens)"
    else:
        text = tmp_path / "t.txt"
        data = {"empty": b"\n \n", "nul": b"hello\0world", "not-utf8": b"caf\xe9 au lait",
                "short": b"just a few words"}[kind]
        text.write_bytes(data)
        want = {"empty": "empty", "nul": "NUL byte at offset 5",
                "not-utf8": "not UTF-8 text (invalid byte at offset 3)",
                "short": "shorter than one chunk of --ctx 128"}[kind]
    out = tmp_path / "out.imatrix"
    err = kiln_fails(capsys, "imatrix", model, "-o", out, "--text", text, *args)
    assert want in err, err
    assert (str(text) if kind in ("empty", "nul", "not-utf8", "short") else str(model)) in err
    nothing_left(out)


def test_default_text(models, tmp_path, capsys):
    """Without --text: the bundled calibration text once runtime.corpus has it, until then a
    clear refusal."""
    out = tmp_path / "out.imatrix"
    try:
        from runtime.corpus import calibration_text  # noqa: F401
    except ImportError:
        err = kiln_fails(capsys, "imatrix", models("llama-8layers"), "-o", out, "--ctx", CTX)
        assert "--text FILE" in err
        nothing_left(out)
        return
    kiln("imatrix", models("llama-8layers"), "-o", out, "--ctx", CTX, "--chunks", 2,
         "--threads", THREADS, "--quiet")
    im = imatrix_file.load(out)
    assert im.chunk_count == 2 and im.datasets[0].startswith("kiln calibration text")
    # the same text given to llama-imatrix --parse-special (its -f drops one final newline)
    from runtime.meta import read_meta

    text = tmp_path / "calibration.txt"
    text.write_text(calibration_text(read_meta(models("llama-8layers"))) + "\n", encoding="utf-8")
    ref = llama_imatrix(models("llama-8layers"), text, tmp_path / "ref.gguf",
                        extra=("--parse-special", "--chunks", "2"))
    assert_same_imatrix(out, ref, "bundled text", same_dataset=False)


def test_interrupt_leaves_nothing(models, text_file, tmp_path, monkeypatch):
    """Ctrl-C lands inside the eval callback: the run stops, nothing is written."""
    calls = {"n": 0}
    real = collect.Collector._collect_dense

    def interrupted(self, node):
        calls["n"] += 1
        if calls["n"] == 20:
            raise KeyboardInterrupt
        return real(self, node)

    monkeypatch.setattr(collect.Collector, "_collect_dense", interrupted)
    out = tmp_path / "out.imatrix"
    with pytest.raises(KeyboardInterrupt):
        kiln_imatrix(models("llama-8layers"), text_file, out)
    nothing_left(out)
