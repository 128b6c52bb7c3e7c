"""Sampling defaults travel from generation_config.json through the GGUF (`kiln.sampling.*`)
to llama.cpp's sampler.

Two independent checks: the arguments of llama.cpp's sampler constructors
(`llama_sampler_init_temp / top_k / top_p / penalties`, spied at the ctypes binding, whatever
Python path the engine takes to them), and the behaviour of a model whose next token is a
near tie, so that the temperature shows in what is sampled.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("llama_cpp")
pytest.importorskip("sentencepiece")

import bigram  # noqa: E402
import sentencepiece as spm  # noqa: E402
from convert.families.llama import LlamaFamily  # noqa: E402
from hf_models import kiln  # noqa: E402
from runtime.engine import ChatModel, Settings  # noqa: E402

TEMPLATE = ("{{ bos_token }}{% for m in messages %}{{ m['role'] }}: {{ m['content'] }} | "
            "{% endfor %}assistant:")
HI = [{"role": "user", "content": "hi"}]
CARD = {"temperature": 0.37, "top_p": 0.81, "top_k": 23, "repetition_penalty": 1.17}


def near_tie(out: Path, generation: dict, monkeypatch) -> Path:
    """A GGUF whose logits after any token are 'A' 80, 'B' 79, eos 60, the rest 0: greedy says
    'A' forever, a hot sampler 'B' about a third of the time. `generation` is the checkpoint's
    generation_config.json."""
    from safetensors.numpy import load_file, save_file

    ckpt = out / "ckpt"
    ckpt.mkdir(parents=True)
    bigram.build(ckpt, [])
    sp = spm.SentencePieceProcessor(model_file=str(ckpt / "tokenizer.model"))
    weights = load_file(str(ckpt / "model.safetensors"))
    emb = weights["model.embed_tokens.weight"].astype(np.float64)
    # every embedding is 0.5 u + 0.866 c with u orthogonal to c (bigram.py); the final hidden
    # state is 8 x the current embedding (RMSNorm of a unit vector in 64 dims)
    c = np.linalg.lstsq(emb, np.full(len(emb), 0.866), rcond=None)[0]
    head = np.zeros_like(emb)
    for token, logit in ((bigram.byte_id(sp, ord("A")), 80.0), (bigram.byte_id(sp, ord("B")), 79.0),
                         (sp.eos_id(), 60.0)):
        head[token] = logit / (8 * 0.866) * c
    weights["lm_head.weight"] = head.astype(np.float32)
    save_file(weights, str(ckpt / "model.safetensors"), metadata={"format": "pt"})
    (ckpt / "generation_config.json").write_text(json.dumps({"do_sample": True, **generation}))
    with monkeypatch.context() as m:
        m.setattr(LlamaFamily, "chat_template", lambda self, vocab: TEMPLATE)
        kiln("convert", ckpt, "-o", out / "m.gguf", "--quant", "f32", "--quiet")
    return out / "m.gguf"


@pytest.fixture
def sampler_args(monkeypatch) -> dict[str, list[tuple]]:
    """Records the arguments of llama.cpp's sampler constructors."""
    import llama_cpp
    import llama_cpp.llama_cpp as binding

    calls: dict[str, list[tuple]] = {}
    for name in ("llama_sampler_init_temp", "llama_sampler_init_temp_ext",
                 "llama_sampler_init_top_k", "llama_sampler_init_top_p",
                 "llama_sampler_init_penalties"):
        real = getattr(binding, name)

        def spy(*args, _real=real, _name=name):
            calls.setdefault(_name, []).append(args)
            return _real(*args)
        for module in (binding, llama_cpp):
            if hasattr(module, name):
                monkeypatch.setattr(module, name, spy)
    return calls


def _temps(calls) -> list[float]:
    return [c[0] for c in calls.get("llama_sampler_init_temp", []) +
            calls.get("llama_sampler_init_temp_ext", [])]


def test_gguf_defaults_reach_the_sampler(tmp_path, monkeypatch, sampler_args):
    path = near_tie(tmp_path, CARD, monkeypatch)
    with ChatModel(path, n_ctx=128) as model:
        assert model.meta.sampling == {"temperature": 0.37, "top_p": 0.81, "top_k": 23.0,
                                       "repeat_penalty": 1.17}
        model.chat(HI, max_tokens=1)
        assert _temps(sampler_args) == [pytest.approx(0.37)]
        assert [c[0] for c in sampler_args["llama_sampler_init_top_k"]] == [23]
        assert [c[0] for c in sampler_args["llama_sampler_init_top_p"]] == [pytest.approx(0.81)]
        # (penalty_last_n, penalty_repeat, penalty_freq, penalty_present) end the arguments
        assert [c[-3] for c in sampler_args["llama_sampler_init_penalties"]] == \
            [pytest.approx(1.17)]
        # a request's own settings win over the GGUF's
        sampler_args.clear()
        model.chat(HI, settings=Settings(temperature=1.3, top_k=7, top_p=0.5,
                                         repeat_penalty=1.0, max_tokens=1))
        assert _temps(sampler_args) == [pytest.approx(1.3)]
        assert [c[0] for c in sampler_args["llama_sampler_init_top_k"]] == [7]
        assert [c[0] for c in sampler_args["llama_sampler_init_top_p"]] == [pytest.approx(0.5)]
        assert [c[-3] for c in sampler_args["llama_sampler_init_penalties"]] == \
            [pytest.approx(1.0)]


def test_temperature_shows_in_what_is_sampled(tmp_path, monkeypatch):
    """24 tokens, each 'A' or 'B' (logits 80 / 79). Cold (GGUF temperature 0.05): 'A' only.
    Hot (1.5): P('B') = 0.34 per token. kiln's own fallback (0.8) would give 'B' 22% of the
    time, so an all-'A' cold answer shows that the GGUF's value was used."""
    answers = {}
    for name, temp in (("cold", 0.05), ("hot", 1.5)):
        path = near_tie(tmp_path / name, {"temperature": temp, "repetition_penalty": 1.0},
                        monkeypatch)
        with ChatModel(path, n_ctx=128) as model:
            answers[name] = model.chat(HI, max_tokens=24)
    print(f"\n[sampling] {answers}")
    assert answers["cold"] == "A" * 24
    assert set(answers["hot"]) == {"A", "B"} and len(answers["hot"]) == 24
    assert 2 <= answers["hot"].count("B") <= 16
