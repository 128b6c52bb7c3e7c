"""Tokenizer files of a Hugging Face checkpoint -> the `tokenizer.*` keys of a GGUF file.

Reads `tokenizer.model` (SentencePiece ModelProto, decoded here by a small protobuf reader) or
`tokenizer.json` (plain JSON), plus `tokenizer_config.json`, `special_tokens_map.json`,
`added_tokens.json`, `chat_template.jinja` / `chat_template.json` and the model's config.json
(already parsed, passed in).  No `tokenizers`, `sentencepiece`, `transformers` or torch.

What llama.cpp does with the result (facts from its src/llama-vocab.cpp, the copy that
llama-cpp-python 0.3.36 vendors):

* model "llama" (SPM): the text gets one leading space when `add_space_prefix` (at the start and
  after every special token), spaces become U+2581, then the text is split into UTF-8 characters
  and adjacent symbols are merged greedily: the pair whose concatenation is a vocab token with the
  HIGHEST score goes first (ties: leftmost).  Symbols that end up not being tokens are emitted as
  `<0xXX>` byte tokens.  No normalization (NFKC charsmap) and no whitespace collapsing is applied.
* model "gpt2" (BPE): the pre-tokenizer regex chosen by `tokenizer.ggml.pre`, GPT-2 byte
  encoding, then merges by rank from `tokenizer.ggml.merges`.
* Token texts must be unique (llama.cpp asserts), CONTROL/UNKNOWN tokens are matched in raw text
  only when parsing specials, USER_DEFINED tokens always.

The three tokenizer.json kinds map as follows:

(a) BPE + ByteLevel (GPT-2 style)    -> "gpt2", merges, pre chosen from the Split regex and
    tokenizer_config's clean_up_tokenization_spaces (which llama_detokenize follows by pre name).
(b) BPE + byte_fallback (SPM style)  -> "llama", score(piece) = -rank of the first merge that
    creates it, so llama.cpp's highest-score-first bigram merging replays the BPE merge order
    (exact when every concatenation of two adjacent vocab pieces that is itself in the vocab is
    also a listed merge, true for SentencePiece-converted tokenizers; otherwise approximate).
(c) Unigram                          -> "llama".  llama.cpp does greedy bigram merging, not
    Viterbi, so its segmentation is an approximation whatever the scores; `write_vocab` writes
    `unigram_gain_scores` (the log-likelihood gain of each merge), which measures closest to
    Hugging Face's Viterbi (real llm-jp-3 tokenizer, tests/tokenizer_corpus.py: 79% identical
    lines vs 73% with the raw log-probs; 40-sentence Japanese prose 65% vs 53%).  `Vocab.scores`
    keeps the log-probs (what a "t5"/UGM vocab needs).  The exact tokenizer.json is embedded in
    `tokenizer.huggingface.json` for Python-side tokenization.

    Not chosen: "t5" (llama.cpp's UGM, Viterbi over the same log-probs) is exact on prose but has
    no byte fallback: every character outside the vocab, "\n" included for llm-jp, becomes <unk>.

A `tokenizer.model` that llama.cpp's SPM tokenizer cannot follow (a normalization charsmap such as
SentencePiece's default nmt_nfkc, remove_extra_whitespaces, Unigram) and that comes without a
tokenizer.json gets an equivalent tokenizer.json built here (`sentencepiece_tokenizer_json`,
checked id for id against sentencepiece in tests/test_tokenizer_parity.py) as
`tokenizer.huggingface.json`, and its normalizer is recorded in the standard keys
`tokenizer.ggml.precompiled_charsmap` / `tokenizer.ggml.remove_extra_whitespaces` (llama.cpp reads
them for UGM vocabs only): kiln's runtime then tokenizes with the embedded tokenizer.json.
"""
from __future__ import annotations

import base64
import json
import logging
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import gguf

from .errors import KilnError

log = logging.getLogger(__name__)

SPECIAL_KEYS = ("bos", "eos", "unk", "pad", "sep", "cls", "mask")

T_NORMAL = int(gguf.TokenType.NORMAL)              # 1
T_UNKNOWN = int(gguf.TokenType.UNKNOWN)            # 2
T_CONTROL = int(gguf.TokenType.CONTROL)            # 3
T_USER_DEFINED = int(gguf.TokenType.USER_DEFINED)  # 4
T_UNUSED = int(gguf.TokenType.UNUSED)              # 5
T_BYTE = int(gguf.TokenType.BYTE)                  # 6

ADDED_TOKEN_SCORE = -1000.0   # what llama.cpp's converter gives added tokens and padding
PAD_SCORE = -1000.0
SPACE_MARK = "\u2581"         # SentencePiece's "▁"
_BYTE_PIECE = re.compile(r"<0x[0-9A-Fa-f]{2}>\Z")

# GGUF key llama.cpp defines (llama-arch.cpp) but the vocab loader does not read; written for tools.
KEY_CLS_ID = "tokenizer.ggml.cls_token_id"


@dataclass
class Vocab:
    model: str                      # tokenizer.ggml.model: "llama" (SentencePiece-style) or "gpt2"
    pre: str | None                 # tokenizer.ggml.pre
    tokens: list[str]
    scores: list[float] | None
    types: list[int]                # gguf.TokenType values
    merges: list[str] | None        # for gpt2
    special: dict[str, int]         # "bos","eos","unk","pad","sep","cls","mask" -> id, known ones only
    add_bos: bool | None
    add_eos: bool | None
    add_space_prefix: bool | None
    chat_template: str | None
    hf_json: str | None             # raw tokenizer.json text when present
    n_real: int                     # tokens before padding
    unigram: bool = False           # scores are Unigram log-probs (see write_vocab)
    # SentencePiece normalizer llama.cpp's SPM tokenizer does not apply (written for the record)
    precompiled_charsmap: bytes | None = None
    remove_extra_whitespaces: bool | None = None


# --------------------------------------------------------------------------------------------
# SentencePiece ModelProto, read by hand (field numbers from sentencepiece_model.proto):
#   ModelProto      1 pieces (repeated SentencePiece), 2 trainer_spec, 3 normalizer_spec
#   SentencePiece   1 piece (string), 2 score (float), 3 type (enum, default NORMAL)
#                   Type: NORMAL=1 UNKNOWN=2 CONTROL=3 USER_DEFINED=4 UNUSED=5 BYTE=6 (= gguf.TokenType)
#   TrainerSpec     3 model_type (UNIGRAM=1 BPE=2 WORD=3 CHAR=4), 24 treat_whitespace_as_suffix,
#                   35 byte_fallback, 40 unk_id (0), 41 bos_id (1), 42 eos_id (2), 43 pad_id (-1)
#   NormalizerSpec  1 name, 2 precompiled_charsmap, 3 add_dummy_prefix (true),
#                   4 remove_extra_whitespaces (true), 5 escape_whitespaces (true)
# --------------------------------------------------------------------------------------------

SP_MODEL_TYPES = {1: "unigram", 2: "bpe", 3: "word", 4: "char"}


@dataclass
class SentencePieceModel:
    pieces: list[tuple[str, float, int]]      # (piece, score, type)
    model_type: int = 1
    byte_fallback: bool = False
    treat_whitespace_as_suffix: bool = False
    unk_id: int = 0
    bos_id: int = 1
    eos_id: int = 2
    pad_id: int = -1
    normalizer_name: str = ""
    precompiled_charsmap: bytes = b""
    add_dummy_prefix: bool = True
    remove_extra_whitespaces: bool = True
    escape_whitespaces: bool = True


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = 0
    shift = 0
    n = len(buf)
    while True:
        if pos >= n:
            raise ValueError("truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise ValueError("varint longer than 10 bytes")


def _fields(buf: bytes) -> Iterator[tuple[int, int, Any]]:
    """(field number, wire type, value): int for varints, bytes otherwise."""
    pos = 0
    n = len(buf)
    while pos < n:
        key, pos = _varint(buf, pos)
        fnum, wtype = key >> 3, key & 7
        if fnum == 0:
            raise ValueError("field number 0")
        if wtype == 0:
            val, pos = _varint(buf, pos)
        elif wtype == 2:
            ln, pos = _varint(buf, pos)
            if pos + ln > n:
                raise ValueError("length-delimited field runs past the end")
            val = buf[pos:pos + ln]
            pos += ln
        elif wtype == 5:
            if pos + 4 > n:
                raise ValueError("truncated fixed32")
            val = buf[pos:pos + 4]
            pos += 4
        elif wtype == 1:
            if pos + 8 > n:
                raise ValueError("truncated fixed64")
            val = buf[pos:pos + 8]
            pos += 8
        else:
            raise ValueError(f"unsupported wire type {wtype}")
        yield fnum, wtype, val


def _int32(v: int) -> int:
    v &= (1 << 64) - 1
    return v - (1 << 64) if v >= 1 << 63 else v


def _expect(wtype: int, want: int, what: str) -> None:
    if wtype != want:
        raise ValueError(f"{what}: wire type {wtype}, expected {want}")


def parse_sentencepiece_model(data: bytes) -> SentencePieceModel:
    """Decode a SentencePiece `tokenizer.model`; ValueError when it is not one."""
    pieces: list[tuple[str, float, int]] = []
    sp = SentencePieceModel(pieces=pieces)
    for fnum, wtype, val in _fields(data):
        if fnum == 1:
            _expect(wtype, 2, "ModelProto.pieces")
            text, score, ptype = None, 0.0, T_NORMAL
            for f, w, v in _fields(val):
                if f == 1:
                    _expect(w, 2, "SentencePiece.piece")
                    text = v.decode("utf-8")
                elif f == 2:
                    _expect(w, 5, "SentencePiece.score")
                    score = struct.unpack("<f", v)[0]
                elif f == 3:
                    _expect(w, 0, "SentencePiece.type")
                    ptype = v
            if text is None:
                raise ValueError(f"piece #{len(pieces)} has no text")
            if not 1 <= ptype <= 6:
                raise ValueError(f"piece #{len(pieces)} has unknown type {ptype}")
            pieces.append((text, score, ptype))
        elif fnum == 2:
            _expect(wtype, 2, "ModelProto.trainer_spec")
            for f, w, v in _fields(val):
                if w != 0:
                    continue
                if f == 3:
                    sp.model_type = v
                elif f == 24:
                    sp.treat_whitespace_as_suffix = bool(v)
                elif f == 35:
                    sp.byte_fallback = bool(v)
                elif f == 40:
                    sp.unk_id = _int32(v)
                elif f == 41:
                    sp.bos_id = _int32(v)
                elif f == 42:
                    sp.eos_id = _int32(v)
                elif f == 43:
                    sp.pad_id = _int32(v)
        elif fnum == 3:
            _expect(wtype, 2, "ModelProto.normalizer_spec")
            for f, w, v in _fields(val):
                if f == 1 and w == 2:
                    sp.normalizer_name = v.decode("utf-8", "replace")
                elif f == 2 and w == 2:
                    sp.precompiled_charsmap = bytes(v)
                elif f == 3 and w == 0:
                    sp.add_dummy_prefix = bool(v)
                elif f == 4 and w == 0:
                    sp.remove_extra_whitespaces = bool(v)
                elif f == 5 and w == 0:
                    sp.escape_whitespaces = bool(v)
        # 4 self_test_data, 5 denormalizer_spec: not needed
    if not pieces:
        raise ValueError("no pieces")
    return sp


# --------------------------------------------------------------------------------------------
# Pre-tokenizer recognition for byte-level BPE (regexes as written in tokenizer.json files; the
# llama.cpp names they map to use the same regex in src/llama-vocab.cpp).
# --------------------------------------------------------------------------------------------

GPT2_REGEX = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
LLAMA3_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
               r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN35_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}"
                r"| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
TEKKEN_REGEX = (r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+"
                r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*"
                r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+")
GPT4O_REGEX = (r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+"
               r"(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
               r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*"
               r"(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
               r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+")

# regex -> (llama.cpp pre name when the BPE model ignores merges, name when it does not)
# llama.cpp switches ignore_merges on for llama-bpe and tekken and off for the others.
_KNOWN_SPLIT_REGEXES: dict[str, tuple[str | None, str | None]] = {
    LLAMA3_REGEX: ("llama-bpe", "smaug-bpe"),
    QWEN2_REGEX: (None, "qwen2"),
    QWEN35_REGEX: (None, "qwen35"),
    TEKKEN_REGEX: ("tekken", None),
    GPT4O_REGEX: (None, "gpt-4o"),
    GPT2_REGEX: (None, "gpt-2"),
    GPT2_REGEX[: -len(r"|\s+")]: (None, "gpt-2"),
}


# llama.cpp's detokenizer (llama_detokenize) cleans up spaces before punctuation (" ," -> ",",
# " 's" -> "'s", ...) as transformers' clean_up_tokenization_spaces does, and the pre name decides
# whether it does: on for every BPE name unless its entry in src/llama-vocab.cpp switches it off.
# Pairs of names with the same split (regex, ignore_merges): (clean-up on, clean-up off).
_CLEAN_UP_TWINS = (("gpt-2", "trillion"), ("starcoder", "smollm"), ("stablelm2", "qwen2"))
# Names without a twin, and their clean-up setting.
_CLEAN_UP_ONLY = {"default": True, "llama-bpe": True, "smaug-bpe": True, "jais": True,
                  "qwen35": False, "tekken": False, "gpt-4o": False}


def pre_for_clean_up(pre: str, clean_up: bool) -> str:
    """The llama.cpp pre name that splits as `pre` does and cleans up spaces iff `clean_up`;
    `pre` itself when llama.cpp has no such name."""
    for on, off in _CLEAN_UP_TWINS:
        if pre in (on, off):
            return on if clean_up else off
    return pre


def pre_cleans_up(pre: str) -> bool | None:
    """Whether llama.cpp's detokenizer cleans up spaces for pre name `pre` (None: unknown)."""
    for on, off in _CLEAN_UP_TWINS:
        if pre in (on, off):
            return pre == on
    return _CLEAN_UP_ONLY.get(pre)


def _flatten(node: Any, key: str) -> list[dict]:
    """Components of a normalizer / pre_tokenizer / decoder, Sequence nodes flattened."""
    if not isinstance(node, dict):
        return []
    if node.get("type") == "Sequence":
        out: list[dict] = []
        for sub in node.get(key) or []:
            out.extend(_flatten(sub, key))
        return out
    return [node]


def _regex_of(pattern: Any) -> tuple[str | None, str | None]:
    """(regex, literal string) of a tokenizers Pattern ({"Regex": ...} / {"String": ...})."""
    if isinstance(pattern, dict):
        return pattern.get("Regex"), pattern.get("String")
    if isinstance(pattern, str):
        return None, pattern
    return None, None


def _gpt2_pre_name(pre_tokenizer: Any, ignore_merges: bool) -> str | None:
    parts = _flatten(pre_tokenizer, "pretokenizers")
    kinds = [p.get("type") for p in parts]
    if kinds == ["ByteLevel"]:
        if parts[0].get("use_regex", True):
            return None if ignore_merges else "gpt-2"
        return None
    if (kinds == ["Digits", "ByteLevel"] and parts[0].get("individual_digits")
            and parts[1].get("use_regex", True) and not ignore_merges):
        return "starcoder"       # llama.cpp STARCODER = "\p{N}" then the GPT-2 regex
    if kinds == ["Split", "ByteLevel"] and not parts[1].get("use_regex", True):
        split = parts[0]
        regex, _ = _regex_of(split.get("pattern"))
        if regex is None or split.get("invert") or split.get("behavior", "Isolated") != "Isolated":
            return None
        names = _KNOWN_SPLIT_REGEXES.get(regex)
        if names is None:
            return None
        return names[0] if ignore_merges else names[1]
    return None


# --------------------------------------------------------------------------------------------
# Helpers for the JSON side files
# --------------------------------------------------------------------------------------------

def _read_json(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise KilnError(path, f"cannot read: {e}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise KilnError(path, f"not valid JSON: {e}") from None


def _read_json_opt(path: Path) -> Any:
    return _read_json(path) if path.is_file() else None


def _token_content(entry: Any) -> str | None:
    """A special-token entry of tokenizer_config / special_tokens_map: str or AddedToken dict."""
    if isinstance(entry, str):
        return entry or None
    if isinstance(entry, dict) and isinstance(entry.get("content"), str):
        return entry["content"] or None
    return None


def _first_int(v: Any) -> int | None:
    if isinstance(v, bool):
        return None
    if isinstance(v, int):
        return v
    if isinstance(v, list) and v and isinstance(v[0], int) and not isinstance(v[0], bool):
        return v[0]
    return None


def _looks_special(text: str) -> bool:
    # Same heuristic as llama.cpp's converter: some repos mark control tokens "special": false.
    return (text in ("<pad>", "<mask>", "<2mass>", "[@BOS@]")
            or (text.startswith("<|") and text.endswith("|>"))
            or (text.startswith("<\uff5c") and text.endswith("\uff5c>"))
            or (text.startswith("<unused") and text.endswith(">")))


def _is_prefix_regex(regex: str) -> bool:
    """A Replace pattern that only matches at the start of the text, e.g. "^" or "(?<!\\n)^"."""
    r = regex
    while r.startswith("(?<") and ")" in r:
        r = r[r.index(")") + 1:]
    return r in ("^", r"\A")


# --------------------------------------------------------------------------------------------
# Building
# --------------------------------------------------------------------------------------------

@dataclass
class _Tok:
    text: str
    score: float
    type: int


@dataclass
class _Built:
    model: str
    pre: str | None
    toks: dict[int, _Tok]
    merges: list[str] | None = None
    with_scores: bool = True
    add_space_prefix: bool | None = None
    defaults: dict[str, int] = field(default_factory=dict)   # fallback special ids
    unigram: bool = False
    sp: SentencePieceModel | None = None                      # when read from tokenizer.model


def _from_sentencepiece(sp: SentencePieceModel, path: Path) -> _Built:
    toks = {i: _Tok(t, float(s), ty) for i, (t, s, ty) in enumerate(sp.pieces)}
    kind = SP_MODEL_TYPES.get(sp.model_type, str(sp.model_type))
    if kind not in ("unigram", "bpe"):
        log.warning("%s: SentencePiece model type %s; llama.cpp tokenizes it as BPE-like "
                    "score-ordered merging", path, kind)
    elif kind == "unigram":
        log.warning("%s: SentencePiece Unigram model; llama.cpp's SPM tokenizer merges bigrams "
                    "by score instead of Viterbi, so some segmentations will differ", path)
    if sp.precompiled_charsmap:
        log.warning("%s: normalizer %r (precompiled charsmap) is not applied by llama.cpp's SPM "
                    "tokenizer", path, sp.normalizer_name)
    if sp.treat_whitespace_as_suffix:
        log.warning("%s: treat_whitespace_as_suffix is not supported by llama.cpp's SPM tokenizer",
                    path)
    defaults = {}
    for key, idx in (("unk", sp.unk_id), ("bos", sp.bos_id), ("eos", sp.eos_id), ("pad", sp.pad_id)):
        if 0 <= idx < len(sp.pieces):
            defaults[key] = idx
    return _Built(model="llama", pre="default", toks=toks,
                  add_space_prefix=sp.add_dummy_prefix, defaults=defaults,
                  unigram=kind == "unigram", sp=sp)


def sentencepiece_tokenizer_json(sp: SentencePieceModel,
                                 added: list[tuple[int, str, bool]] = ()) -> dict:
    """A tokenizer.json that tokenizes as SentencePiece does with this model (what transformers'
    converters aim at, with SentencePiece's whitespace rules spelled out): the charsmap through
    tokenizers' `Precompiled`, leading / trailing / repeated spaces removed when
    remove_extra_whitespaces, spaces escaped, the dummy prefix; BPE merges ordered by the merged
    piece's score (transformers' generate_merges) or the Unigram log-probs; byte fallback.
    `added`: (id, content, special) of the added tokens beyond the model's own."""
    pieces = sp.pieces
    norm: list[dict] = []
    if sp.precompiled_charsmap:
        norm.append({"type": "Precompiled", "precompiled_charsmap":
                     base64.b64encode(sp.precompiled_charsmap).decode("ascii")})
    if sp.remove_extra_whitespaces:
        norm.append({"type": "Replace", "pattern": {"Regex": "\\A +| +\\z"}, "content": ""})
        norm.append({"type": "Replace", "pattern": {"Regex": " {2,}"}, "content": " "})
    if sp.escape_whitespaces:
        norm.append({"type": "Replace", "pattern": {"String": " "}, "content": SPACE_MARK})
    space = SPACE_MARK if sp.escape_whitespaces else " "
    if sp.add_dummy_prefix and not sp.treat_whitespace_as_suffix:
        norm.append({"type": "Prepend", "prepend": space})
    unk = pieces[sp.unk_id][0] if 0 <= sp.unk_id < len(pieces) else None
    if sp.model_type == 1:
        model: dict = {"type": "Unigram", "unk_id": sp.unk_id if unk is not None else None,
                       "vocab": [[p, float(score)] for p, score, _ in pieces],
                       "byte_fallback": sp.byte_fallback}
    else:
        vocab = {p: i for i, (p, _, _) in enumerate(pieces)}
        merges: list[tuple[str, str, float]] = []
        for piece, score, _ in pieces:
            local = [(piece[:k], piece[k:], score) for k in range(1, len(piece))
                     if piece[:k] in vocab and piece[k:] in vocab]
            merges += sorted(local, key=lambda m: (vocab[m[0]], vocab[m[1]]))
        merges.sort(key=lambda m: (m[2], len(m[0]), len(m[1])), reverse=True)
        model = {"type": "BPE", "dropout": None, "unk_token": unk,
                 "continuing_subword_prefix": None, "end_of_word_suffix": None, "fuse_unk": True,
                 "byte_fallback": sp.byte_fallback, "ignore_merges": False, "vocab": vocab,
                 "merges": [[a, b] for a, b, _ in merges]}
    tokens = [(i, p, ty != T_USER_DEFINED) for i, (p, _, ty) in enumerate(pieces)
              if ty in (T_UNKNOWN, T_CONTROL, T_USER_DEFINED)]
    seen = {i for i, _, _ in tokens}
    tokens += [(i, c, special) for i, c, special in added if i not in seen]
    decoders = [{"type": "Replace", "pattern": {"String": SPACE_MARK}, "content": " "},
                {"type": "ByteFallback"}, {"type": "Fuse"}]
    if sp.add_dummy_prefix and not sp.treat_whitespace_as_suffix:
        decoders.append({"type": "Strip", "content": " ", "start": 1, "stop": 0})
    return {
        "version": "1.0", "truncation": None, "padding": None,
        "added_tokens": [{"id": i, "content": c, "single_word": False, "lstrip": False,
                          "rstrip": False, "normalized": False, "special": special}
                         for i, c, special in sorted(tokens)],
        "normalizer": {"type": "Sequence", "normalizers": norm} if norm else None,
        "pre_tokenizer": None, "post_processor": None,
        "decoder": {"type": "Sequence", "decoders": decoders},
        "model": model,
    }


def _merge_pairs(merges: Any, path: Path) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for m in merges or []:
        if isinstance(m, str):
            a, sep, b = m.partition(" ")
            if not sep:
                raise KilnError(path, f"malformed merge {m!r}")
        elif isinstance(m, list) and len(m) == 2 and all(isinstance(x, str) for x in m):
            a, b = m
        else:
            raise KilnError(path, f"malformed merge {m!r}")
        out.append((a, b))
    return out


def _hf_space_prefix(tj: dict) -> bool | None:
    """Does tokenizer.json put a "▁" (or " ") in front of the text?  None: says nothing."""
    found: bool | None = None
    for n in _flatten(tj.get("normalizer"), "normalizers"):
        t = n.get("type")
        if t == "Prepend" and n.get("prepend") in (SPACE_MARK, " "):
            found = True
        elif t == "Replace" and n.get("content") in (SPACE_MARK, " "):
            regex, _ = _regex_of(n.get("pattern"))
            if regex is not None and _is_prefix_regex(regex):
                found = True
    for p in _flatten(tj.get("pre_tokenizer"), "pretokenizers"):
        t = p.get("type")
        if t == "Metaspace":
            scheme = p.get("prepend_scheme")
            if scheme is not None:
                found = scheme in ("always", "first") or bool(found)
            elif "add_prefix_space" in p:
                found = bool(p["add_prefix_space"]) or bool(found)
            else:
                found = True
        elif t == "ByteLevel" and p.get("add_prefix_space"):
            found = True
    return found


def _from_tokenizer_json(tj: Any, path: Path) -> _Built:
    if not isinstance(tj, dict) or not isinstance(tj.get("model"), dict):
        raise KilnError(path, "no \"model\" object")
    m = tj["model"]
    mtype = m.get("type")
    vocab = m.get("vocab")
    if mtype is None:   # very old files leave the type out
        mtype = "Unigram" if isinstance(vocab, list) else "BPE" if "merges" in m else None

    pre_parts = _flatten(tj.get("pre_tokenizer"), "pretokenizers")
    dec_parts = _flatten(tj.get("decoder"), "decoders")
    byte_level = (any(p.get("type") == "ByteLevel" for p in pre_parts)
                  or any(d.get("type") == "ByteLevel" for d in dec_parts))
    prefix = _hf_space_prefix(tj)

    if mtype == "BPE":
        if not isinstance(vocab, dict):
            raise KilnError(path, "BPE model without a vocab object")
        try:
            pairs = _merge_pairs(m.get("merges"), path)
            toks = {int(i): _Tok(t, 0.0, T_NORMAL) for t, i in vocab.items()}
        except (TypeError, ValueError):
            raise KilnError(path, "malformed BPE vocab") from None
        for opt in ("continuing_subword_prefix", "end_of_word_suffix"):
            if m.get(opt):
                log.warning("%s: BPE %s=%r is not supported by llama.cpp", path, opt, m[opt])
        unk = m.get("unk_token")
        defaults = {}
        if isinstance(unk, str) and unk in vocab:
            defaults["unk"] = int(vocab[unk])
            toks[defaults["unk"]].type = T_UNKNOWN

        if byte_level and not m.get("byte_fallback"):
            ignore_merges = bool(m.get("ignore_merges"))
            pre = _gpt2_pre_name(tj.get("pre_tokenizer"), ignore_merges)
            if pre is None:
                log.warning("%s: pre-tokenizer %s not recognized; writing tokenizer.ggml.pre="
                            "\"default\", llama.cpp's splitting may differ from Hugging Face's",
                            path, json.dumps(tj.get("pre_tokenizer"))[:200])
                pre = "default"
            if prefix:
                log.warning("%s: ByteLevel add_prefix_space=true has no llama.cpp equivalent; "
                            "llama.cpp will not add the leading space", path)
            merges = []
            for a, b in pairs:
                if " " in a or " " in b:  # same spelling as gguf-py: space -> U+0120
                    a, b = a.replace(" ", "\u0120"), b.replace(" ", "\u0120")
                merges.append(f"{a} {b}")
            # tokenizer.ggml.add_space_prefix is left out: llama.cpp's BPE tokenizer never adds
            # the space, and its detokenizer would strip one.
            return _Built(model="gpt2", pre=pre, toks=toks, merges=merges, with_scores=False,
                          add_space_prefix=None, defaults=defaults)

        # SentencePiece-style BPE: scores from merge ranks (higher = merged earlier).
        if byte_level:
            log.warning("%s: BPE with both ByteLevel and byte_fallback; treating it as "
                        "SentencePiece-style", path)
        floor = -float(len(pairs) + 1)
        for t in toks.values():
            t.score = floor
        seen: set[int] = set()
        for rank, (a, b) in enumerate(pairs):
            tid = vocab.get(a + b)
            if tid is None or tid in seen:
                continue
            seen.add(tid)
            toks[int(tid)].score = -float(rank)
        if m.get("byte_fallback"):
            for t in toks.values():
                if _BYTE_PIECE.match(t.text):
                    t.type = T_BYTE
        return _Built(model="llama", pre="default", toks=toks,
                      add_space_prefix=bool(prefix), defaults=defaults)

    if mtype == "Unigram":
        if not isinstance(vocab, list):
            raise KilnError(path, "Unigram model without a vocab list")
        toks = {}
        try:
            for i, (t, s) in enumerate(vocab):
                toks[i] = _Tok(str(t), float(s), T_NORMAL)
        except (TypeError, ValueError):
            raise KilnError(path, "malformed Unigram vocab") from None
        defaults = {}
        unk_id = m.get("unk_id")
        if isinstance(unk_id, int) and unk_id in toks:
            toks[unk_id].type = T_UNKNOWN
            defaults["unk"] = unk_id
        if m.get("byte_fallback"):
            for t in toks.values():
                if _BYTE_PIECE.match(t.text):
                    t.type = T_BYTE
        log.warning("%s: Unigram model written as SentencePiece-style \"llama\" vocab; "
                    "llama.cpp merges bigrams by score instead of Viterbi, so some "
                    "segmentations differ (exact tokenizer.json embedded)", path)
        if any(n.get("type") in ("Precompiled", "NFKC", "NFC", "NFD", "NFKD", "Lowercase")
               for n in _flatten(tj.get("normalizer"), "normalizers")):
            log.warning("%s: Unicode normalization in tokenizer.json is not applied by llama.cpp",
                        path)
        return _Built(model="llama", pre="default", toks=toks,
                      add_space_prefix=bool(prefix), defaults=defaults, unigram=True)

    raise KilnError(path, f"unsupported tokenizer model type {mtype!r} "
                          "(supported: BPE, Unigram)")


def _apply_added(b: _Built, entries: list[tuple[int, str, bool]], where: str) -> None:
    for tid, content, special in entries:
        if tid < 0 or not content:
            continue
        old = b.toks.get(tid)
        special = special or _looks_special(content)
        text = content
        if special:
            ttype = T_CONTROL
        else:
            ttype = T_USER_DEFINED
            if b.model == "llama":
                text = content.replace(SPACE_MARK, " ")   # matched on raw text by llama.cpp
        if old is not None and old.text == content and old.type in (T_UNKNOWN, T_BYTE):
            continue                                      # keep <unk> UNKNOWN, bytes BYTE
        if old is not None and old.text not in (content, text) and old.type != T_UNUSED:
            log.warning("%s: token %d %r replaced by added token %r", where, tid, old.text, content)
        score = old.score if (old is not None and old.text == content) else ADDED_TOKEN_SCORE
        b.toks[tid] = _Tok(text, score, ttype)


def _special_strings(tok_cfg: dict, stm: dict) -> set[str]:
    out: set[str] = set()
    for src in (tok_cfg, stm):
        for k, v in src.items():
            if k.endswith("_token") and (c := _token_content(v)):
                out.add(c)
        for v in src.get("additional_special_tokens") or []:
            if c := _token_content(v):
                out.add(c)
    return out


def _template_flags(tj: dict | None) -> tuple[str | None, list[int], str | None, list[int]]:
    """(leading special token, its ids, trailing special token, its ids) of a TemplateProcessing
    post_processor's single-sequence template."""
    first = last = None
    first_ids: list[int] = []
    last_ids: list[int] = []
    pp = tj.get("post_processor") if isinstance(tj, dict) else None
    if not isinstance(pp, dict):
        return first, first_ids, last, last_ids
    for proc in pp.get("processors", [pp]) if pp.get("type") == "Sequence" else [pp]:
        if not isinstance(proc, dict) or proc.get("type") != "TemplateProcessing":
            continue
        single = proc.get("single") or []
        specials = proc.get("special_tokens") or {}

        def ids_of(name: str) -> list[int]:
            ent = specials.get(name) or {}
            return [i for i in ent.get("ids") or [] if isinstance(i, int)]

        if len(single) > 1:
            if isinstance(single[0], dict) and "SpecialToken" in single[0]:
                first = single[0]["SpecialToken"].get("id")
                first_ids = ids_of(first) if first else []
            if isinstance(single[-1], dict) and "SpecialToken" in single[-1]:
                last = single[-1]["SpecialToken"].get("id")
                last_ids = ids_of(last) if last else []
    return first, first_ids, last, last_ids


def _chat_template(model_dir: Path, tok_cfg: dict) -> str | None:
    ct = tok_cfg.get("chat_template")
    if isinstance(ct, list):
        named = {c.get("name"): c.get("template") for c in ct if isinstance(c, dict)}
        if isinstance(named.get("default"), str):
            return named["default"]
        firsts = [t for t in named.values() if isinstance(t, str)]
        if firsts:
            log.warning("%s: no chat_template named \"default\"; using the first one",
                        model_dir / "tokenizer_config.json")
            return firsts[0]
        ct = None
    if isinstance(ct, str):
        return ct
    jinja = model_dir / "chat_template.jinja"
    if jinja.is_file():
        try:
            return jinja.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise KilnError(jinja, f"cannot read: {e}") from None
    cj = _read_json_opt(model_dir / "chat_template.json")
    if isinstance(cj, dict) and isinstance(cj.get("chat_template"), str):
        return cj["chat_template"]
    return None


def _pre_with_tok_cfg_clean_up(pre: str, tok_cfg: dict, model_dir: Path) -> str:
    """`pre`, or its twin, so that llama_detokenize cleans up spaces as tokenizer_config's
    clean_up_tokenization_spaces says (absent: false, transformers' default since 4.45).
    transformers 5 skips the clean-up for BPE tokenizers whatever the flag; kiln follows the
    flag, what the model's authors declared and what llama.cpp's own converter's names encode."""
    clean_up = tok_cfg.get("clean_up_tokenization_spaces") is True
    chosen = pre_for_clean_up(pre, clean_up)
    if pre_cleans_up(chosen) not in (None, clean_up):
        log.warning("%s: clean_up_tokenization_spaces=%s, but llama.cpp has no pre-tokenizer "
                    "name that splits as %r and %s; llama_detokenize %s spaces before punctuation",
                    model_dir / "tokenizer_config.json", str(clean_up).lower(), pre,
                    "cleans up" if clean_up else "keeps spaces",
                    "keeps" if clean_up else "removes")
    return chosen


def load_vocab(model_dir: Path, config: dict, n_vocab: int, gpt2_files: bool = False) -> Vocab:
    """Read the tokenizer of `model_dir` for a model whose embedding has `n_vocab` rows.
    `gpt2_files`: without a tokenizer.json, read GPT-2's vocab.json + merges.txt (Jais)."""
    model_dir = Path(model_dir)
    config = config or {}
    tok_cfg = _read_json_opt(model_dir / "tokenizer_config.json")
    tok_cfg = tok_cfg if isinstance(tok_cfg, dict) else {}
    stm = _read_json_opt(model_dir / "special_tokens_map.json")
    stm = stm if isinstance(stm, dict) else {}

    tj_path = model_dir / "tokenizer.json"
    hf_json: str | None = None
    tj: dict | None = None
    if tj_path.is_file():
        try:
            hf_json = tj_path.read_text(encoding="utf-8")
            tj = json.loads(hf_json)
        except (OSError, UnicodeDecodeError) as e:
            raise KilnError(tj_path, f"cannot read: {e}") from None
        except json.JSONDecodeError as e:
            raise KilnError(tj_path, f"not valid JSON: {e}") from None
        if not isinstance(tj, dict):
            raise KilnError(tj_path, "not a tokenizer.json object")
    elif gpt2_files and (tj := gpt2_tokenizer_json(model_dir, tok_cfg, stm)) is not None:
        hf_json = json.dumps(tj)        # and tokenizer.model is not read
        tj_path = model_dir / "vocab.json"

    built: _Built | None = None
    sp_path = model_dir / "tokenizer.model"
    if sp_path.is_file() and tj_path.name == "tokenizer.json":
        try:
            sp = parse_sentencepiece_model(sp_path.read_bytes())
        except (ValueError, UnicodeDecodeError, struct.error) as e:
            if tj is None:
                raise KilnError(sp_path, f"not a SentencePiece model ({e})") from None
            log.warning("%s: not a SentencePiece model (%s); using tokenizer.json", sp_path, e)
        except OSError as e:
            raise KilnError(sp_path, f"cannot read: {e}") from None
        else:
            built = _from_sentencepiece(sp, sp_path)
    if built is None and tj is not None:
        built = _from_tokenizer_json(tj, tj_path)
    if built is None:
        raise KilnError(model_dir, "no tokenizer found (expected tokenizer.model or tokenizer.json)")
    if built.model == "gpt2" and built.pre is not None:
        built.pre = _pre_with_tok_cfg_clean_up(built.pre, tok_cfg, model_dir)

    # ---- added tokens, least to most authoritative
    specials = _special_strings(tok_cfg, stm)
    added: list[tuple[int, str, bool]] = []       # for a tokenizer.json built from the .model
    at_path = model_dir / "added_tokens.json"
    at = _read_json_opt(at_path)
    if at is not None:
        if not isinstance(at, dict):
            raise KilnError(at_path, "expected an object of token -> id")
        entries = [(int(i), str(c), str(c) in specials)
                   for c, i in at.items() if isinstance(i, int)]
        added += entries
        _apply_added(built, entries, str(at_path))
    if tj is not None and isinstance(tj.get("added_tokens"), list):
        _apply_added(built, [(a["id"], a["content"], bool(a.get("special")))
                             for a in tj["added_tokens"]
                             if isinstance(a, dict) and isinstance(a.get("id"), int)
                             and isinstance(a.get("content"), str)], str(tj_path))
    atd = tok_cfg.get("added_tokens_decoder")
    if isinstance(atd, dict):
        entries = []
        for k, v in atd.items():
            try:
                tid = int(k)
            except ValueError:
                continue
            if isinstance(v, dict) and isinstance(v.get("content"), str):
                entries.append((tid, v["content"], bool(v.get("special"))))
        added += entries
        _apply_added(built, entries, str(model_dir / "tokenizer_config.json"))

    # ---- lay out ids 0..n_vocab-1
    toks = built.toks
    n_src = max(toks) + 1 if toks else 0
    if not n_vocab or n_vocab <= 0:
        n_vocab = n_src
    dropped = sorted(i for i in toks if i >= n_vocab)
    if dropped:
        log.warning("%s: %d tokenizer ids >= vocab_size %d dropped (%s)", model_dir, len(dropped),
                    n_vocab, ", ".join(f"{i}:{toks[i].text!r}" for i in dropped[:5])
                    + (" ..." if len(dropped) > 5 else ""))
    n_real = min(n_src, n_vocab)
    tokens: list[str] = []
    scores: list[float] = []
    types: list[int] = []
    holes = 0
    for i in range(n_vocab):
        t = toks.get(i)
        if t is None:
            if i < n_real:
                holes += 1
            t = _Tok(f"[PAD{i}]", PAD_SCORE, T_UNUSED)
        tokens.append(t.text)
        scores.append(float(t.score))
        types.append(int(t.type))
    if holes:
        log.warning("%s: %d ids missing inside the tokenizer; filled with [PAD{i}]", model_dir, holes)
    if n_vocab > n_real:
        log.info("%s: padded vocab from %d to %d with [PAD{i}]", model_dir, n_real, n_vocab)

    # llama.cpp asserts that token texts are unique.
    first_id: dict[str, int] = {}
    for i, t in enumerate(tokens):
        if not t:
            continue
        if t in first_id:
            new = f"[DUP{i}]"
            log.warning("%s: token %d %r duplicates token %d; renamed to %r", model_dir, i, t,
                        first_id[t], new)
            tokens[i] = new
            types[i] = T_UNUSED
            first_id.setdefault(new, i)
        else:
            first_id[t] = i

    if built.model == "llama":
        n_bytes = sum(1 for t in tokens if len(t) == 6 and _BYTE_PIECE.match(t))
        if n_bytes < 256:
            log.warning("%s: only %d of the 256 <0xXX> byte tokens exist; llama.cpp's SPM "
                        "tokenizer aborts the process on text it cannot cover", model_dir, n_bytes)

    # ---- special ids: tokenizer_config / special_tokens_map strings, then config.json ids,
    #      then what the tokenizer model itself says
    special: dict[str, int] = {}
    for key in SPECIAL_KEYS:
        tid = None
        for src in (tok_cfg, stm):
            c = _token_content(src.get(f"{key}_token"))
            if c is not None and c in first_id:
                tid = first_id[c]
                break
        cfg_id = _first_int(config.get(f"{key}_token_id"))
        if cfg_id is not None and not 0 <= cfg_id < n_vocab:
            log.warning("config.json %s_token_id=%d out of range", key, cfg_id)
            cfg_id = None
        if tid is None:
            tid = cfg_id
        elif cfg_id is not None and cfg_id != tid:
            log.warning("%s: %s token is id %d per the tokenizer files but %d per config.json; "
                        "using %d", model_dir, key, tid, cfg_id, tid)
        if tid is None:
            d = built.defaults.get(key)
            if d is not None and d < n_vocab:
                tid = d
        if tid is not None:
            special[key] = tid

    # ---- add_bos / add_eos: TemplateProcessing wins over tokenizer_config when they disagree
    add_bos: bool | None = None
    add_eos: bool | None = None
    first, first_ids, last, last_ids = _template_flags(tj)
    if first is not None:
        fid = first_ids[0] if first_ids else first_id.get(first)
        if fid is not None and "bos" not in special:
            special["bos"] = fid
        add_bos = fid is not None and fid in (special.get("bos"), special.get("cls"))
        if not add_bos:
            log.warning("%s: post_processor starts with %r, which is not the BOS token",
                        tj_path, first)
    if last is not None:
        lid = last_ids[-1] if last_ids else first_id.get(last)
        if lid is not None and "eos" not in special:
            special["eos"] = lid
        add_eos = lid is not None and lid == special.get("eos")
    if isinstance(tj, dict) and isinstance(tj.get("post_processor"), dict):
        pp = tj["post_processor"]
        for proc in pp.get("processors", [pp]) if pp.get("type") == "Sequence" else [pp]:
            if isinstance(proc, dict) and proc.get("type") == "ByteLevel":
                add_bos = False if add_bos is None else add_bos
                add_eos = False if add_eos is None else add_eos
    for key, cur in (("bos", add_bos), ("eos", add_eos)):
        cfg_val = tok_cfg.get(f"add_{key}_token")
        if isinstance(cfg_val, bool):
            if cur is None:
                cur = cfg_val
            elif cur != cfg_val:
                log.warning("%s: tokenizer_config add_%s_token=%s but the tokenizer.json "
                            "post_processor says %s; using the post_processor", model_dir, key,
                            cfg_val, cur)
        if key == "bos":
            add_bos = cur
        else:
            add_eos = cur

    # ---- leading space
    add_space_prefix = built.add_space_prefix
    if built.model == "llama":
        if isinstance(tok_cfg.get("add_prefix_space"), bool):    # as llama.cpp's converter does
            add_space_prefix = tok_cfg["add_prefix_space"]
        if add_space_prefix is None:
            add_space_prefix = False     # must be explicit: llama.cpp defaults to true for SPM

    # ---- a SentencePiece model llama.cpp cannot follow and no tokenizer.json: build one
    charsmap = remove_ws = None
    sp_model = built.sp
    if sp_model is not None and hf_json is None:
        charsmap = sp_model.precompiled_charsmap or None
        remove_ws = sp_model.remove_extra_whitespaces or None
        if charsmap or remove_ws or built.unigram or sp_model.treat_whitespace_as_suffix:
            merged: dict[int, tuple[int, str, bool]] = {}
            for tid, content, special in added:
                if 0 <= tid < n_vocab and content:
                    merged[tid] = (tid, content, special or _looks_special(content))
            hf_json = json.dumps(sentencepiece_tokenizer_json(sp_model, list(merged.values())),
                                 ensure_ascii=False)

    return Vocab(
        model=built.model,
        pre=built.pre,
        tokens=tokens,
        scores=scores if built.with_scores else None,
        types=types,
        merges=built.merges,
        special=special,
        add_bos=add_bos,
        add_eos=add_eos,
        add_space_prefix=add_space_prefix,
        chat_template=_chat_template(model_dir, tok_cfg),
        hf_json=hf_json,
        n_real=n_real,
        unigram=built.unigram,
        precompiled_charsmap=charsmap,
        remove_extra_whitespaces=remove_ws,
    )


def unigram_gain_scores(vocab: Vocab) -> list[float]:
    """Alternative scores for a Unigram vocab written as "llama": score(p) = logp(p) minus the best
    logp(a) + logp(b) over splits p = a + b into NORMAL pieces, i.e. the log-likelihood gain of
    that merge, so llama.cpp's greedy highest-score-first merging hill-climbs the Unigram
    objective.  Closer to Hugging Face's Viterbi than raw log-probs (llm-jp-3: 24/35 vs 19/35
    identical sentences), still approximate.  Only for the "llama" model: the result is not a
    log-prob, so do not use it with "t5" (UGM), which runs Viterbi on the scores.  `write_vocab`
    applies it by itself to a "llama" vocab whose `unigram` flag is set.
    """
    if vocab.scores is None:
        raise ValueError("vocab has no scores")
    lp = {t: s for t, s, ty in zip(vocab.tokens, vocab.scores, vocab.types) if ty == T_NORMAL}
    out = list(vocab.scores)
    for i, (t, s, ty) in enumerate(zip(vocab.tokens, vocab.scores, vocab.types)):
        if ty != T_NORMAL or len(t) < 2:
            continue
        best = None
        for k in range(1, len(t)):
            a = lp.get(t[:k])
            if a is None:
                continue
            b = lp.get(t[k:])
            if b is not None and (best is None or a + b > best):
                best = a + b
        if best is not None:
            out[i] = s - best
    return out


def write_vocab(writer: gguf.GGUFWriter, vocab: Vocab) -> None:
    """tokenizer.ggml.*, tokenizer.chat_template and tokenizer.huggingface.json."""
    n = len(vocab.tokens)
    if len(vocab.types) != n or (vocab.scores is not None and len(vocab.scores) != n):
        raise ValueError("tokens, scores and types differ in length")
    writer.add_tokenizer_model(vocab.model)
    if vocab.pre is not None:
        writer.add_tokenizer_pre(vocab.pre)
    writer.add_token_list(vocab.tokens)
    if vocab.scores is not None:
        # Unigram log-probs drive llama.cpp's greedy SPM merging best as merge gains (module doc)
        scores = (unigram_gain_scores(vocab) if vocab.unigram and vocab.model == "llama"
                  else vocab.scores)
        writer.add_token_scores([float(s) for s in scores])
    writer.add_token_types([int(t) for t in vocab.types])
    if vocab.merges:
        writer.add_token_merges(vocab.merges)
    setters = {
        "bos": writer.add_bos_token_id,
        "eos": writer.add_eos_token_id,
        "unk": writer.add_unk_token_id,
        "sep": writer.add_sep_token_id,
        "pad": writer.add_pad_token_id,
        "mask": writer.add_mask_token_id,
    }
    for key in SPECIAL_KEYS:
        tid = vocab.special.get(key)
        if tid is None or not 0 <= tid < n:
            continue
        if key == "cls":
            writer.add_uint32(KEY_CLS_ID, tid)
        else:
            setters[key](tid)
    if vocab.add_bos is not None:
        writer.add_add_bos_token(vocab.add_bos)
    if vocab.add_eos is not None:
        writer.add_add_eos_token(vocab.add_eos)
    if vocab.add_space_prefix is not None:
        writer.add_add_space_prefix(vocab.add_space_prefix)
    if vocab.precompiled_charsmap:
        writer.add_precompiled_charsmap(vocab.precompiled_charsmap)
    if vocab.remove_extra_whitespaces is not None:
        writer.add_remove_extra_whitespaces(vocab.remove_extra_whitespaces)
    if vocab.chat_template is not None:
        writer.add_chat_template(vocab.chat_template)
    if vocab.hf_json is not None:
        writer.add_string(gguf.Keys.Tokenizer.HF_JSON, vocab.hf_json)


def gpt2_tokenizer_json(model_dir: Path, tok_cfg: dict, stm: dict) -> dict | None:
    """A tokenizer.json equivalent to a GPT-2 slow tokenizer's vocab.json + merges.txt (None
    without them), with the special tokens (the `*_token` strings of tokenizer_config.json and
    special_tokens_map.json) marked as special added tokens, as the fast tokenizer does."""
    vocab_path, merges_path = model_dir / "vocab.json", model_dir / "merges.txt"
    if not (vocab_path.is_file() and merges_path.is_file()):
        return None
    try:
        vocab = json.loads(vocab_path.read_text(encoding="utf-8"))
        lines = merges_path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise KilnError(model_dir, f"cannot read vocab.json / merges.txt ({exc})") from None
    if not isinstance(vocab, dict):
        raise KilnError(vocab_path, "expected an object of token -> id")
    specials = {c for src in (tok_cfg, stm) for k, v in src.items()
                if k.endswith("_token") and (c := _token_content(v))}
    merges = [ln for ln in lines if ln and not ln.startswith("#version")]
    added = [{"id": vocab[t], "content": t, "single_word": False, "lstrip": False,
              "rstrip": False, "normalized": False, "special": True}
             for t in sorted(specials) if isinstance(vocab.get(t), int)]
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
                  "use_regex": True}
    return {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": added,
        "normalizer": None, "pre_tokenizer": byte_level, "post_processor": byte_level,
        "decoder": byte_level,
        "model": {"type": "BPE", "dropout": None, "unk_token": None,
                  "continuing_subword_prefix": "", "end_of_word_suffix": "", "fuse_unk": False,
                  "byte_fallback": False, "vocab": vocab, "merges": merges},
    }
