"""The training data stream: batch number b is a pure function of b (so --resume continues the same
stream), prepared ahead in a background process while the model trains on the current batch."""

from __future__ import annotations

import os
import random
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Any


def mask_share(step: int, curriculum_steps: int) -> float:
    """How far a step's synthetic pictures are blended towards their silhouettes: 1 at step 0, falling
    linearly to 0 at `curriculum_steps` (0: off). A small ViT learns shapes from masks long before it
    learns them through random colours (docs/eval-history.md)."""
    if curriculum_steps <= 0:
        return 0.0
    return max(0.0, 1.0 - step / curriculum_steps)


class BatchMaker:
    """Makes batch number b deterministically (same b -> same batch), so --resume continues the stream."""

    def __init__(self, model_dir: str, budget: tuple[int, int], records: list[Any],
                 mix: list[tuple[str, float]], data_weight: float, batch_size: int, max_turns: int,
                 seed: int, mask_curriculum_steps: int = 0, batches_per_step: int = 1) -> None:
        from transformers import AutoProcessor

        from vqaserve.train.data import Encoder

        self.encoder = Encoder(AutoProcessor.from_pretrained(model_dir), *budget)
        self.records = records
        self.sources: list[tuple[str, float]] = list(mix)
        if records:
            self.sources.append(("jsonl", data_weight))
        self.batch_size, self.max_turns, self.seed = batch_size, max_turns, seed
        self.mask_curriculum_steps = mask_curriculum_steps
        self.batches_per_step = batches_per_step  # --grad-accum: the curriculum counts optimizer steps

    def item(self, index: int, n_turns: int | None = None) -> dict[str, Any]:
        from vqaserve.train.data import read_image_bytes, synthetic_conversation

        rng = random.Random(f"item:{self.seed}:{index}")
        names = [s for s, _ in self.sources]
        source = rng.choices(names, weights=[w for _, w in self.sources])[0]
        if source == "jsonl":
            rec = self.records[rng.randrange(len(self.records))]
            return self.encoder.encode(read_image_bytes(rec.image), ((rec.question, rec.answer),), rec.where)
        conv = synthetic_conversation(source, self.seed, index, self.max_turns,
                                      mask_share=mask_share(self.step_of(index), self.mask_curriculum_steps),
                                      n_turns=n_turns)
        return self.encoder.encode(conv.image, conv.turns)

    def step_of(self, index: int) -> int:
        """The optimizer step that item `index` trains in."""
        return index // (self.batch_size * self.batches_per_step)

    def batch(self, number: int) -> dict[str, Any]:
        """One question count for the whole batch (drawn per batch, 1..max_turns, so the mix over a
        run is unchanged): synthetic rows then differ only by picture and wording, and right padding,
        which the decoder computes like real tokens, falls from about a third of the batch to a tenth.
        Rows from DATA.jsonl hold one question each whatever the count."""
        start = number * self.batch_size
        n_turns = random.Random(f"turns:{self.seed}:{number}").randint(1, max(1, self.max_turns))
        return self.encoder.collate([self.item(i, n_turns) for i in range(start, start + self.batch_size)])


_WORKER: BatchMaker | None = None


def _exit_with_parent(parent: int, every_s: float = 2.0) -> None:
    """Runs in a worker's thread: when the trainer is gone (killed, even with SIGKILL, so that its pool
    could not say goodbye), the worker goes too instead of holding its memory for good."""
    import threading
    import time

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(every_s)
        os._exit(0)

    threading.Thread(target=watch, name="vqa-train-parent-watch", daemon=True).start()


def _worker_init(parent: int, *args: Any) -> None:
    global _WORKER
    import torch

    _exit_with_parent(parent)

    torch.set_num_threads(1)
    if hasattr(os, "nice"):
        # The trainer's threads come first; this process fills the gaps they leave (on 2 cores,
        # 6-8% more steps than at equal priority). It is never starved for long: the trainer
        # waits for its batches.
        os.nice(19)
    _WORKER = BatchMaker(*args)


def _worker_batch(number: int) -> dict[str, Any]:
    assert _WORKER is not None
    return _WORKER.batch(number)


class Prefetcher:
    """Batches prepared ahead in a background process while the model trains on the current one."""

    def __init__(self, args: tuple[Any, ...], workers: int, start: int, ahead: int = 3) -> None:
        self.next = start
        self.local: BatchMaker | None = None
        self.pool: ProcessPoolExecutor | None = None
        self.pending: list[Future[dict[str, Any]]] = []
        if workers <= 0:
            self.local = BatchMaker(*args)
            return
        import multiprocessing

        self.pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                        initializer=_worker_init, initargs=(os.getpid(), *args))
        for _ in range(ahead):
            self._submit()

    def _submit(self) -> None:
        assert self.pool is not None
        self.pending.append(self.pool.submit(_worker_batch, self.next))
        self.next += 1

    def get(self) -> dict[str, Any]:
        if self.local is not None:
            self.next += 1
            return self.local.batch(self.next - 1)
        batch = self.pending.pop(0).result()
        self._submit()
        return batch

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=False, cancel_futures=True)
