"""Family detection (issue 11): one rule, every clue alone, the override, and what is printed.

The rule (convert/families/__init__.py): among the families that take the architecture, the
first clue from hub repo id > _name_or_path > folder name > tokenizer/README text > vocab
size wins; without one, the generic module; `--family` overrides. Here each family is detected
from each of its clues alone (everything else neutral), then end to end through `kiln convert`
on the issue's case.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from convert.errors import KilnError
from convert.families import FAMILY_NAMES, detect, family_for_gguf

ARCH = {"llm-jp": "LlamaForCausalLM", "rakutenai": "MistralForCausalLM",
        "alaya": "MPTForCausalLM", "jais": "JAISLMHeadModel", "xverse": "XverseForCausalLM",
        "llama": "LlamaForCausalLM", "mpt": "MPTForCausalLM"}
MODEL_TYPE = {"LlamaForCausalLM": "llama", "MistralForCausalLM": "mistral",
              "MPTForCausalLM": "mpt", "JAISLMHeadModel": "jais",
              "XverseForCausalLM": "xverse", "MixtralForCausalLM": "mixtral"}
NEUTRAL_VOCAB = 2000

# family -> {clue kind: (what to set, the clue text kiln must report)}
CLUES = {
    "llm-jp": {
        "repo_id": ("llm-jp/llm-jp-3-1.8b-instruct", "hub repo id 'llm-jp/llm-jp-3-1.8b-instruct'"),
        "name_or_path": ("llm-jp/llm-jp-3-13b", "_name_or_path 'llm-jp/llm-jp-3-13b'"),
        "folder": ("llm-jp-3-1.8b", "folder name 'llm-jp-3-1.8b'"),
        "file": (("tokenizer_config.json", '{"model_max_length": 4096, "note": "LLM-jp"}'),
                 "tokenizer_config.json mentions 'LLM-jp'"),
    },
    "rakutenai": {
        "repo_id": ("Rakuten/RakutenAI-7B-chat", "hub repo id 'Rakuten/RakutenAI-7B-chat'"),
        "name_or_path": ("Rakuten/RakutenAI-7B", "_name_or_path 'Rakuten/RakutenAI-7B'"),
        "folder": ("RakutenAI-7B-instruct", "folder name 'RakutenAI-7B-instruct'"),
        "vocab": (48000, "vocab size 48000"),
    },
    "alaya": {
        "repo_id": ("DataCanvas/Alaya-7B-Chat", "hub repo id 'DataCanvas/Alaya-7B-Chat'"),
        "name_or_path": ("DataCanvas/Alaya-7B-Base", "_name_or_path 'DataCanvas/Alaya-7B-Base'"),
        "folder": ("Alaya-7B-Chat", "folder name 'Alaya-7B-Chat'"),
        "file": (("README.md", "# A 7B chat model by DataCanvas\n"),
                 "README.md mentions 'DataCanvas'"),
        "vocab": (60160, "vocab size 60160"),
    },
    # architectures only one family takes: the architecture is the clue
    "jais": {"arch": (None, "architecture JAISLMHeadModel")},
    "xverse": {"arch": (None, "architecture XverseForCausalLM")},
}
CASES = [(fam, kind) for fam, kinds in CLUES.items() for kind in kinds]


def _setup(tmp_path: Path, family: str, kind: str | None, value=None):
    arch = ARCH[family]
    config = {"architectures": [arch], "model_type": MODEL_TYPE[arch],
              "vocab_size": NEUTRAL_VOCAB}
    folder, repo_id = tmp_path / "checkpoint", None
    if kind == "repo_id":
        folder, repo_id = tmp_path / "0123456789abcdef0123456789abcdef01234567", value
    elif kind == "name_or_path":
        config["_name_or_path"] = value
    elif kind == "folder":
        folder = tmp_path / value
    elif kind == "vocab":
        config["vocab_size"] = value
    folder.mkdir()
    if kind == "file":
        (folder / value[0]).write_text(value[1])
    (folder / "config.json").write_text(json.dumps(config))
    return config, folder, repo_id


@pytest.mark.parametrize("family,kind", CASES)
def test_each_clue_alone(tmp_path, family, kind):
    value, said = CLUES[family][kind]
    config, folder, repo_id = _setup(tmp_path, family, kind, value)
    found = detect(config, folder, repo_id)
    assert found.family.name == family
    assert found.describe() == f"family {family} ({said})"


@pytest.mark.parametrize("family", ["llm-jp", "rakutenai", "alaya"])
def test_no_clue_is_generic(tmp_path, family):
    config, folder, _ = _setup(tmp_path, family, None)
    found = detect(config, folder)
    generic = {"llm-jp": "llama", "rakutenai": "llama", "alaya": "mpt"}[family]
    assert found.family.name == generic
    assert found.describe() == f"generic {config['model_type']}: no family-specific clue"


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_override(tmp_path, family):
    """--family picks any family that takes the architecture, whatever the clues say."""
    config, folder, _ = _setup(tmp_path, family, None)
    found = detect(config, folder, override=family.upper())
    assert found.family.name == family and found.describe() == f"family {family} (--family)"


def test_override_beats_clues(tmp_path):
    value, _ = CLUES["rakutenai"]["folder"]
    config, folder, _ = _setup(tmp_path, "rakutenai", "folder", value)
    assert detect(config, folder).family.name == "rakutenai"
    assert detect(config, folder, override="llama").family.name == "llama"


def test_override_refuses_other_architecture(tmp_path):
    config, folder, _ = _setup(tmp_path, "rakutenai", None)
    with pytest.raises(KilnError) as err:
        detect(config, folder, override="jais")
    assert str(err.value).endswith("--family jais cannot convert MistralForCausalLM "
                                   "(it takes JAISLMHeadModel)")
    with pytest.raises(KilnError, match="unknown family 'gpt5'"):
        detect(config, folder, override="gpt5")


def test_stronger_clue_is_reported(tmp_path):
    """Two clues: the one earlier in the order is the one named."""
    config, folder, repo_id = _setup(tmp_path, "rakutenai", "repo_id",
                                     "Rakuten/RakutenAI-7B-chat")
    config["vocab_size"] = 48000
    assert detect(config, folder, repo_id).clue == "hub repo id 'Rakuten/RakutenAI-7B-chat'"


def test_hint_for_another_architecture_is_no_clue(tmp_path):
    """A Llama checkpoint in a folder named after RakutenAI (a Mistral family) stays Llama."""
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 48000}
    folder = tmp_path / "RakutenAI-7B"
    folder.mkdir()
    assert detect(config, folder).describe() == "generic llama: no family-specific clue"


def test_foreign_gguf_recognition_uses_the_same_name_hints():
    assert family_for_gguf("llama", "llm-jp-3-1.8b-instruct").name == "llm-jp"
    assert family_for_gguf("llama", "RakutenAI-7B-chat").name == "rakutenai"
    assert family_for_gguf("mpt", "Alaya 7B Chat").name == "alaya"
    assert family_for_gguf("jais", "anything").name == "jais"
    assert family_for_gguf("llama", "Mistral-7B-Instruct") is None
    assert family_for_gguf("mpt", "RakutenAI-7B") is None


# -- end to end: the issue's case through `kiln convert` and `kiln inspect` -----------------------

def _kiln(*args):
    return subprocess.run([sys.executable, "-m", "runtime", *map(str, args)],
                          capture_output=True, text=True, timeout=300)


def test_issue_case_end_to_end(tmp_path):
    """A Mistral checkpoint in a folder named RakutenAI-7B-instruct, vocabulary 2000, no
    _name_or_path: converted as rakutenai, said so, with RakutenAI's prompt template."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from hf_models import build

    folder = build("mistral", tmp_path / "RakutenAI-7B-instruct", extra_vocab=0)
    config = json.loads((folder / "config.json").read_text())
    config.pop("_name_or_path", None)
    extra = NEUTRAL_VOCAB - config["vocab_size"]
    assert extra >= 0
    config["vocab_size"] = NEUTRAL_VOCAB
    (folder / "config.json").write_text(json.dumps(config))
    _pad_vocab(folder, extra)

    out = tmp_path / "r.gguf"
    res = _kiln("convert", folder, "-o", out, "--quant", "f16", "--quiet")
    assert res.returncode == 0, res.stderr
    assert "family rakutenai (folder name 'RakutenAI-7B-instruct')" in res.stderr
    info = json.loads(_kiln("inspect", out, "--json").stdout)
    assert info["family"] == "rakutenai"
    assert info["metadata"]["kiln.family"] == "rakutenai"
    assert " USER: " in info["metadata"]["tokenizer.chat_template"]
    assert "family: rakutenai" in _kiln("inspect", out).stdout

    plain = _kiln("convert", folder, "-o", tmp_path / "m.gguf", "--quiet", "--family", "llama")
    assert plain.returncode == 0, plain.stderr
    assert "family llama (--family)" in plain.stderr
    refused = _kiln("convert", folder, "-o", tmp_path / "j.gguf", "--family", "jais")
    assert refused.returncode == 1 and not (tmp_path / "j.gguf").exists()
    assert refused.stderr.strip().count("\n") == 0, refused.stderr
    assert "--family jais cannot convert MistralForCausalLM" in refused.stderr


def _pad_vocab(folder: Path, extra: int) -> None:
    """Grow the embedding and lm_head rows to the padded vocabulary (as fine-tunes do)."""
    import numpy as np
    from safetensors.numpy import load_file, save_file

    path = folder / "model.safetensors"
    tensors = load_file(path)
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        t = tensors[name]
        tensors[name] = np.concatenate([t, np.zeros((extra, t.shape[1]), t.dtype)])
    save_file(tensors, path, metadata={"format": "pt"})
