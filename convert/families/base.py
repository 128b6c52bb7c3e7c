"""What every family module provides, and the helpers they share."""
from __future__ import annotations

import json
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
    languages: tuple[str, ...] = ("en",)  # ISO 639-1, strongest first: kiln.languages

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

    # -- detection clues, read by the one rule in convert/families/__init__.py ---------------
    generic = False                  # the architecture's plain module: chosen without a clue
    name_hints: tuple[str, ...] = ()  # lower-case text in the repo id, _name_or_path, folder
    file_hints: tuple[str, ...] = ()  # text in tokenizer_config / special_tokens_map / README
    vocab_sizes: tuple[int, ...] = ()  # vocabulary sizes that only this family has
    detection = None                 # set by family_for: which clue chose this family

    @classmethod
    def recognizes_gguf(cls, arch: str, name: str) -> bool:
        """Whether a GGUF made by another tool (no kiln.family) is of this family: its
        architecture and a name hint in its general.name or file name."""
        return (arch == cls.gguf_arch and not cls.generic
                and any(h in name.lower() for h in cls.name_hints))

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

    # -- chat knowledge: written into the GGUF so the runtime stays family-agnostic --------
    def chat_template(self, vocab: Vocab) -> str | None:
        """Jinja chat template for `tokenizer.chat_template` (default: the checkpoint's own)."""
        return vocab.chat_template

    def eos_ids(self, vocab: Vocab) -> list[int]:
        """Token ids that end an answer: the tokenizer's eos plus generation_config's."""
        ids = [vocab.special["eos"]] if "eos" in vocab.special else []
        gen = self.generation_config().get("eos_token_id")
        for i in gen if isinstance(gen, list) else [gen]:
            if isinstance(i, int) and i not in ids:
                ids.append(i)
        return ids

    def stop_strings(self) -> list[str]:
        """Text that starts a new turn: generation stops there and it is never shown."""
        return []

    def banned_ids(self) -> list[int]:
        """Token ids that must never be sampled."""
        return []

    def prompt_segments(self) -> str:
        """How the model's own code tokenizes a prompt: "" (the whole rendered text at once) or
        "message" (each message's text on its own, the generation prompt with the last one)."""
        return ""

    def sampling_defaults(self) -> dict[str, float]:
        """temperature / top_p / top_k / repeat_penalty, from generation_config.json."""
        gen, out = self.generation_config(), {}
        if gen.get("do_sample") is False:
            out["temperature"] = 0.0
        elif gen.get("temperature") is not None:
            out["temperature"] = float(gen["temperature"])
        for hf, ours in (("top_p", "top_p"), ("top_k", "top_k"),
                         ("repetition_penalty", "repeat_penalty")):
            if gen.get(hf) is not None:
                out[ours] = float(gen[hf])
        return out

    @classmethod
    def for_gguf(cls) -> "Family":
        """An instance without a checkpoint, for the chat knowledge of a foreign GGUF."""
        fam = cls({}, Path("."))
        fam.from_checkpoint = False
        return fam

    from_checkpoint = True

    def generation_config(self) -> dict:
        path = self.model_dir / "generation_config.json"
        if not self.from_checkpoint or not path.is_file():
            return {}
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise KilnError(path, f"not valid JSON ({exc})") from None
        return data if isinstance(data, dict) else {}

    def exact_tokenizer(self) -> str | None:
        """'huggingface' when llama.cpp's native tokenizer is known to differ from the model's,
        written as `kiln.tokenizer`: a note for llama-server / other tools that the embedded
        tokenizer.json is the exact one. kiln's runtime no longer reads it (it uses the embedded
        tokenizer.json whenever a file has one); kept because it is part of the file format."""
        return None

    def kiln_metadata(self, vocab: Vocab) -> dict[str, Any]:
        """kiln.* keys: everything the runtime needs to chat with this model correctly."""
        meta: dict[str, Any] = {"kiln.family": self.name,
                                "kiln.languages": list(self.languages)}
        if (exact := self.exact_tokenizer()) and vocab.hf_json:
            meta["kiln.tokenizer"] = exact
        if eos := self.eos_ids(vocab):
            meta["kiln.eos_token_ids"] = eos
        if stops := self.stop_strings():
            meta["kiln.stop_strings"] = stops
        if banned := self.banned_ids():
            meta["kiln.banned_token_ids"] = banned
        if segments := self.prompt_segments():
            meta["kiln.prompt_segments"] = segments
        for key, value in self.sampling_defaults().items():
            meta[f"kiln.sampling.{key}"] = float(value)
        return meta

    # -- helpers -------------------------------------------------------------------------
    def key(self, suffix: str) -> str:
        return f"{self.gguf_arch}.{suffix}"

    def refuse_config(self, refusals, read, tail: str) -> None:
        """Fail on the first (field, allowed, problem) row of `refusals` whose value, read(field),
        is not allowed(value, self): problem formatted with v = the value, j = it as JSON and
        f = the family, then `tail`, on config.json."""
        for field, allowed, problem in refusals:
            value = read(field)
            if not allowed(value, self):
                text = problem.format(v=value, j=json.dumps(value, default=str), f=self)
                raise KilnError(self.config_path, text + tail)

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
