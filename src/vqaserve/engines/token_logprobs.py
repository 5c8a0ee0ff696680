"""The chosen tokens' log-probabilities out of one batched Hugging Face generate(), for confidence and
OpenAI's logprobs.

`TokenLogprobs` is a logits processor that keeps only the last step's log-softmax: at each call the
previous step's chosen tokens are the last column of input_ids, so it reads their log-probabilities
(and the top k, when a row asked for them) and drops the rest; `finish` takes the last step's from
the returned sequences. Per step that is one float per row (plus k), never the whole vocabulary, and
no device sync until the end. Left padding aligns every row's step t at the same column, so each row
reads its own values; a row that finished early is padded and its later steps are ignored.

It must run where vLLM's default `raw_logprobs` are taken: after the JSON grammar's mask and before
repetition_penalty, min_tokens and the sampling warpers (temperature, top-k, top-p, min-p). generate()
puts its own penalties before the processors it is given and the warpers after them, so the engine
turns generate()'s penalties off and lists them after this recorder (hf_generation.penalty_processors).

Tokens are named as vLLM names them (the tokenizer's decode of the one token), and their `bytes` are
the token's own bytes: with a byte-level vocabulary (Qwen's) a Chinese character often spans two
tokens, each of which decodes to "\ufffd" alone, and joining the tokens' bytes gives the answer back.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from vqaserve import confidence
from vqaserve.types import TokenLogprob

LOGPROB_FLOOR = -9999.0  # what vLLM reports for a token the mask made impossible (-inf is not JSON)


class TokenLogprobs:
    """A generate() logits processor recording each row's chosen-token log-probabilities (and the
    `top` most likely tokens at each step when top > 0)."""

    def __init__(self, top: int = 0) -> None:
        self.top = top
        self._last: Any = None  # log-softmax of the latest step, [rows, vocab]
        self._chosen: list[Any] = []  # per step: [rows]
        self._top_values: list[Any] = []  # per step: [rows, top]
        self._top_ids: list[Any] = []
        self._table: tuple[list[list[float]], list[list[list[float]]], list[list[list[int]]]] | None = None

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import torch

        if self._last is not None:
            self._take(input_ids[:, -1])
        self._last = torch.log_softmax(scores.float(), dim=-1)
        if self.top:
            values, ids = self._last.topk(min(self.top, self._last.shape[-1]), dim=-1)
            self._top_values.append(values)
            self._top_ids.append(ids)
        return scores

    def _take(self, chosen: Any) -> None:
        self._chosen.append(self._last.gather(1, chosen[:, None].to(self._last.device)).squeeze(1))
        self._last = None

    def finish(self, sequences: Any) -> None:
        """After generate(): the last step's chosen tokens are the sequences' last column."""
        import torch

        if self._last is not None:
            self._take(sequences[:, -1])
        steps = len(self._chosen)
        chosen = torch.stack(self._chosen, dim=1).cpu().tolist() if steps else []
        top_v = torch.stack(self._top_values, dim=1).cpu().tolist() if self.top and steps else []
        top_i = torch.stack(self._top_ids, dim=1).cpu().tolist() if self.top and steps else []
        self._table = (chosen, top_v, top_i)
        self._chosen, self._top_values, self._top_ids = [], [], []

    def chosen(self, row: int, n: int) -> list[float]:
        """Row `row`'s first n chosen-token log-probabilities."""
        assert self._table is not None, "finish() first"
        return self._table[0][row][:n] if self._table[0] else []

    def result(self, row: int, ids: list[int], ended_by_token: bool, top: int | None,
               token_text: Callable[[int], tuple[str, bytes]]) -> tuple[float, list[TokenLogprob] | None]:
        """Row `row`'s confidence for its generated `ids`, and its OpenAI logprobs when `top` is not
        None (the request asked for logprobs with that many top_logprobs)."""
        values = self.chosen(row, len(ids))
        conf = confidence.of_answer(values, ended_by_token)
        if top is None:
            return conf, None
        assert self._table is not None
        top_v, top_i = self._table[1], self._table[2]
        out = []
        for step, (token_id, value) in enumerate(zip(ids, values, strict=True)):
            alternatives = tuple(_entry(token_text(i), v)
                                 for i, v in zip(top_i[row][step][:top], top_v[row][step][:top], strict=True)
                                 ) if top else ()
            out.append(_entry(token_text(token_id), value, alternatives))
        return conf, out


def _entry(named: tuple[str, bytes], logprob: float, top: tuple[TokenLogprob, ...] = ()) -> TokenLogprob:
    return TokenLogprob(token=named[0], logprob=max(logprob, LOGPROB_FLOOR), bytes=tuple(named[1]), top=top)


class TokenNames:
    """token id -> (its text as vLLM shows it, its own bytes), for one tokenizer (cached per id)."""

    def __init__(self, tokenizer: Any) -> None:
        from tokenizers import decoders

        self._tokenizer = tokenizer
        self._byte_level = isinstance(tokenizer.backend_tokenizer.decoder, decoders.ByteLevel)
        self._added = set(tokenizer.added_tokens_decoder)
        self.name = functools.lru_cache(maxsize=65536)(self._name)

    def _name(self, token_id: int) -> tuple[str, bytes]:
        text = str(self._tokenizer.decode([token_id]))
        if not self._byte_level or token_id in self._added:
            return text, text.encode("utf-8", errors="replace")
        piece = str(self._tokenizer.convert_ids_to_tokens(token_id))
        alphabet = _byte_alphabet()
        if not all(ch in alphabet for ch in piece):
            return text, text.encode("utf-8", errors="replace")
        return text, bytes(alphabet[ch] for ch in piece)


@functools.lru_cache(maxsize=1)
def _byte_alphabet() -> dict[str, int]:
    """GPT-2's byte-level vocabulary alphabet (every byte written as a printable character), reversed."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars = dict(zip(printable, printable, strict=True))
    extra = 0
    for byte in range(256):
        if byte not in chars:
            chars[byte] = 256 + extra
            extra += 1
    return {chr(char): byte for byte, char in chars.items()}
