"""`vqa bench upstream`: what a gateway costs in front of a real vLLM, measured side by side.

The same kind of pictures go to vLLM directly and through `vqa serve --engine upstream` at concurrency
1 and 16; every request carries a picture neither process has seen (re-sent pictures would hit the
gateway's decoded-picture memo and vLLM's multimodal cache and look several times cheaper than a
customer's new photo). CPU per request is each process tree's CPU time over a run divided by its
requests. Safety and the answer cache are off in the gateway unless `--env` turns them on.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from vqaserve.bench import workload
from vqaserve.bench.config import BenchConfig, Result
from vqaserve.bench.load import LoadResult, run_load
from vqaserve.bench.procs import ServerProcess, cpu_seconds
from vqaserve.bench.report import ratio
from vqaserve.bench.vllm_server import BUNDLED, VllmServer


def keep_off_vllms_cores(pid: int) -> list[int] | None:
    """Pin a process (all its threads) to the cores scripts/vllm.sh leaves free of vLLM's OpenMP workers
    (it binds them to all cores but the last): a gateway preempting a spinning worker stalls vLLM's
    barrier. As in production, where the gateway does not share vLLM's compute cores."""
    cores = os.cpu_count() or 1
    bind = os.environ.get("VLLM_CPU_OMP_THREADS_BIND")
    if cores < 2 or (bind is not None and bind != f"0-{cores - 2}"):
        return None
    free = [cores - 1]
    for task in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(OSError):
            os.sched_setaffinity(int(task), free)
    return free


def model_budget(model_dir: Path) -> tuple[int, int] | None:
    """The model's own pixel budget (preprocessor_config.json), so the gateway resizes as vLLM would."""
    try:
        size = json.loads((model_dir / "preprocessor_config.json").read_text())["size"]
        return int(size["shortest_edge"]), int(size["longest_edge"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


class UpstreamBench:
    def __init__(self, cfg: BenchConfig) -> None:
        self.cfg = cfg
        self.upstream_url = cfg.upstream_url
        self.upstream_pid = cfg.upstream_pid
        self.model_dir = cfg.vllm_model or BUNDLED / "shop-toy"
        self.env = cfg.env
        self.requests = cfg.requests
        self.concurrency = cfg.concurrency
        self.max_new_tokens = cfg.max_new_tokens
        self.seed = cfg.seed
        self.photo_pairs = cfg.photo_pairs
        self.answers = max(0, cfg.answers)
        self.progress = cfg.progress
        self._next = 50_000  # pictures no other scenario uses

    def fresh(self, n: int) -> list[workload.Item]:
        items = workload.catalogue_items(n, self.seed, self._next)
        self._next += n
        return items

    @contextlib.contextmanager
    def vllm(self) -> Iterator[tuple[str, int | None, str]]:
        """(url, pid, served model name): the given one, or a vLLM started on the bundled model."""
        if self.upstream_url:
            import httpx

            base = self.upstream_url.rstrip("/").removesuffix("/v1")
            name = httpx.get(base + "/v1/models", timeout=10).json()["data"][0]["id"]
            yield base, self.upstream_pid, name
            return
        with VllmServer(self.model_dir) as server:
            assert server.proc is not None
            yield server.url, server.proc.pid, server.name

    def gateway_env(self, upstream: str) -> dict[str, str]:
        env = {"VQA_ENGINE": "upstream", "VQA_UPSTREAM_URL": upstream + "/v1", "VQA_SAFETY_IMAGE": "off",
               "VQA_CACHE__ENABLED": "false", "VQA_DECODED_MEMO": "0", "VQA_REQUEST_TIMEOUT_S": "900"}
        budget = model_budget(self.model_dir)
        if budget:
            env["VQA_MIN_PIXELS"], env["VQA_MAX_PIXELS"] = str(budget[0]), str(budget[1])
        return {**env, **self.env}

    async def measure(self, url: str, model: str, items: list[workload.Item], concurrency: int,
                      pids: dict[str, int | None], label: str) -> tuple[LoadResult, dict[str, float | None]]:
        bodies = [workload.chat_body(i, model, self.max_new_tokens) for i in items]
        before = {k: cpu_seconds(p) if p else None for k, p in pids.items()}
        result = await run_load(url, bodies, concurrency, label=label, progress=self.progress)
        cpu_ms: dict[str, float | None] = {}
        for name, pid in pids.items():
            start = before[name]
            cpu_ms[name] = (None if pid is None or start is None or not result.ok
                            else round(1000.0 * (cpu_seconds(pid) - start) / len(result.ok), 2))
        return result, cpu_ms

    async def run(self) -> Result:
        figures: dict[str, Any] = {}
        details: dict[str, Any] = {}
        with self.vllm() as (vllm_url, vllm_pid, model), ServerProcess(self.gateway_env(vllm_url)) as gateway:
            details["gateway_cores"] = keep_off_vllms_cores(gateway.pid)
            pids = {"gateway": gateway.pid, "vllm": vllm_pid}
            for c in self.concurrency:
                await self.measure(vllm_url, model, self.fresh(max(4, c)), c, pids, "warm-up")
                await self.measure(gateway.url, model, self.fresh(max(4, c)), c, pids, "warm-up")
                direct, direct_cpu = await self.measure(vllm_url, model, self.fresh(self.requests), c, pids,
                                                        f"vLLM direct c={c}")
                through, gw_cpu = await self.measure(gateway.url, model, self.fresh(self.requests), c, pids,
                                                     f"gateway c={c}")
                details[f"c{c}"] = {"direct": direct.summary(), "gateway": through.summary(),
                                    "cpu_ms_per_request": {"direct": direct_cpu, "gateway": gw_cpu}}
                figures[f"direct_rps_c{c}"] = round(direct.rps, 2)
                figures[f"gateway_rps_c{c}"] = round(through.rps, 2)
                figures[f"gateway_over_direct_rps_c{c}"] = ratio(through.rps, direct.rps)
                figures[f"direct_p50_ms_c{c}"] = direct.p(50)
                figures[f"gateway_p50_ms_c{c}"] = through.p(50)
                figures[f"gateway_over_direct_p50_c{c}"] = ratio(through.p(50), direct.p(50))
                figures[f"gateway_cpu_ms_per_req_c{c}"] = gw_cpu["gateway"]
                figures[f"vllm_cpu_ms_per_req_direct_c{c}"] = direct_cpu["vllm"]
                figures[f"vllm_cpu_ms_per_req_via_gateway_c{c}"] = gw_cpu["vllm"]
                figures[f"failed_c{c}"] = (len(direct.samples) - len(direct.ok)
                                           + len(through.samples) - len(through.ok))
            if self.photo_pairs:
                figures.update(await self.camera_photos(vllm_url, gateway.url, model, details))
            if self.answers:
                figures.update(await self.same_answers(vllm_url, gateway.url, model, details))
        return figures, details

    async def same_answers(self, vllm_url: str, gateway_url: str, model: str,
                           details: dict[str, Any]) -> dict[str, Any]:
        """Greedy answers, one request at a time (so vLLM's batch make-up cannot change the numerics):
        pictures already inside the budget must get vLLM-direct's answers exactly (lossless transport);
        for pictures the gateway resizes, accuracy against the catalogue's gold answers, both ways."""
        from vqaserve.images.decode import fit_budget
        from vqaserve.train import synthetic

        budget = model_budget(self.model_dir) or (16384, 25600)
        samples = list(synthetic.iter_samples("test", self.answers, self.seed + 1))
        fitted = [workload.Item(workload.encode(fit_budget(x.image.convert("RGB"), *budget)), "image/png",
                                x.question, f"fit:{i}") for i, x in enumerate(samples)]
        raw = [workload.Item(workload.encode(x.image.convert("RGB")), "image/png", x.question, f"raw:{i}")
               for i, x in enumerate(samples)]
        gold = [x.answer for x in samples]
        out: dict[str, Any] = {}
        for label, items in (("fitted", fitted), ("resized", raw)):
            bodies = [workload.chat_body(i, model, self.max_new_tokens) for i in items]
            direct = await run_load(vllm_url, bodies, 1, label=f"{label} direct", progress=self.progress)
            through = await run_load(gateway_url, bodies, 1, label=f"{label} gateway", progress=self.progress)
            d = [x.answer for x in direct.samples]
            g = [x.answer for x in through.samples]
            details[f"answers_{label}"] = {"direct": d, "gateway": g, "gold": gold}
            if label == "fitted":
                out["fitted_answers_equal"] = f"{sum(a == b for a, b in zip(d, g, strict=True))}/{len(d)}"
            else:
                acc_d = sum(a == b for a, b in zip(d, gold, strict=True)) / len(gold)
                acc_g = sum(a == b for a, b in zip(g, gold, strict=True)) / len(gold)
                out["resized_accuracy_direct"] = round(acc_d, 4)
                out["resized_accuracy_gateway"] = round(acc_g, 4)
                out["resized_accuracy_gateway_over_direct"] = ratio(acc_g, acc_d)
        return out

    async def camera_photos(self, vllm_url: str, gateway_url: str, model: str,
                            details: dict[str, Any]) -> dict[str, Any]:
        """12 MP camera JPEGs at concurrency 1: vLLM decodes and resizes them itself, the gateway first."""
        photos = [workload.photo_pair(self.seed, 60_000 + i)[0] for i in range(self.photo_pairs * 2)]
        bodies = [workload.chat_body(p, model, self.max_new_tokens) for p in photos]
        direct = await run_load(vllm_url, bodies[: self.photo_pairs], 1, label="12MP direct",
                                progress=self.progress)
        through = await run_load(gateway_url, bodies[self.photo_pairs:], 1, label="12MP gateway",
                                 progress=self.progress)
        details["photo_12mp"] = {"direct": direct.summary(), "gateway": through.summary()}
        return {"photo_12mp_direct_p50_ms": direct.p(50), "photo_12mp_gateway_p50_ms": through.p(50),
                "photo_12mp_gateway_over_direct_p50": ratio(through.p(50), direct.p(50))}
