"""What every reader produces: token ids with text, score and type, and the finished `Vocab`."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import gguf

if TYPE_CHECKING:
    from .sp_model import SentencePieceModel

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
BYTE_PIECE = re.compile(r"<0x[0-9A-Fa-f]{2}>\Z")


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


@dataclass
class Tok:
    """One token as a reader found it."""

    text: str
    score: float
    type: int


@dataclass
class Built:
    """What a reader makes of one tokenizer file, before added tokens and the id layout."""

    model: str
    pre: str | None
    toks: dict[int, Tok]
    merges: list[str] | None = None
    with_scores: bool = True
    add_space_prefix: bool | None = None
    defaults: dict[str, int] = field(default_factory=dict)   # fallback special ids
    unigram: bool = False
    sp: SentencePieceModel | None = None                      # when read from tokenizer.model


def looks_special(text: str) -> bool:
    # Same heuristic as llama.cpp's converter: some repos mark control tokens "special": false.
    return (text in ("<pad>", "<mask>", "<2mass>", "[@BOS@]")
            or (text.startswith("<|") and text.endswith("|>"))
            or (text.startswith("<\uff5c") and text.endswith("\uff5c>"))
            or (text.startswith("<unused") and text.endswith(">")))
