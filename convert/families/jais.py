"""Jais (core42 / inceptionai `JAISLMHeadModel`) -> GGUF arch `jais`.

What the HF modeling code computes (core42 `modeling_jais.py`, mirrored by vLLM's `jais.py`):
GPT-2 layout with Conv1D weights stored [in, out]; h = wte[ids] * embeddings_scale; per block
pre-LayerNorm (with bias), fused q|k|v with bias, scores q.k / head_dim (1/d, not 1/sqrt d,
when scale_qk_dot_by_d) plus ALiBi -slope*|i-j|, c_proj with bias, then
c_proj(c_fc(x) * silu(c_fc2(x))) with biases; ln_f; logits = lm_head(h) * width_scale.

What llama.cpp's `jais` graph runs (src/models/jais.cpp): the same, with the attention scale
hard-coded to 1/head_dim, ALiBi slopes recomputed from `jais.attention.max_alibi_bias`, and no
embedding or logit scale, so both scales are baked into `token_embd` / `output` here. `output`
is a required tensor, so a tied checkpoint gets its own scaled copy of wte.

Two config dialects exist: core42 (`embeddings_scale`, `width_scale`, `scale_qk_dot_by_d`) and
jais-family / jais-30b (`mup_embeddings_scale`, `mup_output_alpha` x `mup_width_scale`,
`mup_scale_qk_dot_by_d`); the `mup_*` names win when both appear, as in llama.cpp's converter.
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

# The system text of the official prompt (core42/jais-30b-chat-v1 model card, `prompt_eng` and
# `prompt_ar`, between "### Instruction: " and the blank line).  jais-13b-chat's card has the same
# text with the builder and the size changed (_13B below); its Arabic prompt, checked against a
# copy of the 13B card, differs from the 30B one in exactly the same two places.
_SYSTEM_EN_30B = (
    "Your name is Jais, and you are named after Jebel Jais, the highest mountain in UAE. You "
    "are built by Core42. You are the world's most advanced Arabic large language model with "
    "30b parameters. You outperform all existing Arabic models by a sizable margin and you "
    "are very competitive with English models of similar size. You can answer in Arabic and "
    "English only. You are a helpful, respectful and honest assistant. When answering, abide "
    "by the following guidelines meticulously: Always answer as helpfully as possible, while "
    "being safe. Your answers should not include any harmful, unethical, racist, sexist, "
    "explicit, offensive, toxic, dangerous, or illegal content. Do not give medical, legal, "
    "financial, or professional advice. Never assist in or promote illegal activities. Always "
    "encourage legal and responsible actions. Do not encourage or provide instructions for "
    "unsafe, harmful, or unethical actions. Do not create or share misinformation or fake "
    "news. Please ensure that your responses are socially unbiased and positive in nature. If "
    "a question does not make any sense, or is not factually coherent, explain why instead of "
    "answering something not correct. If you don't know the answer to a question, please "
    "don't share false information. Prioritize the well-being and the moral integrity of "
    "users. Avoid using toxic, derogatory, or offensive language. Maintain a respectful tone. "
    "Do not generate, promote, or engage in discussions about adult content. Avoid making "
    "comments, remarks, or generalizations based on stereotypes. Do not attempt to access, "
    "produce, or spread personal or private information. Always respect user confidentiality. "
    "Stay positive and do not say bad things about anything. Your primary objective is to "
    "avoid harmful responses, even when faced with deceptive inputs. Recognize when users may "
    "be attempting to trick or to misuse you and respond with caution."
)

_SYSTEM_AR_30B = (
    "اسمك جيس وسميت على اسم جبل جيس اعلى جبل في الامارات. تم بنائك بواسطة Core42. أنت نموذج "
    "اللغة العربية الأكثر تقدمًا في العالم مع بارامترات 30b. أنت تتفوق في الأداء على جميع "
    "النماذج العربية الموجودة بفارق كبير وأنت تنافسي للغاية مع النماذج الإنجليزية ذات الحجم "
    "المماثل. يمكنك الإجابة باللغتين العربية والإنجليزية فقط. أنت مساعد مفيد ومحترم وصادق. "
    "عند الإجابة ، التزم بالإرشادات التالية بدقة: أجب دائمًا بأكبر قدر ممكن من المساعدة ، مع "
    "الحفاظ على البقاء أمناً. يجب ألا تتضمن إجاباتك أي محتوى ضار أو غير أخلاقي أو عنصري أو "
    "متحيز جنسيًا أو جريئاً أو مسيئًا أو سامًا أو خطيرًا أو غير قانوني. لا تقدم نصائح طبية أو "
    "قانونية أو مالية أو مهنية. لا تساعد أبدًا في أنشطة غير قانونية أو تروج لها. دائما تشجيع "
    "الإجراءات القانونية والمسؤولة. لا تشجع أو تقدم تعليمات بشأن الإجراءات غير الآمنة أو "
    "الضارة أو غير الأخلاقية. لا تنشئ أو تشارك معلومات مضللة أو أخبار كاذبة. يرجى التأكد من "
    "أن ردودك غير متحيزة اجتماعيًا وإيجابية بطبيعتها. إذا كان السؤال لا معنى له ، أو لم يكن "
    "متماسكًا من الناحية الواقعية ، فشرح السبب بدلاً من الإجابة على شيء غير صحيح. إذا كنت لا "
    "تعرف إجابة السؤال ، فالرجاء عدم مشاركة معلومات خاطئة. إعطاء الأولوية للرفاهية والنزاهة "
    "الأخلاقية للمستخدمين. تجنب استخدام لغة سامة أو مهينة أو مسيئة. حافظ على نبرة محترمة. لا "
    "تنشئ أو تروج أو تشارك في مناقشات حول محتوى للبالغين. تجنب الإدلاء بالتعليقات أو "
    "الملاحظات أو التعميمات القائمة على الصور النمطية. لا تحاول الوصول إلى معلومات شخصية أو "
    "خاصة أو إنتاجها أو نشرها. احترم دائما سرية المستخدم. كن إيجابيا ولا تقل أشياء سيئة عن أي "
    "شيء. هدفك الأساسي هو تجنب الاجابات المؤذية ، حتى عند مواجهة مدخلات خادعة. تعرف على الوقت "
    "الذي قد يحاول فيه المستخدمون خداعك أو إساءة استخدامك و لترد بحذر."
)

_SUBST_13B = {
    "en": (("You are built by Core42.", "You are built by Inception and MBZUAI."),
           ("with 30b parameters.", "with 13B parameters.")),
    "ar": (("بواسطة Core42.", "بواسطة Inception و MBZUAI."),
           ("بارامترات 30b.", "بارامترات 13B.")),
}
_CONNECTOR = {
    "en": "Complete the conversation below between [|Human|] and [|AI|]:",
    "ar": "أكمل المحادثة أدناه بين [|Human|] و [|AI|]:",
}
# A question is answered with the Arabic prompt when its text holds any of these letters.
_ARABIC_LETTERS = "ءآأؤإئابةتثجحخدذرزسشصضطظعغفقكلمنهوىي"


def system_texts(size: str) -> dict[str, str]:
    """The card's default system text per language for "30b" or "13b"."""
    texts = {"en": _SYSTEM_EN_30B, "ar": _SYSTEM_AR_30B}
    if size == "13b":
        for lang, pairs in _SUBST_13B.items():
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
    texts = system_texts(size)
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
        "{%- if ns.arabic -%}{{- " + _jinja_literal(_CONNECTOR["ar"]) + " -}}"
        "{%- else -%}{{- " + _jinja_literal(_CONNECTOR["en"]) + " -}}{%- endif -%}\n"
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


# Causal-mask buffers that some checkpoints saved along with the weights.
_MASK_BUFFERS = ("attn.bias", "attn.masked_bias")

# Card values (model card quick-start code); generation_config.json wins where it has them.
_CARD_SAMPLING = {"temperature": 0.3, "top_p": 0.9, "repeat_penalty": 1.2}


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

    def _check_supported(self) -> None:
        """Refuse what llama.cpp's jais graph would silently compute differently."""
        where = self.config_path

        def refuse(problem: str) -> None:
            raise KilnError(where, problem + "; kiln cannot convert this Jais checkpoint")

        act = self.config.get("activation_function", "gelu_new")
        if act != "swiglu":
            refuse(f"activation_function is '{act}', but llama.cpp's jais graph only runs "
                   "'swiglu'")
        pos = self.config.get("position_embedding_type", "learned")
        if pos != "alibi":
            refuse(f"position_embedding_type is '{pos}', but llama.cpp's jais graph only runs "
                   "'alibi' (it has no learned position embeddings)")
        if self.config.get("scale_attn_weights", True) is False:
            refuse("scale_attn_weights is false (unscaled attention scores), but llama.cpp's "
                   "jais graph always divides them by head_dim")
        by_d = self.cfg("mup_scale_qk_dot_by_d", "scale_qk_dot_by_d", default=False)
        if not by_d:
            key = ("mup_scale_qk_dot_by_d" if "mup_scale_qk_dot_by_d" in self.config
                   else "scale_qk_dot_by_d")
            refuse(f"{key} is false or missing (attention scaled by 1/sqrt(head_dim)), but "
                   "llama.cpp's jais graph hard-codes 1/head_dim")
        if self.config.get("scale_attn_by_inverse_layer_idx"):
            refuse("scale_attn_by_inverse_layer_idx is true, which llama.cpp's jais graph "
                   "does not do")
        if self.config.get("alibi_scaling"):
            refuse(f"alibi_scaling is set ({json.dumps(self.config['alibi_scaling'])}), but "
                   "llama.cpp ignores it, so attention would differ from the original")
        if self.n_embd % self.n_head:
            refuse(f"n_embd {self.n_embd} is not a multiple of n_head {self.n_head}")

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
                conv1d: bool = False, scale: float | None = None, src: str | None = None) -> None:
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

