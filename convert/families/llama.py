"""Llama-architecture checkpoints: Llama, Mistral and Mixtral (GGUF arch `llama`).

Covers llm-jp-3 / 3.1 (dense and 8x13b MoE) and RakutenAI-7B numerically; their tokenizer and
prompt knowledge lives in their own modules, which subclass these.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..checkpoint import Checkpoint
from ..errors import KilnError
from ..tensors import ArrayRows, OutTensor, StackedRows, rope_permutation
from .base import Family

# Stored tensors that carry no weights (old checkpoints saved RoPE buffers).
_BUFFERS = ("rotary_emb.inv_freq",)


class LlamaFamily(Family):
    name = "llama"
    architectures = ("LlamaForCausalLM", "MistralForCausalLM", "MixtralForCausalLM")
    gguf_arch = "llama"
    generic = True

    # -- shape facts -------------------------------------------------------------------
    @property
    def n_embd(self) -> int:
        return int(self.cfg("hidden_size"))

    @property
    def n_head(self) -> int:
        return int(self.cfg("num_attention_heads"))

    @property
    def n_head_kv(self) -> int:
        return int(self.cfg("num_key_value_heads", default=self.n_head))

    @property
    def head_dim(self) -> int:
        return int(self.cfg("head_dim", default=self.n_embd // self.n_head))

    @property
    def n_expert(self) -> int:
        return int(self.cfg("num_local_experts", default=0))

    def sliding_window(self) -> int | None:
        window = self.config.get("sliding_window")
        if window and self.config.get("use_sliding_window", True) is not False:
            return int(window)
        return None

    def context_length(self) -> int:
        # llama.cpp runs full attention for arch `llama`: past the sliding window the model
        # would see more than it was trained on, so advertise the window as the context.
        trained = int(self.cfg("max_position_embeddings"))
        window = self.sliding_window()
        return min(trained, window) if window else trained

    def hparams(self) -> dict[str, Any]:
        k = self.key
        hp: dict[str, Any] = {
            k("context_length"): self.context_length(),
            k("embedding_length"): self.n_embd,
            k("block_count"): int(self.cfg("num_hidden_layers")),
            k("feed_forward_length"): int(self.cfg("intermediate_size")),
            k("attention.head_count"): self.n_head,
            k("attention.head_count_kv"): self.n_head_kv,
            k("attention.layer_norm_rms_epsilon"): float(self.cfg("rms_norm_eps", default=1e-6)),
            k("rope.freq_base"): float(self._rope_theta()),
            k("rope.dimension_count"): self.head_dim,
            k("vocab_size"): self.n_vocab(),
        }
        if self.head_dim != self.n_embd // self.n_head:
            hp[k("attention.key_length")] = self.head_dim
            hp[k("attention.value_length")] = self.head_dim
        if self.n_expert:
            hp[k("expert_count")] = self.n_expert
            hp[k("expert_used_count")] = int(self.cfg("num_experts_per_tok"))
        scaling = self._rope_scaling()
        if scaling and scaling["rope_type"] == "linear":
            hp[k("rope.scaling.type")] = "linear"
            hp[k("rope.scaling.factor")] = float(scaling["factor"])
        return hp

    def kiln_metadata(self, vocab) -> dict[str, Any]:
        meta = super().kiln_metadata(vocab)
        window = self.sliding_window()
        if window:
            meta["kiln.sliding_window"] = window
            meta["kiln.trained_context_length"] = int(self.cfg("max_position_embeddings"))
        return meta

    def _rope_theta(self) -> float:
        params = self.config.get("rope_parameters") or {}
        return float(self.config.get("rope_theta") or params.get("rope_theta") or 10000.0)

    def _rope_scaling(self) -> dict | None:
        scaling = self.config.get("rope_scaling")
        if not scaling:
            params = self.config.get("rope_parameters") or {}
            scaling = params if params.get("rope_type", "default") != "default" else None
        if not scaling:
            return None
        kind = scaling.get("rope_type") or scaling.get("type")
        if kind in (None, "default"):
            return None
        if kind not in ("linear", "llama3"):
            raise KilnError(self.config_path, f"rope_scaling type '{kind}' is not supported "
                            "(supported: linear, llama3)")
        return {**scaling, "rope_type": kind}

    def _rope_freqs(self, scaling: dict) -> np.ndarray:
        """Llama 3.1 frequency factors, written as `rope_freqs.weight` for llama.cpp."""
        factor = float(scaling["factor"])
        low = float(scaling.get("low_freq_factor", 1.0))
        high = float(scaling.get("high_freq_factor", 4.0))
        old_ctx = float(scaling.get("original_max_position_embeddings", 8192))
        dim = self.head_dim
        freqs = 1.0 / (self._rope_theta() ** (np.arange(0, dim, 2, dtype=np.float64) / dim))
        wavelen = 2 * math.pi / freqs
        smooth = (old_ctx / wavelen - low) / (high - low)
        out = 1.0 / ((1 - smooth) / factor + smooth)
        out = np.where(wavelen < old_ctx / high, 1.0, out)
        out = np.where(wavelen > old_ctx / low, factor, out)
        return out.astype(np.float32)

    # -- tensors -------------------------------------------------------------------------
    def tensors(self, ckpt: Checkpoint) -> list[OutTensor]:
        d, hd, v = self.n_embd, self.head_dim, self.n_vocab()
        nq, nkv = self.n_head * hd, self.n_head_kv * hd
        ff = int(self.cfg("intermediate_size"))
        attn_bias = bool(self.cfg("attention_bias", default=False))
        mlp_bias = bool(self.cfg("mlp_bias", default=False))
        out: list[OutTensor] = []
        used: set[str] = set()

        def add(gguf_name: str, hf_name: str, shape: tuple[int, ...], **kw) -> None:
            keep_f32 = len(shape) == 1
            out.append(OutTensor(gguf_name, shape, self.stored(ckpt, hf_name, shape, **kw), keep_f32))
            used.add(hf_name)

        add("token_embd.weight", "model.embed_tokens.weight", (v, d))
        scaling = self._rope_scaling()
        if scaling and scaling["rope_type"] == "llama3":
            freqs = self._rope_freqs(scaling)
            out.append(OutTensor("rope_freqs.weight", freqs.shape, ArrayRows(freqs), keep_f32=True))
        for i in range(int(self.cfg("num_hidden_layers"))):
            hf, blk = f"model.layers.{i}.", f"blk.{i}."
            add(blk + "attn_norm.weight", hf + "input_layernorm.weight", (d,))
            q_perm = rope_permutation(nq, self.n_head)
            k_perm = rope_permutation(nkv, self.n_head_kv)
            add(blk + "attn_q.weight", hf + "self_attn.q_proj.weight", (nq, d), perm=q_perm)
            add(blk + "attn_k.weight", hf + "self_attn.k_proj.weight", (nkv, d), perm=k_perm)
            add(blk + "attn_v.weight", hf + "self_attn.v_proj.weight", (nkv, d))
            add(blk + "attn_output.weight", hf + "self_attn.o_proj.weight", (d, nq))
            if attn_bias:
                add(blk + "attn_q.bias", hf + "self_attn.q_proj.bias", (nq,), perm=q_perm)
                add(blk + "attn_k.bias", hf + "self_attn.k_proj.bias", (nkv,), perm=k_perm)
                add(blk + "attn_v.bias", hf + "self_attn.v_proj.bias", (nkv,))
                if hf + "self_attn.o_proj.bias" in ckpt.tensors:
                    add(blk + "attn_output.bias", hf + "self_attn.o_proj.bias", (d,))
            add(blk + "ffn_norm.weight", hf + "post_attention_layernorm.weight", (d,))
            if self.n_expert:
                out.extend(self._experts(ckpt, hf, blk, used))
            else:
                add(blk + "ffn_gate.weight", hf + "mlp.gate_proj.weight", (ff, d))
                add(blk + "ffn_up.weight", hf + "mlp.up_proj.weight", (ff, d))
                add(blk + "ffn_down.weight", hf + "mlp.down_proj.weight", (d, ff))
                if mlp_bias:
                    add(blk + "ffn_gate.bias", hf + "mlp.gate_proj.bias", (ff,))
                    add(blk + "ffn_up.bias", hf + "mlp.up_proj.bias", (ff,))
                    add(blk + "ffn_down.bias", hf + "mlp.down_proj.bias", (d,))
        add("output_norm.weight", "model.norm.weight", (d,))
        if "lm_head.weight" in ckpt.tensors:
            add("output.weight", "lm_head.weight", (v, d))
        elif not self.cfg("tie_word_embeddings", default=False):
            raise KilnError(self.model_dir, "tensor 'lm_head.weight' is missing and config.json "
                            "does not tie it to the embeddings")
        self.refuse_leftovers(ckpt, used, _BUFFERS)
        return out

    def _experts(self, ckpt: Checkpoint, hf: str, blk: str, used: set[str]) -> list[OutTensor]:
        d, ff, n = self.n_embd, int(self.cfg("intermediate_size")), self.n_expert
        moe = hf + "block_sparse_moe."
        router = self.stored(ckpt, moe + "gate.weight", (n, d))
        used.add(moe + "gate.weight")
        tensors = [OutTensor(blk + "ffn_gate_inp.weight", (n, d), router, keep_f32=True)]
        for hf_part, gguf_part, shape in (("w1", "ffn_gate_exps", (ff, d)),
                                          ("w2", "ffn_down_exps", (d, ff)),
                                          ("w3", "ffn_up_exps", (ff, d))):
            names = [f"{moe}experts.{e}.{hf_part}.weight" for e in range(n)]
            parts = [self.stored(ckpt, name, shape) for name in names]
            used.update(names)
            tensors.append(OutTensor(f"{blk}{gguf_part}.weight", (n, *shape), StackedRows(parts)))
        return tensors
