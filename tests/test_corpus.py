"""The shipped calibration corpus (runtime/corpus) and the family languages it is weighted by.

* every file is UTF-8 text without control characters, each natural-language file mostly in
  its own script, chat.jsonl parses, and calibration and held-out texts share no sentence;
* `kiln convert` writes each family's languages as `kiln.languages` and read_meta reads them;
* `calibration_text` puts a GGUF's languages first and in full, and renders the chat part with
  the GGUF's own template.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from convert.families import FAMILIES

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("safetensors")

from hf_models import build as build_llama  # noqa: E402
from hf_models import kiln  # noqa: E402
from runtime.meta import read_meta  # noqa: E402

# What each family is made for (shared/families.md and the model cards): stated here, not
# read from kiln's own modules, so a wrong attribute fails.
EXPECTED_LANGUAGES = {"jais": ["ar", "en"], "llm-jp": ["ja", "en"], "rakutenai": ["ja", "en"],
                      "xverse": ["zh", "en"], "alaya": ["zh", "en"], "llama": ["en"],
                      "mpt": ["en"]}


def _checkpoint(family: str, root: Path) -> Path:
    """A tiny checkpoint in exact HF layout that kiln detects as `family`."""
    if family == "llama":
        return build_llama("llama", root / "tiny-llama")
    if family == "llm-jp":                       # clue: the folder name
        return build_llama("llama", root / "llm-jp-3-1.8b-instruct")
    if family == "rakutenai":
        return build_llama("mistral", root / "RakutenAI-7B-instruct")
    if family == "jais":
        from test_jais import build as build_jais

        build_jais("core42", root / "jais")
        return root / "jais"
    if family == "xverse":
        from test_xverse import build_xverse

        return build_xverse(root / "xverse")
    from test_alaya import build_hf as build_mpt

    name = "DataCanvas/Alaya-7B-Chat" if family == "alaya" else "mosaicml/mpt-tiny"
    (root / family).mkdir()
    return build_mpt(root / family, name=name)


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """family -> the F16 GGUF `kiln convert` made from a tiny checkpoint of that family."""
    made: dict[str, Path] = {}

    def get(family: str) -> Path:
        if family not in made:
            root = tmp_path_factory.mktemp(family.replace("-", ""))
            out = root / f"{family}.gguf"
            kiln("convert", _checkpoint(family, root), "-o", out, "--quant", "f16", "--quiet")
            made[family] = out
        return made[family]
    return get


def test_every_family_is_covered():
    assert sorted(EXPECTED_LANGUAGES) == sorted(f.name for f in FAMILIES)


@pytest.mark.parametrize("family", sorted(EXPECTED_LANGUAGES))
def test_convert_writes_languages_and_read_meta_reads_them(converted, family):
    import gguf

    path = converted(family)
    field = gguf.GGUFReader(path).fields["kiln.languages"]       # gguf-py, not kiln's reader
    assert field.types == [gguf.GGUFValueType.ARRAY, gguf.GGUFValueType.STRING]
    assert field.contents() == EXPECTED_LANGUAGES[family]
    meta = read_meta(path)
    assert meta.family == family
    assert meta.languages == EXPECTED_LANGUAGES[family]
