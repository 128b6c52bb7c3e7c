"""The texts shipped with kiln: calibration text for importance matrices, held-out text for
`kiln eval` (see README.md next to this file: original text written for kiln, CC0 1.0).

calibration/<section>.txt and heldout/<section>.txt for each section of LANGS, plus
calibration/chat.jsonl (one conversation a line: {"messages": [{"role", "content"}, ...]}).
"""
from __future__ import annotations

import json
import math
import unicodedata
from importlib import resources
from typing import TYPE_CHECKING

from convert.errors import KilnError

if TYPE_CHECKING:
    from ..meta import ModelMeta

LANGS = ("ar", "ja", "zh", "ko", "en", "code", "math")   # sections, calibration and held-out
NATURAL = ("ar", "ja", "zh", "ko", "en")                  # of those, natural languages
DEFAULT_LANGUAGES = ("en",)       # a model nothing tells the languages of: English first
PART = 1 / 3                      # share of a section outside the model's languages


def _folder(name: str):
    return resources.files(__name__).joinpath(name)


def _read(path) -> str:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise KilnError(str(path), "missing from the installed kiln package") from None
    except UnicodeDecodeError as exc:
        raise KilnError(str(path), f"not UTF-8 text (byte {exc.start})") from None
    if not text.strip():
        raise KilnError(str(path), "the text file is empty")
    return text


def calibration_sections() -> list[tuple[str, str]]:
    """(section, text) of each calibration/<section>.txt, in LANGS order (chat: see
    `conversations`)."""
    folder = _folder("calibration")
    return [(name, _read(folder.joinpath(f"{name}.txt"))) for name in LANGS]


def heldout_sections() -> list[tuple[str, str]]:
    """(section, text) of each heldout/<section>.txt, in LANGS order; [] when this kiln ships
    no held-out folder. A folder missing one of the sections is an error."""
    folder = _folder("heldout")
    if not folder.is_dir():
        return []
    return [(name, _read(folder.joinpath(f"{name}.txt"))) for name in LANGS]


def conversations() -> list[list[dict]]:
    """The conversations of calibration/chat.jsonl, in file order."""
    path = _folder("calibration").joinpath("chat.jsonl")
    out = []
    for n, line in enumerate(_read(path).splitlines(), 1):
        if not line.strip():
            continue
        try:
            msgs = json.loads(line)["messages"]
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise KilnError(f"{path}:{n}", f"not a conversation ({exc})") from None
        if not (isinstance(msgs, list) and msgs and all(
                isinstance(m, dict) and m.get("role") in ("system", "user", "assistant")
                and isinstance(m.get("content"), str) for m in msgs)):
            raise KilnError(f"{path}:{n}", "messages must be a list of {role, content}")
        out.append(msgs)
    return out


def script_language(text: str) -> str:
    """Which of NATURAL a text is written in, by its letters: Arabic, Hangul, kana (Han with
    kana is Japanese), Han, else English."""
    counts = dict.fromkeys(("ar", "ko", "kana", "han", "latin"), 0)
    for ch in text:
        if not ch.isalpha():
            continue
        name = unicodedata.name(ch, "")
        if name.startswith("ARABIC"):
            counts["ar"] += 1
        elif name.startswith("HANGUL"):
            counts["ko"] += 1
        elif name.startswith(("HIRAGANA", "KATAKANA")):
            counts["kana"] += 1
        elif name.startswith("CJK"):
            counts["han"] += 1
        else:
            counts["latin"] += 1
    if counts["kana"]:
        counts["kana"], counts["han"] = counts["kana"] + counts["han"], 0
    best = max(counts, key=lambda k: counts[k])
    return {"kana": "ja", "han": "zh", "latin": "en"}.get(best, best) if counts[best] else "en"


def model_languages(meta: "ModelMeta") -> tuple[str, ...]:
    """The model's languages, strongest first: the GGUF's kiln.languages, else its family's
    (convert.families), else DEFAULT_LANGUAGES."""
    if meta.languages:
        return tuple(meta.languages)
    from convert.families import BY_NAME

    fam = BY_NAME.get(meta.family or "")
    return tuple(fam.languages) if fam is not None else DEFAULT_LANGUAGES


def part(text: str, share: float = PART) -> str:
    """The beginning of `text` up to `share` of its characters, cut at the last paragraph
    break (blank line) before that point; at least the first paragraph."""
    paras = text.strip("\n").split("\n\n")
    limit, out, size = share * len(text), [], 0
    for p in paras:
        if out and size + len(p) + 2 > limit:
            break
        out.append(p)
        size += len(p) + 2
    return "\n\n".join(out)


def render_conversation(meta: "ModelMeta", messages: list[dict]) -> str:
    """One conversation as the model's own chat template writes it (without a leading BOS
    text: the tokenizer adds BOS), or "role: content" lines when the GGUF has no template."""
    from ..meta import PLAIN_TEMPLATE
    from ..prompt import PromptBuilder

    if not meta.chat_template or meta.chat_template == PLAIN_TEMPLATE:
        return "\n".join(f"{m['role']}: {m['content']}" for m in messages)
    builder = PromptBuilder(meta, None)
    text = builder.render(messages, add_generation_prompt=False)
    if builder.bos_text and text.startswith(builder.bos_text):
        text = text[len(builder.bos_text):]
    return text


PREAMBLE_MIN = 300      # characters before the first message that count as a preamble
PREAMBLE_KEEP = 2       # conversations that keep a repeated preamble whole
PREAMBLE_TAIL = 200     # what the others keep of it (its end, with the role markers)


def _trim_repeated_preamble(text: str, messages: list[dict], seen: dict[str, int]) -> str:
    """`text` with the template's preamble cut when it is long and already given twice."""
    at = text.find(messages[0]["content"]) if messages else -1
    if at < PREAMBLE_MIN:
        return text
    preamble = text[:at]
    seen[preamble] = seen.get(preamble, 0) + 1
    if seen[preamble] <= PREAMBLE_KEEP:
        return text
    return text[at - PREAMBLE_TAIL:]


def calibration_text(meta: "ModelMeta") -> str:
    """The default calibration text for the model `meta` describes (runtime.meta.read_meta).

    The rule: with L the model's languages (`model_languages`: kiln.languages, else the
    family's, else English),
      1. each text section of L, in L's order, in full;
      2. the chat part, each conversation rendered with the GGUF's chat template: the
         conversations in a language of L all, of each other language the first third
         (rounded up); in file order;
      3. every other section (the other languages in LANGS order, then code and math): its
         first third (`part`: cut at a paragraph break).
    A long preamble the template puts before the first message (Jais's ~1,900-character default
    system prompt) is kept whole in the first PREAMBLE_KEEP conversations that get it and cut to
    its last PREAMBLE_TAIL characters in the others: repeated in every conversation it would be
    nearly half of the text and weigh its few tokens' activations far above the rest.
    Sections are joined by a blank line. Deterministic: the same GGUF gives the same text."""
    langs = model_languages(meta)
    sections = dict(calibration_sections())
    full = [lang for lang in langs if lang in sections]
    pieces = [sections[lang].strip("\n") for lang in full]

    by_lang: dict[str, list[int]] = {}
    convs = conversations()
    for i, msgs in enumerate(convs):
        by_lang.setdefault(script_language(" ".join(m["content"] for m in msgs)), []).append(i)
    keep = set()
    for lang, idx in by_lang.items():
        keep.update(idx if lang in langs else idx[:math.ceil(len(idx) * PART)])
    seen: dict[str, int] = {}
    for i in sorted(keep):
        pieces.append(_trim_repeated_preamble(
            render_conversation(meta, convs[i]).strip("\n"), convs[i], seen))

    pieces += [part(sections[name]) for name in LANGS if name not in full]
    return "\n\n".join(pieces) + "\n"
