"""A Llama checkpoint whose next token depends only on the current one: a scripted model.

Attention and MLP outputs are zero, so the last hidden state is the current token's embedding.
Embeddings are 0.5·u_t + 0.866·c (u orthonormal for scripted tokens, c shared), and lm_head
rows are chosen so that greedy decoding follows a given chain of token ids and then emits eos.
This lets runtime tests check stops, streaming, bans and cancellation on real llama.cpp runs.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from hf_models import make_spm_tokenizer

D = 64


def byte_id(sp, b: int) -> int:
    return sp.piece_to_id(f"<0x{b:02X}>")


def text_chain(sp, text: str) -> list[int]:
    """Byte-fallback token ids spelling `text` (each byte must occur once)."""
    ids = [byte_id(sp, b) for b in text.encode("utf-8")]
    assert len(set(ids)) == len(ids), f"repeated byte in {text!r}"
    return ids


def build(out: Path, chains: list[list[int]], cycle: list[int] | None = None,
          n_ctx: int = 256, corpus: tuple[str, ...] = (), vocab_size: int = 400) -> Path:
    """Each chain is [start, t1, t2, ...]: after `start` the model says t1, t2, ... then eos.
    `n_ctx` is the trained context length (a long one lets a cycle run for many seconds);
    `corpus`, `vocab_size`: extra tokenizer training text and a larger vocabulary, so answers in
    other scripts can be spelled (see make_spm_tokenizer, spell)."""
    import sentencepiece as spm

    n_vocab = make_spm_tokenizer(out, vocab_size, extra=corpus)
    sp = spm.SentencePieceProcessor(model_file=str(out / "tokenizer.model"))
    eos = sp.eos_id()
    rng = np.random.default_rng(0)
    scripted = sorted({t for ch in chains + ([cycle] if cycle else []) for t in ch})
    assert len(scripted) < D - 1
    basis, _ = np.linalg.qr(rng.standard_normal((D, D)))
    common = basis[:, 0]
    u = rng.standard_normal((n_vocab, D))
    u -= np.outer(u @ common, common)
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    for k, t in enumerate(scripted):
        u[t] = basis[:, k + 1]
    emb = 0.5 * u + 0.866 * common
    head = np.zeros((n_vocab, D))
    head[eos] = 10.1 * common  # every token's fallback: eos (logit ~70)
    succ = {}
    for ch in chains:
        succ.update(zip(ch[:-1], ch[1:]))
    if cycle:
        succ.update(zip(cycle, cycle[1:] + cycle[:1]))
    for cur, nxt in succ.items():
        assert nxt != eos
        head[nxt] = 10.0 * emb[cur]  # logit ~80 after the current token, ~60 otherwise
    ff, layers = 128, 1
    t = {"model.embed_tokens.weight": emb, "model.norm.weight": np.ones(D), "lm_head.weight": head}
    for i in range(layers):
        p = f"model.layers.{i}."
        t.update({p + "input_layernorm.weight": np.ones(D),
                  p + "post_attention_layernorm.weight": np.ones(D),
                  p + "self_attn.q_proj.weight": rng.standard_normal((D, D)),
                  p + "self_attn.k_proj.weight": rng.standard_normal((D, D)),
                  p + "self_attn.v_proj.weight": rng.standard_normal((D, D)),
                  p + "self_attn.o_proj.weight": np.zeros((D, D)),
                  p + "mlp.gate_proj.weight": rng.standard_normal((ff, D)),
                  p + "mlp.up_proj.weight": rng.standard_normal((ff, D)),
                  p + "mlp.down_proj.weight": np.zeros((D, ff))})
    from safetensors.numpy import save_file

    save_file({k: np.ascontiguousarray(v, dtype=np.float32) for k, v in t.items()},
              str(out / "model.safetensors"), metadata={"format": "pt"})
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": D,
              "intermediate_size": ff, "num_hidden_layers": layers, "num_attention_heads": 4,
              "num_key_value_heads": 4, "max_position_embeddings": n_ctx, "rms_norm_eps": 1e-5,
              "vocab_size": n_vocab, "bos_token_id": 1, "eos_token_id": eos,
              "tie_word_embeddings": False}
    (out / "config.json").write_text(json.dumps(config))
    return out


def spell(sp, text: str) -> list[int]:
    """Distinct token ids (vocabulary pieces or byte-fallback tokens) that spell `text`; the
    search lets a scripted answer repeat a character by using a different token for it."""
    pieces: dict[str, list[int]] = {}
    for i in range(sp.get_piece_size()):
        if not (sp.is_control(i) or sp.is_unknown(i) or sp.is_byte(i)):
            pieces.setdefault(sp.id_to_piece(i).replace("\u2581", " "), []).append(i)
    data = text.encode("utf-8")
    used: set[int] = set()

    def options(pos: int):
        for piece, ids in sorted(pieces.items(), key=lambda kv: -len(kv[0])):
            b = piece.encode("utf-8")
            if piece and data.startswith(b, pos) and not (pos == 0 and piece[0] == " "):
                yield from ((i, len(b)) for i in ids)
        yield byte_id(sp, data[pos]), 1

    def search(pos: int) -> list[int] | None:
        if pos == len(data):
            return []
        for tok, n in options(pos):
            if tok in used:
                continue
            used.add(tok)
            rest = search(pos + n)
            if rest is not None:
                return [tok] + rest
            used.discard(tok)
        return None

    ids = search(0)
    if ids is None:
        raise ValueError(f"{text!r} cannot be spelled with distinct tokens")
    return ids
