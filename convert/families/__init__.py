"""The family registry: which module converts which Hugging Face architecture."""
from __future__ import annotations

from pathlib import Path

from ..errors import KilnError
from .alaya import AlayaFamily, MptFamily
from .base import Family
from .jais import JaisFamily
from .llama import LlamaFamily
from .llmjp import LlmJpFamily
from .rakuten import RakutenFamily
from .xverse import XverseFamily

# Most specific first: a family that claims an architecture by a closer look at the
# checkpoint (tokenizer, name) must come before the generic module for that architecture.
FAMILIES: list[type[Family]] = [LlmJpFamily, RakutenFamily, LlamaFamily, JaisFamily,
                                XverseFamily, AlayaFamily, MptFamily]


def supported_architectures() -> list[str]:
    return sorted({arch for fam in FAMILIES for arch in fam.architectures})


def family_for_gguf(arch: str, name: str) -> type[Family] | None:
    """The family of a GGUF made by another tool, recognized by architecture and name."""
    for fam in FAMILIES:
        if fam.recognizes_gguf(arch, name):
            return fam
    return None


def family_for(config: dict, model_dir: Path) -> Family:
    archs = config.get("architectures") or []
    for fam in FAMILIES:
        if any(a in fam.architectures for a in archs) and fam.claims(config, Path(model_dir)):
            return fam(config, Path(model_dir))
    shown = ", ".join(archs) if archs else f"model_type '{config.get('model_type')}'"
    raise KilnError(Path(model_dir) / "config.json",
                    f"architecture {shown} is not supported "
                    f"(supported: {', '.join(supported_architectures())})")
