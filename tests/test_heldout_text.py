"""The held-out evaluation texts of `kiln eval` (runtime/corpus/heldout/*.txt, issue 13).

Each file is plain UTF-8 prose (or code / math), long enough for at least four 512-token
chunks with an English-centric byte-level BPE, and the natural-language files are written
mostly in their own script.  Disjointness from the calibration text is tested next to the
calibration corpus.
"""
from __future__ import annotations

import unicodedata
from pathlib import Path

import pytest

HELDOUT = Path(__file__).resolve().parent.parent / "runtime" / "corpus" / "heldout"

# name -> (minimum size, unit).  CJK text is measured in characters (1-3 tokens each),
# the rest in UTF-8 bytes (English ~4.5 bytes a token, code and math ~3, Arabic ~2-4).
MIN_SIZE = {
    "en": (9000, "bytes"),
    "code": (8000, "bytes"),
    "math": (6000, "bytes"),
    "ar": (5000, "bytes"),
    "ja": (3000, "chars"),
    "zh": (3000, "chars"),
    "ko": (3000, "chars"),
}


def _in(ch: str, *ranges: tuple[int, int]) -> bool:
    return any(lo <= ord(ch) <= hi for lo, hi in ranges)


ARABIC = ((0x0600, 0x06FF), (0x0750, 0x077F), (0x08A0, 0x08FF), (0xFB50, 0xFDFF), (0xFE70, 0xFEFF))
KANA = ((0x3040, 0x309F), (0x30A0, 0x30FF), (0x31F0, 0x31FF), (0xFF66, 0xFF9F))
HAN = ((0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0xF900, 0xFAFF), (0x3005, 0x3007))
HANGUL = ((0xAC00, 0xD7A3), (0x1100, 0x11FF), (0x3130, 0x318F))
LATIN = ((0x41, 0x5A), (0x61, 0x7A), (0xC0, 0x24F))

# name -> (script ranges that count as "its script", minimum share of all letters)
SCRIPT = {
    "ar": (ARABIC, 0.60),
    "ja": (KANA + HAN, 0.60),
    "zh": (HAN, 0.60),
    "ko": (HANGUL, 0.60),
    "en": (LATIN, 0.95),
}


def _text(name: str) -> str:
    return (HELDOUT / f"{name}.txt").read_bytes().decode("utf-8")  # strict: raises on bad bytes


def _letters(text: str) -> list[str]:
    return [c for c in text if unicodedata.category(c).startswith("L")]


def _share(letters: list[str], ranges) -> float:
    return sum(_in(c, *ranges) for c in letters) / len(letters)


def test_exactly_the_expected_files():
    assert sorted(p.name for p in HELDOUT.glob("*.txt")) == sorted(f"{n}.txt" for n in MIN_SIZE)


@pytest.mark.parametrize("name", sorted(MIN_SIZE))
def test_plain_utf8_text(name):
    text = _text(name)
    assert not text.startswith("\ufeff"), f"{name}.txt starts with a byte-order mark"
    # No control characters except newline (no tabs, no CR), no format / private / unassigned.
    bad = {c for c in text if c != "\n" and unicodedata.category(c) in ("Cc", "Cf", "Co", "Cn")}
    assert not bad, f"{name}.txt has control/format characters {sorted(map(hex, map(ord, bad)))}"
    assert text.endswith("\n") and not text.endswith("\n\n"), f"{name}.txt must end in one newline"
    trailing = [i + 1 for i, line in enumerate(text.split("\n")) if line != line.rstrip()]
    assert not trailing, f"{name}.txt: trailing whitespace on lines {trailing[:5]}"


@pytest.mark.parametrize("name", sorted(MIN_SIZE))
def test_long_enough(name):
    minimum, unit = MIN_SIZE[name]
    text = _text(name)
    size = len(text.encode("utf-8")) if unit == "bytes" else len(text)
    assert size >= minimum, f"{name}.txt has {size} {unit}, needs {minimum}"


@pytest.mark.parametrize("name", sorted(MIN_SIZE))
def test_paragraphs_separated_and_distinct(name):
    paragraphs = [p.strip() for p in _text(name).split("\n\n")]
    assert all(paragraphs), f"{name}.txt has more than one blank line in a row"
    assert len(paragraphs) >= 10, f"{name}.txt has only {len(paragraphs)} paragraphs"
    long_ones = [p for p in paragraphs if len(p) > 40]
    assert len(long_ones) == len(set(long_ones)), f"{name}.txt repeats a paragraph"


@pytest.mark.parametrize("name", sorted(SCRIPT))
def test_mostly_in_its_script(name):
    ranges, minimum = SCRIPT[name]
    letters = _letters(_text(name))
    share = _share(letters, ranges)
    assert share >= minimum, f"{name}.txt: only {share:.0%} of letters in its script"


def test_japanese_mixes_kana_and_kanji():
    letters = _letters(_text("ja"))
    kana, han = _share(letters, KANA), _share(letters, HAN)
    assert kana >= 0.30 and han >= 0.20, f"ja.txt: kana {kana:.0%}, kanji {han:.0%}"


def test_chinese_is_not_japanese():
    letters = _letters(_text("zh"))
    assert _share(letters, KANA) < 0.005, "zh.txt contains kana"


def test_code_and_math_look_like_code_and_math():
    code = _text("code")
    for marker in ("def ", "function ", "#include", "package main", "SELECT", "#!/bin/sh"):
        assert marker in code, f"code.txt has no {marker!r} (Python, JS, C, Go, SQL, shell)"
    math = _text("math")
    for marker in ("\\frac", "P(", "=", "\\sum"):
        assert marker in math, f"math.txt has no {marker!r}"
