"""Jais (core42 / inceptionai `JAISLMHeadModel`) -> GGUF arch `jais`.

Follows core42's `modeling_jais.py` (mirrored by vLLM's `jais.py`): GPT-2 layout with Conv1D
weights stored [in, out]; h = wte[ids] * embeddings_scale; per block pre-LayerNorm, fused q|k|v,
scores q.k / head_dim (1/d, not 1/sqrt d, when scale_qk_dot_by_d) plus ALiBi -slope*|i-j|,
c_proj, then c_proj(c_fc(x) * silu(c_fc2(x))), all with biases; ln_f; logits = lm_head(h) *
width_scale. llama.cpp's `jais` graph (src/models/jais.cpp) runs the same with 1/head_dim
hard-coded, ALiBi slopes recomputed from `jais.attention.max_alibi_bias`, and no embedding or
logit scale: both scales are baked into `token_embd` / `output` here (`output` is required, so a
tied checkpoint gets its own scaled copy of wte).

Two config dialects exist: core42 (`embeddings_scale`, `width_scale`, `scale_qk_dot_by_d`) and
jais-family / jais-30b (`mup_embeddings_scale`, `mup_output_alpha` x `mup_width_scale`,
`mup_scale_qk_dot_by_d`); the `mup_*` names win when both appear, as in llama.cpp's converter.
Chat: the model cards' prompt as a Jinja template, its text in jais_prompts.json beside this.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from ..checkpoint import Checkpoint
from ..errors import KilnError
from ..quants import to_f32
from ..tensors import OutTensor
from ..vocab import Vocab, load_vocab
from .base import Family

# HF JaisConfig's defaults, where a refusal below names the value config.json leaves out.
_HF_DEFAULTS = {"activation_function": "gelu_new", "position_embedding_type": "learned"}
_GRAPH = "llama.cpp's jais graph"

# What llama.cpp's jais graph would compute differently, in the order checked: (field,
# allowed(value, family), what is refused), formatted as in Family.refuse_config. A tuple of
# fields are aliases, the mup_* name first (it wins, as in llama.cpp's converter).
REFUSALS = (
    ("activation_function", lambda v, f: v == "swiglu",
     "activation_function is '{v}', but " + _GRAPH + " only runs 'swiglu'"),
    ("position_embedding_type", lambda v, f: v == "alibi",
     "position_embedding_type is '{v}', but " + _GRAPH + " only runs 'alibi' (it has no "
     "learned position embeddings)"),
    ("scale_attn_weights", lambda v, f: v is not False,
     "scale_attn_weights is false (unscaled attention scores), but " + _GRAPH + " always "
     "divides them by head_dim"),
    (("mup_scale_qk_dot_by_d", "scale_qk_dot_by_d"), lambda v, f: bool(v),
     "{f.qk_dot_key} is false or missing (attention scaled by 1/sqrt(head_dim)), but "
     + _GRAPH + " hard-codes 1/head_dim"),
    ("scale_attn_by_inverse_layer_idx", lambda v, f: not v,
     "scale_attn_by_inverse_layer_idx is true, which " + _GRAPH + " does not do"),
    ("alibi_scaling", lambda v, f: not v,
     "alibi_scaling is set ({j}), but llama.cpp ignores it, so attention would differ from "
     "the original"),
)


# Causal-mask buffers that some checkpoints saved along with the weights.
_MASK_BUFFERS = ("attn.bias", "attn.masked_bias")


def standard_alibi_slopes(n_head: int, max_bias: float = 8.0) -> np.ndarray:
    """ALiBi slopes as llama.cpp derives them from max_bias (equal to HF's for max_bias 8)."""
    n_log2 = 2 ** math.floor(math.log2(n_head))
    m0 = 2.0 ** (-max_bias / n_log2)
    m1 = 2.0 ** (-(max_bias / 2.0) / n_log2)
    return np.array([m0 ** (h + 1) if h < n_log2 else m1 ** (2 * (h - n_log2) + 1)
                     for h in range(n_head)], dtype=np.float64)


class JaisFamily(Family):
    name = "jais"
    languages = ("ar", "en")
    architectures = ("JAISLMHeadModel",)
    gguf_arch = "jais"

    def __init__(self, config: dict, model_dir: Path):
        super().__init__(config, model_dir)
        self._max_alibi_bias: float | None = None

    @classmethod
    def recognizes_gguf(cls, arch: str, name: str) -> bool:
        return arch == "jais"      # llama.cpp's own converter writes Jais as arch `jais`

    # -- shape facts -------------------------------------------------------------------
    @property
    def n_embd(self) -> int:
        return int(self.cfg("n_embd", "hidden_size"))

    @property
    def n_head(self) -> int:
        return int(self.cfg("n_head", "num_attention_heads"))

    @property
    def n_layer(self) -> int:
        return int(self.cfg("n_layer", "num_hidden_layers"))

    @property
    def n_inner(self) -> int:
        return int(self.cfg("n_inner", "intermediate_size", default=4 * self.n_embd))

    def context_length(self) -> int:
        return int(self.cfg("n_positions", "max_position_embeddings"))

    def embeddings_scale(self) -> float:
        return float(self.cfg("mup_embeddings_scale", "embeddings_scale", default=1.0))

    def width_scale(self) -> float:
        """The factor on the logits: mup_output_alpha * mup_width_scale, else width_scale."""
        if any(self.config.get(k) is not None for k in ("mup_output_alpha", "mup_width_scale")):
            return (float(self.cfg("mup_output_alpha", default=1.0))
                    * float(self.cfg("mup_width_scale", default=1.0)))
        return float(self.cfg("width_scale", default=1.0))

    def model_size(self) -> str:
        """Which official chat model the config describes: "13b", or "30b" (the default)."""
        shape = (self.cfg("n_layer", "num_hidden_layers", default=None),
                 self.cfg("n_embd", "hidden_size", default=None))
        return "13b" if shape == (40, 5120) else "30b"

    @property
    def qk_dot_key(self) -> str:
        """config.json's name for the 1/head_dim switch (mup_* in jais-family / jais-30b)."""
        mup = "mup_scale_qk_dot_by_d"
        return mup if mup in self.config else "scale_qk_dot_by_d"

    def _read(self, field: str | tuple[str, ...]) -> Any:
        """A REFUSALS field: aliases as cfg() reads them, else its value or JaisConfig's default."""
        if isinstance(field, tuple):
            return self.cfg(*field, default=False)
        return self.config.get(field, _HF_DEFAULTS.get(field))

    def _check_supported(self) -> None:
        """Refuse what llama.cpp's jais graph would silently compute differently (REFUSALS)."""
        tail = "; kiln cannot convert this Jais checkpoint"
        self.refuse_config(REFUSALS, self._read, tail)
        if self.n_embd % self.n_head:
            raise KilnError(self.config_path, f"n_embd {self.n_embd} is not a multiple of "
                            f"n_head {self.n_head}{tail}")

    # -- hyperparameters -------------------------------------------------------------------
    def hparams(self) -> dict[str, Any]:
        self._check_supported()
        k = self.key
        return {
            k("context_length"): self.context_length(),
            k("embedding_length"): self.n_embd,
            k("feed_forward_length"): self.n_inner,
            k("block_count"): self.n_layer,
            k("attention.head_count"): self.n_head,
            k("attention.layer_norm_epsilon"): float(self.cfg("layer_norm_epsilon",
                                                              default=1e-5)),
            k("attention.max_alibi_bias"): self.max_alibi_bias(),
            k("vocab_size"): self.n_vocab(),
        }

    def max_alibi_bias(self) -> float:
        if self._max_alibi_bias is None:
            with Checkpoint(self.model_dir) as ckpt:
                self._max_alibi_bias = self._alibi_from(ckpt)
        return self._max_alibi_bias

    def _alibi_from(self, ckpt: Checkpoint) -> float:
        """max_alibi_bias recovered from the stored slopes (8 when they are not stored).

        llama.cpp recomputes every slope from this one number, so slopes that are not the
        standard geometric sequence (trained or edited ones) are refused.
        """
        name = "transformer.relative_pe.slopes"
        info = ckpt.tensors.get(name)
        if info is None:
            return 8.0
        slopes = to_f32(np.asarray(ckpt.array(name)), info.dtype).astype(np.float64).ravel()
        if slopes.size != self.n_head or not np.all(slopes > 0):
            raise KilnError(info.path, f"tensor '{name}' holds {slopes.size} slopes "
                            f"{slopes[:4].tolist()}..., expected {self.n_head} positive ones")
        n_log2 = 2 ** math.floor(math.log2(self.n_head))
        max_bias = float(-round(math.log2(slopes[0]) * n_log2))
        expect = standard_alibi_slopes(self.n_head, max_bias) if max_bias > 0 else None
        # bf16 checkpoints round the non-power-of-two slopes: allow 1% relative error.
        if expect is None or not np.allclose(slopes, expect, rtol=1e-2, atol=0):
            raise KilnError(info.path, f"tensor '{name}' does not hold standard ALiBi slopes "
                            "(llama.cpp recomputes them from a single max_alibi_bias)")
        return max_bias

    # -- tensors -------------------------------------------------------------------------
    def tensors(self, ckpt: Checkpoint) -> list[OutTensor]:
        self._check_supported()
        d, ff, v = self.n_embd, self.n_inner, self.n_vocab()
        out: list[OutTensor] = []
        used: set[str] = set()

        def add(gguf_name: str, hf_name: str, shape: tuple[int, ...], *,
                conv1d: bool = False, scale: float | None = None) -> None:
            """`shape` is the GGUF (PyTorch Linear) shape; Conv1D weights are stored [in, out]."""
            stored = shape[::-1] if conv1d else shape
            rows = self.stored(ckpt, hf_name, stored, transpose=conv1d, scale=scale)
            out.append(OutTensor(gguf_name, shape, rows, keep_f32=len(shape) == 1))
            used.add(hf_name)

        self._max_alibi_bias = self._alibi_from(ckpt)
        used.add("transformer.relative_pe.slopes")

        add("token_embd.weight", "transformer.wte.weight", (v, d), scale=self.embeddings_scale())
        for i in range(self.n_layer):
            hf, blk = f"transformer.h.{i}.", f"blk.{i}."
            for gguf_part, hf_part, shape, conv in (
                    ("attn_norm", "ln_1", (d,), False),
                    ("attn_qkv", "attn.c_attn", (3 * d, d), True),
                    ("attn_output", "attn.c_proj", (d, d), True),
                    ("ffn_norm", "ln_2", (d,), False),
                    ("ffn_up", "mlp.c_fc", (ff, d), True),
                    ("ffn_gate", "mlp.c_fc2", (ff, d), True),
                    ("ffn_down", "mlp.c_proj", (d, ff), True)):
                add(f"{blk}{gguf_part}.weight", f"{hf}{hf_part}.weight", shape, conv1d=conv)
                add(f"{blk}{gguf_part}.bias", f"{hf}{hf_part}.bias", shape[:1])
            used.update(hf + b for b in _MASK_BUFFERS if hf + b in ckpt.tensors)
        add("output_norm.weight", "transformer.ln_f.weight", (d,))
        add("output_norm.bias", "transformer.ln_f.bias", (d,))
        # llama.cpp needs `output` even when HF ties it to wte: write the (scaled) copy.
        head = "lm_head.weight" if "lm_head.weight" in ckpt.tensors else "transformer.wte.weight"
        add("output.weight", head, (v, d), scale=self.width_scale())
        self.refuse_leftovers(ckpt, used)
        return out

    # -- tokenizer -----------------------------------------------------------------------
    def vocab(self) -> Vocab:
        # tokenizer.json, or (as the original repos ship) GPT-2 vocab.json + merges.txt
        vocab = load_vocab(self.model_dir, self.config, self.n_vocab(), gpt2_files=True)
        if vocab.model != "gpt2":
            raise KilnError(self.model_dir, f"Jais uses a GPT-2 byte-level BPE tokenizer, but "
                            f"this one reads as '{vocab.model}'")
        # llama.cpp's name for Jais's (GPT-2) split; it cleans up spaces in llama_detokenize, so
        # only when tokenizer_config asks for that (else load_vocab's "trillion": same split).
        if vocab.pre != "trillion":
            vocab.pre = "jais"
        n = len(vocab.tokens)
        for key in ("bos", "eos", "pad"):
            tid = self.config.get(f"{key}_token_id")
            vocab.special[key] = tid if isinstance(tid, int) and 0 <= tid < n else 0
        vocab.add_bos = False       # the official prompts are sent without BOS
        vocab.add_eos = False
        return vocab

    # -- chat knowledge --------------------------------------------------------------------
    def chat_template(self, vocab: Vocab | None) -> str | None:
        if vocab is not None and vocab.chat_template:
            return vocab.chat_template  # a fine-tune that states its own format knows best
        return build_chat_template(self.model_size())

    def eos_ids(self, vocab: Vocab) -> list[int]:
        return super().eos_ids(vocab) or [0]

    def stop_strings(self) -> list[str]:
        # The model marks a new turn with these; "### Response: [|AI|]" follows "### Input".
        return ["### Input", "[|Human|]", "### Instruction"]

    def sampling_defaults(self) -> dict[str, float]:
        return {**_CARD_SAMPLING, **super().sampling_defaults()}


# -- chat knowledge: the model cards' prompt ---------------------------------------------
# The model cards' prompt text, verbatim: system text per language, the 13B card's changes to
# it, the "Complete the conversation below ..." line.
_PROMPTS = json.loads(Path(__file__).with_name("jais_prompts.json").read_text(encoding="utf-8"))
# A question is answered with the Arabic prompt when its text holds any of these letters.
_ARABIC_LETTERS = "ءآأؤإئابةتثجحخدذرزسشصضطظعغفقكلمنهوىي"
# Card values (model card quick-start code); generation_config.json wins where it has them.
_CARD_SAMPLING = {"temperature": 0.3, "top_p": 0.9, "repeat_penalty": 1.2}


def system_texts(size: str) -> dict[str, str]:
    """The card's default system text per language for "30b" or "13b"."""
    texts = dict(_PROMPTS["system_30b"])
    if size == "13b":
        for lang, pairs in _PROMPTS["changes_13b"].items():
            for old, new in pairs:
                assert texts[lang].count(old) == 1
                texts[lang] = texts[lang].replace(old, new)
    return texts


def _jinja_literal(text: str) -> str:
    if '"' in text or "\\" in text or "\n" in text:
        raise ValueError("text would need escaping inside a Jinja string literal")
    return f'"{text}"'


def build_chat_template(size: str) -> str:
    """The official single-turn prompt as a Jinja chat template, extended to several turns.

    One turn renders exactly the model card's prompt (no BOS):
        ### Instruction: {system}\\n\\n{connector}\\n### Input: [|Human|] {question}\\n### Response: [|AI|]
    - {system}: a leading system message's content when given, else the card's English text,
      or its Arabic text (`prompt_ar`) when the last user message contains Arabic letters.
    - {connector}: the card's "Complete the conversation below ..." line, in the language of the
      last user message (the Arabic card prompt translates it too).
    - Multi-turn (the card shows one turn only; the official chat handler keeps history as
      '[|Human|] q' / '[|AI|] a' lines): earlier turns go inside the Input section, one line
      each, before the current question:
        ### Input: [|Human|] q1\\n[|AI|] a1\\n[|Human|] q2\\n### Response: [|AI|]
    - With add_generation_prompt false, a final assistant message after the last user message
      is rendered as the response: ...\\n### Response: [|AI|] {answer}.
    """
    texts, connector = system_texts(size), _PROMPTS["connector"]
    return (
        "{#- Jais chat prompt (core42 model card format); see convert/families/jais.py -#}\n"
        "{%- set ns = namespace(system=none, first=0, last=-1, arabic=false) -%}\n"
        "{%- if messages and messages[0]['role'] == 'system' -%}\n"
        "{%- set ns.system = messages[0]['content'] -%}{%- set ns.first = 1 -%}\n"
        "{%- endif -%}\n"
        "{%- for m in messages -%}{%- if m['role'] == 'user' -%}"
        "{%- set ns.last = loop.index0 -%}{%- endif -%}{%- endfor -%}\n"
        "{%- if ns.last >= 0 -%}{%- for c in ["
        + ", ".join(_jinja_literal(c) for c in _ARABIC_LETTERS) + "] -%}"
        "{%- if c in messages[ns.last]['content'] -%}{%- set ns.arabic = true -%}{%- endif -%}"
        "{%- endfor -%}{%- endif -%}\n"
        "{%- if ns.system is none -%}{%- if ns.arabic -%}"
        "{%- set ns.system = " + _jinja_literal(texts["ar"]) + " -%}"
        "{%- else -%}{%- set ns.system = " + _jinja_literal(texts["en"]) + " -%}"
        "{%- endif -%}{%- endif -%}\n"
        "{{- '### Instruction: ' + ns.system + '\\n\\n' -}}\n"
        "{%- if ns.arabic -%}{{- " + _jinja_literal(connector["ar"]) + " -}}"
        "{%- else -%}{{- " + _jinja_literal(connector["en"]) + " -}}{%- endif -%}\n"
        "{{- '\\n### Input: ' -}}\n"
        "{%- for m in messages -%}{%- if loop.index0 >= ns.first and loop.index0 < ns.last -%}"
        "{%- if m['role'] == 'user' -%}{{- '[|Human|] ' + m['content'] + '\\n' -}}"
        "{%- elif m['role'] == 'assistant' -%}{{- '[|AI|] ' + m['content'] + '\\n' -}}"
        "{%- endif -%}{%- endif -%}{%- endfor -%}\n"
        "{%- if ns.last >= 0 -%}{{- '[|Human|] ' + messages[ns.last]['content'] -}}"
        "{%- else -%}{{- '[|Human|] ' -}}{%- endif -%}\n"
        "{%- if add_generation_prompt -%}{{- '\\n### Response: [|AI|]' -}}\n"
        "{%- elif messages and messages[-1]['role'] == 'assistant' and ns.last >= 0 -%}"
        "{{- '\\n### Response: [|AI|] ' + messages[-1]['content'] -}}{%- endif -%}\n"
    )
