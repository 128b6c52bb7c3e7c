"""Tokenizer files of a Hugging Face checkpoint -> the `tokenizer.*` keys of a GGUF file.

One module per source format, all producing a `Built` reading (tokens.py), which `load_vocab`
(load.py) completes with added tokens and special ids and lays out as ids 0..n_vocab-1:

  sp_model.py           tokenizer.model: the SentencePiece ModelProto, decoded by a small
                        protobuf reader (no sentencepiece / protobuf dependency)
  tokenizer_json.py     tokenizer.json: BPE (byte-level or SentencePiece-style) and Unigram
  pre.py                byte-level BPE: the llama.cpp pre-tokenizer name (`tokenizer.ggml.pre`)
  gpt2_files.py         vocab.json + merges.txt (GPT-2 slow tokenizer, Jais) as a tokenizer.json
  side_files.py         tokenizer_config.json, special_tokens_map.json, added_tokens.json,
                        chat templates; added tokens applied to a reading
  sp_tokenizer_json.py  a tokenizer.json built from a SentencePiece model llama.cpp cannot follow
  unigram.py            Unigram scores for llama.cpp's greedy SPM merging
  write.py              `write_vocab`: a Vocab -> tokenizer.* GGUF keys

No `tokenizers`, `sentencepiece`, `transformers` or torch.

What llama.cpp does with the result (facts from its src/llama-vocab.cpp, the copy that
llama-cpp-python 0.3.36 vendors):

* model "llama" (SPM): the text gets one leading space when `add_space_prefix` (at the start and
  after every special token), spaces become U+2581, then the text is split into UTF-8 characters
  and adjacent symbols are merged greedily: the pair whose concatenation is a vocab token with the
  HIGHEST score goes first (ties: leftmost).  Symbols that end up not being tokens are emitted as
  `<0xXX>` byte tokens.  No normalization (NFKC charsmap) and no whitespace collapsing is applied.
* model "gpt2" (BPE): the pre-tokenizer regex chosen by `tokenizer.ggml.pre`, GPT-2 byte
  encoding, then merges by rank from `tokenizer.ggml.merges`.
* Token texts must be unique (llama.cpp asserts), CONTROL/UNKNOWN tokens are matched in raw text
  only when parsing specials, USER_DEFINED tokens always.

The three tokenizer.json kinds map as follows:

(a) BPE + ByteLevel (GPT-2 style)    -> "gpt2", merges, pre chosen from the Split regex and
    tokenizer_config's clean_up_tokenization_spaces (which llama_detokenize follows by pre name).
(b) BPE + byte_fallback (SPM style)  -> "llama", score(piece) = -rank of the first merge that
    creates it, so llama.cpp's highest-score-first bigram merging replays the BPE merge order
    (exact when every concatenation of two adjacent vocab pieces that is itself in the vocab is
    also a listed merge, true for SentencePiece-converted tokenizers; otherwise approximate).
(c) Unigram                          -> "llama".  llama.cpp does greedy bigram merging, not
    Viterbi, so its segmentation is an approximation whatever the scores; `write_vocab` writes
    `unigram_gain_scores` (the log-likelihood gain of each merge), which measures closest to
    Hugging Face's Viterbi (real llm-jp-3 tokenizer, tests/tokenizer_corpus.py: 79% identical
    lines vs 73% with the raw log-probs; 40-sentence Japanese prose 65% vs 53%).  `Vocab.scores`
    keeps the log-probs (what a "t5"/UGM vocab needs).  The exact tokenizer.json is embedded in
    `tokenizer.huggingface.json` for Python-side tokenization.

    Not chosen: "t5" (llama.cpp's UGM, Viterbi over the same log-probs) is exact on prose but has
    no byte fallback: every character outside the vocab, "\n" included for llm-jp, becomes <unk>.

A `tokenizer.model` that llama.cpp's SPM tokenizer cannot follow (a normalization charsmap such as
SentencePiece's default nmt_nfkc, remove_extra_whitespaces, Unigram) and that comes without a
tokenizer.json gets an equivalent tokenizer.json built here (`sentencepiece_tokenizer_json`,
checked id for id against sentencepiece in tests/test_tokenizer_parity.py) as
`tokenizer.huggingface.json`, and its normalizer is recorded in the standard keys
`tokenizer.ggml.precompiled_charsmap` / `tokenizer.ggml.remove_extra_whitespaces` (llama.cpp reads
them for UGM vocabs only): kiln's runtime then tokenizes with the embedded tokenizer.json.
"""
from __future__ import annotations

from .gpt2_files import gpt2_tokenizer_json
from .load import load_vocab
from .pre import (GPT2_REGEX, GPT4O_REGEX, LLAMA3_REGEX, QWEN2_REGEX, QWEN35_REGEX, TEKKEN_REGEX,
                  pre_cleans_up, pre_for_clean_up)
from .sp_model import SentencePieceModel, parse_sentencepiece_model
from .sp_tokenizer_json import sentencepiece_tokenizer_json
from .tokens import (ADDED_TOKEN_SCORE, PAD_SCORE, SPACE_MARK, SPECIAL_KEYS, T_BYTE, T_CONTROL,
                     T_NORMAL, T_UNKNOWN, T_UNUSED, T_USER_DEFINED, Vocab)
from .unigram import unigram_gain_scores
from .write import KEY_CLS_ID, write_vocab

__all__ = [
    "ADDED_TOKEN_SCORE", "GPT2_REGEX", "GPT4O_REGEX", "KEY_CLS_ID", "LLAMA3_REGEX", "PAD_SCORE",
    "QWEN2_REGEX", "QWEN35_REGEX", "SPACE_MARK", "SPECIAL_KEYS", "T_BYTE", "T_CONTROL",
    "T_NORMAL", "T_UNKNOWN", "T_UNUSED", "T_USER_DEFINED", "TEKKEN_REGEX", "SentencePieceModel",
    "Vocab", "gpt2_tokenizer_json", "load_vocab", "parse_sentencepiece_model", "pre_cleans_up",
    "pre_for_clean_up", "sentencepiece_tokenizer_json", "unigram_gain_scores", "write_vocab",
]
