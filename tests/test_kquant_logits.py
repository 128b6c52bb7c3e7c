"""K-quant GGUFs from `kiln convert` run in llama.cpp and stay within the quantization budget of
transformers' logits (test_kquant.py proves the bytes equal llama.cpp's own quantizer; this
shows the files load and compute what the checkpoint computes).

As in test_convert_e2e, transformers runs on weights rounded the way the GGUF rounds them: each
matrix's type is read from the file `llama_model_quantize` writes for the same checkpoint, its
rows are quantized by ggml and dequantized by gguf-py's numpy code.  What is left is llama.cpp
quantizing activations for its dot products."""
from __future__ import annotations

import numpy as np
import pytest

import re

from hf_models import build, convert_and_compare
from kquant_ref import llama_quantize, tensors_of

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("llama_cpp")

IDS = [1] + [int(x) for x in np.random.default_rng(7).integers(3, 300, size=31)]

# max |delta logit| / std(logits) against the rounded reference, and top-1 agreement.
# Measured (llama.cpp 0.3.36, 2 cores): max 0.12-0.21, median ~0.1 for every type (what is left
# is llama.cpp's 8-bit activations, as for Q8_0/Q4_0 in test_convert_e2e), top-1 0.81-1.0 (random
# tiny models have near-ties). The same file against weights rounded to another mixture (Q2_K
# file, Q6_K reference) is off by > 1 (test below).
BUDGET = {q: (0.3, 0.75) for q in ("q6_k", "q5_k_m", "q4_k_m", "iq4_xs", "q3_k_m", "q2_k")}

CASES = {
    "llama": dict(kind="llama", hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=4),
    "mistral-gqa-bf16": dict(kind="mistral", hidden_size=256, intermediate_size=256,
                             num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=1,
                             dtype="bfloat16"),
    "mixtral-all-experts": dict(kind="mixtral", hidden_size=256, intermediate_size=256,
                                num_local_experts=2, num_experts_per_tok=2, num_key_value_heads=2),
}


def gguf_name(hf: str) -> str | None:
    """The GGUF tensor whose type an HF parameter gets (llama / mistral / mixtral)."""
    fixed = {"model.embed_tokens.weight": "token_embd.weight", "lm_head.weight": "output.weight"}
    if hf in fixed:
        return fixed[hf]
    m = re.match(r"model\.layers\.(\d+)\.(.+)$", hf)
    if not m:
        return None
    part = {"self_attn.q_proj.weight": "attn_q", "self_attn.k_proj.weight": "attn_k",
            "self_attn.v_proj.weight": "attn_v", "self_attn.o_proj.weight": "attn_output",
            "mlp.gate_proj.weight": "ffn_gate", "mlp.up_proj.weight": "ffn_up",
            "mlp.down_proj.weight": "ffn_down", "mlp.experts.gate_up_proj": "ffn_gate_exps",
            "mlp.experts.down_proj": "ffn_down_exps"}.get(m.group(2))
    return f"blk.{m.group(1)}.{part}.weight" if part else None


def rounded_logits(model_dir, ref_gguf, ids) -> np.ndarray:
    """transformers' logits with every matrix rounded to the type llama.cpp gave it."""
    import gguf
    import torch
    from gguf.quants import dequantize
    from transformers import AutoModelForCausalLM

    from convert.ggml import quantize_rows

    types = {n: v[0] for n, v in tensors_of(ref_gguf).items()}
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    tied = model.config.tie_word_embeddings
    with torch.no_grad():
        for name, p in model.named_parameters():
            target = gguf_name(name)
            if target == "output.weight" and tied:
                continue
            kind = types.get(target) if target else None
            if kind in (None, "F32", "F16", "BF16"):
                continue
            qt = gguf.GGMLQuantizationType[kind]
            w = p.detach().numpy().astype(np.float32).reshape(-1, p.shape[-1])
            p.copy_(torch.from_numpy(dequantize(quantize_rows(w, int(qt)), qt).reshape(p.shape)))
        out = model(torch.tensor([ids]))
    return out.logits[0].float().numpy()


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    made = {}

    def get(case):
        if case not in made:
            d = build(out_dir=tmp_path_factory.mktemp(case) / "hf", **CASES[case])
            from convert.pipeline import convert
            flt = d.parent / "f32.gguf"
            convert(d, flt, "f32", threads=2)
            made[case] = (d, flt)
        return made[case]
    return get


@pytest.mark.parametrize("quant", list(BUDGET))
@pytest.mark.parametrize("case", list(CASES))
def test_kquant_logits_within_budget(checkpoints, tmp_path, case, quant):
    model_dir, flt = checkpoints(case)
    ref_gguf = tmp_path / "llama-quantize.gguf"
    llama_quantize(flt, ref_gguf, quant)
    ref = rounded_logits(model_dir, ref_gguf, IDS)
    stats = convert_and_compare(model_dir, tmp_path / f"{case}-{quant}.gguf", quant.upper(), IDS,
                                ref, case)
    max_rel, top1 = BUDGET[quant]
    assert stats["max_rel"] < max_rel and stats["top1"] >= top1, stats


def test_budget_catches_a_wrong_mixture(checkpoints, tmp_path):
    """A Q2_K file compared with weights rounded as Q6_K: far outside the budget."""
    model_dir, flt = checkpoints("llama")
    ref_gguf = tmp_path / "q6_k.gguf"
    llama_quantize(flt, ref_gguf, "q6_k")
    stats = convert_and_compare(model_dir, tmp_path / "q2_k.gguf", "q2_k", IDS,
                                rounded_logits(model_dir, ref_gguf, IDS), "llama (wrong reference)")
    print("mistake caught:", stats)
    assert stats["max_rel"] > 3 * BUDGET["q2_k"][0], stats
