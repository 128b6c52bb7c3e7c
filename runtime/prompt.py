"""From chat messages to token ids: the family's template, exact tokenization, no injection.

The template's own markers are the only special tokens in a prompt: text from a user or a
document that spells a control token (`</s>`, `<|endoftext|>` ...) is tokenized as plain text.
"""
from __future__ import annotations

from typing import Protocol, Sequence

from jinja2 import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from convert.errors import KilnError

from .meta import ModelMeta

Message = dict  # {"role": "system" | "user" | "assistant", "content": str}


class Tokenizer(Protocol):
    def encode(self, text: str, special: bool) -> list[int]: ...


class NativeTokenizer:
    """llama.cpp's own tokenizer (exact for SentencePiece and GPT-2 BPE vocabularies)."""

    def __init__(self, llm):
        self.llm = llm

    def encode(self, text: str, special: bool) -> list[int]:
        if not text:
            return []
        return self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=special)


class HFTokenizer:
    """The model's own tokenizer.json through `tokenizers`, where llama.cpp's differs."""

    def __init__(self, hf_json: str):
        from tokenizers import Tokenizer as _Tok

        self.parse = _Tok.from_str(hf_json)
        self.plain = _Tok.from_str(hf_json)
        self.plain.encode_special_tokens = True  # specials in the text stay text

    def encode(self, text: str, special: bool) -> list[int]:
        if not text:
            return []
        tok = self.parse if special else self.plain
        return tok.encode(text, add_special_tokens=False).ids


def _raise(message: str) -> None:
    raise TemplateError(message)


class PromptBuilder:
    def __init__(self, meta: ModelMeta, tokenizer: Tokenizer):
        self.meta, self.tokenizer = meta, tokenizer
        # as transformers' apply_chat_template sets it up
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                            extensions=["jinja2.ext.loopcontrols"])
        env.globals["raise_exception"] = _raise
        try:
            self.template = env.from_string(meta.chat_template)
        except TemplateError as exc:
            raise KilnError(meta.path, f"chat template does not compile: {exc}") from None
        texts = meta.token_texts
        self.bos_text = texts.get(meta.bos_id, "") if meta.bos_id is not None else ""
        self.eos_text = texts.get(meta.eos_id, "") if meta.eos_id is not None else ""

    def render(self, messages: Sequence[Message], add_generation_prompt: bool = True) -> str:
        try:
            return self.template.render(messages=list(messages), bos_token=self.bos_text,
                                        eos_token=self.eos_text,
                                        add_generation_prompt=add_generation_prompt)
        except TemplateError as exc:
            raise KilnError(self.meta.path, f"chat template failed: {exc}") from None

    def has_special_text(self, text: str) -> bool:
        return any(s in text for s in self.meta.special_texts)

    def encode(self, messages: Sequence[Message]) -> list[int]:
        text = self.render(messages)
        pieces: list[tuple[str, bool]] = []
        pos = 0
        for m in messages:
            content = m.get("content") or ""
            if not content or not self.has_special_text(content):
                continue
            at = text.find(content, pos)
            if at < 0:  # the template rewrote this message; what remains was its own text
                continue
            pieces += [(text[pos:at], True), (content, False)]
            pos = at + len(content)
        pieces.append((text[pos:], True))
        ids: list[int] = []
        for piece, special in pieces:
            ids += self.tokenizer.encode(piece, special)
        bos = self.meta.bos_id
        if self.meta.add_bos and bos is not None and (not ids or ids[0] != bos):
            ids.insert(0, bos)
        return ids
