"""What every family module provides, and the helpers they share."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ..checkpoint import Checkpoint
from ..errors import KilnError
from ..tensors import OutTensor, StoredRows
from ..vocab import Vocab, load_vocab

_MISSING = object()


class Family:
    """One model family: HF architectures in, GGUF arch, hyperparameters and tensors out."""

    name = "base"
    architectures: tuple[str, ...] = ()
    gguf_arch = ""

    def __init__(self, config: dict, model_dir: Path):
        self.config = config
        self.model_dir = Path(model_dir)
        self.config_path = self.model_dir / "config.json"

    # -- config access -------------------------------------------------------------------
    def cfg(self, *keys: str, default: Any = _MISSING) -> Any:
        """The first of `keys` present in config.json (aliases), else `default`."""
        for key in keys:
            if self.config.get(key) is not None:
                return self.config[key]
        if default is _MISSING:
            raise KilnError(self.config_path, f"missing required field '{keys[0]}'")
        return default

    @classmethod
    def claims(cls, config: dict, model_dir: Path) -> bool:
        """Whether this family takes a checkpoint of one of its architectures."""
        return True

    # -- what a family defines -----------------------------------------------------------
    def n_vocab(self) -> int:
        return int(self.cfg("vocab_size"))

    def context_length(self) -> int:
        return int(self.cfg("max_position_embeddings"))

    def hparams(self) -> dict[str, Any]:
        """GGUF key/values beyond general.* and tokenizer.*, keys written out in full."""
        raise NotImplementedError

    def tensors(self, ckpt: Checkpoint) -> list[OutTensor]:
        raise NotImplementedError

    def vocab(self) -> Vocab:
        return load_vocab(self.model_dir, self.config, self.n_vocab())

    def kiln_metadata(self) -> dict[str, Any]:
        """kiln.* keys for the runtime (family name, context cap, stops, sampling...)."""
        return {"kiln.family": self.name}

    # -- helpers -------------------------------------------------------------------------
    def key(self, suffix: str) -> str:
        return f"{self.gguf_arch}.{suffix}"

    def stored(self, ckpt: Checkpoint, name: str, shape: tuple[int, ...], **kw) -> StoredRows:
        """Rows of stored tensor `name`, after checking its shape against what config implies."""
        info = ckpt.tensors.get(name)
        if info is None:
            raise KilnError(self.model_dir, f"tensor '{name}' is missing from the checkpoint")
        if tuple(info.shape) != tuple(shape):
            raise KilnError(info.path, f"tensor '{name}' has shape {list(info.shape)}, "
                            f"but config.json implies {list(shape)}")
        return StoredRows(ckpt.array(name), info.dtype, **kw)

    def refuse_leftovers(self, ckpt: Checkpoint, used: set[str], ignorable: tuple[str, ...] = ()):
        """Fail on stored tensors the family does not know, rather than drop them silently."""
        for name, info in ckpt.tensors.items():
            if name in used or any(part in name for part in ignorable):
                continue
            raise KilnError(info.path, f"unexpected tensor '{name}' for {self.architectures[0]}; "
                            "kiln does not know where it goes")
