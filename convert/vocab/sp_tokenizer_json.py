"""A tokenizer.json built from a SentencePiece model, for models llama.cpp's SPM tokenizer cannot
follow (a normalization charsmap, remove_extra_whitespaces, Unigram): embedded as
`tokenizer.huggingface.json` so kiln's runtime tokenizes exactly (checked id for id against
sentencepiece in tests/test_tokenizer_parity.py).
"""
from __future__ import annotations

import base64

from .sp_model import SentencePieceModel
from .tokens import SPACE_MARK, T_CONTROL, T_UNKNOWN, T_USER_DEFINED


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
