"""Which type each tensor gets: llama.cpp's quantization mixture (`llama_tensor_get_type`).

The rules follow src/llama-quant.cpp of the llama.cpp that llama-cpp-python 0.3.36 vendors;
tests/test_kquant.py checks every tensor's type against `llama_model_quantize` itself.  Order of
decisions for one tensor: not quantizable -> keeps its type; else the ftype's rules by tensor
category and layer; then the block-size fallback on the row length.  Counters run over the
tensors in llama.cpp's processing order (layer number first, then the name).

Not reproduced: `--tensor-type` overrides, `--pure`, `--output-tensor-type`, and the rules of
architectures kiln does not write (GLM5-next, the MXFP4 MoE ftype, TQ/Q1_0/Q2_0 types).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

from .quants import Quant

QT = GGMLQuantizationType

# substrings that keep a tensor out of quantization (tensor_allows_quantization)
_NEVER = ("_norm.weight", "ffn_gate_inp.weight", "ffn_gate_tid2eid.weight", "altup", "laurel",
          "per_layer_model_proj", "ssm_conv1d", "shortconv.conv.weight", "indexer.k_proj.weight",
          "indexer.q_proj.weight", "time_mix_first.weight", "time_mix_w0.weight",
          "time_mix_w1.weight", "time_mix_w2.weight", "time_mix_v0.weight", "time_mix_v1.weight",
          "time_mix_v2.weight", "time_mix_a0.weight", "time_mix_a1.weight", "time_mix_a2.weight",
          "time_mix_g1.weight", "time_mix_g2.weight", "time_mix_decay_w1.weight",
          "time_mix_decay_w2.weight", "time_mix_lerp_fused.weight", "attn_rel_b.weight",
          ".position_embd", "sam.pos_embd", "sam.neck.", "sam.net_", ".rel_pos", ".patch_embd",
          ".patch_merger", "a.rvq.codebook", "mm.a.code_embd")

# (substring, category) in llama.cpp's order; output / token_embd are matched exactly first
_CATEGORIES = (("attn_qkv.weight", "attn_qkv"), ("attn_kv_b.weight", "attn_kv_b"),
               ("attn_v.weight", "attn_v"), ("attn_k.weight", "attn_k"),
               ("attn_q.weight", "attn_q"), ("attn_output.weight", "attn_output"),
               ("ffn_up", "ffn_up"), ("ffn_gate", "ffn_gate"), ("ffn_down", "ffn_down"))
_ATTN_V = ("attn_v", "attn_qkv", "attn_kv_b")

# block-size fallbacks (tensor_type_fallback)
_FALLBACK = {QT.IQ1_S: QT.IQ4_NL, QT.IQ1_M: QT.IQ4_NL, QT.IQ2_XXS: QT.IQ4_NL, QT.IQ2_XS: QT.IQ4_NL,
             QT.IQ2_S: QT.IQ4_NL, QT.IQ3_XXS: QT.IQ4_NL, QT.IQ3_S: QT.IQ4_NL, QT.IQ4_XS: QT.IQ4_NL,
             QT.Q2_K: QT.Q4_0, QT.Q3_K: QT.Q4_0, QT.TQ1_0: QT.Q4_0, QT.TQ2_0: QT.Q4_0,
             QT.Q4_K: QT.Q5_0, QT.Q5_K: QT.Q5_1, QT.Q6_K: QT.Q8_0}

_FLOAT = (QT.F32, QT.F16, QT.BF16)
_LAYER = re.compile(r"blk\.([+-]?\d+)")


@dataclass
class Model:
    """What the rules need to know about the model (from its GGUF metadata)."""

    arch: str
    n_layer: int
    n_head: int
    n_head_kv: int
    n_expert: int = 0

    @classmethod
    def from_metadata(cls, md: dict) -> "Model":
        arch = str(md.get("general.architecture", ""))

        def first(key: str, default: int) -> int:
            v = md.get(f"{arch}.{key}", default)
            if isinstance(v, (list, tuple)):
                v = v[0] if v else default
            return int(v)

        n_head = first("attention.head_count", 0)
        return cls(arch=arch, n_layer=first("block_count", 0), n_head=n_head,
                   n_head_kv=first("attention.head_count_kv", n_head),
                   n_expert=first("expert_count", 0))

    @property
    def n_gqa(self) -> int:
        return self.n_head // self.n_head_kv if self.n_head_kv else 0

    @property
    def is_70b(self) -> bool:
        # llama.cpp's LLM_TYPE_70B among the archs kiln knows: llama with 80 layers and GQA
        return (self.arch == "llama" and self.n_expert != 8 and self.n_layer == 80
                and self.n_head != self.n_head_kv)


def ggml_n_dims(shape: tuple[int, ...]) -> int:
    """ggml's count of dimensions (trailing ggml dims of size 1 do not count); numpy order."""
    ne = list(reversed([int(d) for d in shape]))
    n = len(ne)
    while n > 1 and ne[n - 1] == 1:
        n -= 1
    return max(n, 1)


def allows_quantization(name: str, shape: tuple[int, ...]) -> bool:
    """llama.cpp's tensor_allows_quantization for the archs kiln writes."""
    if ggml_n_dims(shape) < 2 or not name.endswith("weight"):
        return False
    if name in ("position_embd.weight", "token_types.weight"):
        return False
    return not any(s in name for s in _NEVER)


def category(name: str) -> str:
    if name == "output.weight":
        return "output"
    if name in ("token_embd.weight", "per_layer_token_embd.weight"):
        return "token_embd"
    for sub, cat in _CATEGORIES:
        if sub in name:
            return cat
    return "other"


def processing_order(names: list[str]) -> list[int]:
    """Indexes of `names` in llama.cpp's order (weight_name_comparer: layer, then strcmp)."""
    def key(i: int):
        m = _LAYER.match(names[i])
        return (int(m.group(1)) if m else -1, names[i].encode())
    return sorted(range(len(names)), key=key)


def use_more_bits(i: int, n: int) -> bool:
    return i < n // 8 or i >= 7 * n // 8 or _cmod(i - n // 8, 3) == 2


def _cmod(a: int, b: int) -> int:
    """C's % (the sign follows the dividend)."""
    r = abs(a) % b
    return -r if a < 0 else r


def _cdiv(a: int, b: int) -> int:
    """C's integer division (truncates toward zero)."""
    q = abs(a) // abs(b)
    return q if (a >= 0) == (b > 0) else -q


class MixtureError(ValueError):
    pass


@dataclass
class Choice:
    qtype: QT
    reason: str = ""            # why it differs from the requested default type


class _State:
    def __init__(self, model: Model, names: list[str], has_imatrix: bool):
        self.model = model
        self.has_imatrix = has_imatrix
        cats = [category(n) for n in names]
        self.n_attention_wv = sum(c in _ATTN_V for c in cats)
        self.tied = "output" not in cats
        self.i_attention_wv = 0
        self.i_ffn = {"ffn_down": 0, "ffn_gate": 0, "ffn_up": 0}


def _layer(st: _State, cat: str, name: str) -> tuple[int, int]:
    n = st.model.n_layer
    if max(1, st.model.n_expert) > 1:
        m = re.match(r"blk\.([+-]?\d+)\.", name)
        if not m:
            raise MixtureError(f"{name}: cannot tell the layer of this expert tensor")
        i = int(m.group(1))
        if not 0 <= i < n:
            raise MixtureError(f"{name}: layer {i} is outside the model's {n} layers")
        return i, n
    return st.i_ffn[cat], n


def _rules(st: _State, q: Quant, name: str, shape, cat: str) -> tuple[QT, str]:
    """llama_tensor_get_type_impl for ftype q: (type, reason) before the block-size fallback."""
    ft, t = q.name, q.default
    m = st.model
    falcon = m.arch == "falcon"
    iq2ish = ft in ("IQ2_XXS", "IQ2_XS", "IQ1_S", "IQ2_S", "IQ2_M", "IQ1_M")
    ncols = int(shape[-1])

    if cat == "output" or (st.tied and cat == "token_embd"):
        what = "output projection" if cat == "output" else "tied token embedding (the output projection)"
        if falcon or ncols % GGML_QUANT_SIZES[t][0]:
            return QT.Q8_0, f"{what}: Q8_0 (rows of {ncols} do not fit {t.name} blocks)"
        if ft in ("IQ2_XXS", "IQ2_XS", "IQ3_XXS", "IQ1_S", "IQ2_S", "IQ2_M", "IQ1_M"):
            return QT.Q5_K, what
        if t != QT.Q8_0:
            return QT.Q6_K, what
        return t, ""
    if cat == "token_embd":
        if ft in ("IQ2_XXS", "IQ2_XS", "IQ1_S", "IQ1_M"):
            return QT.Q2_K, "token embedding"
        if ft in ("IQ2_S", "IQ2_M", "IQ3_XXS"):
            return QT.IQ3_S, "token embedding"
        return t, ""
    if iq2ish:
        if cat in _ATTN_V:
            st.i_attention_wv += 1
            if m.n_gqa >= 4 or m.n_expert >= 4:
                return QT.Q4_K, "attn_v with grouped-query attention / experts"
            return (QT.IQ3_S if ft in ("IQ2_S", "IQ2_M") else QT.Q2_K), "attn_v"
        if m.n_expert == 8 and cat == "attn_k":
            return QT.Q4_K, "attn_k of an 8-expert model"
        if cat == "ffn_down":
            i = st.i_ffn["ffn_down"]
            st.i_ffn["ffn_down"] += 1
            if i < m.n_layer // 8:
                return (QT.IQ3_S if ft in ("IQ2_S", "IQ2_M") else QT.Q2_K), "ffn_down of the first layers"
            return t, ""
        if cat == "attn_output":
            if m.n_expert == 8:
                return QT.Q5_K, "attn_output of an 8-expert model"
            if ft in ("IQ1_S", "IQ1_M"):
                return QT.IQ2_XXS, "attn_output"
            if ft in ("IQ2_S", "IQ2_M"):
                return QT.IQ3_S, "attn_output"
        return t, ""
    if cat in _ATTN_V:
        why = ""
        i_wv, n_wv = st.i_attention_wv, st.n_attention_wv
        if ft == "Q2_K":
            t, why = (QT.Q4_K, "attn_v with n_head/n_head_kv >= 4") if m.n_gqa >= 4 else (QT.Q3_K, "attn_v")
        elif ft == "Q2_K_S" and m.n_gqa >= 4:
            t, why = QT.Q4_K, "attn_v with n_head/n_head_kv >= 4"
        elif ft == "IQ3_XXS":
            t = QT.Q4_K if m.n_gqa >= 4 else (QT.IQ3_S if not st.has_imatrix else QT.IQ3_XXS)
            why = "attn_v"
        elif ft in ("IQ3_XS", "IQ3_S") and m.n_gqa >= 4:
            t, why = QT.Q4_K, "attn_v with n_head/n_head_kv >= 4"
        elif ft == "IQ3_M":
            t, why = QT.Q4_K, "attn_v"
        elif ft == "Q3_K_M":
            t, why = (QT.Q5_K if i_wv < 2 else QT.Q4_K), "attn_v"
        elif ft == "Q3_K_L":
            t, why = QT.Q5_K, "attn_v"
        elif ft in ("IQ4_NL", "IQ4_XS") and m.n_gqa >= 4:
            t, why = QT.Q5_K, "attn_v with n_head/n_head_kv >= 4"
        elif ft in ("Q4_K_M", "Q5_K_M") and use_more_bits(i_wv, n_wv):
            t, why = QT.Q6_K, f"attn_v of layer {i_wv} of {n_wv}: use_more_bits"
        elif ft == "Q4_K_S" and i_wv < 4:
            t, why = QT.Q5_K, "attn_v of the first 4 layers"
        if m.is_70b and t in (QT.Q3_K, QT.Q4_K):
            t, why = QT.Q5_K, "attn_v of a 70B-type model"
        if m.n_expert == 8:
            t, why = QT.Q8_0, "attn_v of an 8-expert model"
        st.i_attention_wv += 1
        return t, why
    if cat == "attn_k":
        if m.n_expert == 8:
            return QT.Q8_0, "attn_k of an 8-expert model"
        if ft == "IQ3_XS":
            return QT.IQ3_XXS, "attn_k"
        if ft == "IQ3_XXS":
            return QT.IQ2_S, "attn_k"
        return t, ""
    if cat == "attn_q":
        if ft == "IQ3_XS":
            return QT.IQ3_XXS, "attn_q"
        if ft == "IQ3_XXS":
            return QT.IQ2_S, "attn_q"
        return t, ""
    if cat == "ffn_down":
        i, n = _layer(st, cat, name)
        st.i_ffn["ffn_down"] += 1
        first8, first16 = i < _cdiv(n, 8), i < _cdiv(n, 16)
        more = use_more_bits(i, n)
        where = f"ffn_down of layer {i} of {n}"
        if ft == "Q2_K":
            return QT.Q3_K, "ffn_down"
        if ft == "Q2_K_S":
            return (QT.Q4_K, where) if first8 else (t, "")
        if ft == "IQ3_XXS" and not st.has_imatrix:
            return (QT.Q4_K if first8 else QT.Q3_K), f"{where}, no imatrix"
        if ft == "Q3_K_M":
            if first16:
                return QT.Q5_K, f"{where}: first n/16 layers"
            return (QT.Q4_K if not falcon or more else QT.Q3_K), where
        if ft == "IQ3_M" and (first8 or (m.n_expert == 8 and more)):
            return QT.Q4_K, where
        if ft == "Q3_K_L":
            return (QT.Q4_K if falcon else QT.Q5_K), "ffn_down"
        if ft == "Q4_K_M":
            if falcon:
                return (QT.Q6_K if first16 else QT.Q5_K if more else QT.Q4_K), where
            return (QT.Q6_K, f"{where}: use_more_bits") if more else (t, "")
        if first8 and ft in ("IQ4_NL", "IQ4_XS") and not st.has_imatrix:
            return QT.Q5_K, f"{where}: first n/8 layers, no imatrix"
        if ft == "Q5_K_M" and more:
            return QT.Q6_K, f"{where}: use_more_bits"
        if ft == "Q4_K_S" and not falcon and first8:
            return QT.Q5_K, f"{where}: first n/8 layers"
        if ft in ("Q4_0", "Q5_0") and st.has_imatrix and first8:
            return (QT.Q4_1 if ft == "Q4_0" else QT.Q5_1), f"{where}: first n/8 layers, with an imatrix"
        return t, ""
    if cat == "attn_output":
        if not falcon:
            if m.n_expert == 8:
                if ft in ("Q2_K", "IQ3_XS", "IQ3_XXS", "Q3_K_S", "Q3_K_M", "IQ4_NL", "Q4_K_S",
                          "Q4_K_M", "IQ3_S", "IQ3_M", "IQ4_XS"):
                    return QT.Q5_K, "attn_output of an 8-expert model"
            else:
                up = {"Q2_K": QT.Q3_K, "IQ3_XXS": QT.IQ3_S, "Q3_K_M": QT.Q4_K, "Q3_K_L": QT.Q5_K,
                      "IQ3_M": QT.Q4_K}.get(ft)
                if up is not None:
                    return up, "attn_output"
        elif ft == "Q3_K_L":
            return QT.Q4_K, "attn_output"
        return t, ""
    if cat in ("ffn_gate", "ffn_up"):
        i, n = _layer(st, cat, name)
        st.i_ffn[cat] += 1
        if ft == "IQ3_XS" and _cdiv(n, 8) <= i < _cdiv(7 * n, 8):
            return QT.IQ3_XXS, cat
        return t, ""
    return t, ""


def _fallback(t: QT, ncols: int) -> tuple[QT, str]:
    bs = GGML_QUANT_SIZES[t][0]
    if ncols % bs == 0:
        return t, ""
    if t in _FALLBACK:
        to = _FALLBACK[t]
    elif bs <= 32:
        to = t
    else:
        raise MixtureError(f"no fallback type for {t.name}")
    why = f"rows of {ncols} are not a multiple of {bs}"
    if ncols % GGML_QUANT_SIZES[to][0]:
        if to != t:
            why = f"rows of {ncols} fit neither {t.name} nor {to.name} blocks"
        to = QT.F16
    return to, why


def assign(names: list[str], shapes: list[tuple[int, ...]], current: list[QT], quant: Quant,
           model: Model, has_imatrix: bool = False) -> list[Choice]:
    """The type `llama-quantize` gives each tensor of a model whose tensors have `current` types.

    `names`, `shapes` (numpy order) and `current` are parallel lists in any order; the result is
    parallel to them.  For a float target (F32/F16/BF16) llama.cpp applies no rules: every
    quantizable tensor takes that type.
    """
    order = processing_order(names)
    st = _State(model, names, has_imatrix)
    out: list[Choice | None] = [None] * len(names)
    for i in order:
        name, shape = names[i], tuple(shapes[i])
        if not allows_quantization(name, shape):
            out[i] = Choice(current[i])
            continue
        if quant.is_float:
            out[i] = Choice(quant.default)
            continue
        t, why = _rules(st, quant, name, shape, category(name))
        t2, fb = _fallback(t, int(shape[-1]))
        if fb and t != quant.default and why:
            why = f"{why}; {t.name} -> {t2.name}: {fb}"
        elif fb:
            why = fb
        out[i] = Choice(t2, why if t2 != quant.default else "")
    return out  # type: ignore[return-value]


def requires_imatrix(name: str, qtype: QT, quant: Quant) -> bool:
    """llama.cpp's tensor_requires_imatrix: IQ1/IQ2/IQ3_XXS tensors, and Q2_K inside Q2_K_S."""
    if name in ("token_embd.weight", "per_layer_token_embd.weight", "output.weight"):
        return False
    if qtype in (QT.IQ3_XXS, QT.IQ2_XXS, QT.IQ2_XS, QT.IQ2_S, QT.IQ1_M, QT.IQ1_S):
        return True
    return qtype == QT.Q2_K and quant.name == "Q2_K_S"
