"""Training data: the jsonl format (checked line by line), synthetic conversations, and encoding.

Pictures go through the service's own `vqaserve.images.decode.normalize` at the model's pixel budget, so
training sees exactly the pixels that serving sees. Labels cover the answer tokens (and the end of
turn token) only; the prompt is masked with -100.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vqaserve.errors import InvalidRequest

IGNORE = -100
REQUIRED_FIELDS = ("image", "question", "answer")


class DatasetError(InvalidRequest):
    """A bad dataset line; the message names the file and the line number."""

    code = "bad_dataset_line"


@dataclass(frozen=True)
class Record:
    image: str  # absolute path or http(s) URL
    question: str
    answer: str
    type: str
    lang: str
    where: str  # "FILE:LINE", for error messages
    schema: str = ""  # canonical JSON Schema text: eval asks with this response_format ("": free text)


def _check_line(raw: bytes, path: Path, number: int) -> Record:
    where = f"{path}:{number}"
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise DatasetError(f"{where}: line is not UTF-8 text; re-save the file as UTF-8") from None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{where}: not valid JSON ({exc.msg}); "
                           "each line must be one JSON object") from None
    if not isinstance(obj, dict):
        raise DatasetError(f"{where}: each line must be a JSON object with image, question and answer")
    for name in REQUIRED_FIELDS:
        value = obj.get(name)
        if not isinstance(value, str) or not value.strip():
            raise DatasetError(f"{where}: field {name!r} is missing or empty; "
                               "every line needs image, question and answer strings")
    image = obj["image"]
    if not image.startswith(("http://", "https://")):
        candidate = Path(image).expanduser()
        if not candidate.is_absolute():
            candidate = path.parent / candidate  # relative paths are relative to the jsonl file
        if not candidate.is_file():
            raise DatasetError(f"{where}: image {image!r} not found (paths are relative to the jsonl file)")
        image = str(candidate.resolve())
    return Record(image=image, question=obj["question"], answer=obj["answer"].strip(),
                  type=str(obj.get("type", "all")), lang=str(obj.get("lang", "?")), where=where,
                  schema=_schema(obj, where))


def _schema(obj: dict[str, Any], where: str) -> str:
    """The optional `schema` field: a JSON Schema object the answer follows (checked as the API does)."""
    if "schema" not in obj:
        return ""
    from vqaserve.engines.structured import check_schema

    try:
        return check_schema(obj["schema"], "schema")
    except InvalidRequest as exc:
        raise DatasetError(f"{where}: {exc.message}") from None


def load_jsonl(path: str | Path, skip_bad_lines: bool = False,
               warn: Callable[[str], None] | None = None) -> list[Record]:
    """Every line checked before training starts: a bad line stops here (or is skipped, reported)."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"dataset file {path} not found; give the path of a data.jsonl file")
    records: list[Record] = []
    skipped = 0
    with path.open("rb") as fh:
        for number, raw in enumerate(fh, start=1):
            if not raw.strip():
                continue
            try:
                records.append(_check_line(raw.rstrip(b"\r\n"), path, number))
            except DatasetError as exc:
                if not skip_bad_lines:
                    hint = " (or pass --skip-bad-lines to skip such lines)"
                    raise DatasetError(exc.message + hint) from None
                skipped += 1
                if warn:
                    warn(f"skipped {exc.message}")
    if not records:
        raise DatasetError(f"{path}: no usable lines; each line needs image, question and answer")
    if skipped and warn:
        warn(f"{path}: skipped {skipped} bad line(s), kept {len(records)}")
    return records


def read_image_bytes(location: str, timeout_s: float = 10.0, max_bytes: int = 25 * 1024 * 1024) -> bytes:
    if location.startswith(("http://", "https://")):
        import httpx

        response = httpx.get(location, timeout=timeout_s, follow_redirects=True)
        response.raise_for_status()
        if len(response.content) > max_bytes:
            raise DatasetError(f"image {location} is larger than {max_bytes} bytes")
        return response.content
    return Path(location).read_bytes()


# --- synthetic conversations ------------------------------------------------------------------------
# Harder question types are asked more often; every type still comes first in many conversations.
# The two tasks (questions.TASK_TYPES) ride along: a JSON answer names every attribute at once.
TYPE_WEIGHTS = {"category": 1.0, "color": 1.0, "pattern": 1.3, "yesno": 1.0, "occasion": 1.6,
                "count": 1.6, "describe": 1.4, "json": 0.8, "unanswerable": 0.6}


@dataclass(frozen=True)
class Conversation:
    image: Any  # a PIL picture as drawn (lossless: no encode/decode round trip per training sample)
    turns: tuple[tuple[str, str], ...]  # (question, answer)


# Questions whose answer is the items' shape alone: the only ones asked about a masked picture.
SHAPE_TYPES = ("category", "count")


def synthetic_conversation(split: str, seed: int, index: int, max_turns: int = 3,
                           balance_occasions: float = 0.3, mask_share: float = 0.0,
                           n_turns: int | None = None) -> Conversation:
    """One picture and 1..max_turns questions of distinct types, a pure function of its arguments.

    Several questions share one picture so the vision encoder's work is paid once; because attention
    is causal, the first turn is exactly a single-question sample, which is what serving sees.
    `mask_share` > 0 blends the picture towards its silhouettes (the mask curriculum) and asks only
    shape questions, whose answers the blend does not change. `n_turns` (capped at the number of
    types allowed) fixes the question count instead of drawing 1..max_turns.
    """
    from vqaserve.train import questions, synthetic

    rng = random.Random(f"conv:{split}:{seed}:{index}")
    spec = synthetic.sample_spec(split, rng, balance_occasions if split == "train" else 0.0)
    image = synthetic.render(spec, rng, mask_share)
    types = [t for t in TYPE_WEIGHTS if mask_share <= 0 or t in SHAPE_TYPES]
    # Drawn even when `n_turns` is given, so the types, language and wording drawn next (and so the
    # bundled model's training stream) are the same whichever way the count is chosen.
    drawn = rng.randint(1, min(max_turns, len(types)))
    n_turns = drawn if n_turns is None else max(1, min(n_turns, len(types)))
    chosen: list[str] = []
    while len(chosen) < n_turns:
        t = rng.choices(types, weights=[TYPE_WEIGHTS[x] for x in types])[0]
        if t not in chosen:
            chosen.append(t)
    lang = rng.choice(questions.LANGS)
    turns = []
    for qtype in chosen:
        if rng.random() < 0.25:
            lang = rng.choice(questions.LANGS)  # mixed-language conversations happen too
        turns.append(questions.training_question(spec, qtype, lang, rng))
    return Conversation(image, tuple(turns))


# --- encoding ---------------------------------------------------------------------------------------
class Encoder:
    """Turns (picture bytes, [(question, answer), ...]) into model inputs with answer-only labels."""

    def __init__(self, processor: Any, min_pixels: int, max_pixels: int) -> None:
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.min_pixels = min_pixels
        self.max_pixels = max_pixels
        self.image_token_id = self.tokenizer.convert_tokens_to_ids(processor.image_token)
        self.merge = int(processor.image_processor.merge_size) ** 2
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        self.eos = self.tokenizer.eos_token or "<|im_end|>"
        # Template pieces per turn, keyed (first turn?, question, answer): conversations are rarely
        # repeated (4 in 5 are new to a run), but their turns are, and rendering the chat template
        # was a third of the time it took to make a batch.
        self._turns: dict[tuple[bool, str, str], list[tuple[list[int], bool]]] = {}
        self._checked: Counter[int] = Counter()  # by question count: conversations also rendered whole
        self._composable = True

    @staticmethod
    def _messages(turns: Sequence[tuple[str, str]], upto: int, with_answer: bool) -> list[dict[str, Any]]:
        messages: list[dict[str, Any]] = []
        for i, (q, a) in enumerate(turns[:upto]):
            content: list[dict[str, str]] = [{"type": "image"}] if i == 0 else []
            content.append({"type": "text", "text": q})
            messages.append({"role": "user", "content": content})
            if with_answer or i < upto - 1:
                messages.append({"role": "assistant", "content": [{"type": "text", "text": a}]})
        return messages

    def segments(self, turns: tuple[tuple[str, str], ...]) -> list[tuple[list[int], bool]]:
        """The prompt and answer pieces of a conversation, composed from cached per-turn pieces.

        Composition holds for chat templates that render each turn on its own (Qwen's do). The
        first conversations of each length are also rendered whole and compared, and a template
        that differs turns composition off, so the tokens are always exactly the template's."""
        if not self._composable:
            return _compute_segments(self, turns)
        composed = [piece for i, (q, a) in enumerate(turns) for piece in self._turn(i == 0, q, a)]
        if self._checked[len(turns)] < 16:
            self._checked[len(turns)] += 1
            whole = _compute_segments(self, turns)
            if whole != composed:
                self._composable = False
                return whole
        return composed

    def _turn(self, first: bool, question: str, answer: str) -> list[tuple[list[int], bool]]:
        key = (first, question, answer)
        found = self._turns.get(key)
        if found is None:
            if first:
                found = _compute_segments(self, ((question, answer),))
            else:  # a later turn: its pieces after those of a fixed first turn
                opening = ("?", "?")
                found = _compute_segments(self, (opening, (question, answer)))
                found = found[len(self._turn(True, *opening)):]
            if len(self._turns) < 100_000:
                self._turns[key] = found
        return found

    def image_inputs(self, data: bytes | Any, name: str = "image") -> dict[str, Any]:
        """Processor inputs for encoded bytes (decoded as the service does) or a decoded PIL picture."""
        from vqaserve.images.decode import fit_budget, normalize

        if isinstance(data, bytes | bytearray):
            image = normalize(bytes(data), self.min_pixels, self.max_pixels, 64_000_000, name).image
        else:
            image = fit_budget(data, self.min_pixels, self.max_pixels, name)
        return dict(self.processor.image_processor(images=[image], return_tensors="pt"))

    def encode(self, image: bytes | Any, turns: tuple[tuple[str, str], ...],
               name: str = "image") -> dict[str, Any]:
        vision = self.image_inputs(image, name)
        n_image_tokens = int(vision["image_grid_thw"][0].prod()) // self.merge
        ids: list[int] = []
        labels: list[int] = []
        for seg_ids, is_answer in self.segments(turns):
            for tok in seg_ids:
                reps = n_image_tokens if tok == self.image_token_id else 1
                ids.extend([tok] * reps)
                labels.extend([tok if is_answer else IGNORE] * reps)
        return {"input_ids": ids, "labels": labels, "pixel_values": vision["pixel_values"],
                "image_grid_thw": vision["image_grid_thw"]}

    def collate(self, items: Sequence[dict[str, Any]]) -> dict[str, Any]:
        """Right padding for training (generation pads left; the loss ignores padded positions)."""
        import torch

        width = max(len(it["input_ids"]) for it in items)
        ids = torch.full((len(items), width), self.pad_id, dtype=torch.long)
        labels = torch.full((len(items), width), IGNORE, dtype=torch.long)
        mask = torch.zeros((len(items), width), dtype=torch.long)
        for row, it in enumerate(items):
            n = len(it["input_ids"])
            ids[row, :n] = torch.tensor(it["input_ids"])
            labels[row, :n] = torch.tensor(it["labels"])
            mask[row, :n] = 1
        # M-RoPE needs to know which positions are image tokens (1) and which are text (0).
        mm_types = (ids == self.image_token_id).long()
        return {"input_ids": ids, "labels": labels, "attention_mask": mask, "mm_token_type_ids": mm_types,
                "pixel_values": torch.cat([it["pixel_values"] for it in items]),
                "image_grid_thw": torch.cat([it["image_grid_thw"] for it in items])}


def _compute_segments(encoder: Encoder, turns: tuple[tuple[str, str], ...]) -> list[tuple[list[int], bool]]:
    """Split the chat-template text into prompt pieces (masked) and answer pieces (learned).

    Each answer piece is the answer plus the template's end-of-turn token, so the model learns to
    stop. The prompt pieces are exactly what the engine's chat template gives at serving time.
    """
    template = encoder.processor.apply_chat_template
    full = template(encoder._messages(turns, len(turns), True), tokenize=False)
    pieces: list[tuple[str, bool]] = []
    pos = 0
    for i in range(1, len(turns) + 1):
        prefix = template(encoder._messages(turns, i, False), tokenize=False, add_generation_prompt=True)
        if not full.startswith(prefix) or len(prefix) < pos:
            raise ValueError("the chat template renders a conversation differently from its prompts; "
                             "training needs a prefix-stable template")
        end = full.find(encoder.eos, len(prefix))
        if end < 0:
            raise ValueError(f"the chat template does not end assistant turns with {encoder.eos!r}")
        end += len(encoder.eos)
        pieces.append((full[pos:len(prefix)], False))
        pieces.append((full[len(prefix):end], True))
        pos = end
    tok = encoder.tokenizer
    return [(tok(text, add_special_tokens=False)["input_ids"], is_answer)
            for text, is_answer in pieces if text]
