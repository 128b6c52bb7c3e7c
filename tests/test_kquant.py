"""K-quant mixtures, byte for byte against llama.cpp's own quantizer.

For every family's tiny checkpoint and every type, `kiln convert --quant T` must write exactly the
tensors (type and data bytes) that `llama_model_quantize` (what `llama-quantize` runs, bound by
llama-cpp-python) writes from kiln's own float GGUF of the same checkpoint; `kiln quantize` must
do the same from that float GGUF and from a float GGUF written by llama.cpp itself.
"""
from __future__ import annotations

import time

import numpy as np
import pytest

from kquant_ref import CASES, differences, float_checkpoints, llama_quantize, tensors_of

pytest.importorskip("llama_cpp")
pytest.importorskip("torch")
pytest.importorskip("transformers")

from convert import mixture  # noqa: E402
from convert.pipeline import convert  # noqa: E402
from convert.quants import QUANTS  # noqa: E402
from convert.requantize import quantize_file  # noqa: E402

# every type that needs no importance matrix (the others are in test_kquant_imatrix.py)
TYPES = ["q4_k_m", "q4_k_s", "q5_k_m", "q5_k_s", "q6_k", "q3_k_s", "q3_k_m", "q3_k_l", "q2_k",
         "iq4_xs", "iq4_nl", "q4_1", "q5_0", "q5_1", "q8_0", "q4_0"]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """case -> (checkpoint folder, kiln's float GGUF of it); built once per module."""
    return float_checkpoints(tmp_path_factory)


@pytest.mark.parametrize("case", list(CASES))
def test_convert_matches_llama_quantize(checkpoints, tmp_path, case):
    """Every type for this checkpoint: types and bytes of every tensor."""
    model, flt = checkpoints(case)
    failures, seen = {}, {}
    t_kiln = t_ref = 0.0
    for quant in TYPES:
        ref, ours = tmp_path / f"ref-{quant}.gguf", tmp_path / f"kiln-{quant}.gguf"
        t0 = time.perf_counter()
        llama_quantize(flt, ref, quant)
        t1 = time.perf_counter()
        convert(model, ours, quant, threads=2)
        t2 = time.perf_counter()
        t_ref, t_kiln = t_ref + t1 - t0, t_kiln + t2 - t1
        diff = differences(ours, ref)
        if diff:
            failures[quant] = diff[:5]
        seen[quant] = sorted({v[0] for v in tensors_of(ours).values()})
        ref.unlink()
        ours.unlink()
    print(f"\n[identity] {case}: {len(TYPES)} types, llama.cpp {t_ref:.1f} s, kiln {t_kiln:.1f} s; "
          + "; ".join(f"{q}: {'/'.join(s)}" for q, s in seen.items()))
    assert not failures, failures


QUANTIZE_CASES = ["llama-8layers", "mixtral-8experts", "jais-mup-bf16", "mpt-fused-qkv"]


@pytest.mark.parametrize("case", QUANTIZE_CASES)
def test_quantize_matches_llama_quantize(checkpoints, tmp_path, case):
    """`kiln quantize` from kiln's float GGUF and from llama.cpp's own F16 GGUF."""
    _, flt = checkpoints(case)
    theirs = tmp_path / "llama-f16.gguf"          # a float GGUF written by another tool
    llama_quantize(flt, theirs, "f16")
    failures = {}
    for src in (flt, theirs):
        for quant in TYPES:
            ref, ours = tmp_path / "ref.gguf", tmp_path / "ours.gguf"
            llama_quantize(src, ref, quant)
            quantize_file(src, ours, quant, threads=2)
            diff = differences(ours, ref)
            if diff:
                failures[(src.name, quant)] = diff[:5]
    assert not failures, failures


def test_mixture_is_not_trivial(checkpoints, tmp_path):
    """The 8-layer checkpoint exercises the layer rules: what llama.cpp gives its attn_v /
    ffn_down per layer for Q4_K_M (use_more_bits: layers 0, 3, 6, 7 of 8) and Q3_K_M."""
    model, flt = checkpoints("llama-8layers")
    out = tmp_path / "m.gguf"
    convert(model, out, "q4_k_m", threads=2)
    t = tensors_of(out)
    assert [t[f"blk.{i}.attn_v.weight"][0] for i in range(8)] == \
        ["Q6_K", "Q4_K", "Q4_K", "Q6_K", "Q4_K", "Q4_K", "Q6_K", "Q6_K"]
    assert [t[f"blk.{i}.ffn_down.weight"][0] for i in range(8)] == \
        ["Q6_K", "Q4_K", "Q4_K", "Q6_K", "Q4_K", "Q4_K", "Q6_K", "Q6_K"]
    assert t["output.weight"][0] == "Q6_K" and t["token_embd.weight"][0] == "Q4_K"
    assert t["blk.0.attn_norm.weight"][0] == "F32"


@pytest.mark.parametrize("mistake", ["use_more_bits off by one", "gqa rule ignored",
                                     "tied embedding not treated as output"])
def test_identity_check_catches_a_wrong_rule(checkpoints, tmp_path, monkeypatch, mistake):
    """A slightly wrong rule must make the byte-identity comparison fail."""
    case, quant = {"use_more_bits off by one": ("llama-8layers", "q4_k_m"),
                   "gqa rule ignored": ("mistral-gqa-f16", "q2_k"),
                   "tied embedding not treated as output": ("llama-tied-bf16", "q5_k_m")}[mistake]
    model, flt = checkpoints(case)
    ref, ours = tmp_path / "ref.gguf", tmp_path / "ours.gguf"
    llama_quantize(flt, ref, quant)
    convert(model, ours, quant, threads=2)
    assert differences(ours, ref) == []
    if mistake == "use_more_bits off by one":
        monkeypatch.setattr(mixture, "use_more_bits",
                            lambda i, n: i <= n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2)
    elif mistake == "gqa rule ignored":
        monkeypatch.setattr(mixture.Model, "n_gqa", property(lambda self: 1))
    else:
        orig = mixture._State.__init__

        def untied(self, *a, **k):
            orig(self, *a, **k)
            self.tied = False
        monkeypatch.setattr(mixture._State, "__init__", untied)
    convert(model, ours, quant, threads=2)
    diff = differences(ours, ref)
    print(f"\n[mistake caught] {mistake}: {diff}")
    assert diff and all("kiln" in d for d in diff)


def test_use_more_bits_and_order():
    # llama.cpp: i < n/8 || i >= 7n/8 || (i - n/8) % 3 == 2, C integer arithmetic
    assert [i for i in range(32) if mixture.use_more_bits(i, 32)] == \
        [0, 1, 2, 3, 6, 9, 12, 15, 18, 21, 24, 27, 28, 29, 30, 31]
    assert [i for i in range(2) if mixture.use_more_bits(i, 2)] == [1]
    names = ["output.weight", "blk.10.attn_v.weight", "blk.2.ffn_up.weight", "token_embd.weight",
             "blk.2.attn_k.weight", "output_norm.weight"]
    assert [names[i] for i in mixture.processing_order(names)] == [
        "output.weight", "output_norm.weight", "token_embd.weight", "blk.2.attn_k.weight",
        "blk.2.ffn_up.weight", "blk.10.attn_v.weight"]


def test_every_listed_type_is_parsed_any_case():
    from convert.quants import parse_quant

    for name, q in QUANTS.items():
        assert parse_quant(name.upper()) is q and parse_quant(name) is q
    assert parse_quant("Q4_K").name == "Q4_K_M"


def test_cli_summary_names_promoted_tensors_and_inspect_shows_mixture(checkpoints, tmp_path,
                                                                      capsys):
    from hf_models import kiln

    model, _ = checkpoints("llama-8layers")
    out = tmp_path / "m.gguf"
    kiln("convert", model, "-o", out, "--quant", "Q4_K_M", "--quiet")
    err = capsys.readouterr().err
    assert "9 tensors kept another type than Q4_K_M:" in err
    assert "blk.0.attn_v.weight: Q6_K (attn_v of layer 0 of 8: use_more_bits)" in err
    assert "blk.3.ffn_down.weight: Q6_K (ffn_down of layer 3 of 8: use_more_bits)" in err
    assert "output.weight: Q6_K (output projection)" in err
    kiln("inspect", out)
    shown = capsys.readouterr().out
    assert ", Q4_K_M, " in shown.splitlines()[0]
    lines = {line.split()[0]: line for line in shown.splitlines() if line.startswith("  ")}
    assert lines["attn_v.weight"].split(None, 1)[1] == "Q6_K x4, Q4_K x4"
    assert lines["attn_q.weight"].split(None, 1)[1] == "Q4_K x8"
    assert lines["output.weight"].split(None, 1)[1] == "Q6_K x1"
    assert lines["attn_norm.weight"].split(None, 1)[1] == "F32 x8"


def test_help_lists_types_with_bits_per_weight():
    from click.testing import CliRunner

    from runtime.cli import cli

    for cmd in (["convert", "--help"], ["quantize", "--help"], ["pull", "--help"]):
        text = " ".join(CliRunner().invoke(cli, cmd).output.split())
        for name in ("q4_k_m", "q5_k_m", "q6_k", "q3_k_s", "q2_k", "iq4_xs", "q5_1"):
            assert name in text, (cmd, name)
        assert "4.9" in text and "6.57" in text, cmd
    pull = " ".join(CliRunner().invoke(cli, ["pull", "--help"]).output.split())
    assert "[default: q4_k_m]" in pull and "Ollama" in pull
