"""MPT checkpoints (MosaicML llm-foundry `MPTForCausalLM`) -> GGUF arch `mpt`; Alaya in alaya.py.

Follows llm-foundry's `modeling_mpt.py` (the HF remote code), read field by field from
config.json; what llama.cpp's `mpt` graph (src/models/mpt.cpp, as llama-cpp-python 0.3.36 vendors
it) runs differently is refused (REFUSALS). That graph: x = wte[ids] (+ position_embd[pos] when
stored); per block x += out_proj(attn(LN_1(x))), x += down(GELU(up(LN_2(x)))); LN_f; logits =
output @ x. LayerNorm with optional bias, fused Wqkv with optional bias and clamp (`clamp_kqv`),
optional q/k LayerNorm (see QK_LN_RUNS), softmax scale 1/sqrt(head_dim), ALiBi when
`max_alibi_bias` > 0 (llm-foundry's slopes, any head count), kv heads repeated as
repeat_interleave does, no RoPE, GELU only (tanh form; llm-foundry's exact erf: a small,
measured difference).

* llama.cpp's own converter assumes ff = 4 * d_model, eps 1e-5, kv heads = attn_config.kv_n_heads
  (even for multihead attention), SEA-LION's special ids for an unknown tokenizer, and ignores
  logit_scale. kiln reads each from the checkpoint, and bakes logit_scale (a number or
  'inv_sqrt_d_model') into an explicit `output.weight` = wte * logit_scale.
* a stored `transformer.wpe` is always used (llm-foundry creates it only when forward adds it,
  with or without ALiBi); MPT-7B (learned_pos_emb + alibi) stores none.
* embedding_fraction only scales the embedding's gradient, dropouts / attn_impl / init_config
  do nothing at inference: accepted.
"""
from __future__ import annotations

import math
from typing import Any

from ..checkpoint import Checkpoint
from ..errors import KilnError
from ..tensors import OutTensor
from ..vocab import Vocab
from .base import Family

# Norm types that compute a LayerNorm (low precision only changes the autocast dtype).
_LAYERNORMS = ("layernorm", "low_precision_layernorm")
_ATTN_TYPES = ("multihead_attention", "multiquery_attention", "grouped_query_attention")
_PLAIN_FFN = ("mptmlp",)

# q/k LayerNorm (qk_ln) converts to attn_q_norm / attn_k_norm, verified token by token against
# llm-foundry's semantics (tests/test_alaya.py), but llama.cpp's mpt graph reshapes the
# non-contiguous q/k views of the fused qkv before that norm, which aborts for batches of more
# than one token. Flip this once the llama.cpp that kiln ships runs it.
QK_LN_RUNS = False


def _act_name(act: Any) -> Any:
    return act.get("name") if isinstance(act, dict) else act


# What llama.cpp's mpt graph would run differently, in the order checked: (field, allowed(value,
# family), what is refused), formatted as in Family.refuse_config. An absent field is None.
REFUSALS = (
    ("attn_config.prefix_lm", lambda v, f: not v,
     "attn_config.prefix_lm=true (bidirectional attention over the prefix)"),
    ("attn_config.attn_uses_sequence_id", lambda v, f: not v,
     "attn_config.attn_uses_sequence_id=true (attention restricted per packed sequence)"),
    ("attn_config.attn_type", lambda v, f: v is None or v in _ATTN_TYPES,
     "attn_config.attn_type '{v}' (supported: " + ", ".join(_ATTN_TYPES) + ")"),
    ("attn_config.fused_qkv", lambda v, f: v is not False,
     "attn_config.fused_qkv=false (separate Wq/Wk/Wv; the graph needs one fused matrix)"),
    ("attn_config.softmax_scale",
     lambda v, f: v is None or math.isclose(float(v), f.softmax_scale, rel_tol=1e-6),
     "attn_config.softmax_scale={v} (the graph uses 1/sqrt(head_dim) = {f.softmax_scale:.6g})"),
    ("attn_config.qk_ln", lambda v, f: not v or f.n_head_kv == f.n_head,
     "attn_config.qk_ln with {f.n_head_kv} kv heads (the graph's k norm has d_model entries, "
     "llm-foundry's kv_n_heads * head_dim)"),
    ("attn_config.qk_gn", lambda v, f: not v, "attn_config.qk_gn=true (per-head q/k norms)"),
    ("attn_config.rope", lambda v, f: not v,
     "attn_config.rope=true (the graph has no RoPE for mpt)"),
    ("attn_config.sliding_window_size", lambda v, f: v is None or int(v) == -1,
     "attn_config.sliding_window_size={v}"),
    ("attn_config.attn_logit_softcapping", lambda v, f: v is None,
     "attn_config.attn_logit_softcapping is set"),
    ("final_logit_softcapping", lambda v, f: v is None, "final_logit_softcapping is set"),
    ("block_overrides", lambda v, f: not v, "block_overrides (layers that differ from each other)"),
    ("norm_type", lambda v, f: v is None or str(v).lower() in _LAYERNORMS,
     "norm_type '{v}' (the graph uses LayerNorm; supported: " + ", ".join(_LAYERNORMS) + ")"),
    ("ffn_config.ffn_type", lambda v, f: v is None or v in _PLAIN_FFN,
     "ffn_config.ffn_type '{v}' (the graph has the plain up -> GELU -> down MLP only)"),
    ("ffn_config.ffn_act_fn", lambda v, f: v is None or _act_name(v) == "gelu",
     "ffn_config.ffn_act_fn {v!r} (the graph uses GELU)"),
)


class MptFamily(Family):
    """Any MPT checkpoint llama.cpp can run; chat knowledge from the checkpoint's own files."""

    name = "mpt"
    architectures = ("MPTForCausalLM", "MptForCausalLM")
    gguf_arch = "mpt"
    generic = True

    # -- config --------------------------------------------------------------------------
    def _section(self, key: str) -> dict:
        part = self.config.get(key) or {}
        if not isinstance(part, dict):
            raise KilnError(self.config_path, f"{key} is not an object")
        return part

    def _field(self, field: str) -> Any:
        """A REFUSALS field, "section.key" for one inside attn_config / ffn_config."""
        section, _, key = field.rpartition(".")
        return (self._section(section) if section else self.config).get(key)

    @property
    def attn(self) -> dict:
        return self._section("attn_config")

    @property
    def ffn(self) -> dict:
        return self._section("ffn_config")

    @property
    def n_embd(self) -> int:
        return int(self.cfg("d_model"))

    @property
    def n_head(self) -> int:
        return int(self.cfg("n_heads"))

    @property
    def n_layer(self) -> int:
        return int(self.cfg("n_layers"))

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def softmax_scale(self) -> float:
        return 1 / math.sqrt(self.head_dim)

    @property
    def n_head_kv(self) -> int:
        kind = self.attn.get("attn_type", "multihead_attention")
        if kind == "multiquery_attention":
            return 1
        if kind == "grouped_query_attention":
            return int(self.attn.get("kv_n_heads", 1))
        return self.n_head        # multihead: llm-foundry ignores kv_n_heads (default 1)

    @property
    def n_ff(self) -> int:
        size = self.ffn.get("ffn_hidden_size")
        if size is not None:
            return int(size)
        ratio = float(self.cfg("expansion_ratio", default=4))
        n_ff = self.n_embd * ratio
        if n_ff != int(n_ff):
            raise KilnError(self.config_path, f"d_model * expansion_ratio = {n_ff} is not an "
                            "integer")
        return int(n_ff)

    @property
    def alibi(self) -> bool:
        if "alibi" not in self.attn:
            # transformers defaults it to true, llm-foundry and the MPT-7B code to false.
            raise KilnError(self.config_path, "attn_config.alibi is not set, and MPT code "
                            "versions disagree on its default; add it (true or false)")
        return bool(self.attn["alibi"])

    def norm_eps(self) -> float:
        return float(self.cfg("layer_norm_epsilon", "norm_eps", default=1e-5))

    def logit_scale(self) -> float | None:
        scale = self.config.get("logit_scale")
        if scale is None:
            return None
        if isinstance(scale, str):
            if scale == "inv_sqrt_d_model":
                return 1.0 / math.sqrt(self.n_embd)
            raise KilnError(self.config_path, f"logit_scale '{scale}' is not recognized "
                            "(a number or 'inv_sqrt_d_model')")
        if isinstance(scale, bool) or not isinstance(scale, (int, float)):
            raise KilnError(self.config_path, f"logit_scale {scale!r} is not a number")
        return float(scale)

    def context_length(self) -> int:
        return int(self.cfg("max_seq_len"))

    def check_config(self) -> None:
        """Refuse every MPT variant llama.cpp's mpt graph would run differently (REFUSALS)."""
        path = self.config_path
        if self.n_embd % self.n_head:
            raise KilnError(path, f"d_model {self.n_embd} is not a multiple of n_heads "
                            f"{self.n_head}")
        if self.n_head_kv < 1 or self.n_head % self.n_head_kv:
            raise KilnError(path, f"attn_config.kv_n_heads {self.n_head_kv} does not divide "
                            f"n_heads {self.n_head}")
        self.refuse_config(REFUSALS, self._field, "; llama.cpp's mpt graph cannot run it, so "
                           "kiln does not convert it")
        if self.attn.get("qk_ln") and not QK_LN_RUNS:
            raise KilnError(path, "attn_config.qk_ln=true: the llama.cpp kiln runs (llama-cpp-"
                            "python 0.3.36) aborts on such an MPT model for any prompt longer "
                            "than one token (GGML_ASSERT ggml_is_contiguous: mpt.cpp reshapes the "
                            "q/k views of the fused qkv before its q/k LayerNorm); kiln does not "
                            "write a file that crashes")
        self.alibi  # noqa: B018  (raises when unset)
        self.logit_scale()

    def vocab(self) -> Vocab:
        vocab = super().vocab()
        if vocab.add_bos is None:
            # llm-foundry trains MPT on text without a BOS; without an explicit setting in the
            # tokenizer files llama.cpp would add one to a SentencePiece ("llama") vocabulary.
            vocab.add_bos = False
        return vocab

    def hparams(self) -> dict[str, Any]:
        self.check_config()
        k = self.key
        hp: dict[str, Any] = {
            k("context_length"): self.context_length(),
            k("embedding_length"): self.n_embd,
            k("block_count"): self.n_layer,
            k("feed_forward_length"): self.n_ff,
            k("attention.head_count"): self.n_head,
            k("attention.head_count_kv"): self.n_head_kv,
            k("attention.layer_norm_epsilon"): self.norm_eps(),
            k("attention.max_alibi_bias"): (float(self.attn.get("alibi_bias_max", 8))
                                            if self.alibi else 0.0),
            k("vocab_size"): self.n_vocab(),
        }
        clip = self.attn.get("clip_qkv")
        if clip:   # llm-foundry clamps only when truthy
            hp[k("attention.clamp_kqv")] = float(clip)
        return hp

    # -- tensors -------------------------------------------------------------------------
    def tensors(self, ckpt: Checkpoint) -> list[OutTensor]:
        self.check_config()
        d, v, ff = self.n_embd, self.n_vocab(), self.n_ff
        n_qkv = d + 2 * self.n_head_kv * self.head_dim
        no_bias = self.config.get("no_bias")          # None: use the biases that are stored
        out: list[OutTensor] = []
        used: set[str] = set()

        def add(gguf_name: str, hf_name: str, shape: tuple[int, ...], **kw) -> None:
            out.append(OutTensor(gguf_name, shape, self.stored(ckpt, hf_name, shape, **kw),
                                 keep_f32=len(shape) == 1))
            used.add(hf_name)

        def add_bias(gguf_name: str, hf_name: str, shape: tuple[int, ...], linear: bool) -> None:
            if no_bias is True:
                return                                # a stored one is refused as a leftover
            if hf_name in ckpt.tensors or (linear and no_bias is False):
                add(gguf_name, hf_name, shape)

        def norm(gguf: str, hf: str, size: int) -> None:
            add(gguf + ".weight", hf + ".weight", (size,))
            add_bias(gguf + ".bias", hf + ".bias", (size,), linear=False)

        def linear(gguf: str, hf: str, shape: tuple[int, int]) -> None:
            add(gguf + ".weight", hf + ".weight", shape)
            add_bias(gguf + ".bias", hf + ".bias", (shape[0],), linear=True)

        add("token_embd.weight", "transformer.wte.weight", (v, d))
        if "transformer.wpe.weight" in ckpt.tensors:
            if not self.cfg("learned_pos_emb", default=True):
                raise KilnError(self.config_path, "learned_pos_emb=false, but the checkpoint "
                                "stores transformer.wpe.weight")
            add("position_embd.weight", "transformer.wpe.weight", (self.context_length(), d))
        elif not self.alibi and self.cfg("learned_pos_emb", default=True):
            raise KilnError(self.model_dir, "tensor 'transformer.wpe.weight' is missing (no "
                            "ALiBi and learned_pos_emb=true)")
        for i in range(self.n_layer):
            hf, blk = f"transformer.blocks.{i}.", f"blk.{i}."
            norm(blk + "attn_norm", hf + "norm_1", d)
            linear(blk + "attn_qkv", hf + "attn.Wqkv", (n_qkv, d))
            if self.attn.get("qk_ln"):
                norm(blk + "attn_q_norm", hf + "attn.q_ln", d)
                norm(blk + "attn_k_norm", hf + "attn.k_ln", self.n_head_kv * self.head_dim)
            linear(blk + "attn_output", hf + "attn.out_proj", (d, d))
            norm(blk + "ffn_norm", hf + "norm_2", d)
            linear(blk + "ffn_up", hf + "ffn.up_proj", (ff, d))
            linear(blk + "ffn_down", hf + "ffn.down_proj", (d, ff))
        norm("output_norm", "transformer.norm_f", d)

        scale = self.logit_scale()
        if "lm_head.weight" in ckpt.tensors:
            add("output.weight", "lm_head.weight", (v, d), scale=scale)
        elif self.cfg("tie_word_embeddings", default=True) is False:
            raise KilnError(self.model_dir, "tensor 'lm_head.weight' is missing and config.json "
                            "does not tie it to the embeddings")
        elif scale is not None:
            # llama.cpp ignores logit_scale: bake it into an explicit output projection.
            out.append(OutTensor("output.weight", (v, d), self.stored(
                ckpt, "transformer.wte.weight", (v, d), scale=scale)))
        self.refuse_leftovers(ckpt, used)
        return out
