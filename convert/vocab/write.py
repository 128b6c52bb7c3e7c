"""A `Vocab` -> the tokenizer.* keys of a GGUF file."""
from __future__ import annotations

import gguf

from .tokens import SPECIAL_KEYS, Vocab
from .unigram import unigram_gain_scores

# GGUF key llama.cpp defines (llama-arch.cpp) but the vocab loader does not read; written for tools.
KEY_CLS_ID = "tokenizer.ggml.cls_token_id"


def write_vocab(writer: gguf.GGUFWriter, vocab: Vocab) -> None:
    """tokenizer.ggml.*, tokenizer.chat_template and tokenizer.huggingface.json."""
    n = len(vocab.tokens)
    if len(vocab.types) != n or (vocab.scores is not None and len(vocab.scores) != n):
        raise ValueError("tokens, scores and types differ in length")
    writer.add_tokenizer_model(vocab.model)
    if vocab.pre is not None:
        writer.add_tokenizer_pre(vocab.pre)
    writer.add_token_list(vocab.tokens)
    if vocab.scores is not None:
        # Unigram log-probs drive llama.cpp's greedy SPM merging best as merge gains (module doc)
        scores = (unigram_gain_scores(vocab) if vocab.unigram and vocab.model == "llama"
                  else vocab.scores)
        writer.add_token_scores([float(s) for s in scores])
    writer.add_token_types([int(t) for t in vocab.types])
    if vocab.merges:
        writer.add_token_merges(vocab.merges)
    setters = {
        "bos": writer.add_bos_token_id,
        "eos": writer.add_eos_token_id,
        "unk": writer.add_unk_token_id,
        "sep": writer.add_sep_token_id,
        "pad": writer.add_pad_token_id,
        "mask": writer.add_mask_token_id,
    }
    for key in SPECIAL_KEYS:
        tid = vocab.special.get(key)
        if tid is None or not 0 <= tid < n:
            continue
        if key == "cls":
            writer.add_uint32(KEY_CLS_ID, tid)
        else:
            setters[key](tid)
    if vocab.add_bos is not None:
        writer.add_add_bos_token(vocab.add_bos)
    if vocab.add_eos is not None:
        writer.add_add_eos_token(vocab.add_eos)
    if vocab.add_space_prefix is not None:
        writer.add_add_space_prefix(vocab.add_space_prefix)
    if vocab.precompiled_charsmap:
        writer.add_precompiled_charsmap(vocab.precompiled_charsmap)
    if vocab.remove_extra_whitespaces is not None:
        writer.add_remove_extra_whitespaces(vocab.remove_extra_whitespaces)
    if vocab.chat_template is not None:
        writer.add_chat_template(vocab.chat_template)
    if vocab.hf_json is not None:
        writer.add_string(gguf.Keys.Tokenizer.HF_JSON, vocab.hf_json)
