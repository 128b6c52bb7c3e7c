"""tokenizer.json (Hugging Face tokenizers) -> a reading: BPE (byte-level or SentencePiece-style)
or Unigram, plus what its post_processor says about BOS / EOS.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from ..errors import KilnError
from .pre import flatten, gpt2_pre_name, regex_of
from .tokens import BYTE_PIECE, SPACE_MARK, T_BYTE, T_NORMAL, T_UNKNOWN, Built, Tok

log = logging.getLogger(__name__)


def read_tokenizer_json(path: Path) -> tuple[str | None, dict | None]:
    """(raw text, parsed object) of a tokenizer.json; (None, None) when there is none."""
    if not path.is_file():
        return None, None
    try:
        text = path.read_text(encoding="utf-8")
        tj = json.loads(text)
    except (OSError, UnicodeDecodeError) as e:
        raise KilnError(path, f"cannot read: {e}") from None
    except json.JSONDecodeError as e:
        raise KilnError(path, f"not valid JSON: {e}") from None
    if not isinstance(tj, dict):
        raise KilnError(path, "not a tokenizer.json object")
    return text, tj


def _is_prefix_regex(regex: str) -> bool:
    """A Replace pattern that only matches at the start of the text, e.g. "^" or "(?<!\\n)^"."""
    r = regex
    while r.startswith("(?<") and ")" in r:
        r = r[r.index(")") + 1:]
    return r in ("^", r"\A")


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
    for n in flatten(tj.get("normalizer"), "normalizers"):
        t = n.get("type")
        if t == "Prepend" and n.get("prepend") in (SPACE_MARK, " "):
            found = True
        elif t == "Replace" and n.get("content") in (SPACE_MARK, " "):
            regex, _ = regex_of(n.get("pattern"))
            if regex is not None and _is_prefix_regex(regex):
                found = True
    for p in flatten(tj.get("pre_tokenizer"), "pretokenizers"):
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


def from_tokenizer_json(tj: Any, path: Path) -> Built:
    if not isinstance(tj, dict) or not isinstance(tj.get("model"), dict):
        raise KilnError(path, "no \"model\" object")
    m = tj["model"]
    mtype = m.get("type")
    vocab = m.get("vocab")
    if mtype is None:   # very old files leave the type out
        mtype = "Unigram" if isinstance(vocab, list) else "BPE" if "merges" in m else None

    pre_parts = flatten(tj.get("pre_tokenizer"), "pretokenizers")
    dec_parts = flatten(tj.get("decoder"), "decoders")
    byte_level = (any(p.get("type") == "ByteLevel" for p in pre_parts)
                  or any(d.get("type") == "ByteLevel" for d in dec_parts))
    prefix = _hf_space_prefix(tj)

    if mtype == "BPE":
        if not isinstance(vocab, dict):
            raise KilnError(path, "BPE model without a vocab object")
        try:
            pairs = _merge_pairs(m.get("merges"), path)
            toks = {int(i): Tok(t, 0.0, T_NORMAL) for t, i in vocab.items()}
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
            pre = gpt2_pre_name(tj.get("pre_tokenizer"), ignore_merges)
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
            return Built(model="gpt2", pre=pre, toks=toks, merges=merges, with_scores=False,
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
                if BYTE_PIECE.match(t.text):
                    t.type = T_BYTE
        return Built(model="llama", pre="default", toks=toks,
                      add_space_prefix=bool(prefix), defaults=defaults)

    if mtype == "Unigram":
        if not isinstance(vocab, list):
            raise KilnError(path, "Unigram model without a vocab list")
        toks = {}
        try:
            for i, (t, s) in enumerate(vocab):
                toks[i] = Tok(str(t), float(s), T_NORMAL)
        except (TypeError, ValueError):
            raise KilnError(path, "malformed Unigram vocab") from None
        defaults = {}
        unk_id = m.get("unk_id")
        if isinstance(unk_id, int) and unk_id in toks:
            toks[unk_id].type = T_UNKNOWN
            defaults["unk"] = unk_id
        if m.get("byte_fallback"):
            for t in toks.values():
                if BYTE_PIECE.match(t.text):
                    t.type = T_BYTE
        log.warning("%s: Unigram model written as SentencePiece-style \"llama\" vocab; "
                    "llama.cpp merges bigrams by score instead of Viterbi, so some "
                    "segmentations differ (exact tokenizer.json embedded)", path)
        if any(n.get("type") in ("Precompiled", "NFKC", "NFC", "NFD", "NFKD", "Lowercase")
               for n in flatten(tj.get("normalizer"), "normalizers")):
            log.warning("%s: Unicode normalization in tokenizer.json is not applied by llama.cpp",
                        path)
        return Built(model="llama", pre="default", toks=toks,
                      add_space_prefix=bool(prefix), defaults=defaults, unigram=True)

    raise KilnError(path, f"unsupported tokenizer model type {mtype!r} "
                          "(supported: BPE, Unigram)")


def template_flags(tj: dict | None) -> tuple[str | None, list[int], str | None, list[int]]:
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
