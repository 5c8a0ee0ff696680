"""Benchmark output: the figures against the issue's targets as a table, and a JSON file that says how
they were made (command, versions, machine, settings)."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

# figure name -> (comparison, target, what it is)
TARGETS: dict[str, tuple[str, float, str]] = {
    "throughput_c16_batching_on_over_off": (">=", 2.0, "req/s at c=16, batching on / off"),
    "throughput_c16_http_over_engine_b16": (">=", 0.85, "req/s at c=16 via HTTP / engine batch-16"),
    "latency_c1_p50_batching_on_over_off": ("<=", 1.1, "p50 at c=1, batching on / off"),
    "photo_12mp_over_1280": ("<=", 1.5, "p50 12 MP JPEG / same picture at 1280x960"),
    "http_p50_over_engine_p50": ("<=", 1.15, "HTTP p50 / in-process engine p50"),
    "preprocess_ours_over_transformers": ("<=", 0.25, "12 MP preprocessing, ours / transformers"),
    "miss_over_hit_l1": (">=", 20.0, "p50 of a cache miss / an L1 hit (issue 6)"),
    # `vqa bench upstream` (issue 20): the gateway in front of a real vLLM
    "gateway_over_direct_rps_c16": (">=", 0.85, "req/s at c=16, through the gateway / vLLM direct"),
    "gateway_over_direct_p50_c1": ("<=", 1.25, "p50 at c=1, through the gateway / vLLM direct"),
    "gateway_cpu_ms_per_req_c1": ("<=", 3.0, "gateway CPU ms per request (never-seen pictures)"),
    "photo_12mp_gateway_over_direct_p50": ("<=", 0.5, "12 MP JPEG p50, through the gateway / direct"),
    "resized_accuracy_gateway_over_direct": (">=", 1.0, "accuracy on pictures the gateway resizes"),
    # `vqa bench stream` (issue 28): streams batch like plain requests and cost about the same
    "stream_over_plain_rps_c16": (">=", 0.8, "req/s, 16 streams / 16 plain requests, through HTTP"),
    "stream_over_plain_rps_c16_in_process": (">=", 0.8, "the same through the pipeline in process"),
    # `vqa bench vision-reuse` (issue 22): a follow-up question skips the vision tower
    "vision_reuse_q2_over_q1_minus_tower": ("<=", 1.0, "follow-up's generate / (first's - tower's), medians"),
    # `vqa bench structured` (issue 22)
    "structured_valid_share": (">=", 1.0, "answers that parse and follow the attribute schema"),
    # `vqa bench near-duplicates` (issue 6)
    "near_duplicates_hit_rate": (">=", 0.95, "re-encoded copies that hit their original"),
    "near_duplicates_false_hits": ("<=", 0, "copies, distinct pictures or negatives that hit another picture"),
    # `vqa bench image-safety` (issue 5): every catalogue picture is harmless
    "image_safety_false_positives": ("<=", 0, "catalogue pictures the image check refuses"),
    # `vqa bench capture` (issue 29): capture stays off the request path
    "capture_hook_ms": ("<=", 1.0, "ms per answer capture adds on the request path (the hook)"),
    # `vqa bench story` / `story-vllm` (issue 29): the learning loop, end to end
    "story_failed_requests": ("<=", 0, "requests not answered 200, while the adapter went live included"),
    "story_restarts": ("<=", 0, "service (and vLLM) processes that were not the ones started"),
    "story_train_minutes": ("<=", 10.0, "minutes of the whole `vqa train` command"),
    "story_gate_passed": (">=", 1, "`vqa eval --compare --max-regression` let the adapter through"),
    "story_new_category_adapter": (">=", 0.80, "new sunglasses pictures whose category the live adapter names"),
    "story_test_drop_points": ("<=", 2.0, "test split as served, base minus adapter, in points"),
    # `vqa bench adapter-vllm` (issue 20)
    "adapter_vllm_equal_share": (">=", 0.95, "adapter's greedy answers equal, vLLM / in process"),
}


def check(name: str, value: float | None) -> str:
    if value is None or name not in TARGETS:
        return ""
    op, target, _ = TARGETS[name]
    met = value >= target if op == ">=" else value <= target
    return "met" if met else "MISSED"


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return round(a / b, 3)


def versions() -> dict[str, str]:
    from importlib import metadata

    out = {"python": platform.python_version()}
    for name in ("vqaserve", "torch", "transformers", "pillow", "httpx", "fastapi", "uvicorn", "redis"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[name] = metadata.version(name)  # from package metadata: no heavy import
    return out


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {"platform": platform.platform(), "processor": platform.processor(),
                            "cpus": os.cpu_count()}
    with contextlib.suppress(OSError):
        info["load_average"] = [round(x, 2) for x in os.getloadavg()]
    try:
        import psutil

        info["memory_gb"] = round(psutil.virtual_memory().total / 2**30, 1)
    except ImportError:
        pass
    torch = sys.modules.get("torch")  # only when a scenario loaded it (importing it takes seconds)
    if torch is not None:
        info["torch_threads"] = torch.get_num_threads()
        info["cuda"] = torch.cuda.is_available()
    return info


def table(figures: dict[str, Any]) -> str:
    """Target figures first (with their verdict), then the rest, one per line."""
    lines = [f"{'figure':<44} {'value':>12}  {'target':<8} verdict"]
    for name, (op, target, _what) in TARGETS.items():
        if name in figures:
            value = figures[name]
            shown = "n/a" if value is None else f"{value:.3f}"
            lines.append(f"{name:<44} {shown:>12}  {op}{target:<6} {check(name, value)}")
    for name, value in figures.items():
        if name not in TARGETS:
            shown = f"{value:.3f}" if isinstance(value, float) else str(value)
            lines.append(f"{name:<44} {shown:>12}")
    return "\n".join(lines)


def write(out_dir: Path, scenario: str, figures: dict[str, Any], details: dict[str, Any],
          server_env: dict[str, str], started: float) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(started))
    path = out_dir / f"bench-{scenario}-{stamp}.json"
    record = {
        "scenario": scenario, "command": " ".join(["vqa", *sys.argv[1:]]) if sys.argv else "",
        "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "duration_s": round(time.time() - started, 1), "versions": versions(), "machine": machine(),
        "server_env": server_env,
        "figures": figures,
        "targets": {k: {"op": op, "target": t, "what": what, "verdict": check(k, figures.get(k))}
                    for k, (op, t, what) in TARGETS.items() if k in figures},
        "details": details,
    }
    path.write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n")
    return path
