"""`load_vocab`: pick the reader for a checkpoint's tokenizer files, then lay out the ids."""
from __future__ import annotations

import json
import logging
import struct
from pathlib import Path

from ..errors import KilnError
from .gpt2_files import gpt2_tokenizer_json
from .pre import pre_with_clean_up
from .side_files import (apply_added_tokens, first_int, read_chat_template, read_configs,
                         token_content)
from .sp_model import from_sentencepiece, parse_sentencepiece_model
from .sp_tokenizer_json import sentencepiece_tokenizer_json
from .tokenizer_json import from_tokenizer_json, read_tokenizer_json, template_flags
from .tokens import (BYTE_PIECE, PAD_SCORE, SPECIAL_KEYS, T_UNUSED, Built, Tok, Vocab,
                     looks_special)

log = logging.getLogger(__name__)


def load_vocab(model_dir: Path, config: dict, n_vocab: int, gpt2_files: bool = False) -> Vocab:
    """Read the tokenizer of `model_dir` for a model whose embedding has `n_vocab` rows.
    `gpt2_files`: without a tokenizer.json, read GPT-2's vocab.json + merges.txt (Jais)."""
    model_dir = Path(model_dir)
    config = config or {}
    tok_cfg, stm = read_configs(model_dir)
    built, tj, tj_path, hf_json = _read(model_dir, tok_cfg, stm, gpt2_files)
    added = apply_added_tokens(built, model_dir, tok_cfg, stm, tj, tj_path)
    tokens, scores, types, n_real, first_id = _lay_out(built, n_vocab, model_dir)
    n_vocab = len(tokens)
    special = _special_ids(tok_cfg, stm, config, first_id, built.defaults, n_vocab, model_dir)
    add_bos, add_eos = _add_bos_eos(tj, tj_path, tok_cfg, special, first_id, model_dir)

    add_space_prefix = built.add_space_prefix
    if built.model == "llama":
        if isinstance(tok_cfg.get("add_prefix_space"), bool):    # as llama.cpp's converter does
            add_space_prefix = tok_cfg["add_prefix_space"]
        if add_space_prefix is None:
            add_space_prefix = False     # must be explicit: llama.cpp defaults to true for SPM

    # A SentencePiece model llama.cpp cannot follow and no tokenizer.json: build one.
    charsmap = remove_ws = None
    sp_model = built.sp
    if sp_model is not None and hf_json is None:
        charsmap = sp_model.precompiled_charsmap or None
        remove_ws = sp_model.remove_extra_whitespaces or None
        if charsmap or remove_ws or built.unigram or sp_model.treat_whitespace_as_suffix:
            merged = {tid: (tid, content, special or looks_special(content))
                      for tid, content, special in added if 0 <= tid < n_vocab and content}
            hf_json = json.dumps(sentencepiece_tokenizer_json(sp_model, list(merged.values())),
                                 ensure_ascii=False)

    return Vocab(
        model=built.model, pre=built.pre, tokens=tokens,
        scores=scores if built.with_scores else None, types=types, merges=built.merges,
        special=special, add_bos=add_bos, add_eos=add_eos, add_space_prefix=add_space_prefix,
        chat_template=read_chat_template(model_dir, tok_cfg), hf_json=hf_json, n_real=n_real,
        unigram=built.unigram, precompiled_charsmap=charsmap, remove_extra_whitespaces=remove_ws)


def _read(model_dir: Path, tok_cfg: dict, stm: dict,
          gpt2_files: bool) -> tuple[Built, dict | None, Path, str | None]:
    """The reading of tokenizer.model, else tokenizer.json, else (gpt2_files) vocab.json +
    merges.txt; with the parsed tokenizer.json, its path and raw text when there is one."""
    tj_path = model_dir / "tokenizer.json"
    hf_json, tj = read_tokenizer_json(tj_path)
    sp_path = model_dir / "tokenizer.model"
    read_sp = sp_path.is_file()
    if tj is None and gpt2_files and (tj := gpt2_tokenizer_json(model_dir, tok_cfg, stm)):
        hf_json, tj_path, read_sp = json.dumps(tj), model_dir / "vocab.json", False

    built: Built | None = None
    if read_sp:
        try:
            sp = parse_sentencepiece_model(sp_path.read_bytes())
        except (ValueError, UnicodeDecodeError, struct.error) as e:
            if tj is None:
                raise KilnError(sp_path, f"not a SentencePiece model ({e})") from None
            log.warning("%s: not a SentencePiece model (%s); using tokenizer.json", sp_path, e)
        except OSError as e:
            raise KilnError(sp_path, f"cannot read: {e}") from None
        else:
            built = from_sentencepiece(sp, sp_path)
    if built is None and tj is not None:
        built = from_tokenizer_json(tj, tj_path)
    if built is None:
        raise KilnError(model_dir, "no tokenizer found (expected tokenizer.model or tokenizer.json)")
    if built.model == "gpt2" and built.pre is not None:
        built.pre = pre_with_clean_up(built.pre, tok_cfg, model_dir)
    return built, tj, tj_path, hf_json


def _lay_out(built: Built, n_vocab: int,
             model_dir: Path) -> tuple[list[str], list[float], list[int], int, dict[str, int]]:
    """(texts, scores, types) of ids 0..n_vocab-1, how many came from the tokenizer, and each
    text's id: holes and the padding up to the embedding's rows filled with [PAD{i}], ids past it
    dropped, repeated texts renamed [DUP{i}] (llama.cpp asserts that token texts are unique)."""
    toks = built.toks
    n_src = max(toks) + 1 if toks else 0
    if not n_vocab or n_vocab <= 0:
        n_vocab = n_src
    dropped = sorted(i for i in toks if i >= n_vocab)
    if dropped:
        log.warning("%s: %d tokenizer ids >= vocab_size %d dropped (%s)", model_dir, len(dropped),
                    n_vocab, ", ".join(f"{i}:{toks[i].text!r}" for i in dropped[:5])
                    + (" ..." if len(dropped) > 5 else ""))
    n_real = min(n_src, n_vocab)
    tokens: list[str] = []
    scores: list[float] = []
    types: list[int] = []
    holes = 0
    for i in range(n_vocab):
        t = toks.get(i)
        if t is None:
            if i < n_real:
                holes += 1
            t = Tok(f"[PAD{i}]", PAD_SCORE, T_UNUSED)
        tokens.append(t.text)
        scores.append(float(t.score))
        types.append(int(t.type))
    if holes:
        log.warning("%s: %d ids missing inside the tokenizer; filled with [PAD{i}]", model_dir, holes)
    if n_vocab > n_real:
        log.info("%s: padded vocab from %d to %d with [PAD{i}]", model_dir, n_real, n_vocab)

    first_id: dict[str, int] = {}
    for i, t in enumerate(tokens):
        if not t:
            continue
        if t in first_id:
            new = f"[DUP{i}]"
            log.warning("%s: token %d %r duplicates token %d; renamed to %r", model_dir, i, t,
                        first_id[t], new)
            tokens[i] = new
            types[i] = T_UNUSED
            first_id.setdefault(new, i)
        else:
            first_id[t] = i

    if built.model == "llama":
        n_bytes = sum(1 for t in tokens if len(t) == 6 and BYTE_PIECE.match(t))
        if n_bytes < 256:
            log.warning("%s: only %d of the 256 <0xXX> byte tokens exist; llama.cpp's SPM "
                        "tokenizer aborts the process on text it cannot cover", model_dir, n_bytes)
    return tokens, scores, types, n_real, first_id


def _special_ids(tok_cfg: dict, stm: dict, config: dict, first_id: dict[str, int],
                 defaults: dict[str, int], n_vocab: int, model_dir: Path) -> dict[str, int]:
    """bos/eos/...: tokenizer_config / special_tokens_map strings, then config.json ids, then what
    the tokenizer model itself says."""
    special: dict[str, int] = {}
    for key in SPECIAL_KEYS:
        tid = None
        for src in (tok_cfg, stm):
            c = token_content(src.get(f"{key}_token"))
            if c is not None and c in first_id:
                tid = first_id[c]
                break
        cfg_id = first_int(config.get(f"{key}_token_id"))
        if cfg_id is not None and not 0 <= cfg_id < n_vocab:
            log.warning("config.json %s_token_id=%d out of range", key, cfg_id)
            cfg_id = None
        if tid is None:
            tid = cfg_id
        elif cfg_id is not None and cfg_id != tid:
            log.warning("%s: %s token is id %d per the tokenizer files but %d per config.json; "
                        "using %d", model_dir, key, tid, cfg_id, tid)
        if tid is None:
            d = defaults.get(key)
            if d is not None and d < n_vocab:
                tid = d
        if tid is not None:
            special[key] = tid
    return special


def _add_bos_eos(tj: dict | None, tj_path: Path, tok_cfg: dict, special: dict[str, int],
                 first_id: dict[str, int], model_dir: Path) -> tuple[bool | None, bool | None]:
    """add_bos / add_eos: TemplateProcessing wins over tokenizer_config when they disagree (a
    post_processor's leading / trailing special also fills in a missing bos / eos id)."""
    add_bos: bool | None = None
    add_eos: bool | None = None
    first, first_ids, last, last_ids = template_flags(tj)
    if first is not None:
        fid = first_ids[0] if first_ids else first_id.get(first)
        if fid is not None and "bos" not in special:
            special["bos"] = fid
        add_bos = fid is not None and fid in (special.get("bos"), special.get("cls"))
        if not add_bos:
            log.warning("%s: post_processor starts with %r, which is not the BOS token",
                        tj_path, first)
    if last is not None:
        lid = last_ids[-1] if last_ids else first_id.get(last)
        if lid is not None and "eos" not in special:
            special["eos"] = lid
        add_eos = lid is not None and lid == special.get("eos")
    if isinstance(tj, dict) and isinstance(tj.get("post_processor"), dict):
        pp = tj["post_processor"]
        for proc in pp.get("processors", [pp]) if pp.get("type") == "Sequence" else [pp]:
            if isinstance(proc, dict) and proc.get("type") == "ByteLevel":
                add_bos = False if add_bos is None else add_bos
                add_eos = False if add_eos is None else add_eos
    flags = {"bos": add_bos, "eos": add_eos}
    for key, cur in flags.items():
        cfg_val = tok_cfg.get(f"add_{key}_token")
        if isinstance(cfg_val, bool):
            if cur is None:
                flags[key] = cfg_val
            elif cur != cfg_val:
                log.warning("%s: tokenizer_config add_%s_token=%s but the tokenizer.json "
                            "post_processor says %s; using the post_processor", model_dir, key,
                            cfg_val, cur)
    return flags["bos"], flags["eos"]
