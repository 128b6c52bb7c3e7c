"""Helpers for the K-quant tests: llama.cpp's own quantizer as the reference, tiny checkpoints of
every family with rows long enough for 256-element K-quant blocks, tensor-by-tensor comparison."""
from __future__ import annotations

import ctypes
import os
from pathlib import Path

import numpy as np

from convert.gguf_file import GGUFFile
from convert.quants import parse_quant

def llama_quantize(src: Path, dst: Path, quant: str, imatrix: dict | None = None,
                   allow_requantize: bool = False, nthread: int = 2) -> None:
    """`llama_model_quantize` (what `llama-quantize` runs) on GGUF `src`; imatrix: name -> weights
    (already divided by the counts, as llama-quantize passes them)."""
    import llama_cpp

    p = llama_cpp.llama_model_quantize_default_params()
    p.ftype = parse_quant(quant).ftype
    p.nthread = nthread
    p.allow_requantize = allow_requantize
    keep = []
    if imatrix:
        arr = (llama_cpp.llama_model_imatrix_data * (len(imatrix) + 1))()
        for i, (name, vals) in enumerate(imatrix.items()):
            v = np.ascontiguousarray(vals, dtype=np.float32)
            b = name.encode()
            keep += [v, b]
            arr[i].name = b
            arr[i].data = v.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
            arr[i].size = v.size
        arr[len(imatrix)].name = None
        p.imatrix = arr
        keep.append(arr)
    rc = llama_cpp.llama_model_quantize(os.fsencode(src), os.fsencode(dst), ctypes.byref(p))
    assert rc == 0, f"llama_model_quantize({src}, {quant}) failed: {rc}"


def tensors_of(path: Path) -> dict[str, tuple[str, tuple, bytes]]:
    """name -> (type name, shape, data bytes)."""
    with GGUFFile(path) as g:
        return {t.name: (t.qtype.name, t.shape, g.data(t).tobytes()) for t in g.tensors}


def differences(ours: Path, ref: Path) -> list[str]:
    """Every tensor whose type, shape or data differs (empty when byte-identical)."""
    a, b = tensors_of(ours), tensors_of(ref)
    out = [f"{n}: only in {'kiln' if n in a else 'llama.cpp'}" for n in sorted(set(a) ^ set(b))]
    for n in sorted(set(a) & set(b)):
        (ta, sa, da), (tb, sb, db) = a[n], b[n]
        if (ta, sa) != (tb, sb):
            out.append(f"{n}: kiln {ta} {sa}, llama.cpp {tb} {sb}")
        elif da != db:
            diff = np.flatnonzero(np.frombuffer(da, np.uint8) != np.frombuffer(db, np.uint8))
            out.append(f"{n}: {ta} data differs in {diff.size} of {len(da)} bytes")
    return out


# ------------------------------------------------------------------------------ checkpoints
# (kind, builder kwargs).  Widths of 256 give real K-quant blocks; the jais "mup" case keeps
# its 160-wide embeddings and 200-wide ffn_down rows, which force every fallback.
CASES = {
    "llama-8layers": ("hf", dict(kind="llama", hidden_size=256, intermediate_size=256,
                                 num_hidden_layers=8, num_attention_heads=4, num_key_value_heads=4)),
    "llama-tied-bf16": ("hf", dict(kind="llama", hidden_size=256, intermediate_size=512, tie=True,
                                   dtype="bfloat16", num_attention_heads=4, num_key_value_heads=4)),
    "mistral-gqa-f16": ("hf", dict(kind="mistral", hidden_size=256, intermediate_size=256,
                                   num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=1,
                                   dtype="float16")),
    "mixtral-4experts": ("hf", dict(kind="mixtral", hidden_size=256, intermediate_size=256,
                                    num_local_experts=4, num_key_value_heads=2)),
    "mixtral-8experts": ("hf", dict(kind="mixtral", hidden_size=256, intermediate_size=256,
                                    num_local_experts=8, num_key_value_heads=2)),
    "jais-mup-bf16": ("jais", dict(case="mup")),
    "xverse": ("xverse", dict()),
    "mpt-fused-qkv": ("mpt", dict(d_model=256, expansion_ratio=2)),
}


def build_case(case: str, out_dir: Path) -> Path:
    kind, kw = CASES[case]
    if kind == "hf":
        from hf_models import build
        return build(out_dir=out_dir, **kw)
    if kind == "jais":
        import test_jais
        test_jais.build(kw["case"], out_dir)
        return out_dir
    if kind == "xverse":
        import test_xverse
        return test_xverse.build_xverse(out_dir, **kw)
    if kind == "mpt":
        import test_alaya
        return test_alaya.build_own(out_dir, **kw)
    raise ValueError(kind)


def float_type(case: str) -> str:
    """The float GGUF that llama-quantize starts from: kiln's own, in the checkpoint's type."""
    return {"llama-tied-bf16": "bf16", "jais-mup-bf16": "bf16", "mistral-gqa-f16": "f16"}.get(case, "f32")


def float_checkpoints(tmp_path_factory, extra=None):
    """The getter behind the modules' checkpoint fixtures: case -> (checkpoint folder, kiln's
    float GGUF of it[, extra(float GGUF, its folder)]), each case built once."""
    from convert.pipeline import convert

    made = {}

    def get(case: str):
        if case not in made:
            d = tmp_path_factory.mktemp(case)
            model = build_case(case, d / "hf")
            flt = d / f"float-{float_type(case)}.gguf"
            convert(model, flt, float_type(case), threads=2)
            made[case] = (model, flt) + ((extra(flt, d),) if extra else ())
        return made[case]
    return get
