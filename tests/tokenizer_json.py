"""tokenizer.json skeletons the tests (and scripts/tokenizer_parity.py) train on the spot with
Hugging Face `tokenizers`, in the shapes the families' real files take, and the smallest GGUF
that holds a vocabulary (for llama.cpp's vocab_only loads).

  bytelevel_bpe      GPT-2 / GPT-NeoX / Llama-3 style byte-level BPE
  byte_fallback_bpe  SentencePiece-style BPE in tokenizer.json: Metaspace (+ ...) and byte
                     fallback, specials first, then the 256 <0xXX> pieces (XVERSE, Mistral)
  save               tokenizer.json + tokenizer_config.json into a folder
  vocab_gguf         a GGUF with minimal llama hparams and the vocabulary written by kiln
"""
from __future__ import annotations

import json
from pathlib import Path

SPACE = "\u2581"
BYTES = [f"<0x{i:02X}>" for i in range(256)]


def added_token(i: int, content: str) -> dict:
    """An "added_tokens" entry of tokenizer.json for a special token."""
    return {"id": i, "content": content, "single_word": False, "lstrip": False,
            "rstrip": False, "normalized": False, "special": True}


def bos_post_processor(bos: str = "<s>", bos_id: int = 1) -> dict:
    """The "post_processor" of Llama-style tokenizer.json files: BOS before each sequence."""
    return {
        "type": "TemplateProcessing",
        "single": [{"SpecialToken": {"id": bos, "type_id": 0}},
                   {"Sequence": {"id": "A", "type_id": 0}}],
        "pair": [{"SpecialToken": {"id": bos, "type_id": 0}},
                 {"Sequence": {"id": "A", "type_id": 0}},
                 {"SpecialToken": {"id": bos, "type_id": 1}},
                 {"Sequence": {"id": "B", "type_id": 1}}],
        "special_tokens": {bos: {"id": bos, "ids": [bos_id], "tokens": [bos]}}}


def metaspace_decoder():
    """SentencePiece's decoding as tokenizer.json spells it: ▁ -> space, bytes fused, one
    leading space stripped."""
    from tokenizers import decoders

    return decoders.Sequence([decoders.Replace(SPACE, " "), decoders.ByteFallback(),
                              decoders.Fuse(), decoders.Strip(" ", 1, 0)])


def bytelevel_bpe(corpus, vocab_size: int, specials: list[str], *, pre_tokenizer=None,
                  post_processor=None, ignore_merges: bool = False):
    """A byte-level BPE trained on corpus (specials first, the 256 byte symbols in its
    alphabet); pre_tokenizer defaults to ByteLevel(add_prefix_space=False)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(ignore_merges=ignore_merges))
    tok.pre_tokenizer = pre_tokenizer or pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    if post_processor is not None:
        tok.post_processor = post_processor
    tok.train_from_iterator(corpus, trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return tok


def byte_fallback_bpe(corpus, vocab_size: int, specials: list[str], pre_tokenizer,
                      pieces: list[str] = BYTES, **trainer_kw):
    """A BPE with byte fallback (unk = specials[0]) behind pre_tokenizer, trained on corpus;
    its ids laid out as SentencePiece models have them: the specials, then `pieces` (the 256
    <0xXX> byte pieces, and any extra), then the learned pieces. Metaspace decoder."""
    from tokenizers import Tokenizer, models, trainers

    tok = Tokenizer(models.BPE(unk_token=specials[0], byte_fallback=True))
    tok.pre_tokenizer = pre_tokenizer
    tok.train_from_iterator(corpus, trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials, show_progress=False, **trainer_kw))
    d = json.loads(tok.to_str())
    old = sorted(d["model"]["vocab"].items(), key=lambda kv: kv[1])
    items = [k for k, _ in old[:len(specials)]] + list(pieces)
    items += [k for k, _ in old[len(specials):] if k not in items]
    d["model"]["vocab"] = {k: i for i, k in enumerate(items)}
    tok = Tokenizer.from_str(json.dumps(d))
    tok.decoder = metaspace_decoder()
    return tok


def xverse_pre_tokenizer():
    """As described for XVERSE's tokenizer.json (hac541309/multilingual_tokenizers): Metaspace
    with a prefix, punctuation split off and isolated, digits one by one."""
    from tokenizers import pre_tokenizers

    return pre_tokenizers.Sequence([
        pre_tokenizers.Metaspace(replacement=SPACE, prepend_scheme="first"),
        pre_tokenizers.Punctuation(behavior="isolated"),
        pre_tokenizers.Digits(individual_digits=True)])


def save(out_dir: Path, tok, tokenizer_config: dict, **extra) -> Path:
    """tokenizer.json and tokenizer_config.json into out_dir (made), and any extra files
    (name__ext=text or JSON: chat_template__jinja="..." writes chat_template.jinja)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    tok.save(str(out_dir / "tokenizer.json"))
    (out_dir / "tokenizer_config.json").write_text(
        json.dumps(tokenizer_config, ensure_ascii=False), "utf-8")
    for name, content in extra.items():
        (out_dir / name.replace("__", ".")).write_text(
            content if isinstance(content, str) else json.dumps(content), "utf-8")
    return out_dir


def vocab_gguf(path: Path, vocab) -> Path:
    """A GGUF holding `vocab` (convert.vocab.write_vocab) and minimal llama hparams, which
    llama.cpp skips for vocab_only loads but which keep the file sane."""
    import gguf

    from convert.vocab import write_vocab

    w = gguf.GGUFWriter(str(path), "llama")
    w.add_context_length(256)
    w.add_embedding_length(64)
    w.add_block_count(1)
    w.add_feed_forward_length(128)
    w.add_head_count(2)
    w.add_head_count_kv(2)
    w.add_layer_norm_rms_eps(1e-5)
    write_vocab(w, vocab)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
