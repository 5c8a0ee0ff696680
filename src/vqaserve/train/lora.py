"""LoRA for `vqa train --lora`: which modules adapt, and which new words' embedding rows train with them."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from vqaserve.errors import ConfigError
from vqaserve.train import adapter_format


def wrap_lora(model: Any, r: int, alpha: int, dropout: float, targets_spec: str, new_token_ids: list[int]) -> Any:
    """The model wrapped in PEFT LoRA on `targets_spec` (comma-separated module names); refuses targets
    that vLLM would refuse or half-ignore before any training is spent on them."""
    from peft import LoraConfig, get_peft_model
    from peft.tuners.lora import LoraLayer

    targets = [t.strip() for t in targets_spec.split(",") if t.strip()]
    if not targets:
        raise ConfigError("--lora-targets must name at least one module, e.g. q_proj,v_proj")
    names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    missing = [t for t in targets if t not in names]
    if missing:
        raise ConfigError(f"--lora-targets: no module named {', '.join(missing)} in this model")
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout,
                        **adapter_format.training_lora_kwargs(targets, new_token_ids))
    wrapped = get_peft_model(model, config)
    lora_modules = [name.removeprefix("base_model.model.") for name, module in wrapped.named_modules()
                    if isinstance(module, LoraLayer)]
    problems = adapter_format.module_findings(lora_modules)
    if problems:
        raise ConfigError(f"--lora-targets: {len(problems)} module(s) vLLM cannot serve LoRA on, e.g. "
                          f"{problems[0].field}: {problems[0].message}; fix: {problems[0].fix}")
    return wrapped


def token_ids(tokenizer: Any, words: str, answers: Sequence[str] = ()) -> list[int]:
    """Token ids of comma-separated words: alone (with and without a leading space: answers start a
    turn) and as the training answers spell them. A BPE merges a word with its neighbours
    ("一件红色条纹太阳镜" -> "一件" "红" "色条纹太阳镜"), and a merged token the base never produced
    keeps its random embedding unless its row trains too: the first sunglasses adapter, trained on
    the word alone, answered 0% of Chinese "describe" questions."""
    wanted = [w for w in (w.strip() for w in words.split(",")) if w]
    ids: set[int] = set()
    for word in wanted:
        for variant in (word, " " + word):
            ids.update(tokenizer.encode(variant, add_special_tokens=False))
    for answer in set(answers):
        spans = [m.span() for w in wanted for m in re.finditer(re.escape(w), answer)]
        if not spans:
            continue
        enc = tokenizer(answer, add_special_tokens=False, return_offsets_mapping=True)
        for tok, (start, end) in zip(enc["input_ids"], enc["offset_mapping"], strict=True):
            if any(start < hi and lo < end for lo, hi in spans):
                ids.add(tok)
    return sorted(ids)
