"""--imatrix: importance matrices in llama.cpp's GGUF and legacy .dat formats, used as
llama-quantize uses them, byte for byte; plus the bad inputs of `kiln convert / quantize`.

References: `llama_model_quantize` given the weights this test computes itself from the numbers
it wrote (sum / count), and llama.cpp's own `llama-quantize --imatrix FILE` and `llama-imatrix`
binaries (built from the llama-cpp-python sdist; that tier is skipped, with the reason, when
they cannot be built).
"""
from __future__ import annotations

import struct
import subprocess

import numpy as np
import pytest

from hf_models import kiln_fails, nothing_left
from kquant_ref import differences, float_checkpoints, llama_quantize, tensors_of

pytest.importorskip("llama_cpp")
pytest.importorskip("torch")
pytest.importorskip("transformers")

import gguf  # noqa: E402

from convert.cli import run_cli  # noqa: E402
from convert.gguf_file import GGUFFile  # noqa: E402
from convert.pipeline import convert  # noqa: E402
from convert.requantize import quantize_file  # noqa: E402
from runtime.cli import cli  # noqa: E402

# types whose mixture or quantizer changes with an imatrix, and those that need one
WEIGHTED = ["q4_k_m", "q3_k_m", "q2_k", "q5_k_s", "q6_k", "iq4_xs", "iq4_nl", "q4_0", "q5_0", "q4_1"]
NEEDS = ["q2_k_s", "iq3_xxs", "iq3_xs", "iq3_s", "iq3_m", "iq2_xxs", "iq2_xs", "iq2_s", "iq2_m",
         "iq1_s", "iq1_m"]
# every type on the 8-layer llama (all layer rules); on the others the types whose rules or
# quantizer differ there (MoE slices per expert, fallbacks, the fused qkv), to bound the runtime
PER_CASE = {
    "llama-8layers": WEIGHTED + NEEDS,
    "mixtral-8experts": ["q4_k_m", "q2_k", "iq4_xs", "q4_0", "iq2_xxs", "iq3_m", "q2_k_s"],
    "jais-mup-bf16": ["q4_k_m", "q4_0", "q5_0", "iq4_xs", "iq2_xs", "iq3_xxs"],
    "mpt-fused-qkv": ["q4_k_m", "q3_k_m", "iq4_nl", "iq2_s", "q4_1"],
}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """case -> (checkpoint folder, kiln's float GGUF, make_imatrix of it); built once."""
    return float_checkpoints(tmp_path_factory, extra=make_imatrix)


def matmul_weights(flt) -> list[tuple[str, int, int]]:
    """(name, ne0, n_expert) of every blk.* matrix (what llama-imatrix collects)."""
    with GGUFFile(flt) as g:
        return [(t.name, t.shape[-1], t.shape[0] if len(t.shape) == 3 else 1) for t in g.tensors
                if t.name.startswith("blk.") and len(t.shape) >= 2 and "norm" not in t.name]


def make_imatrix(flt, folder, seed: int = 0):
    """An imatrix GGUF and a legacy .dat with the same statistics, and the weights llama.cpp
    derives from them (sum / count per expert, 1 where the count is 0)."""
    rng = np.random.default_rng(seed)
    entries = {}
    for name, ne0, n_exp in matmul_weights(flt):
        counts = rng.integers(20, 600, size=n_exp).astype(np.float32)
        if n_exp > 1:
            counts[1] = 0                          # an expert that was never routed to
        sums = (rng.gamma(0.7, 2.0, size=(n_exp, ne0)) * counts[:, None]).astype(np.float32)
        entries[name] = (sums, counts)
    weights = {}
    for name, (sums, counts) in entries.items():
        w = np.ones_like(sums)
        ok = counts > 0
        w[ok] = sums[ok] / counts[ok, None]
        weights[name] = w.reshape(-1)

    path = folder / "imatrix.gguf"
    w = gguf.GGUFWriter(path, arch="imatrix")
    w.add_string("general.type", "imatrix")
    w.add_array("imatrix.datasets", ["wiki.train.raw"])
    w.add_uint32("imatrix.chunk_count", 42)
    w.add_uint32("imatrix.chunk_size", 512)
    for name, (sums, counts) in entries.items():
        w.add_tensor(name + ".in_sum2", sums)
        w.add_tensor(name + ".counts", counts.reshape(-1, 1))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()

    # legacy: one ncall per entry (no per-expert counts), values = mean * ncall
    dat = folder / "imatrix.dat"
    legacy = {}
    blob = [struct.pack("<i", len(entries))]
    for name, (sums, counts) in entries.items():
        ncall = int(counts.max())
        vals = (weights[name] * np.float32(ncall)).astype(np.float32)
        legacy[name] = vals / np.float32(ncall)
        b = name.encode()
        blob += [struct.pack("<i", len(b)), b, struct.pack("<ii", ncall, vals.size), vals.tobytes()]
    blob += [struct.pack("<i", 42), struct.pack("<i", 14), b"wiki.train.raw"]
    dat.write_bytes(b"".join(blob))
    return {"gguf": path, "dat": dat, "weights": weights, "legacy": legacy}


@pytest.mark.parametrize("case", list(PER_CASE))
def test_convert_with_imatrix_matches_llama_quantize(models, tmp_path, case):
    model, flt, im = models(case)
    failures = {}
    for fmt, key in (("gguf", "weights"), ("dat", "legacy")):
        for quant in PER_CASE[case] if fmt == "gguf" else ["q4_k_m", "iq2_xxs", "q4_0"]:
            ref, ours = tmp_path / "ref.gguf", tmp_path / "ours.gguf"
            llama_quantize(flt, ref, quant, imatrix=im[key])
            convert(model, ours, quant, threads=2, imatrix=im[fmt])
            diff = differences(ours, ref)
            if diff:
                failures[(fmt, quant)] = diff[:4]
            with_w = tmp_path / "plain.gguf"
            if quant in WEIGHTED and fmt == "gguf" and case == "llama-8layers":
                llama_quantize(flt, with_w, quant)      # the imatrix really changes the bytes
                assert differences(ours, with_w), quant
    assert not failures, failures


@pytest.mark.parametrize("case", ["llama-8layers", "mixtral-8experts"])
def test_quantize_with_imatrix_matches_llama_quantize(models, tmp_path, case):
    _, flt, im = models(case)
    failures = {}
    for quant in ["q4_k_m", "iq4_xs", "q4_0", "iq2_xxs", "q2_k_s"]:
        ref, ours = tmp_path / "ref.gguf", tmp_path / "ours.gguf"
        llama_quantize(flt, ref, quant, imatrix=im["weights"])
        quantize_file(flt, ours, quant, threads=2, imatrix=im["gguf"])
        diff = differences(ours, ref)
        if diff:
            failures[quant] = diff[:4]
    assert not failures, failures


def test_imatrix_keys_written(models, tmp_path):
    model, flt, im = models("llama-8layers")
    out = tmp_path / "m.gguf"
    convert(model, out, "q4_k_m", threads=2, imatrix=im["gguf"])
    with GGUFFile(out) as g:
        md = g.fields
    assert md["quantize.imatrix.file"] == str(im["gguf"])
    assert md["quantize.imatrix.dataset"] == "wiki.train.raw"
    assert md["quantize.imatrix.entries_count"] == len(im["weights"])
    assert md["quantize.imatrix.chunks_count"] == 42
    assert md["general.file_type"] == 15


# ------------------------------------------------------------------------ llama.cpp's own tools

def _tool(name: str):
    import llama_tools
    return llama_tools.tool(name)


def test_llama_quantize_binary_agrees(models, tmp_path):
    """llama-quantize --imatrix FILE (llama.cpp's own imatrix loader) on both formats: same
    tensors and the same quantize.imatrix.* keys as kiln."""
    exe = _tool("llama-quantize")
    model, flt, im = models("mixtral-8experts")
    for fmt in ("gguf", "dat"):
        for quant in ("Q4_K_M", "IQ2_XS"):
            ref, ours = tmp_path / "ref.gguf", tmp_path / "ours.gguf"
            run = subprocess.run([str(exe), "--imatrix", str(im[fmt]), str(flt), str(ref), quant],
                                 capture_output=True, text=True)
            assert run.returncode == 0, run.stderr[-2000:]
            convert(model, ours, quant, threads=2, imatrix=im[fmt])
            assert differences(ours, ref) == [], (fmt, quant)
            with GGUFFile(ref) as a, GGUFFile(ours) as b:
                theirs = {k: v for k, v in a.fields.items() if k.startswith("quantize.")}
                mine = {k: v for k, v in b.fields.items() if k.startswith("quantize.")}
            assert mine == theirs, (fmt, mine, theirs)


def test_imatrix_from_llama_imatrix(models, tmp_path):
    """A real importance matrix computed by llama-imatrix on the tiny model."""
    exe = _tool("llama-imatrix")
    model, flt, _ = models("llama-8layers")
    text = tmp_path / "text.txt"
    from hf_models import CORPUS
    text.write_text("\n".join(CORPUS * 4))
    imat = tmp_path / "real-imatrix.gguf"
    run = subprocess.run([str(exe), "-m", str(flt), "-f", str(text), "-o", str(imat), "-c", "64",
                          "-b", "64", "-t", "2", "--chunks", "6", "--no-ppl"],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    q = _tool("llama-quantize")
    for quant in ("Q4_K_M", "IQ3_XXS"):
        ref, ours = tmp_path / "ref.gguf", tmp_path / "ours.gguf"
        run = subprocess.run([str(q), "--imatrix", str(imat), str(flt), str(ref), quant],
                             capture_output=True, text=True)
        assert run.returncode == 0, run.stderr[-2000:]
        convert(model, ours, quant, threads=2, imatrix=imat)
        assert differences(ours, ref) == [], quant


# ------------------------------------------------------------------------------ bad input

def test_unknown_type_lists_the_valid_ones(models, tmp_path, capsys):
    model, flt, _ = models("llama-8layers")
    out = tmp_path / "o.gguf"
    for cmd in (["convert", model, "-o", out, "--quant", "q4_k_x"], ["quantize", flt, out, "q4_k_x"]):
        err = kiln_fails(capsys, *cmd)
        assert "unknown quantization type 'q4_k_x'" in err and "q4_k_m" in err and "iq4_xs" in err
        nothing_left(out)


@pytest.mark.parametrize("quant", ["IQ2_XXS", "q2_k_s", "iq1_s"])
def test_type_that_needs_an_imatrix(models, tmp_path, capsys, quant):
    model, flt, _ = models("llama-8layers")
    out = tmp_path / "o.gguf"
    for cmd in (["convert", model, "-o", out, "-q", quant], ["quantize", flt, out, quant]):
        err = kiln_fails(capsys, *cmd)
        assert "needs an importance matrix" in err and "--imatrix" in err, err
        nothing_left(out)


def _gguf_imatrix(path, entries, keys=True):
    w = gguf.GGUFWriter(path, arch="imatrix")
    if keys:
        w.add_array("imatrix.datasets", ["x"])
        w.add_uint32("imatrix.chunk_count", 1)
        w.add_uint32("imatrix.chunk_size", 512)
    for name, (sums, counts) in entries.items():
        w.add_tensor(name + ".in_sum2", np.asarray(sums, np.float32))
        w.add_tensor(name + ".counts", np.asarray(counts, np.float32).reshape(-1, 1))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_imatrix_for_another_model(models, tmp_path, capsys):
    model, flt, _ = models("llama-8layers")
    out = tmp_path / "o.gguf"
    ones = np.ones(256, np.float32)
    wrong_name = _gguf_imatrix(tmp_path / "a.gguf", {"blk.40.attn_q.weight": (ones, [1])})
    wrong_size = _gguf_imatrix(tmp_path / "b.gguf", {"blk.0.ffn_down.weight": (np.ones(4096), [1])})
    for im, what in ((wrong_name, "blk.40.attn_q.weight"), (wrong_size, "blk.0.ffn_down.weight")):
        for cmd in (["convert", model, "-o", out, "-q", "q4_k_m", "--imatrix", im],
                    ["quantize", flt, out, "q4_k_m", "--imatrix", im]):
            err = kiln_fails(capsys, *cmd)
            assert str(im) in err and what in err and "another model" in err, err
            nothing_left(out)
    # an imatrix that lacks a tensor a type needs one for
    partial = _gguf_imatrix(tmp_path / "c.gguf", {"blk.0.attn_q.weight": (ones, [3])})
    err = kiln_fails(capsys, "convert", model, "-o", out, "-q", "iq2_xxs", "--imatrix", partial)
    assert "no entry for blk.0.attn_k.weight" in err or "no entry for" in err, err
    nothing_left(out)


def test_corrupt_imatrix(models, tmp_path, capsys):
    model, flt, im = models("llama-8layers")
    out = tmp_path / "o.gguf"
    garbage = tmp_path / "garbage.dat"
    garbage.write_bytes(b"\x07\x00\x00\x00" + b"\xff" * 40)
    truncated = tmp_path / "truncated.dat"
    truncated.write_bytes(im["dat"].read_bytes()[:1000])
    no_keys = _gguf_imatrix(tmp_path / "nokeys.gguf", {"blk.0.attn_q.weight": (np.ones(256), [1])},
                            keys=False)
    nan = _gguf_imatrix(tmp_path / "nan.gguf", {"blk.0.attn_q.weight": (np.full(256, np.nan), [1])})
    cut_gguf = tmp_path / "cut.gguf"
    cut_gguf.write_bytes(im["gguf"].read_bytes()[:5000])
    for bad, words in ((garbage, "not a readable importance matrix"),
                       (truncated, "file ends inside"), (no_keys, "missing key imatrix."),
                       (nan, "non-finite"), (cut_gguf, "corrupt"),
                       (tmp_path / "missing.dat", "no such file")):
        err = kiln_fails(capsys, "convert", model, "-o", out, "-q", "q4_k_m", "--imatrix", bad)
        assert str(bad) in err and words in err, err
        nothing_left(out)


def test_quantize_refuses_quantized_input_unless_allowed(models, tmp_path, capsys):
    _, flt, _ = models("llama-8layers")
    q8 = tmp_path / "q8.gguf"
    quantize_file(flt, q8, "q8_0")
    out = tmp_path / "o.gguf"
    err = kiln_fails(capsys, "quantize", q8, out, "q4_k_m")
    assert str(q8) in err and "already Q8_0" in err and "--allow-requantize" in err
    nothing_left(out)
    # allowed: the same bytes as llama-quantize --allow-requantize
    ref = tmp_path / "ref.gguf"
    llama_quantize(q8, ref, "q4_k_m", allow_requantize=True)
    run_cli_ok("quantize", q8, out, "q4_k_m", "--allow-requantize", "--quiet")
    assert differences(out, ref) == []


def run_cli_ok(*args):
    try:
        run_cli(cli, [str(a) for a in args])
    except SystemExit as exc:
        assert exc.code in (0, None)


def test_quantize_refuses_non_gguf(models, tmp_path, capsys):
    model, _, _ = models("llama-8layers")
    out = tmp_path / "o.gguf"
    for bad in (model / "model.safetensors", model / "config.json", tmp_path / "none.gguf"):
        err = kiln_fails(capsys, "quantize", bad, out, "q4_k_m")
        assert str(bad) in err and ("not a GGUF" in err or "no such file" in err), err
        nothing_left(out)
    short = tmp_path / "short.gguf"
    short.write_bytes(b"GGUF\x03\x00\x00\x00" + b"\x01" * 20)
    err = kiln_fails(capsys, "quantize", short, out, "q4_k_m")
    assert "not a readable GGUF" in err
    nothing_left(out)


def test_quantize_keeps_every_metadata_key(models, tmp_path):
    _, flt, _ = models("llama-tied-bf16" if False else "llama-8layers")
    out = tmp_path / "o.gguf"
    quantize_file(flt, out, "q5_k_m")
    with GGUFFile(flt) as a, GGUFFile(out) as b:
        before, after = dict(a.fields), dict(b.fields)
    assert after.pop("general.file_type") == 17 and before.pop("general.file_type") == 0
    assert set(before) == set(after)
    for k in before:
        x, y = before[k], after[k]
        same = np.array_equal(x, y) if isinstance(x, np.ndarray) else x == y
        assert same, k
    assert any(k.startswith("kiln.") for k in after) and "tokenizer.ggml.tokens" in after
    assert {v[0] for v in tensors_of(out).values()} == {"F32", "Q5_K", "Q6_K"}
