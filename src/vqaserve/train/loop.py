"""One optimizer step: the answer loss over `--grad-accum` micro-batches, run through Accelerate.

Accelerate does what differs between one process and many (DDP's gradient all-reduce, skipped on all
but the last micro-batch), autocast, and fp16's loss scaling; this module only says what a step is.
The loss of a step is the mean over every answer token of all its micro-batches, so N micro-batches of
B rows give the gradient of one batch of N x B rows, whatever their answer lengths.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch


def answer_loss(model: Any, batch: dict[str, Any]) -> Any:
    """Next-token cross-entropy on answer positions only; the vocabulary projection runs on those
    few positions instead of the whole sequence (most of a VQA sequence is prompt and image)."""
    labels = batch["labels"]
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    hidden = model.model(**inputs, use_cache=False).last_hidden_state[:, :-1]
    targets = labels[:, 1:]
    keep = targets != -100
    logits = model.lm_head(hidden[keep])
    return torch.nn.functional.cross_entropy(logits.float(), targets[keep])


def answer_tokens(batch: dict[str, Any]) -> int:
    """How many positions answer_loss averages over (the labels shifted by one)."""
    return int((batch["labels"][:, 1:] != -100).sum())


class AnswerLoss(torch.nn.Module):
    """The loss as a module, so that Accelerate's wrapper (DDP) sees the forward pass it must sync."""

    def __init__(self, core: Any) -> None:
        super().__init__()
        self.core = core

    def forward(self, batch: dict[str, Any]) -> Any:
        return answer_loss(self.core, batch)


def optimizer_step(accelerator: Any, module: Any, opt: Any, batches: Sequence[dict[str, Any]],
                   clip: float = 1.0) -> float:
    """Forward and backward over `batches` (one optimizer step's micro-batches), then clip and step.
    Returns the step's loss: the mean over all its answer tokens."""
    counts = [answer_tokens(b) for b in batches]
    total = max(1, sum(counts))
    loss_sum, last = 0.0, 0.0
    for batch, count in zip(batches, counts, strict=True):
        with accelerator.accumulate(module):
            with accelerator.autocast():
                loss = module(_to(batch, accelerator.device))
            # accelerator.backward divides by the micro-batch count; weighting by this batch's share
            # of the step's answer tokens makes the sum the loss of the whole step (exactly 1 for one).
            weight = len(batches) * count / total
            accelerator.backward(loss if weight == 1 else loss * weight)
            if accelerator.sync_gradients:
                accelerator.clip_grad_norm_(_trained(module), clip)
            opt.step()
            opt.zero_grad(set_to_none=True)
        last = float(loss.detach())
        loss_sum += last * count
    return last if len(batches) == 1 else loss_sum / total


def _trained(module: Any) -> Iterable[Any]:
    return [p for p in module.parameters() if p.requires_grad]


def _to(batch: dict[str, Any], device: Any) -> dict[str, Any]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}
