"""What a `vqa train --lora` adapter is on disk, and what vLLM makes of one. Decided here only.

Training gives new answer words (`--lora-new-words`) their own embedding rows as PEFT trainable tokens:
exact rows, the recipe the eval figures come from. vLLM 0.32 refuses those weights
(`...token_adapter.trainable_tokens_delta is unsupported LoRA weight`), so the adapter is saved with
the rows rewritten as two ordinary LoRA pairs of rank k (the number of rows) and scaling 1, which
PEFT and vLLM both apply:

    embed_tokens  lora_embedding_A (k x vocab, one-hot at the token ids), lora_embedding_B (hidden x k: row deltas)
    lm_head       lora_A (k x hidden: the row deltas), lora_B (vocab x k, one-hot)

The lm_head pair is there because the Qwen3-VL models tie lm_head to embed_tokens: a trained row is
also the word's output embedding, which is what lets the adapter *say* the word. Both pairs give the
same numbers as the trainable rows (up to float rounding). vLLM applies LoRA on the vision tower
(`qkv` etc.) only with `--enable-tower-connector-lora --mm-processor-cache-gb 0`; without them it drops
that half with a log line, so `vqa adapter check` says which flags an adapter needs.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

WEIGHTS = "adapter_model.safetensors"
CONFIG = "adapter_config.json"
LM_HEAD_KEY = "base_model.model.lm_head"  # where PEFT keeps Qwen3-VL's output embedding
_TOKEN_DELTA = ".token_adapter.trainable_tokens_delta"
VLLM = "vLLM 0.32"
VLLM_MAX_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # the values --max-lora-rank accepts
TOWER_FLAGS = ("--enable-tower-connector-lora", "--mm-processor-cache-gb", "0")
_VLLM_DEFAULT_RANK = 16  # vLLM's --max-lora-rank when not given
# Modules vLLM's Qwen3-VL wraps with LoRA (vllm/model_executor/models/qwen3_vl.py, qwen3.py): the
# decoder's linear layers and embeddings, and the vision tower's linear layers. The tower's
# patch_embed.proj is a convolution there, and its pos_embed no LoRA-able layer.
_LANGUAGE = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "embed_tokens", "lm_head"}
_TOWER = {"qkv", "proj", "linear_fc1", "linear_fc2"}
_TOWER_IGNORED = ("patch_embed.proj",)
# adapter_config.json fields vLLM refuses to load (vllm/lora/peft_helper.py), with why.
_REFUSED_FIELDS = {"use_dora": "DoRA", "lora_bias": "LoRA bias", "alora_invocation_tokens": "activated LoRA",
                   "layer_replication": "layer replication", "use_bdlora": "block-diagonal LoRA",
                   "use_qalora": "QALoRA"}


# --- training and saving ------------------------------------------------------------------------------
def training_lora_kwargs(targets: list[str], new_token_ids: list[int]) -> dict[str, Any]:
    """LoraConfig arguments for training: the targets, plus the new words' rows as trainable tokens."""
    return {"target_modules": targets, "bias": "none",
            "trainable_token_indices": {"embed_tokens": new_token_ids} if new_token_ids else None}


def token_rows_as_lora(tensors: dict[str, Any], config: dict[str, Any], base_embedding: Any,
                       tied: bool) -> tuple[dict[str, Any], dict[str, Any]]:
    """Rewrite PEFT trainable-token rows as LoRA on embed_tokens (and on lm_head when tied); returns new
    (tensors, config). `base_embedding` is the base model's input embedding matrix (vocab x hidden)."""
    import torch

    keys = [k for k in tensors if k.endswith(_TOKEN_DELTA)]
    if not keys:
        return tensors, config
    indices = config.get("trainable_token_indices") or {}
    ids = indices.get("embed_tokens") if isinstance(indices, dict) else indices
    if len(keys) != 1 or not ids:
        raise ValueError(f"expected one embed_tokens trainable-token weight with its indices, found {keys}")
    values = tensors[keys[0]].float()
    if values.shape[0] != len(ids):
        raise ValueError(f"{len(ids)} token indices but {values.shape[0]} trainable rows")
    index = torch.tensor(ids)
    delta = values - base_embedding.detach().float().cpu()[index]
    k, vocab = len(ids), base_embedding.shape[0]
    one_hot = torch.zeros(k, vocab)
    one_hot[torch.arange(k), index] = 1.0
    out = {name: t for name, t in tensors.items() if name != keys[0]}
    embed = keys[0].removesuffix(_TOKEN_DELTA)
    out[f"{embed}.lora_embedding_A"] = one_hot.contiguous()
    out[f"{embed}.lora_embedding_B"] = delta.T.contiguous()
    modules = ["embed_tokens"]
    if tied:
        out[f"{LM_HEAD_KEY}.lora_A.weight"] = delta.contiguous()
        out[f"{LM_HEAD_KEY}.lora_B.weight"] = one_hot.T.contiguous()
        modules.append("lm_head")
    new = dict(config)
    new["trainable_token_indices"] = None
    new["target_modules"] = sorted(set(config.get("target_modules") or []) | set(modules))
    # rank k and alpha k: scaling 1, so the pairs add exactly the trained rows.
    new["rank_pattern"] = {**(config.get("rank_pattern") or {}), **{m: k for m in modules}}
    new["alpha_pattern"] = {**(config.get("alpha_pattern") or {}), **{m: k for m in modules}}
    return out, new


def save_for_serving(model: Any, out: Path) -> None:
    """After `PeftModel.save_pretrained(out)`: put the adapter in the form PEFT and vLLM both serve."""
    from safetensors.torch import load_file, save_file

    weights, config_path = out / WEIGHTS, out / CONFIG
    tensors = load_file(str(weights))
    if not any(k.endswith(_TOKEN_DELTA) for k in tensors):
        return
    names = {name for name, _ in model.named_modules()}
    tied = any(n.endswith("lm_head.token_adapter") for n in names)
    embedding = model.get_base_model().get_input_embeddings()
    base = getattr(getattr(embedding, "token_adapter", embedding), "base_layer", embedding).weight
    config = json.loads(config_path.read_text())
    tensors, config = token_rows_as_lora(tensors, config, base, tied)
    save_file(tensors, str(weights), metadata={"format": "pt"})
    config_path.write_text(json.dumps(config, indent=2) + "\n")


def convert(adapter: str | Path, model_dir: str | Path, out: str | Path) -> int:
    """Rewrite an older adapter's trainable-token rows as LoRA (reading the base embedding from
    MODEL_DIR's safetensors); returns how many rows moved into LoRA form."""
    import shutil

    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from vqaserve.errors import ConfigError

    src, dst, model = Path(adapter), Path(out), Path(model_dir)
    config, shapes = read_adapter(src)
    rows = [shape[0] for key, shape in shapes.items() if key.endswith(_TOKEN_DELTA)]
    if not rows:
        raise ConfigError(f"{src.name}: no trainable-token rows to convert; it is already in the form vLLM "
                          "serves (vqa adapter check tells)")
    if not (model / "config.json").is_file():
        raise ConfigError(f"--model {model.name}: no config.json; give the base model directory (or bundled "
                          "name) the adapter was trained on")
    tensors = load_file(str(src / WEIGHTS))
    model_config = json.loads((model / "config.json").read_text())
    tied = bool(model_config.get("tie_word_embeddings",
                                 (model_config.get("text_config") or {}).get("tie_word_embeddings", False)))
    base = None
    for file in sorted(model.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as f:
            key = next((k for k in f.keys() if k.endswith("embed_tokens.weight") and "visual" not in k), None)  # noqa: SIM118
            if key:
                base = f.get_tensor(key)
                break
    if base is None:
        raise ConfigError(f"--model {model.name}: no embed_tokens weight in its safetensors; give the base "
                          "model directory the adapter was trained on")
    tensors, config = token_rows_as_lora(tensors, config, base, tied)
    dst.mkdir(parents=True, exist_ok=True)
    for item in src.iterdir():
        if item.is_file() and item.name not in (WEIGHTS, CONFIG):
            shutil.copy2(item, dst / item.name)
    save_file(tensors, str(dst / WEIGHTS), metadata={"format": "pt"})
    (dst / CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    return sum(rows)


# --- checking an adapter for vLLM -------------------------------------------------------------------------
@dataclass(frozen=True)
class Finding:
    level: str  # "problem": vLLM refuses it or drops a part of it; "needs": a serve flag it requires
    field: str
    message: str
    fix: str

    def line(self) -> str:
        if self.level == "needs":
            return f"note: {self.field}: {self.message}; serve with: {self.fix}"
        return f"{self.level}: {self.field}: {self.message}; fix: {self.fix}"


@dataclass
class Verdict:
    path: str
    findings: list[Finding] = field(default_factory=list)
    max_rank: int = 0
    tower: bool = False

    @property
    def ok(self) -> bool:
        return not any(f.level == "problem" for f in self.findings)

    def serve_flags(self) -> list[str]:
        rank = next((r for r in VLLM_MAX_LORA_RANKS if r >= self.max_rank), VLLM_MAX_LORA_RANKS[-1])
        flags = ["--enable-lora", "--max-lora-rank", str(rank)]
        return flags + list(TOWER_FLAGS) if self.tower else flags

    def to_json(self) -> dict[str, Any]:
        return {"adapter": self.path, "for": "vllm", "vllm": VLLM, "ok": self.ok, "max_rank": self.max_rank,
                "vision_tower": self.tower, "serve_flags": self.serve_flags(),
                "findings": [asdict(f) for f in self.findings]}


def read_adapter(path: str | Path) -> tuple[dict[str, Any], dict[str, list[int]]]:
    """adapter_config.json and {weight name: shape} from the safetensors header (no torch)."""
    from vqaserve.errors import ConfigError

    directory = Path(path)
    if not (directory / CONFIG).is_file():
        raise ConfigError(f"{directory.name}: no {CONFIG}; give a PEFT adapter directory (made by vqa train --lora)")
    if not (directory / WEIGHTS).is_file():
        raise ConfigError(f"{directory.name}: no {WEIGHTS}; save the adapter with safetensors "
                          "(PEFT's save_pretrained does by default)")
    config = json.loads((directory / CONFIG).read_text(encoding="utf-8"))
    with open(directory / WEIGHTS, "rb") as f:
        (size,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(size))
    return config, {k: list(v["shape"]) for k, v in header.items() if k != "__metadata__"}


def check_vllm(path: str | Path, given_flags: Iterable[str] | None = None) -> Verdict:
    """Will vLLM load this adapter, and apply every part of it? `given_flags`: the `vllm serve` arguments
    to check against (None: list the flags it needs instead)."""
    config, shapes = read_adapter(path)
    verdict = Verdict(str(path))
    verdict.findings += _config_findings(config)
    modules = _weight_findings(verdict, shapes)
    ranks = [int(config.get("r") or 0), *(int(v) for v in (config.get("rank_pattern") or {}).values())]
    verdict.max_rank = max(ranks)
    verdict.tower = any(m.startswith("model.visual.") for m in modules)
    if given_flags is not None:
        verdict.findings += _flag_findings(verdict, _split_flags(given_flags))
        return verdict
    if verdict.tower:
        verdict.findings.append(Finding("needs", "model.visual.*", "vision-tower LoRA weights: vLLM applies "
                                        "them only with these flags and otherwise ignores them (log line 'no "
                                        "matching PunicaWrapper is found')", " ".join(TOWER_FLAGS)))
    if verdict.max_rank > _VLLM_DEFAULT_RANK:
        verdict.findings.append(Finding("needs", "rank", f"rank {verdict.max_rank} is above vLLM's default "
                                        f"--max-lora-rank {_VLLM_DEFAULT_RANK}; it refuses the adapter without",
                                        f"--max-lora-rank {verdict.serve_flags()[2]}"))
    return verdict


def _split_flags(flags: Iterable[str]) -> list[str]:
    """`--a=b` and `--a b` alike; a single string is split like a shell would (no quoting)."""
    out: list[str] = []
    for flag in ([flags] if isinstance(flags, str) else flags):
        for word in flag.split():
            out.extend(word.split("=", 1) if word.startswith("--") else [word])
    return out


def module_findings(modules: Iterable[str]) -> list[Finding]:
    """Problems with LoRA on these modules (paths as in the model, e.g. model.visual.blocks.0.attn.qkv)."""
    found: list[Finding] = []
    for module in sorted(set(modules)):
        leaf = module.rsplit(".", 1)[-1]
        if module.startswith("model.visual."):
            if module.endswith(_TOWER_IGNORED) or leaf not in _TOWER:
                found.append(Finding("problem", module, f"{VLLM} has no LoRA layer there (vision tower) and "
                                     "ignores or refuses this weight",
                                     "target the tower's qkv, proj, linear_fc1 or linear_fc2 instead"))
        elif module.startswith(("model.language_model.", "lm_head")) and leaf not in _LANGUAGE:
            found.append(Finding("problem", module, f"{VLLM} has no LoRA layer named {leaf!r} in the decoder",
                                 f"target {', '.join(sorted(_LANGUAGE))}"))
    return found


def _config_findings(config: dict[str, Any]) -> list[Finding]:
    found = []
    if config.get("peft_type", "LORA") != "LORA":
        found.append(Finding("problem", "peft_type", f"{config.get('peft_type')!r} is not LoRA; vLLM serves LoRA only",
                             "train a LoRA adapter (vqa train --lora)"))
    for name, what in _REFUSED_FIELDS.items():
        if config.get(name):
            found.append(Finding("problem", name, f"{what} is set; {VLLM} refuses such adapters",
                                 f"retrain without {what}"))
    if config.get("bias", "none") != "none":
        found.append(Finding("problem", "bias", f"bias={config['bias']!r}; {VLLM} refuses adapter biases",
                             "retrain with bias='none' (vqa train --lora does)"))
    init = config.get("init_lora_weights", True)
    if isinstance(init, str) and init.lower() not in ("gaussian", "eva", "orthogonal", "mica", "lora_ga"):
        found.append(Finding("problem", "init_lora_weights", f"{init!r} changes the base weights; {VLLM} refuses it",
                             "convert it to a plain LoRA adapter with PEFT first"))
    if [m for m in (config.get("modules_to_save") or []) if m not in ("classifier", "score")]:
        found.append(Finding("problem", "modules_to_save", f"{config['modules_to_save']}: {VLLM} refuses whole "
                             "saved modules (classification heads aside)",
                             "train LoRA on those modules instead (vqa train --lora-new-words does for embeddings)"))
    if config.get("trainable_token_indices"):
        found.append(Finding("problem", "trainable_token_indices", f"PEFT trainable tokens; {VLLM} refuses "
                             "their weights ('unsupported LoRA weight')", _RETRAIN))
    return found


_RETRAIN = ("retrain with this version's vqa train --lora, or run `vqa adapter convert` on it: both store "
            "new-word rows as LoRA on embed_tokens and lm_head")


def _weight_findings(verdict: Verdict, shapes: dict[str, list[int]]) -> set[str]:
    modules: set[str] = set()
    odd: list[str] = []
    for key in shapes:
        name = key.removeprefix("base_model.model.")
        for suffix in (".lora_A.weight", ".lora_B.weight", ".lora_embedding_A", ".lora_embedding_B"):
            if name.endswith(suffix):
                modules.add(name.removesuffix(suffix))
                break
        else:
            if key.endswith(_TOKEN_DELTA):
                if not any(f.field == "trainable_token_indices" for f in verdict.findings):
                    verdict.findings.append(Finding("problem", key, f"trainable-token rows; {VLLM} refuses the "
                                                    "adapter ('unsupported LoRA weight')", _RETRAIN))
            elif name.rsplit(".", 2)[-2:-1] not in (["score"], ["classifier"]):
                odd.append(key)
    if odd:
        verdict.findings.append(Finding("problem", odd[0], f"{len(odd)} weight(s) that are no LoRA A/B pair; "
                                        f"{VLLM} refuses the adapter ('unsupported LoRA weight')",
                                        "keep only lora_A/lora_B (and lora_embedding_A/B) weights"))
    verdict.findings += module_findings(modules)
    return modules


def _flag_findings(verdict: Verdict, flags: list[str]) -> list[Finding]:
    found = []
    if "--enable-lora" not in flags:
        found.append(Finding("problem", "--enable-lora", "missing: vLLM serves no adapter without it",
                             "add --enable-lora --lora-modules NAME=PATH"))
    rank = _VLLM_DEFAULT_RANK
    if "--max-lora-rank" in flags[:-1]:
        value = flags[flags.index("--max-lora-rank") + 1]
        rank = int(value) if value.isdigit() else 0
    if verdict.max_rank > rank:
        found.append(Finding("problem", "--max-lora-rank", f"{rank} is below the adapter's rank "
                             f"{verdict.max_rank}; vLLM refuses to load it",
                             f"--max-lora-rank {verdict.serve_flags()[2]}"))
    cache_off = any(flags[i:i + 2] == ["--mm-processor-cache-gb", "0"] for i in range(len(flags)))
    if verdict.tower and not ("--enable-tower-connector-lora" in flags and cache_off):
        found.append(Finding("problem", "--enable-tower-connector-lora", "the adapter has vision-tower LoRA "
                             "weights, which vLLM ignores without this flag (the picture is read as by the base "
                             "model)", "add --enable-tower-connector-lora --mm-processor-cache-gb 0"))
    return found
