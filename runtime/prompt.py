"""From chat messages to token ids and back: the family's template, exact tokenization, no
injection, exact decoding.

The template's own markers are the only special tokens in a prompt: text from a user or a
document that spells a special token (`</s>`, `<|endoftext|>`, `<unk>` ...) is tokenized as
plain text.  `PromptBuilder.encode` renders the template once with the real messages and once
with a sentinel in place of each message that spells a special token, so it knows which
characters of the prompt are the template's; special tokens are parsed there only.

Two tokenizers, chosen by `make_tokenizer`:

* `HFTokenizer`: the model's own tokenizer.json, embedded by kiln's converter in every GGUF it
  writes (`tokenizer.huggingface.json`), through the `tokenizers` library; the ids are then
  handed to llama.cpp. Exact by construction, whatever the tokenizer's shape: no guess about
  which shapes llama.cpp reproduces.
* `NativeTokenizer`: llama.cpp's own, for GGUFs without an embedded tokenizer.json (made by
  other tools). Its parity for each tokenizer shape is measured by scripts/tokenizer_parity.py.

Both decode (`decode(ids)`, and `stream()` for token-by-token output that never splits a UTF-8
character): the text comes back exactly, decode(encode(text)) == text.
"""
from __future__ import annotations

import codecs
import ctypes
import json
import logging
import random
import re
import threading
import time
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


def token_bytes(llm, token: int) -> bytes:
    """The bytes of one token as llama.cpp spells it, control tokens empty
    (llama-cpp-python's own helper truncates pieces longer than 32 bytes)."""
    import llama_cpp

    size = 64
    while True:
        buf = ctypes.create_string_buffer(size)
        n = llama_cpp.llama_token_to_piece(llm._model.vocab, token, buf, size, 0, False)
        if n >= 0:
            return buf.raw[:n]
        size = -n


class NativeTokenizer:
    """llama.cpp's own tokenizer and detokenizer.

    With special=False llama.cpp does not parse control tokens, but its SentencePiece merging
    looks every merged string up among all tokens, control ones included (llm_tokenizer_spm:
    try_add_bigram / resegment check no type): with pieces "</" and "s>" in a vocab, a typed
    "</s>" would come out as eos.  Given the GGUF's control ids and texts, such a token is
    spelled out again as byte tokens (or one character at a time), so text stays text."""

    def __init__(self, llm, add_space_prefix: bool = False,
                 control_texts: dict[int, str] | None = None,
                 byte_ids: dict[int, int] | None = None):
        self.llm = llm
        self.add_space_prefix = add_space_prefix
        self.control_texts = control_texts or {}
        self.byte_ids = byte_ids or {}

    def encode(self, text: str, special: bool) -> list[int]:
        if not text:
            return []
        ids = self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=special)
        if not special and any(i in self.control_texts for i in ids):
            ids = self._spell_out(ids)
        return ids

    def _spell_out(self, ids: list[int]) -> list[int]:
        out: list[int] = []
        for i in ids:
            text = self.control_texts.get(i)
            if not text:
                out.append(i)
            elif len(self.byte_ids) == 256:
                out += [self.byte_ids[b] for b in text.encode("utf-8")]
            elif not self.add_space_prefix:
                for ch in text:
                    out += self.llm.tokenize(ch.encode("utf-8"), add_bos=False, special=False)
            else:
                log.warning("token %d %r produced from plain text and cannot be spelled out", i,
                            text)
                out.append(i)
        return out

    def piece(self, token: int) -> bytes:
        return token_bytes(self.llm, token)

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
        return self._tok.decode(self._ids[a:b])

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


_BYTE_PIECE = re.compile(r"<0x[0-9A-Fa-f]{2}>\Z")


def _text_only_json(tj: dict) -> tuple[dict, dict[int, list[int]] | None, int | None]:
    """`tj` (changed in place) made into a tokenizer.json whose model can no longer produce a special token or a byte
    piece from text that spells it, as SentencePiece (which never matches CONTROL or BYTE
    pieces) and llama.cpp's special=False do.

    Hugging Face's Unigram runs Viterbi over every vocab entry, specials and "<0xXX>" included,
    so "</s>" or "<0x0A>" typed by a user can come out as eos or a newline byte when the
    alternative pieces cost more (an unknown character does); its BPE applies any listed merge,
    and SentencePiece-converted merge lists contain the ones that build "</s>" from "</" + "s>".
    Here those entries are renamed out of reach (Unigram) or their merges dropped (BPE).
    Returns (json, byte ids by byte value when byte fallback must be redone, unk id)."""
    model = tj.get("model") or {}
    special = {a["id"]: a["content"] for a in tj.get("added_tokens") or []
               if isinstance(a, dict) and a.get("special") and isinstance(a.get("id"), int)}
    fallback = bool(model.get("byte_fallback"))
    if model.get("type") == "Unigram" and isinstance(model.get("vocab"), list):
        hidden = "\U000F0000kiln-unreachable-" + "".join(random.choice("0123456789")
                                                        for _ in range(16)) + "\U000F0001"
        byte_ids: dict[int, list[int]] = {}
        for i, entry in enumerate(model["vocab"]):
            piece = entry[0]
            if fallback and _BYTE_PIECE.match(piece):
                byte_ids[int(piece[3:5], 16)] = [i]
            elif i not in special:
                continue
            entry[0] = f"{hidden}{i}"
        if fallback:
            # redone by HFTokenizer from the unknown spans (the renamed pieces cannot be found)
            model["byte_fallback"] = False
            return tj, (byte_ids if len(byte_ids) == 256 else {}), model.get("unk_id")
        return tj, None, None
    if model.get("type") == "BPE" and isinstance(model.get("merges"), list):
        vocab = model.get("vocab") or {}
        unreachable = set(special.values())
        if fallback:
            unreachable |= {p for p in vocab if _BYTE_PIECE.match(p)}

        def result(m) -> str:
            a, b = m if isinstance(m, list) else m.split(" ", 1)
            return a + b

        model["merges"] = [m for m in model["merges"] if result(m) not in unreachable]
    return tj, None, None


class HFTokenizer:
    """The model's own tokenizer.json through `tokenizers`, where llama.cpp's differs.

    `special=True` parses the added tokens (for the template's own text); `special=False` is
    text as text: added special tokens are not split out (encode_special_tokens) and, unlike
    Hugging Face's own models, spelled-out specials and byte pieces are never produced (see
    `_text_only_json`); on ordinary text the ids are Hugging Face's either way."""

    def __init__(self, hf_json: str):
        # Parsing a 100k vocabulary twice takes most of a second: `start()` (PromptBuilder calls
        # it once the model is loaded) runs it in the background; the first encode/decode waits
        # for what is left, or builds it right there when nothing started it.
        self._json = hf_json
        self._error: BaseException | None = None
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._built = False

    def start(self) -> None:
        with self._lock:
            if self._thread is None and not self._built:
                self._thread = threading.Thread(target=self._build, args=(0.005,),
                                                daemon=True, name="kiln-tokenizer")
                self._thread.start()

    def ready(self) -> "HFTokenizer":
        """Wait for the background build, or build now."""
        if not self._built:
            with self._lock:
                thread = self._thread
            if thread is not None:
                thread.join()
            else:
                self._build(0.0)
        if self._error is not None:
            raise KilnError(None, f"the embedded tokenizer.json cannot be loaded ({self._error})")
        return self

    def _build(self, pause: float) -> None:
        # a pause lets the caller of start() run on: parsing holds the GIL for long stretches
        time.sleep(pause)
        with self._lock:          # (start() holds it only to spawn the thread)
            if self._built:
                return
            try:
                from tokenizers import Tokenizer as _Tok

                self.parse = _Tok.from_str(self._json)
                tj = json.loads(self._json)
                self.special_ids = {a["id"] for a in tj.get("added_tokens") or []
                                    if isinstance(a, dict) and a.get("special")}
                safe, self._byte_ids, self._unk = _text_only_json(tj)
                # (renamed Unigram entries would renumber added tokens: this one never parses them)
                self.plain = _Tok.from_str(json.dumps(safe, ensure_ascii=False))
                self.plain.encode_special_tokens = True  # specials in the text stay text
            except Exception as exc:                     # raised again where it is used
                self._error = exc
            self._built, self._json = True, ""

    def encode(self, text: str, special: bool) -> list[int]:
        if not text:
            return []
        self.ready()
        if special:
            return self.parse.encode(text, add_special_tokens=False).ids
        enc = self.plain.encode(text, add_special_tokens=False)
        if not self._byte_ids:
            return enc.ids
        ids: list[int] = []
        for tid, piece in zip(enc.ids, enc.tokens):
            if tid == self._unk and piece:  # an unknown span: its UTF-8 bytes, as HF's fallback
                ids += [b for byte in piece.encode("utf-8") for b in self._byte_ids[byte]]
            else:
                ids.append(tid)
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        """The text of `ids`; special tokens (by id, not by text) left out."""
        self.ready()
        return self.parse.decode([i for i in ids if i not in self.special_ids],
                                 skip_special_tokens=False)

    def stream(self) -> HFStream:
        return HFStream(self)


def make_tokenizer(meta: ModelMeta, llm) -> NativeTokenizer | HFTokenizer:
    """The tokenizer kiln uses for this GGUF: the model's own tokenizer.json when the GGUF
    embeds one (`tokenizer.huggingface.json`, which kiln's converter always writes), so
    tokenization is exact whatever the tokenizer's shape; llama.cpp's only for GGUFs without
    it (made by other tools)."""
    if meta.tokenizer == "huggingface" and meta.hf_json:
        return HFTokenizer(meta.hf_json)
    return NativeTokenizer(llm, add_space_prefix=meta.add_space_prefix,
                           control_texts={i: meta.token_texts.get(i, "") for i in meta.control_ids},
                           byte_ids=meta.byte_ids)


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
        # contents that spell a special token or a byte token take the text-safe path
        self._risky_re = re.compile("|".join([r"<0x[0-9A-Fa-f]{2}>"]
                                             + ([self._special_re.pattern] if specials else [])))
        self._special_ids: dict[str, int | None] = {}
        if isinstance(tokenizer, HFTokenizer):
            tokenizer.start()

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
        risky = [i for i, m in enumerate(messages)
                 if self._risky_re.search(m.get("content") or "")]
        cuts = self._segment_cuts(messages, text)
        ids: list[int] = []
        if not risky:
            for piece, _ in _cut([(text, False)], cuts):
                ids += self.tokenizer.encode(piece, True)
        else:
            for piece, special in _cut(self._fragments(messages, text, risky), cuts):
                if special:
                    ids.append(self._special_id(piece))
                else:
                    ids += self.tokenizer.encode(piece, False)
        bos = self.meta.bos_id
        if self.meta.add_bos and bos is not None and (not ids or ids[0] != bos):
            ids.insert(0, bos)
        return ids

    def _segment_cuts(self, messages: Sequence[Message], text: str) -> list[int]:
        """Offsets in `text` where a new tokenizer call starts: with `kiln.prompt_segments` =
        "message" (the family's own code encodes each turn separately), the end of each
        message's part, found by rendering the messages before it."""
        if self.meta.prompt_segments != "message":
            return []
        cuts = []
        for k in range(1, len(messages)):
            head = self.render(messages[:k], add_generation_prompt=False)
            if not text.startswith(head):
                log.warning("%s: the chat template does not render turn by turn; the prompt "
                            "is tokenized whole", self.meta.path.name)
                return []
            cuts.append(len(head))
        return cuts

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
            for m in (self._special_re.finditer(chunk) if self._special_re else ()):
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


def _cut(pieces: list[tuple[str, bool]], cuts: list[int]) -> list[tuple[str, bool]]:
    """(text, is special) pieces covering a prompt, text pieces cut at the offsets `cuts`."""
    out: list[tuple[str, bool]] = []
    pos = 0
    for piece, special in pieces:
        inner = [] if special else [c - pos for c in cuts if pos < c < pos + len(piece)]
        out += [(piece[a:b], special) for a, b in zip([0] + inner, inner + [len(piece)])]
        pos += len(piece)
    return out
