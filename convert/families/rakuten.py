"""RakutenAI-7B instruct / chat (Rakuten): Mistral-7B with a 48k SentencePiece vocabulary.

Numerics come from LlamaFamily (GQA 32/8, the 4096 sliding window capping the context). The
prompt is the model card's: BOS + system + ' USER: {user} ASSISTANT:' with single spaces (not
Vicuna's newlines, which llama.cpp's built-in Vicuna template would use).
"""
from __future__ import annotations

from ..vocab import Vocab
from .llama import LlamaFamily

SYSTEM = ("A chat between a curious user and an artificial intelligence assistant. The assistant "
          "gives helpful, detailed, and polite answers to the user's questions.")

# Multi-turn is not in the card: earlier turns follow Vicuna v1.1's separators, as the card's
# one-turn string does (' ' after the system text and user turns, eos after answers).
# A system message replaces the default system sentence.
TEMPLATE = (
    "{{ bos_token }}{% set ns = namespace(system='" + SYSTEM.replace("'", "\\'") + "') %}"
    "{% for m in messages %}{% if m['role'] == 'system' %}{% set ns.system = m['content'] %}"
    "{% endif %}{% endfor %}{{ ns.system }}"
    "{% for m in messages %}{% if m['role'] == 'user' %}"
    "{{ ' USER: ' if ns.first is not defined else 'USER: ' }}{% set ns.first = false %}"
    "{{ m['content'] + ' ASSISTANT:' }}"
    "{% elif m['role'] == 'assistant' %}{{ ' ' + m['content'] + eos_token }}{% endif %}{% endfor %}")


class RakutenFamily(LlamaFamily):
    name = "rakutenai"
    languages = ("ja", "en")
    architectures = ("MistralForCausalLM",)
    name_hints = ("rakuten",)
    generic = False
    vocab_sizes = (48000,)          # Mistral's 32000 extended with Japanese pieces

    def chat_template(self, vocab: Vocab | None) -> str:
        return TEMPLATE

    def stop_strings(self) -> list[str]:
        return ["USER:"]
