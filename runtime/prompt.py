"""From chat messages to token ids and back: the family's template, exact tokenization, no
injection, exact decoding.

The template's own markers are the only special tokens in a prompt: text from a user or a
document that spells a special token (`</s>`, `<|endoftext|>`, `<unk>` ...) is tokenized as
plain text.  `PromptBuilder.encode` renders the template once with the real messages and once
with a sentinel in place of each message that spells a special token, so it knows which
characters of the prompt are the template's; special tokens are parsed there only.

Two tokenizers, chosen by `make_tokenizer` from the GGUF's `kiln.tokenizer`:

* `NativeTokenizer`: llama.cpp's own (exact for SentencePiece-BPE and GPT-2 byte-level
  vocabularies, see tests/test_tokenizer_parity.py).
* `HFTokenizer`: the embedded `tokenizer.huggingface.json` through the `tokenizers` library,
  for families whose llama.cpp tokenization is known to differ (llm-jp's Unigram, XVERSE's
  pre-tokenizer); the ids are then handed to llama.cpp.

Both decode (`decode(ids)`, and `stream()` for token-by-token output that never splits a UTF-8
character): the text comes back exactly, decode(encode(text)) == text.
"""
from __future__ import annotations

import codecs
import ctypes
import logging
import random
import re
from typing import Protocol, Sequence

from jinja2 import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from convert.errors import KilnError

from .meta import ModelMeta

log = logging.getLogger(__name__)

Message = dict  # {"role": "system" | "user" | "assistant", "content": str}


class StreamDecoder(Protocol):
    def feed(self, token: int) -> str: ...
    def flush(self) -> str: ...


class Tokenizer(Protocol):
    def encode(self, text: str, special: bool) -> list[int]: ...
    def decode(self, ids: Sequence[int]) -> str: ...
    def stream(self) -> StreamDecoder: ...


# -------------------------------------------------------------------------------- llama.cpp

class PieceStream:
    """Token-by-token text from each token's bytes (llama.cpp's token_to_piece): an incremental
    UTF-8 decoder holds back a character split across tokens (byte-fallback pieces), so no
    U+FFFD appears where the whole text has none.  With `lstrip`, one leading space of the
    first piece is dropped, as llama.cpp's detokenizer does for a SentencePiece vocab."""

    def __init__(self, piece, lstrip: bool = False):
        self._piece = piece
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._lstrip = lstrip

    def feed(self, token: int) -> str:
        data = self._piece(token)
        if self._lstrip:
            self._lstrip = False
            if data.startswith(b" "):
                data = data[1:]
        return self._utf8.decode(data)

    def flush(self) -> str:
        return self._utf8.decode(b"", final=True)


class NativeTokenizer:
    """llama.cpp's own tokenizer and detokenizer."""

    def __init__(self, llm, add_space_prefix: bool = False):
        self.llm = llm
        self.add_space_prefix = add_space_prefix

    def encode(self, text: str, special: bool) -> list[int]:
        if not text:
            return []
        return self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=special)

    def piece(self, token: int) -> bytes:
        """The bytes of one token, control tokens empty (llama-cpp-python's own helper
        truncates pieces longer than 32 bytes)."""
        import llama_cpp

        size = 64
        while True:
            buf = ctypes.create_string_buffer(size)
            n = llama_cpp.llama_token_to_piece(self.llm._model.vocab, token, buf, size, 0, False)
            if n >= 0:
                return buf.raw[:n]
            size = -n

    def decode(self, ids: Sequence[int]) -> str:
        stream = self.stream()
        return "".join(stream.feed(t) for t in ids) + stream.flush()

    def stream(self) -> PieceStream:
        return PieceStream(self.piece, lstrip=self.add_space_prefix)


# -------------------------------------------------------------------------------- tokenizers

class HFStream:
    """Token-by-token text through the Hugging Face decoder: the text of the tokens since the
    last emitted boundary is decoded again with each new token and only what follows the
    already-emitted part is returned, held back while it ends in an incomplete character."""

    def __init__(self, tok):
        self._tok = tok
        self._ids: list[int] = []
        self._prefix = 0      # start of the window that is re-decoded
        self._read = 0        # tokens before this are emitted

    def _text(self, a: int, b: int) -> str:
        return self._tok.decode(self._ids[a:b], skip_special_tokens=True)

    def feed(self, token: int) -> str:
        self._ids.append(token)
        before = self._text(self._prefix, self._read)
        now = self._text(self._prefix, len(self._ids))
        if len(now) > len(before) and not now.endswith("\ufffd"):
            self._prefix, self._read = self._read, len(self._ids)
            return now[len(before):]
        return ""

    def flush(self) -> str:
        before = self._text(self._prefix, self._read)
        now = self._text(self._prefix, len(self._ids))
        self._prefix = self._read = len(self._ids)
        return now[len(before):]


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

    def decode(self, ids: Sequence[int]) -> str:
        return self.parse.decode(list(ids), skip_special_tokens=True)

    def stream(self) -> HFStream:
        return HFStream(self.parse)


def make_tokenizer(meta: ModelMeta, llm) -> NativeTokenizer | HFTokenizer:
    """The tokenizer kiln uses for this GGUF: the embedded Hugging Face one when the converter
    marked llama.cpp's as inexact (`kiln.tokenizer` = "huggingface"), else llama.cpp's."""
    if meta.tokenizer == "huggingface" and meta.hf_json:
        return HFTokenizer(meta.hf_json)
    return NativeTokenizer(llm, add_space_prefix=meta.add_space_prefix)


# -------------------------------------------------------------------------------- prompts

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
        specials = [s for s in meta.special_texts if s]
        self._special_re = (re.compile("|".join(re.escape(s) for s in
                                                sorted(specials, key=len, reverse=True)))
                            if specials else None)
        self._special_ids: dict[str, int | None] = {}

    def render(self, messages: Sequence[Message], add_generation_prompt: bool = True) -> str:
        try:
            return self.template.render(messages=list(messages), bos_token=self.bos_text,
                                        eos_token=self.eos_text,
                                        add_generation_prompt=add_generation_prompt)
        except TemplateError as exc:
            raise KilnError(self.meta.path, f"chat template failed: {exc}") from None

    def has_special_text(self, text: str) -> bool:
        return self._special_re is not None and self._special_re.search(text) is not None

    def encode(self, messages: Sequence[Message]) -> list[int]:
        text = self.render(messages)
        risky = [i for i, m in enumerate(messages) if self.has_special_text(m.get("content") or "")]
        if not risky:
            ids = self.tokenizer.encode(text, True)
        else:
            ids = []
            for piece, special in self._fragments(messages, text, risky):
                if special:
                    ids.append(self._special_id(piece))
                else:
                    ids += self.tokenizer.encode(piece, False)
        bos = self.meta.bos_id
        if self.meta.add_bos and bos is not None and (not ids or ids[0] != bos):
            ids.insert(0, bos)
        return ids

    # -- where the template's own special tokens are -------------------------------------
    def _fragments(self, messages: Sequence[Message], text: str,
                   risky: list[int]) -> list[tuple[str, bool]]:
        """`text` cut into plain-text runs and the template's own special tokens.

        Text between two of the template's special tokens stays one run, so it is tokenized
        exactly as a whole-prompt special-parsing tokenization would (llama.cpp and Hugging Face
        both tokenize each run between specials on its own), except that the specials spelled
        inside message contents are text."""
        parts = self._template_parts(messages, text, risky)
        if parts is None:
            log.warning("%s: the chat template rewrites message contents; special-token "
                        "spellings are located by search", self.meta.path.name)
            parts = self._parts_by_search(messages, text, risky)
        out: list[tuple[str, bool]] = []
        run = ""
        for chunk, own in parts:
            if not own:
                run += chunk
                continue
            pos = 0
            for m in self._special_re.finditer(chunk):
                run += chunk[pos:m.start()]
                if self._special_id(m.group()) is None:   # not one token after all: text
                    run += m.group()
                else:
                    if run:
                        out.append((run, False))
                    run = ""
                    out.append((m.group(), True))
                pos = m.end()
            run += chunk[pos:]
        if run:
            out.append((run, False))
        return out

    def _template_parts(self, messages: Sequence[Message], text: str,
                        risky: list[int]) -> list[tuple[str, bool]] | None:
        """(chunk, is the template's own text) covering `text`, from a render with sentinels in
        place of the risky contents; None when the template changed the contents."""
        nonce = "".join(random.choice("0123456789") for _ in range(12))
        marks: dict[str, str] = {}
        shown = [dict(m) for m in messages]
        for i in risky:
            mark = f"\ue000{nonce}{i:05d}\ue001"
            marks[mark] = messages[i]["content"]
            shown[i]["content"] = mark
        skeleton = self.render(shown)
        pattern = re.compile("|".join(re.escape(k) for k in marks))
        pieces: list[tuple[str, str | None]] = []     # (template text, None) | (mark, mark)
        pos = 0
        for m in pattern.finditer(skeleton):
            pieces.append((skeleton[pos:m.start()], None))
            pieces.append((m.group(), m.group()))
            pos = m.end()
        pieces.append((skeleton[pos:], None))
        # templates that trim contents (Llama-3 style `| trim`) get the trimmed text
        for variant in (lambda s: s, str.strip, str.lstrip, str.rstrip):
            parts = [(chunk, True) if mark is None else (variant(marks[mark]), False)
                     for chunk, mark in pieces]
            if "".join(c for c, _ in parts) == text:
                return [(c, own) for c, own in parts if c]
        return None

    def _parts_by_search(self, messages: Sequence[Message], text: str,
                         risky: list[int]) -> list[tuple[str, bool]]:
        parts: list[tuple[str, bool]] = []
        pos = 0
        for i in risky:
            content = messages[i]["content"]
            at = text.find(content, pos)
            if at < 0:
                continue
            parts += [(text[pos:at], True), (content, False)]
            pos = at + len(content)
        parts.append((text[pos:], True))
        return [(c, own) for c, own in parts if c]

    def _special_id(self, piece: str) -> int | None:
        if piece not in self._special_ids:
            ids = self.tokenizer.encode(piece, True)
            self._special_ids[piece] = ids[0] if len(ids) == 1 else None
        return self._special_ids[piece]
