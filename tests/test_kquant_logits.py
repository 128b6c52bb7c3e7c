"""K-quant GGUFs from `kiln convert` run in llama.cpp and stay within each type's quantization
budget of transformers' float32 logits (test_kquant.py proves the bytes equal llama.cpp's own
quantizer; this shows the files load and compute what the checkpoint computes)."""
from __future__ import annotations

import numpy as np
import pytest

from hf_models import build, convert_and_compare, reference_logits

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("llama_cpp")

IDS = [1] + [int(x) for x in np.random.default_rng(7).integers(3, 300, size=31)]

# max |delta logit| / std(logits) against unrounded float32 transformers, and the top-1
# agreement, per type.  Measured on these checkpoints (2 cores, llama.cpp 0.3.36):
# Q6_K ~0.05, Q5_K_M ~0.08, Q4_K_M ~0.2, IQ4_XS ~0.2, Q3_K_M ~0.35, Q2_K ~0.8; a dropped norm or
# a wrong q/k row order gives > 1 (test_convert_e2e), so the budgets below still catch those.
BUDGET = {"q6_k": (0.15, 0.9), "q5_k_m": (0.25, 0.9), "q4_k_m": (0.5, 0.85),
          "iq4_xs": (0.5, 0.85), "q3_k_m": (0.8, 0.75), "q2_k": (1.6, 0.5)}

CASES = {
    "llama": dict(kind="llama", hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=4),
    "mistral-gqa-bf16": dict(kind="mistral", hidden_size=256, intermediate_size=256,
                             num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=1,
                             dtype="bfloat16"),
    "mixtral-all-experts": dict(kind="mixtral", hidden_size=256, intermediate_size=256,
                                num_local_experts=2, num_experts_per_tok=2, num_key_value_heads=2),
}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    made = {}

    def get(case):
        if case not in made:
            d = build(out_dir=tmp_path_factory.mktemp(case), **CASES[case])
            made[case] = (d, reference_logits(d, IDS))
        return made[case]
    return get


@pytest.mark.parametrize("quant", list(BUDGET))
@pytest.mark.parametrize("case", list(CASES))
def test_kquant_logits_within_budget(checkpoints, tmp_path, case, quant):
    model_dir, ref = checkpoints(case)
    stats = convert_and_compare(model_dir, tmp_path / f"{case}-{quant}.gguf", quant.upper(), IDS,
                                ref, case)
    max_rel, top1 = BUDGET[quant]
    assert stats["max_rel"] < max_rel and stats["top1"] >= top1, stats
