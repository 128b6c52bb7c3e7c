"""Where the tests find their facts.

* tests/data/: the official prompt strings (copied from the model cards and the families' own
  code; each entry names its source), so the golden chat-format tests run in any clone.
* ../shared (next to the repository; KILN_SHARED overrides): only the large real llm-jp-3
  tokenizer. Tests that need it skip, saying so, when it is absent.
"""
from __future__ import annotations

import json
import os
from functools import lru_cache
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DATA = Path(__file__).resolve().parent / "data"
SHARED = Path(os.environ.get("KILN_SHARED") or REPO.parent / "shared")
LLMJP_TOKENIZER = SHARED / "fixtures" / "llm-jp-3-tokenizer"
LLMJP_SKIP = (f"the real llm-jp-3 tokenizer is not at {LLMJP_TOKENIZER} "
              "(it lives in ../shared; set KILN_SHARED to point elsewhere)")


@lru_cache(maxsize=None)
def _prompts() -> dict:
    return json.loads((DATA / "official_prompts.json").read_text(encoding="utf-8"))


def official(key: str) -> dict:
    """One family's entry of tests/data/official_prompts.json."""
    return _prompts()[key]


def have_llmjp_tokenizer() -> bool:
    return (LLMJP_TOKENIZER / "tokenizer.json").is_file()


def need_llmjp_tokenizer() -> Path:
    if not have_llmjp_tokenizer():
        pytest.skip(LLMJP_SKIP)
    return LLMJP_TOKENIZER
