"""XVERSE (XverseForCausalLM: XVERSE-7B/13B/65B, -Chat, -13B-256K), GGUF arch `xverse`.

Numerically Llama (RMSNorm, separate q/k/v/o without bias, SwiGLU, NeoX-style RoPE over the whole
head, untied lm_head), so the tensor map, q/k un-permutation and hparams come from LlamaFamily.
What differs from plain Llama:

* config.json has no `num_key_value_heads` (MHA) and usually no `rope_theta` (10000); the 256K
  variant carries its own, so both are read, never assumed.
* llama.cpp's `xverse` graph requires `output.weight` and has no bias, no RoPE frequency factors
  and no expert tensors: a tied checkpoint gets an explicit copy of the embeddings as output;
  biases, llama3-style RoPE scaling and MoE are refused.
* Tokenizer: only `tokenizer.json`, SentencePiece-style BPE with byte fallback, written as
  "llama" with merge-rank scores (convert/vocab/tokenizer_json.py). llama.cpp's own converter writes no scores at all, so
  its segmentation does not follow the merges. A token whose text is "\\x00" cannot live in a GGUF
  string list as llama.cpp reads it (C strings), so it becomes a BYTE token (see `_fix_nul`).
  XVERSE's tokenizer.json is described as also splitting off punctuation and single digits before
  BPE, which llama.cpp's SPM tokenizer cannot do: then `kiln.tokenizer` = "huggingface" records
  that the embedded tokenizer.json is the exact one (see `exact_tokenizer`; kiln's runtime uses it).
* Chat: `modeling_xverse.py::_build_chat_input`: 'Human: {user}\\n\\n' per user turn, earlier
  answers 'Assistant: {answer}' + eos (id 3), 'Assistant: ' to generate. No BOS. Each turn is
  encoded on its own (so each starts with Metaspace's "▁"), the last user turn together with
  'Assistant: ': `kiln.prompt_segments` = "message" tells the runtime to do the same.
"""
from __future__ import annotations

import json
import logging
from typing import Any

from ..checkpoint import Checkpoint
from ..errors import KilnError
from ..tensors import OutTensor
from ..vocab import T_BYTE, Vocab
from .llama import LlamaFamily

log = logging.getLogger(__name__)

# The official code has no system role (model.chat raises on it). kiln's choice, as
# api-for-open-llm and other open-source adapters do: a system message is written as plain text
# '{system}\n\n' where it stands (in practice: before the first Human turn).
CHAT_TEMPLATE = (
    "{% for m in messages %}"
    "{% if m['role'] == 'system' %}{{ m['content'] + '\\n\\n' }}"
    "{% elif m['role'] == 'user' %}{{ 'Human: ' + m['content'] + '\\n\\n' }}"
    "{% elif m['role'] == 'assistant' %}{{ 'Assistant: ' + m['content'] + eos_token }}"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Assistant: ' }}{% endif %}")

NUL_BYTE_TEXT = "<0x00>"
NUL_ALT_TEXT = "<b'\\x00'>"   # llama.cpp's converter spelling; decodes to byte 0x00 as well


class XverseFamily(LlamaFamily):
    name = "xverse"
    languages = ("zh", "en")
    architectures = ("XverseForCausalLM",)
    gguf_arch = "xverse"
    generic = False                # (LlamaFamily is the generic module)

    @classmethod
    def recognizes_gguf(cls, arch: str, name: str) -> bool:
        return arch == "xverse"

    # -- numerics ----------------------------------------------------------------------
    def _check_config(self) -> None:
        for key in ("bias", "attention_bias", "mlp_bias"):
            if self.config.get(key):
                raise KilnError(self.config_path, f"{key}=true: llama.cpp's xverse graph has no "
                                "bias tensors, so this checkpoint cannot be converted faithfully")
        if self.config.get("num_local_experts") or self.config.get("num_experts"):
            raise KilnError(self.config_path, "XVERSE MoE checkpoints are not supported by "
                            "llama.cpp's xverse architecture")
        scaling = self._rope_scaling()
        if scaling and scaling["rope_type"] != "linear":
            raise KilnError(self.config_path, f"rope_scaling type '{scaling['rope_type']}' is "
                            "not supported for XVERSE (llama.cpp's xverse graph reads no RoPE "
                            "frequency factors; supported: linear)")

    def hparams(self) -> dict[str, Any]:
        self._check_config()
        return super().hparams()   # rope.dimension_count = head_dim, as the graph asserts

    def tensors(self, ckpt: Checkpoint) -> list[OutTensor]:
        self._check_config()
        out = super().tensors(ckpt)
        if not any(t.name == "output.weight" for t in out):
            # Tied embeddings (config says so, LlamaFamily checked): llama.cpp's xverse loader
            # requires an explicit output matrix.
            d, v = self.n_embd, self.n_vocab()
            embd = self.stored(ckpt, "model.embed_tokens.weight", (v, d))
            out.append(OutTensor("output.weight", (v, d), embd))
        return out

    # -- tokenizer ---------------------------------------------------------------------
    def vocab(self) -> Vocab:
        vocab = super().vocab()
        _fix_nul(vocab)
        if vocab.add_bos is None:
            # The official chat code never inserts BOS; without an explicit setting in the
            # tokenizer files llama.cpp would add one for a "llama" vocabulary.
            vocab.add_bos = False
        return vocab

    def exact_tokenizer(self) -> str | None:
        """'huggingface' when tokenizer.json splits text before BPE in ways llama.cpp's SPM
        tokenizer cannot (XVERSE's is described as Metaspace + isolated punctuation + single
        digits). llama.cpp merges across those boundaries whenever the vocab has such a piece,
        so the runtime then tokenizes with the embedded tokenizer.json; the GGUF's native vocab
        stays as exact as llama.cpp allows for other tools."""
        if not getattr(self, "from_checkpoint", True):
            return None
        path = self.model_dir / "tokenizer.json"
        try:
            tj = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            return None
        if not isinstance(tj, dict):
            return None
        pre = _components(tj.get("pre_tokenizer"), "pretokenizers")
        norm = _components(tj.get("normalizer"), "normalizers")
        if any(p.get("type") != "Metaspace" for p in pre) or any(
                n.get("type") not in ("Prepend", "Replace") for n in norm):
            return "huggingface"
        return None

    # -- chat knowledge ----------------------------------------------------------------
    def chat_template(self, vocab: Vocab | None) -> str:
        return CHAT_TEMPLATE

    def eos_ids(self, vocab: Vocab) -> list[int]:
        ids = super().eos_ids(vocab)
        return ids or [3]

    def stop_strings(self) -> list[str]:
        return ["Human:"]

    def prompt_segments(self) -> str:
        return "message"


def _components(node: Any, key: str) -> list[dict]:
    """A tokenizer.json normalizer / pre_tokenizer as a flat list (Sequence nodes opened)."""
    if not isinstance(node, dict):
        return []
    if node.get("type") == "Sequence":
        return [c for sub in node.get(key) or [] for c in _components(sub, key)]
    return [node]


def _fix_nul(vocab: Vocab) -> None:
    """Give the "\\x00" token a text llama.cpp can load, without changing tokenization.

    llama.cpp reads token texts as C strings, so "\\x00" would load as "". It becomes the BYTE
    token "<0x00>": llama.cpp's byte fallback for a NUL character then finds exactly the id that
    Hugging Face's BPE gives it (the character is in the vocab), and it decodes to byte 0. If the
    vocab also has a "<0x00>" byte piece (never produced by HF, since NUL is a vocab character),
    that one takes llama.cpp's converter spelling "<b'\\x00'>", which still decodes to byte 0.
    """
    if "\x00" in vocab.tokens:
        nul = vocab.tokens.index("\x00")
        if NUL_BYTE_TEXT in vocab.tokens:
            other = vocab.tokens.index(NUL_BYTE_TEXT)
            vocab.tokens[other] = NUL_ALT_TEXT
            vocab.types[other] = T_BYTE
        vocab.tokens[nul] = NUL_BYTE_TEXT
        vocab.types[nul] = T_BYTE
    for i, t in enumerate(vocab.tokens):
        if "\x00" in t:
            log.warning("token %d %r contains a NUL character; llama.cpp will cut it there", i, t)
