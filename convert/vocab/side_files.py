"""The JSON side files next to the tokenizer: tokenizer_config.json, special_tokens_map.json,
added_tokens.json, chat_template.jinja / chat_template.json; and added tokens applied to a reading.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from ..errors import KilnError
from .tokens import (ADDED_TOKEN_SCORE, SPACE_MARK, T_BYTE, T_CONTROL, T_UNKNOWN, T_UNUSED,
                     T_USER_DEFINED, Built, Tok, looks_special)

log = logging.getLogger(__name__)


def read_json(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise KilnError(path, f"cannot read: {e}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise KilnError(path, f"not valid JSON: {e}") from None


def read_json_opt(path: Path) -> Any:
    return read_json(path) if path.is_file() else None


def token_content(entry: Any) -> str | None:
    """A special-token entry of tokenizer_config / special_tokens_map: str or AddedToken dict."""
    if isinstance(entry, str):
        return entry or None
    if isinstance(entry, dict) and isinstance(entry.get("content"), str):
        return entry["content"] or None
    return None


def first_int(v: Any) -> int | None:
    if isinstance(v, bool):
        return None
    if isinstance(v, int):
        return v
    if isinstance(v, list) and v and isinstance(v[0], int) and not isinstance(v[0], bool):
        return v[0]
    return None


def read_configs(model_dir: Path) -> tuple[dict, dict]:
    """tokenizer_config.json and special_tokens_map.json ({} when absent or not an object)."""
    tok_cfg = read_json_opt(model_dir / "tokenizer_config.json")
    stm = read_json_opt(model_dir / "special_tokens_map.json")
    return (tok_cfg if isinstance(tok_cfg, dict) else {}), (stm if isinstance(stm, dict) else {})


def apply_added_tokens(built: Built, model_dir: Path, tok_cfg: dict, stm: dict,
                       tj: dict | None, tj_path: Path) -> list[tuple[int, str, bool]]:
    """Added tokens onto `built`, least to most authoritative: added_tokens.json, tokenizer.json's
    added_tokens, tokenizer_config's added_tokens_decoder. Returns those of the side files
    (id, content, special), for a tokenizer.json built from the .model."""
    specials = special_strings(tok_cfg, stm)
    added: list[tuple[int, str, bool]] = []
    at_path = model_dir / "added_tokens.json"
    at = read_json_opt(at_path)
    if at is not None:
        if not isinstance(at, dict):
            raise KilnError(at_path, "expected an object of token -> id")
        entries = [(int(i), str(c), str(c) in specials)
                   for c, i in at.items() if isinstance(i, int)]
        added += entries
        apply_added(built, entries, str(at_path))
    if tj is not None and isinstance(tj.get("added_tokens"), list):
        apply_added(built, [(a["id"], a["content"], bool(a.get("special")))
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
        apply_added(built, entries, str(model_dir / "tokenizer_config.json"))
    return added


def apply_added(b: Built, entries: list[tuple[int, str, bool]], where: str) -> None:
    for tid, content, special in entries:
        if tid < 0 or not content:
            continue
        old = b.toks.get(tid)
        special = special or looks_special(content)
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
        b.toks[tid] = Tok(text, score, ttype)


def special_strings(tok_cfg: dict, stm: dict) -> set[str]:
    out: set[str] = set()
    for src in (tok_cfg, stm):
        for k, v in src.items():
            if k.endswith("_token") and (c := token_content(v)):
                out.add(c)
        for v in src.get("additional_special_tokens") or []:
            if c := token_content(v):
                out.add(c)
    return out


def read_chat_template(model_dir: Path, tok_cfg: dict) -> str | None:
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
    cj = read_json_opt(model_dir / "chat_template.json")
    if isinstance(cj, dict) and isinstance(cj.get("chat_template"), str):
        return cj["chat_template"]
    return None
