"""Alaya-7B-Chat / -Base (DataCanvas, `MPTForCausalLM`): MPT numerics, its own prompt and tokens.

Follows the official repo's code (DataCanvasIO/Alaya: `api.py` for generation, `sft.py` for the
training format); the numerics are the generic MPT module's (mpt.py). What Alaya adds:

* eos is id 2 ('</s>', api.py passes eos_token_id=2 and pad = eos to generate) whatever the
  tokenizer files say; id 3 is banned (api.py: bad_words_ids=[[3]]); no BOS (api.py and sft.py
  never add one).
* the prompt of sft.py, '### Instruction:\\t\\n{instruction}\\n\\n### Output:\\t\\n{output} </s>',
  as a chat template (ALAYA_TEMPLATE); api.py's sampling settings as defaults.
* detection: "alaya" in the name, Alaya / DataCanvas in the tokenizer files or README, or the
  padded vocabulary of 60160 (README).
"""
from __future__ import annotations

import logging

from ..errors import KilnError
from ..vocab import Vocab
from .mpt import MptFamily

log = logging.getLogger(__name__)

ALAYA_EOS = 2          # '</s>'; api.py passes eos_token_id=2 (and pad = eos) to generate
ALAYA_BANNED = 3       # api.py: bad_words_ids=[[3]]
ALAYA_VOCAB = 60160    # README: vocabulary of 60160 (padded embedding)

# Training format (sft.py): '### Instruction:\t\n{instruction}\n\n### Output:\t\n{output} </s>'.
# The official api.py ends the prompt at '\n\n' and strips the '### Output:\t\n' the model then
# writes; kiln appends that header as the generation prompt instead (the same tokens the model
# was trained on, and nothing to strip). There is no system role: a system message is put at
# the top of the first instruction, '{system}\n\n{user}', so the prompt keeps the only layout
# the model was trained on (several system messages are joined with '\n\n'; with no user
# message at all, the system text is the instruction).
ALAYA_TEMPLATE = (
    "{% set ns = namespace(system='') %}"
    "{% for m in messages %}{% if m['role'] == 'system' %}"
    "{% set ns.system = ns.system + m['content'] + '\\n\\n' %}{% endif %}{% endfor %}"
    "{% for m in messages %}"
    "{% if m['role'] == 'user' %}"
    "{{ '### Instruction:\\t\\n' + ns.system + m['content'] + '\\n\\n' }}"
    "{% set ns.system = '' %}"
    "{% elif m['role'] == 'assistant' %}{{ '### Output:\\t\\n' + m['content'] + ' ' + eos_token }}"
    "{% endif %}{% endfor %}"
    "{% if ns.system %}{{ '### Instruction:\\t\\n' + ns.system }}{% endif %}"
    "{% if add_generation_prompt %}{{ '### Output:\\t\\n' }}{% endif %}")

ALAYA_SAMPLING = {"temperature": 1.0, "top_p": 0.9, "repeat_penalty": 1.0}   # api.py


class AlayaFamily(MptFamily):
    name = "alaya"
    languages = ("zh", "en")
    generic = False
    name_hints = ("alaya",)
    file_hints = ("Alaya", "DataCanvas")
    vocab_sizes = (ALAYA_VOCAB,)

    def vocab(self) -> Vocab:
        vocab = super().vocab()
        if len(vocab.tokens) <= ALAYA_BANNED:
            raise KilnError(self.model_dir, f"the vocabulary has {len(vocab.tokens)} tokens; "
                            "Alaya's eos is id 2 and id 3 is banned")
        eos = vocab.special.get("eos")
        if eos != ALAYA_EOS:
            if eos is not None:
                log.warning("%s: the tokenizer files say eos is id %d (%r); Alaya's api.py "
                            "generates with eos_token_id=2 (%r), which kiln uses", self.model_dir,
                            eos, vocab.tokens[eos], vocab.tokens[ALAYA_EOS])
            vocab.special["eos"] = ALAYA_EOS
        vocab.special.setdefault("pad", ALAYA_EOS)
        return vocab                  # no BOS (MptFamily): api.py and sft.py never add one

    def chat_template(self, vocab: Vocab | None) -> str:
        return ALAYA_TEMPLATE

    def eos_ids(self, vocab: Vocab) -> list[int]:
        ids = super().eos_ids(vocab)
        return [ALAYA_EOS] + [i for i in ids if i != ALAYA_EOS]

    def stop_strings(self) -> list[str]:
        return ["### Instruction"]

    def banned_ids(self) -> list[int]:
        return [ALAYA_BANNED]

    def sampling_defaults(self) -> dict[str, float]:
        return {**ALAYA_SAMPLING, **super().sampling_defaults()}
