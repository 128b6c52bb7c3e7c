"""Byte-level BPE: which llama.cpp pre-tokenizer name (`tokenizer.ggml.pre`) a tokenizer.json's
pre_tokenizer is, and the twin name that makes llama.cpp's detokenizer clean up spaces or not.

Regexes as written in tokenizer.json files; the llama.cpp names they map to use the same regex in
src/llama-vocab.cpp.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

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


def flatten(node: Any, key: str) -> list[dict]:
    """Components of a normalizer / pre_tokenizer / decoder, Sequence nodes flattened."""
    if not isinstance(node, dict):
        return []
    if node.get("type") == "Sequence":
        out: list[dict] = []
        for sub in node.get(key) or []:
            out.extend(flatten(sub, key))
        return out
    return [node]


def regex_of(pattern: Any) -> tuple[str | None, str | None]:
    """(regex, literal string) of a tokenizers Pattern ({"Regex": ...} / {"String": ...})."""
    if isinstance(pattern, dict):
        return pattern.get("Regex"), pattern.get("String")
    if isinstance(pattern, str):
        return None, pattern
    return None, None


def gpt2_pre_name(pre_tokenizer: Any, ignore_merges: bool) -> str | None:
    parts = flatten(pre_tokenizer, "pretokenizers")
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
        regex, _ = regex_of(split.get("pattern"))
        if regex is None or split.get("invert") or split.get("behavior", "Isolated") != "Isolated":
            return None
        names = _KNOWN_SPLIT_REGEXES.get(regex)
        if names is None:
            return None
        return names[0] if ignore_merges else names[1]
    return None


def pre_with_clean_up(pre: str, tok_cfg: dict, model_dir: Path) -> str:
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
