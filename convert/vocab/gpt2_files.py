"""GPT-2 slow-tokenizer files (vocab.json + merges.txt, what Jais's repos ship) -> tokenizer.json."""
from __future__ import annotations

import json
from pathlib import Path

from ..errors import KilnError
from .side_files import token_content


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
                if k.endswith("_token") and (c := token_content(v))}
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
