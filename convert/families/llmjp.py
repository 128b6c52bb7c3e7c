"""llm-jp-3 / 3.1 (LLM-jp, NII): Llama (dense) or Mixtral (8x13b) with a Unigram tokenizer.

Numerics are plain Llama. What is ours to get right: the instruct prompt format, the BOS the
template already emits, card sampling defaults, and exact tokenization (llama.cpp's native
tokenizer has no Unigram-with-byte-fallback, so kiln marks the GGUF for the exact HF path).
"""
from __future__ import annotations

from ..vocab import Vocab
from .llama import LlamaFamily

SYSTEM = "以下は、タスクを説明する指示です。要求を適切に満たす応答を書きなさい。"

# The llm-jp-3 instruct template as the checkpoints ship it (see shared/families.md). Its system
# branch prints the fixed sentence above and never reads the message's content.
INSTRUCT_TEMPLATE = (
    "{{bos_token}}{% for message in messages %}"
    "{% if message['role'] == 'user' %}{{ '\\n\\n### 指示:\\n' + message['content'] }}"
    "{% elif message['role'] == 'system' %}{{ '" + SYSTEM + "' }}"
    "{% elif message['role'] == 'assistant' %}{{ '\\n\\n### 応答:\\n' + message['content'] + eos_token }}"
    "{% endif %}{% if loop.last and add_generation_prompt %}{{ '\\n\\n### 応答:\\n' }}{% endif %}"
    "{% endfor %}")

# What kiln writes as `tokenizer.chat_template` instead: the same text, but the system branch
# prints the system message's content. Why: llama.cpp (llama-server, and every tool on its
# template engine) decides whether a template "supports a system role" by rendering a probe
# system message and checking that its content is read (common/jinja/caps.cpp); the original
# never reads it, so llama.cpp merges the system message into the first user turn
# ("\n\n### 指示:\n<system>\n<user>"). For the official system message (the model card passes
# SYSTEM itself) both templates render the same prompt; another system text is now kept where the
# original replaced it by SYSTEM. The original stays in the GGUF under ORIGINAL_KEY.
LLAMA_CPP_TEMPLATE = INSTRUCT_TEMPLATE.replace("{{ '" + SYSTEM + "' }}", "{{ message['content'] }}")
ORIGINAL_KEY = "tokenizer.chat_template.original"


_PROBE = "PROBE-SYSTEM-TEXT"
# Conversations on which a checkpoint's template must render as LLAMA_CPP_TEMPLATE does to be
# taken for the llm-jp-3 instruct template, whatever its spelling.
_CHECKS = [
    [{"role": "user", "content": "Q1"}],
    [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Q1"}],
    [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Q1"},
     {"role": "assistant", "content": "A1"}, {"role": "user", "content": "Q2"}],
    [{"role": "user", "content": "Q1"}, {"role": "assistant", "content": "A1"}],
]


def _render(template: str, messages: list[dict], add_generation_prompt: bool) -> str:
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)   # transformers'
    return env.from_string(template).render(messages=messages, bos_token="<s>",
                                            eos_token="</s>",
                                            add_generation_prompt=add_generation_prompt)


def is_fixed_system_instruct(template: str) -> bool:
    """Whether `template` is the llm-jp-3 instruct format with a system branch that ignores the
    message's content: it renders as LLAMA_CPP_TEMPLATE for the card's system sentence and
    without a system message, and prints SYSTEM, not the content, for another system text."""
    from jinja2 import TemplateError

    try:
        probe = _render(template, [{"role": "system", "content": _PROBE},
                                   {"role": "user", "content": "Q1"}], True)
        if _PROBE in probe or SYSTEM not in probe:
            return False
        return all(_render(template, m, g) == _render(LLAMA_CPP_TEMPLATE, m, g)
                   for m in _CHECKS for g in (True, False))
    except (TemplateError, TypeError, ValueError):
        return False


class LlmJpFamily(LlamaFamily):
    name = "llm-jp"
    languages = ("ja", "en")
    architectures = ("LlamaForCausalLM", "MixtralForCausalLM")
    name_hints = ("llm-jp",)
    generic = False
    file_hints = ("LLM-jp",)        # its tokenizer_config / special_tokens_map say so

    original_template: str | None = None

    def chat_template(self, vocab: Vocab | None) -> str:
        """LLAMA_CPP_TEMPLATE in place of the llm-jp-3 instruct template (the checkpoint's, or
        none); any other template of the checkpoint's own is kept as it is."""
        own = vocab.chat_template if vocab is not None else None
        if own and not is_fixed_system_instruct(own):
            return own
        self.original_template = own or INSTRUCT_TEMPLATE
        return LLAMA_CPP_TEMPLATE

    def kiln_metadata(self, vocab: Vocab) -> dict:
        meta = super().kiln_metadata(vocab)
        if self.original_template is not None:
            meta[ORIGINAL_KEY] = self.original_template
        return meta

    def stop_strings(self) -> list[str]:
        return ["\n\n### 指示:"]

    def sampling_defaults(self) -> dict[str, float]:
        card = {"temperature": 0.7, "top_p": 0.95, "repeat_penalty": 1.05}
        return {**card, **super().sampling_defaults()}

    def exact_tokenizer(self) -> str | None:
        # llama.cpp merges greedily where the model's Unigram runs Viterbi with byte fallback.
        return "huggingface"
