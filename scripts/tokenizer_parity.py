#!/usr/bin/env python3
"""Tokenizer parity table: for each family, token ids from the GGUF (as llama-cpp-python loads
it) against the Hugging Face `tokenizers` / sentencepiece reference, over the multilingual corpus
of tests/tokenizer_corpus.py.

Two columns per family:
  native  llama.cpp's own tokenizer (what llama.cpp, llama-server and Ollama do with the file)
  kiln    kiln's tokenization (runtime.prompt.make_tokenizer: native, or the embedded
          tokenizer.json where the converter marked llama.cpp's as inexact)
plus kiln's round trip (decode(encode(line)) == line, whole and streamed token by token).

  python scripts/tokenizer_parity.py --synthetic        # every family, tokenizers trained here
  python scripts/tokenizer_parity.py --synthetic --llmjp ../shared/fixtures/llm-jp-3-tokenizer
  python scripts/tokenizer_parity.py --case NAME FILE.gguf REFERENCE [--case ...]
  ... --json-out parity.json

REFERENCE is a tokenizer.json, a SentencePiece tokenizer.model, or a folder holding either (or
vocab.json + merges.txt).  Reference ids are the text tokenized as text: no BOS/EOS added and
special-token spellings not parsed (`encode_special_tokens`), as kiln tokenizes user content.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import shutil
import os
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
for _p in (ROOT, ROOT / "tests"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

import tokenizer_json as tj  # noqa: E402
from tokenizer_corpus import CORPUS, TRAIN  # noqa: E402

SPACE, BYTES = tj.SPACE, tj.BYTES
SHARED = Path(os.environ.get("KILN_SHARED") or ROOT.parent / "shared")   # KILN_SHARED overrides
LLMJP_FIXTURE = SHARED / "fixtures" / "llm-jp-3-tokenizer"


# ============================================================================== references

@dataclass
class Reference:
    """The tokenizer a GGUF must agree with: ids of a text tokenized as text, and decoding."""
    kind: str
    encode: Callable[[str], list[int]]
    decode: Callable[[list[int]], str]


def hf_reference(tok) -> Reference:
    """A `tokenizers.Tokenizer` (or a path to tokenizer.json)."""
    from tokenizers import Tokenizer

    if not isinstance(tok, Tokenizer):
        tok = Tokenizer.from_file(str(tok))
    tok.encode_special_tokens = True

    def enc(text: str) -> list[int]:
        return tok.encode(text, add_special_tokens=False).ids if text else []

    return Reference("tokenizers", enc, lambda ids: tok.decode(ids, skip_special_tokens=False))


def sp_reference(path: Path) -> Reference:
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(path))
    return Reference("sentencepiece", lambda t: sp.encode(t) if t else [], sp.decode)


def reference_from(path: Path) -> Reference:
    path = Path(path)
    if path.is_dir():
        for name in ("tokenizer.json", "tokenizer.model"):
            if (path / name).is_file():
                return reference_from(path / name)
        if (path / "vocab.json").is_file() and (path / "merges.txt").is_file():
            return hf_reference(bytelevel_from_files(path))
        raise SystemExit(f"{path}: no tokenizer.json, tokenizer.model or vocab.json + merges.txt")
    if path.suffix == ".json":
        return hf_reference(path)
    return sp_reference(path)


def bytelevel_from_files(d: Path):
    """GPT-2 slow-tokenizer files as transformers' GPT2TokenizerFast builds them."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    tok = Tokenizer(models.BPE.from_file(str(d / "vocab.json"), str(d / "merges.txt")))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    cfg = d / "special_tokens_map.json"
    if cfg.is_file():
        for v in json.loads(cfg.read_text("utf-8")).values():
            v = v.get("content") if isinstance(v, dict) else v
            if isinstance(v, str) and tok.token_to_id(v) is not None:
                tok.add_special_tokens([v])
    return tok


# ============================================================================== building

def _write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, ensure_ascii=False, indent=1), "utf-8")


def _spm_train(d: Path, *, vocab_size: int, normalization: str = "identity",
               remove_extra_whitespaces: bool = False, pad_id: int = -1,
               model_type: str = "bpe") -> Path:
    """A SentencePiece model with byte fallback, by default configured like Llama / Mistral
    (identity normalization, whitespace kept, digits split, whitespace-only pieces)."""
    import sentencepiece as spm

    d.mkdir(parents=True, exist_ok=True)
    corpus = d / "train.txt"
    corpus.write_text("\n".join(t.replace("\n", " ") for t in TRAIN), "utf-8")
    spm.SentencePieceTrainer.train(
        input=str(corpus), model_prefix=str(d / "tokenizer"), vocab_size=vocab_size,
        model_type=model_type, byte_fallback=True, character_coverage=1.0,
        normalization_rule_name=normalization, remove_extra_whitespaces=remove_extra_whitespaces,
        add_dummy_prefix=True, split_digits=True, allow_whitespace_only_pieces=True,
        unk_id=0, bos_id=1, eos_id=2, pad_id=pad_id, hard_vocab_limit=False, num_threads=1,
        minloglevel=2)
    corpus.unlink()
    (d / "tokenizer.vocab").unlink()
    return d / "tokenizer.model"


def spm_to_tokenizer_json(model: Path) -> dict:
    """tokenizer.json for a SentencePiece BPE model, as transformers' LlamaConverter wrote it for
    Llama / Mistral / RakutenAI (legacy: Prepend + Replace normalizer, merges ordered by the
    merged piece's score, bytes through ByteFallback)."""
    from convert.vocab import parse_sentencepiece_model

    sp = parse_sentencepiece_model(model.read_bytes())
    vocab = {p: i for i, (p, _, _) in enumerate(sp.pieces)}
    scores = {p: s for p, s, _ in sp.pieces}
    merges = []
    for piece, score in scores.items():          # transformers' generate_merges
        local = [(piece[:k], piece[k:], score) for k in range(1, len(piece))
                 if piece[:k] in vocab and piece[k:] in vocab]
        merges += sorted(local, key=lambda x: (vocab[x[0]], vocab[x[1]]))
    merges.sort(key=lambda m: (m[2], len(m[0]), len(m[1])), reverse=True)
    added = [tj.added_token(i, p) for i, (p, _, ty) in enumerate(sp.pieces) if ty in (2, 3)]
    return {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": added,
        "normalizer": {"type": "Sequence", "normalizers": [
            {"type": "Prepend", "prepend": SPACE},
            {"type": "Replace", "pattern": {"String": " "}, "content": SPACE}]},
        "pre_tokenizer": None,
        "post_processor": tj.bos_post_processor(),
        "decoder": {"type": "Sequence", "decoders": [
            {"type": "Replace", "pattern": {"String": SPACE}, "content": " "},
            {"type": "ByteFallback"}, {"type": "Fuse"},
            {"type": "Strip", "content": " ", "start": 1, "stop": 0}]},
        "model": {"type": "BPE", "dropout": None, "unk_token": "<unk>",
                  "continuing_subword_prefix": None, "end_of_word_suffix": None,
                  "fuse_unk": True, "byte_fallback": True, "ignore_merges": False,
                  "vocab": vocab, "merges": [[a, b] for a, b, _ in merges]},
    }


def _llama_config(arch: str, name: str, n_vocab: int, **extra) -> dict:
    return {"architectures": [arch], "_name_or_path": name, "hidden_size": 64,
            "intermediate_size": 128, "num_attention_heads": 4, "num_key_value_heads": 4,
            "num_hidden_layers": 1, "max_position_embeddings": 4096, "rms_norm_eps": 1e-5,
            "vocab_size": n_vocab, "bos_token_id": 1, "eos_token_id": 2, **extra}


def build_llmjp_real(d: Path, fixture: Path = LLMJP_FIXTURE) -> Reference:
    d.mkdir(parents=True, exist_ok=True)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(fixture / name, d / name)
    _write_json(d / "config.json", _llama_config(
        "LlamaForCausalLM", "llm-jp/llm-jp-3-1.8b-instruct", 99584, pad_token_id=4))
    return hf_reference(d / "tokenizer.json")


def build_llmjp_synthetic(d: Path) -> Reference:
    """llm-jp-3's tokenizer kind: Unigram + byte fallback, its normalizer and decoder."""
    from tokenizers import Regex, Tokenizer, models, normalizers, trainers

    specials = ["<unk>", "<s>", "</s>", "<MASK|LLM-jp>", "<PAD|LLM-jp>", "<CLS|LLM-jp>",
                "<SEP|LLM-jp>", "<EOD|LLM-jp>"]
    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.Sequence([normalizers.Replace(Regex("(?<!\n)^"), SPACE),
                                           normalizers.Replace(Regex(" "), SPACE)])
    tok.train_from_iterator(TRAIN, trainers.UnigramTrainer(
        vocab_size=2500, special_tokens=specials, unk_token="<unk>", show_progress=False,
        max_piece_length=12))
    j = json.loads(tok.to_str())
    vocab = j["model"]["vocab"]
    low = -127.5          # llm-jp-3's tokenizer.json gives specials and bytes this: below all
    vocab[len(specials):len(specials)] = [[b, low] for b in BYTES]
    for entry in vocab[:len(specials)]:
        entry[1] = low
    j["model"].update(byte_fallback=True, unk_id=0)
    j["added_tokens"] = [tj.added_token(i, s) for i, s in enumerate(specials)]
    j["post_processor"] = tj.bos_post_processor()
    j["decoder"] = {"type": "Sequence", "decoders": [
        {"type": "ByteFallback"},
        {"type": "Replace", "pattern": {"Regex": SPACE}, "content": " "},
        {"type": "Fuse"},
        {"type": "Replace", "pattern": {"Regex": "(?<!\\n)^ "}, "content": ""}]}
    d.mkdir(parents=True, exist_ok=True)
    _write_json(d / "tokenizer.json", j)
    _write_json(d / "tokenizer_config.json", {
        "add_bos_token": True, "add_eos_token": False, "unk_token": "<unk>", "bos_token": "<s>",
        "eos_token": "</s>", "pad_token": "<PAD|LLM-jp>", "cls_token": "<CLS|LLM-jp>",
        "sep_token": "<SEP|LLM-jp>", "mask_token": "<MASK|LLM-jp>",
        "tokenizer_class": "PreTrainedTokenizerFast"})
    _write_json(d / "config.json", _llama_config(
        "LlamaForCausalLM", "llm-jp/llm-jp-3-tiny-instruct", len(vocab), pad_token_id=4))
    return hf_reference(Tokenizer.from_file(str(d / "tokenizer.json")))


XVERSE_TOKENIZER_CONFIG = {
    "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<|startoftext|>",
    "eos_token": "<|endoftext|>", "pad_token": "<pad>", "unk_token": "<unk>"}
XVERSE_SPECIALS = ["<unk>", "<pad>", "<|startoftext|>", "<|endoftext|>"]


def _xverse_checkpoint(d: Path, tok) -> Reference:
    """tok as an XVERSE checkpoint's tokenizer (config.json without num_key_value_heads)."""
    tj.save(d, tok, XVERSE_TOKENIZER_CONFIG)
    cfg = _llama_config("XverseForCausalLM", "xverse/XVERSE-tiny-Chat", tok.get_vocab_size(),
                        pad_token_id=1, bos_token_id=2, eos_token_id=3)
    cfg.pop("num_key_value_heads")
    _write_json(d / "config.json", cfg)
    return hf_reference(tok)


def build_xverse(d: Path) -> Reference:
    """XVERSE's kind: tokenizer.json only, Metaspace + isolated punctuation + single digits
    before a BPE with byte fallback, specials <unk> <pad> <|startoftext|> <|endoftext|>, the
    256 byte pieces and a "\\x00" piece (as tests/test_xverse.py builds it)."""
    return _xverse_checkpoint(d, tj.byte_fallback_bpe(
        TRAIN, 3000, XVERSE_SPECIALS, tj.xverse_pre_tokenizer(), pieces=BYTES + ["\x00"]))


def build_metaspace(d: Path, split: bool) -> Reference:
    """A BPE with byte fallback behind a plain Metaspace pre-tokenizer (prepend_scheme "first",
    `split` as given): the shape XVERSE-style tokenizer.json files take. With split=true
    llama.cpp's SPM tokenizer differs on runs of spaces (issue 11); kiln must not care."""
    from tokenizers import pre_tokenizers

    pre = pre_tokenizers.Metaspace(replacement=SPACE, prepend_scheme="first", split=split)
    return _xverse_checkpoint(d, tj.byte_fallback_bpe(TRAIN, 3000, XVERSE_SPECIALS, pre,
                                                      max_token_length=16))


def build_jais(d: Path) -> Reference:
    """Jais' kind: GPT-2 byte-level BPE shipped as vocab.json + merges.txt, <|endoftext|> = 0."""
    tok = tj.bytelevel_bpe(TRAIN, 3000, ["<|endoftext|>"])
    d.mkdir(parents=True, exist_ok=True)
    tok.model.save(str(d))                      # vocab.json + merges.txt
    special = "<|endoftext|>"
    names = {"bos_token": special, "eos_token": special, "unk_token": special, "pad_token": special}
    _write_json(d / "tokenizer_config.json", {**names, "tokenizer_class": "GPT2Tokenizer"})
    _write_json(d / "special_tokens_map.json", names)
    _write_json(d / "config.json", {
        "architectures": ["JAISLMHeadModel"], "model_type": "jais",
        "_name_or_path": "core42/jais-tiny-chat",
        "activation_function": "swiglu", "position_embedding_type": "alibi",
        "vocab_size": tok.get_vocab_size(), "n_embd": 64, "n_head": 4, "n_layer": 1,
        "n_inner": 128, "n_positions": 2048, "layer_norm_epsilon": 1e-5,
        "scale_attn_weights": True, "scale_qk_dot_by_d": True, "embeddings_scale": 1.0,
        "width_scale": 1.0, "bos_token_id": 0, "eos_token_id": 0, "pad_token_id": 0})
    return hf_reference(bytelevel_from_files(d))


def build_rakuten(d: Path) -> Reference:
    """RakutenAI's kind: SentencePiece BPE + byte fallback (Mistral's, extended), shipped as
    tokenizer.model and the tokenizer.json converted from it; HF (tokenizer.json) is the
    reference."""
    from tokenizers import Tokenizer

    model = _spm_train(d, vocab_size=3000)
    _write_json(d / "tokenizer.json", spm_to_tokenizer_json(model))
    _write_json(d / "tokenizer_config.json", {
        "add_bos_token": True, "add_eos_token": False, "bos_token": "<s>", "eos_token": "</s>",
        "unk_token": "<unk>", "legacy": True, "tokenizer_class": "LlamaTokenizer",
        "added_tokens_decoder": {str(i): {"content": c, "special": True}
                                 for i, c in enumerate(["<unk>", "<s>", "</s>"])}})
    n = Tokenizer.from_file(str(d / "tokenizer.json")).get_vocab_size()
    _write_json(d / "config.json", _llama_config(
        "MistralForCausalLM", "Rakuten/RakutenAI-7B-instruct", n, num_key_value_heads=2,
        sliding_window=4096))
    return hf_reference(d / "tokenizer.json")


def build_llama_spm(d: Path) -> Reference:
    """Plain Llama-2 style: tokenizer.model only (SentencePiece BPE, byte fallback)."""
    import sentencepiece as spm

    model = _spm_train(d, vocab_size=2500)
    _write_json(d / "tokenizer_config.json", {
        "add_bos_token": True, "add_eos_token": False, "bos_token": "<s>", "eos_token": "</s>",
        "unk_token": "<unk>", "tokenizer_class": "LlamaTokenizer"})
    n = spm.SentencePieceProcessor(model_file=str(model)).get_piece_size()
    _write_json(d / "config.json", _llama_config("LlamaForCausalLM", "meta-llama/Llama-2-tiny", n))
    return sp_reference(model)


def build_llama3(d: Path) -> Reference:
    """Llama-3 style: Split(Llama-3 regex) + ByteLevel, ignore_merges, BOS by post_processor."""
    from tokenizers import Regex, pre_tokenizers, processors

    from convert.vocab import LLAMA3_REGEX

    tok = tj.bytelevel_bpe(TRAIN, 3000, ["<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>",
                                         "<|start_header_id|>", "<|end_header_id|>"],
                           pre_tokenizer=pre_tokenizers.Sequence([
                               pre_tokenizers.Split(Regex(LLAMA3_REGEX), behavior="isolated",
                                                    invert=False),
                               pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]),
                           ignore_merges=True)
    bos = tok.token_to_id("<|begin_of_text|>")
    tok.post_processor = processors.TemplateProcessing(
        single="<|begin_of_text|> $A", pair="<|begin_of_text|> $A <|begin_of_text|> $B:1",
        special_tokens=[("<|begin_of_text|>", bos)])
    d.mkdir(parents=True, exist_ok=True)
    tok.save(str(d / "tokenizer.json"))
    _write_json(d / "tokenizer_config.json", {
        "bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>",
        "chat_template": "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}"
                         "<|end_header_id|>\n\n{{ m['content'] | trim }}<|eot_id|>{% endfor %}"
                         "<|start_header_id|>assistant<|end_header_id|>\n\n"})
    _write_json(d / "config.json", _llama_config("LlamaForCausalLM", "meta-llama/Llama-3-tiny",
                                                 tok.get_vocab_size(), bos_token_id=bos,
                                                 eos_token_id=tok.token_to_id("<|eot_id|>")))
    return hf_reference(tok)


def _mpt_config(n_vocab: int) -> dict:
    return {"_name_or_path": "DataCanvas/Alaya-7B-Chat", "architectures": ["MPTForCausalLM"],
            "model_type": "mpt", "d_model": 64, "n_heads": 4, "n_layers": 1,
            "expansion_ratio": 4, "max_seq_len": 2048, "vocab_size": -(-n_vocab // 64) * 64 + 64,
            "learned_pos_emb": True, "logit_scale": None, "no_bias": True,
            "norm_type": "low_precision_layernorm",
            "attn_config": {"attn_type": "multihead_attention", "attn_impl": "torch",
                            "qk_ln": False, "clip_qkv": None, "softmax_scale": None,
                            "prefix_lm": False, "attn_uses_sequence_id": False, "alibi": True,
                            "alibi_bias_max": 8}}


def build_alaya_spm(d: Path, *, normalization: str = "identity",
                    remove_extra_whitespaces: bool = False) -> Reference:
    """Alaya with a SentencePiece tokenizer.model (unk 0, <s> 1, </s> 2, <pad> 3)."""
    import sentencepiece as spm

    model = _spm_train(d, vocab_size=2500, pad_id=3, normalization=normalization,
                       remove_extra_whitespaces=remove_extra_whitespaces)
    _write_json(d / "tokenizer_config.json", {
        "tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>",
        "unk_token": "<unk>", "pad_token": "<pad>"})
    n = spm.SentencePieceProcessor(model_file=str(model)).get_piece_size()
    _write_json(d / "config.json", _mpt_config(n))
    return sp_reference(model)


def build_alaya_bpe(d: Path) -> Reference:
    """Alaya with a GPT-NeoX-style byte-level BPE tokenizer.json (<unk> <s> </s> <pad> at 0..3)."""
    from tokenizers import processors

    tok = tj.bytelevel_bpe(TRAIN, 3000, ["<unk>", "<s>", "</s>", "<pad>"],
                           post_processor=processors.ByteLevel(trim_offsets=True))
    tj.save(d, tok, {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>",
                     "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>"})
    _write_json(d / "config.json", _mpt_config(tok.get_vocab_size()))
    return hf_reference(tok)


def build_alaya_spm_nfkc(d: Path) -> Reference:
    """Alaya's tokenizer.model trained with SentencePiece's defaults (nmt_nfkc charsmap,
    remove_extra_whitespaces): a normalizer llama.cpp's SPM tokenizer does not apply, so kiln
    embeds an equivalent tokenizer.json built from the .model (convert/vocab/sp_tokenizer_json.py)."""
    return build_alaya_spm(d, normalization="nmt_nfkc", remove_extra_whitespaces=True)


BUILDERS: dict[str, Callable[[Path], Reference]] = {
    "llm-jp": build_llmjp_synthetic,
    "xverse": build_xverse,
    "jais": build_jais,
    "rakutenai": build_rakuten,
    "alaya-spm": build_alaya_spm,
    "alaya-spm-nfkc": build_alaya_spm_nfkc,
    "alaya-bpe": build_alaya_bpe,
    "llama-spm": build_llama_spm,
    "llama3-bpe": build_llama3,
    "metaspace-split": lambda d: build_metaspace(d, split=True),
    "metaspace-nosplit": lambda d: build_metaspace(d, split=False),
}


def convert_vocab_only(model_dir: Path, out: Path) -> Path:
    """The GGUF `kiln convert` writes for this checkpoint, without tensors: same family, same
    vocab, same tokenizer.* / kiln.* keys (convert.pipeline's metadata writer)."""
    import gguf

    from convert.families import family_for
    from convert.pipeline import _write_metadata, load_config
    from convert.quants import parse_quant

    config = load_config(model_dir)
    family = family_for(config, model_dir)
    if hasattr(family, "_max_alibi_bias"):     # Jais reads it from the weights; none here
        family._max_alibi_bias = 8.0
    vocab = family.vocab()
    writer = gguf.GGUFWriter(str(out), family.gguf_arch)
    _write_metadata(writer, family, model_dir, parse_quant("f16"), vocab)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out


# ============================================================================== measuring

def load_gguf(path: Path):
    """(llama-cpp-python vocab-only model, ModelMeta, kiln's tokenizer)."""
    from llama_cpp import Llama

    from runtime.engine import _route_llama_log
    _route_llama_log(False)                    # llama.cpp's log to the logging module, not stderr
    from runtime.meta import read_meta
    from runtime.prompt import make_tokenizer

    llm = Llama(model_path=str(path), vocab_only=True, verbose=False)
    meta = read_meta(path)
    return llm, meta, make_tokenizer(meta, llm)


def native_ids(llm, text: str) -> list[int]:
    return llm.tokenize(text.encode("utf-8"), add_bos=False, special=False) if text else []


@dataclass
class Row:
    family: str
    reference: str
    kiln_tokenizer: str
    lines: int = 0
    native_same: int = 0
    kiln_same: int = 0
    roundtrip_ok: int = 0       # decoded text == the line (or == the reference's own round trip)
    stream_ok: int = 0
    lossy: int = 0              # lines the reference tokenizer itself does not give back
    native_by_category: dict[str, list[int]] = field(default_factory=dict)   # cat -> [same, n]
    first_native: dict | None = None
    first_kiln: dict | None = None
    first_roundtrip: dict | None = None

    @staticmethod
    def pct(a: int, n: int) -> float:
        return 100.0 * a / n if n else 100.0


def stream_text(tok, ids: list[int]) -> tuple[str, list[str]]:
    stream = tok.stream()
    chunks = [stream.feed(t) for t in ids] + [stream.flush()]
    return "".join(chunks), chunks


def measure(family: str, gguf: Path, ref: Reference,
            corpus: list[tuple[str, str]] = CORPUS) -> Row:
    llm, meta, tok = load_gguf(gguf)
    try:
        row = Row(family, ref.kind, type(tok).__name__)
        for cat, line in corpus:
            want = ref.encode(line)
            nat = native_ids(llm, line)
            got = tok.encode(line, False)
            row.lines += 1
            c = row.native_by_category.setdefault(cat, [0, 0])
            c[1] += 1
            if nat == want:
                row.native_same += 1
                c[0] += 1
            elif row.first_native is None:
                row.first_native = {"category": cat, "line": line, "native": nat, "reference": want}
            if got == want:
                row.kiln_same += 1
            elif row.first_kiln is None:
                row.first_kiln = {"category": cat, "line": line, "kiln": got, "reference": want}
            text = tok.decode(got)
            streamed, chunks = stream_text(tok, got)
            target = ref.decode(want) if want else ""
            if target != line:
                row.lossy += 1          # e.g. NFKC, or Metaspace and a leading space
            else:
                target = line
            if text == target:
                row.roundtrip_ok += 1
            elif row.first_roundtrip is None:
                row.first_roundtrip = {"category": cat, "line": line, "decoded": text,
                                       "reference_decoded": target}
            if streamed == target and not any("\ufffd" in c for c in chunks):
                row.stream_ok += 1
        return row
    finally:
        llm.close()


def build_and_measure(names: list[str], work: Path, llmjp: Path | None) -> list[Row]:
    rows = []
    for name in names:
        d = work / name
        if name == "llm-jp" and llmjp is not None:
            ref = build_llmjp_real(d, llmjp)
            label = "llm-jp (real llm-jp-3)"
        else:
            ref = BUILDERS[name](d)
            label = name + ("" if name != "llm-jp" else " (synthetic)")
        gguf = convert_vocab_only(d, work / f"{name}.gguf")
        rows.append(measure(label, gguf, ref))
    return rows


# ============================================================================== output

def _short(ids: list[int], n: int = 24) -> str:
    s = ", ".join(map(str, ids[:n]))
    return f"[{s}{', ...' if len(ids) > n else ''}] ({len(ids)})"


def table(rows: list[Row]) -> str:
    out = [f"{'family':28s} {'kiln uses':10s} {'native %':>9s} {'kiln %':>7s} "
           f"{'roundtrip %':>11s} {'stream %':>8s}  lines (ref. lossy)",
           "-" * 100]
    for r in rows:
        kind = "tokenizers" if r.kiln_tokenizer == "HFTokenizer" else "llama.cpp"
        out.append(f"{r.family:28s} {kind:10s} "
                   f"{r.pct(r.native_same, r.lines):8.1f}% {r.pct(r.kiln_same, r.lines):6.1f}% "
                   f"{r.pct(r.roundtrip_ok, r.lines):10.1f}% {r.pct(r.stream_ok, r.lines):7.1f}%"
                   f"  {r.lines} ({r.lossy})")
    out.append("roundtrip / stream: kiln's decode of kiln's ids gives the line back (for the "
               "'ref. lossy' lines: what the reference's own decode gives)")
    for r in rows:
        bad = {c: f"{s}/{n}" for c, (s, n) in r.native_by_category.items() if s != n}
        if bad:
            out.append(f"\n{r.family}: native mismatches by category: "
                       + ", ".join(f"{c} {v}" for c, v in sorted(bad.items())))
        if r.first_native:
            m = r.first_native
            out.append(f"  first native mismatch [{m['category']}] {m['line']!r}\n"
                       f"    llama.cpp {_short(m['native'])}\n"
                       f"    reference {_short(m['reference'])}")
        if r.first_kiln:
            m = r.first_kiln
            out.append(f"  first KILN mismatch [{m['category']}] {m['line']!r}\n"
                       f"    kiln      {_short(m['kiln'])}\n    reference {_short(m['reference'])}")
        if r.first_roundtrip:
            m = r.first_roundtrip
            out.append(f"  first round-trip failure [{m['category']}] {m['line']!r} -> "
                       f"{m['decoded']!r} (reference decodes {m['reference_decoded']!r})")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n\n", 1)[1])
    ap.add_argument("--synthetic", action="store_true",
                    help="build every family's tokenizer here and convert it as kiln does")
    ap.add_argument("--family", action="append", choices=sorted(BUILDERS),
                    help="with --synthetic: only these families (repeatable)")
    ap.add_argument("--llmjp", type=Path, nargs="?", const=LLMJP_FIXTURE, default=None,
                    help="use the real llm-jp-3 tokenizer folder for llm-jp (default: "
                         "../shared/fixtures/llm-jp-3-tokenizer when it exists)")
    ap.add_argument("--case", nargs=3, action="append", default=[],
                    metavar=("NAME", "GGUF", "REFERENCE"), help="measure an existing GGUF")
    ap.add_argument("--json-out", type=Path, help="write the rows as JSON")
    ap.add_argument("--keep", type=Path, help="build into this folder and keep it")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)
    if not args.synthetic and not args.case:
        ap.error("give --synthetic and/or --case NAME GGUF REFERENCE")
    llmjp = args.llmjp
    if llmjp is None and (LLMJP_FIXTURE / "tokenizer.json").is_file():
        llmjp = LLMJP_FIXTURE
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="kiln-parity-") as tmp:
        work = args.keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        if args.synthetic:
            names = args.family or list(BUILDERS)
            rows += build_and_measure(names, work, llmjp)
            if llmjp is not None and "llm-jp" in names:
                rows += build_and_measure_synthetic_llmjp(work)
        for name, gguf, ref in args.case:
            rows.append(measure(name, Path(gguf), reference_from(Path(ref))))
    print(table(rows))
    if args.json_out:
        args.json_out.write_text(json.dumps([dataclasses.asdict(r) for r in rows],
                                            ensure_ascii=False, indent=1), "utf-8")
    return 0


def build_and_measure_synthetic_llmjp(work: Path) -> list[Row]:
    d = work / "llm-jp-synthetic"
    ref = build_llmjp_synthetic(d)
    gguf = convert_vocab_only(d, work / "llm-jp-synthetic.gguf")
    return [measure("llm-jp (synthetic)", gguf, ref)]


if __name__ == "__main__":
    sys.exit(main())
