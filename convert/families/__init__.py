"""The family registry and the one rule that picks a checkpoint's family.

Every family states its clues the same way (`Family.name_hints`, `file_hints`, `vocab_sizes`,
see base.py). Among the families that take the checkpoint's architecture, the clues are tried
from the strongest to the weakest, the same order for every family:

  1. the hub repo id (`kiln convert owner/name`, `kiln pull`),
  2. config.json's `_name_or_path`,
  3. the folder name,
  4. text in tokenizer_config.json / special_tokens_map.json / README.md,
  5. the vocabulary size;

the first family with a clue wins. Without any, the architecture's generic module converts it
(plain Llama / Mistral / Mixtral / MPT), and an architecture only one family takes (Jais,
XVERSE) is that family. `--family NAME` overrides all of it. The choice and its clue are
reported (`Detection.describe()`), e.g. "family rakutenai (vocab size 48000)".
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import KilnError
from .alaya import AlayaFamily
from .base import Family
from .jais import JaisFamily
from .llama import LlamaFamily
from .llmjp import LlmJpFamily
from .mpt import MptFamily
from .rakuten import RakutenFamily
from .xverse import XverseFamily

FAMILIES: list[type[Family]] = [LlmJpFamily, RakutenFamily, LlamaFamily, JaisFamily,
                                XverseFamily, AlayaFamily, MptFamily]
BY_NAME: dict[str, type[Family]] = {fam.name: fam for fam in FAMILIES}
FAMILY_NAMES = list(BY_NAME)
HINT_FILES = ("tokenizer_config.json", "special_tokens_map.json", "README.md")


@dataclass
class Detection:
    family: type[Family]
    clue: str | None           # None: generic module, no family-specific clue
    label: str                 # "mistral" for a generic MistralForCausalLM

    def describe(self) -> str:
        if self.clue is None:
            return f"generic {self.label}: no family-specific clue"
        return f"family {self.family.name} ({self.clue})"


def supported_architectures() -> list[str]:
    return sorted({arch for fam in FAMILIES for arch in fam.architectures})


def family_for_gguf(arch: str, name: str) -> type[Family] | None:
    """The family of a GGUF made by another tool, recognized by architecture and name."""
    for fam in FAMILIES:
        if fam.recognizes_gguf(arch, name):
            return fam
    return None


def _name_clues(config: dict, model_dir: Path, repo_id: str | None) -> list[tuple[str, str]]:
    """(where, text) for the names a checkpoint goes by, strongest first."""
    out = []
    if repo_id:
        out.append(("hub repo id", repo_id))
    if config.get("_name_or_path"):
        out.append(("_name_or_path", str(config["_name_or_path"])))
    out.append(("folder name", Path(model_dir).resolve().name))
    return out


def _file_text(model_dir: Path, name: str) -> str:
    path = Path(model_dir) / name
    try:
        return path.read_text(encoding="utf-8", errors="replace")[:200_000]
    except OSError:
        return ""


def detect(config: dict, model_dir: Path, repo_id: str | None = None,
           override: str | None = None) -> Detection:
    """Which family converts this checkpoint, and on which clue (see the module docstring)."""
    model_dir = Path(model_dir)
    archs = config.get("architectures") or []
    takers = [fam for fam in FAMILIES if any(a in fam.architectures for a in archs)]
    shown = ", ".join(archs) if archs else f"model_type '{config.get('model_type')}'"
    label = str(config.get("model_type") or (archs[0] if archs else "")).lower()
    if override is not None:
        fam = BY_NAME.get(override.lower())
        if fam is None:
            raise KilnError(None, f"unknown family '{override}' (choose from: "
                                  f"{', '.join(FAMILY_NAMES)})")
        if fam not in takers:
            raise KilnError(model_dir / "config.json",
                            f"--family {fam.name} cannot convert {shown} (it takes "
                            f"{', '.join(fam.architectures)})")
        return Detection(fam, "--family", label)
    if not takers:
        raise KilnError(model_dir / "config.json",
                        f"architecture {shown} is not supported "
                        f"(supported: {', '.join(supported_architectures())})")
    specific = [fam for fam in takers if not fam.generic]
    names = _name_clues(config, model_dir, repo_id)
    for where, text in names:
        for fam in specific:
            hint = next((h for h in fam.name_hints if h in text.lower()), None)
            if hint:
                return Detection(fam, f"{where} '{text}'", label)
    for fname in HINT_FILES:
        text = _file_text(model_dir, fname) if any(f.file_hints for f in specific) else ""
        for fam in specific:
            hint = next((h for h in fam.file_hints if h in text), None)
            if hint:
                return Detection(fam, f"{fname} mentions '{hint}'", label)
    vocab = config.get("vocab_size")
    for fam in specific:
        if isinstance(vocab, int) and vocab in fam.vocab_sizes:
            return Detection(fam, f"vocab size {vocab}", label)
    generic = [fam for fam in takers if fam.generic]
    if generic:
        return Detection(generic[0], None, label)
    if len(specific) == 1 and not (specific[0].name_hints or specific[0].file_hints
                                   or specific[0].vocab_sizes):
        return Detection(specific[0], f"architecture {shown}", label)
    raise KilnError(model_dir / "config.json",         # a family without a generic fallback
                    f"no clue says which family converts {shown} "
                    f"(use --family {' or '.join(f.name for f in specific)})")


def family_for(config: dict, model_dir: Path, repo_id: str | None = None,
               override: str | None = None) -> Family:
    """The family instance for a checkpoint; `.detection` says how it was chosen."""
    found = detect(config, model_dir, repo_id, override)
    fam = found.family(config, Path(model_dir))
    fam.detection = found
    return fam
