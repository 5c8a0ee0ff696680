"""The benchmark scenarios. Each returns (figures, details): figures are the headline numbers (the
issue's target ratios among them), details the per-run summaries behind them.

A scenario runs against `--url` (a running server) or starts its own servers (`vqa serve` in a
subprocess) with the settings it compares, e.g. batching on and off (VQA_BATCH_MAX_SIZE=1).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from vqaserve.bench import workload
from vqaserve.bench.config import BenchConfig, Result
from vqaserve.bench.load import LoadResult, run_load, stage_means_ms, stage_totals
from vqaserve.bench.procs import RedisProcess, ServerProcess, rss_bytes
from vqaserve.bench.report import ratio
from vqaserve.errors import ConfigError


class Bench:
    def __init__(self, cfg: BenchConfig) -> None:
        self.cfg = cfg
        self._next_index = 0  # every measurement gets pictures no server has seen (no cache hits)

    # --- helpers ---------------------------------------------------------------------------------
    def fresh_items(self, n: int) -> list[workload.Item]:
        items = workload.catalogue_items(n, self.cfg.seed, self._next_index)
        self._next_index += n
        return items

    def bodies(self, items: list[workload.Item], **extra: object) -> list[bytes]:
        return [workload.chat_body(i, None, self.cfg.max_new_tokens, **extra) for i in items]

    @contextlib.contextmanager
    def server(self, **extra: str) -> Iterator[tuple[str, int | None]]:
        """(url, pid) of the server to measure: --url as given, or one started with these settings."""
        if self.cfg.url:
            if extra:
                raise ConfigError(f"this scenario compares server settings ({', '.join(extra)}); "
                                  "run it without --url so the benchmark starts the servers itself")
            yield self.cfg.url, self.cfg.pid
            return
        with ServerProcess(self.cfg.server_env(**extra)) as proc:
            yield proc.url, proc.pid

    async def load(self, url: str, items: list[workload.Item], concurrency: int, label: str,
                   stream: bool = False, **extra: object) -> LoadResult:
        bodies = self.bodies(items, stream=True, **extra) if stream else self.bodies(items, **extra)
        return await run_load(url, bodies, concurrency, label=label, stream=stream,
                              progress=self.cfg.progress, api_key=self.cfg.api_key)

    async def warm(self, url: str, concurrency: int) -> None:
        await self.load(url, self.fresh_items(concurrency), concurrency, "warm-up")

    # --- scenarios -------------------------------------------------------------------------------
    async def latency(self) -> Result:
        """Concurrency 1 through HTTP, and the same pictures through the engine in-process."""
        items = self.fresh_items(self.cfg.requests)
        with self.server() as (url, _pid):
            await self.warm(url, 1)
            before = await stage_totals(url, self.cfg.api_key)
            http = await self.load(url, items, 1, "latency c=1")
            stages = stage_means_ms(before, await stage_totals(url, self.cfg.api_key), len(http.ok))
        figures: dict[str, Any] = {"http_p50_ms": http.p(50), "http_p90_ms": http.p(90)}
        # Where the HTTP time goes, from the server's own stage histograms (mean ms per request); the
        # rest of the client's mean is HTTP, JSON and the client itself.
        figures.update({f"server_{stage}_ms": ms for stage, ms in sorted(stages.items(), key=lambda kv: -kv[1])})
        mean = http.summary()["mean_ms"]
        if mean is not None and stages:
            figures["http_and_client_ms"] = round(mean - sum(stages.values()), 2)
        details: dict[str, Any] = {"http": http.summary(), "server_stages_mean_ms": stages}
        if self.cfg.in_process:
            from vqaserve.bench.inprocess import InProcessEngine

            async with InProcessEngine(self.cfg.settings(), self.cfg.max_new_tokens,
                                       self.cfg.torch_threads) as eng:
                details["engine"] = await eng.p50_ms(eng.requests(items))
            figures["engine_p50_ms"] = details["engine"]["p50_ms"]
            figures["http_p50_over_engine_p50"] = ratio(http.p(50), figures["engine_p50_ms"])
        return figures, details

    async def throughput(self) -> Result:
        """c = 1/4/16 with batching on and off (VQA_BATCH_MAX_SIZE=1); the engine's own batch-16."""
        per_c = {c: self.fresh_items(max(self.cfg.requests, 3 * c)) for c in self.cfg.concurrency}
        details: dict[str, Any] = {}
        answers: dict[str, list[str]] = {}
        modes = {"on": {}, "off": {"VQA_BATCH_MAX_SIZE": "1"}} if not self.cfg.url else {"on": {}}
        for mode, extra in modes.items():
            with self.server(**extra) as (url, _pid):
                await self.warm(url, max(self.cfg.concurrency))
                for c, items in per_c.items():
                    res = await self.load(url, items, c, f"batching {mode} c={c}")
                    details[f"batching_{mode}_c{c}"] = res.summary()
                    answers[f"{mode}_c{c}"] = [s.answer for s in res.samples]
        top = max(self.cfg.concurrency)
        figures: dict[str, Any] = {}
        for mode in modes:
            for c in self.cfg.concurrency:
                figures[f"rps_batching_{mode}_c{c}"] = details[f"batching_{mode}_c{c}"]["rps"]
        if "off" in modes:
            figures["throughput_c16_batching_on_over_off"] = ratio(
                figures[f"rps_batching_on_c{top}"], figures[f"rps_batching_off_c{top}"])
            if 1 in self.cfg.concurrency:
                figures["latency_c1_p50_batching_on_over_off"] = ratio(
                    details["batching_on_c1"]["p50_ms"], details["batching_off_c1"]["p50_ms"])
            figures["answers_equal_on_vs_off"] = all(
                answers[f"on_c{c}"] == answers[f"off_c{c}"] for c in self.cfg.concurrency)
        if self.cfg.in_process:
            from vqaserve.bench.inprocess import InProcessEngine

            async with InProcessEngine(self.cfg.settings(), self.cfg.max_new_tokens,
                                       self.cfg.torch_threads) as eng:
                requests = eng.requests(per_c[top])
                details["engine_batch"] = await eng.throughput(requests, top)
                details["engine_batch1"] = await eng.throughput(requests, 1)
            figures[f"rps_engine_b{top}"] = details["engine_batch"]["rps"]
            figures["rps_engine_b1"] = details["engine_batch1"]["rps"]
            figures["throughput_c16_http_over_engine_b16"] = ratio(
                figures[f"rps_batching_on_c{top}"], figures[f"rps_engine_b{top}"])
        return figures, details

    async def cache(self) -> Result:
        """Miss vs hit p50; L1 hit vs L2 hit (Redis, server restarted); a 70%-repeat replay."""
        n = self.cfg.requests
        items = self.fresh_items(n)
        details: dict[str, Any] = {}
        if self.cfg.url:
            url = self.cfg.url
            details["miss"] = (await self.load(url, items, 1, "miss")).summary()
            details["hit_l1"] = (await self.load(url, items, 1, "hit")).summary()
        else:
            with RedisProcess() as redis:
                env = {"VQA_REDIS_URL": redis.url}
                with ServerProcess(self.cfg.server_env(**env)) as proc:
                    await self.warm(proc.url, 1)
                    details["miss"] = (await self.load(proc.url, items, 1, "miss")).summary()
                    details["hit_l1"] = (await self.load(proc.url, items, 1, "L1 hit")).summary()
                with ServerProcess(self.cfg.server_env(**env)) as proc:  # fresh L1, same Redis
                    await self.warm(proc.url, 1)
                    details["hit_l2"] = (await self.load(proc.url, items, 1, "L2 hit")).summary()
                    details["hit_l1_after_l2"] = (await self.load(proc.url, items, 1, "L1 hit")).summary()
                    details["replay"] = await self._replay(proc.url)
        figures: dict[str, Any] = {"miss_p50_ms": details["miss"]["p50_ms"],
                                   "hit_l1_p50_ms": details["hit_l1"]["p50_ms"],
                                   "miss_over_hit_l1": ratio(details["miss"]["p50_ms"],
                                                             details["hit_l1"]["p50_ms"])}
        if "hit_l2" in details:
            figures["hit_l2_p50_ms"] = details["hit_l2"]["p50_ms"]
            figures["replay_hit_ratio"] = details["replay"]["hit_ratio"]
            figures["replay_rps"] = details["replay"]["rps"]
            figures["replay_p50_ms"] = details["replay"]["p50_ms"]
        return figures, details

    async def _replay(self, url: str) -> dict[str, Any]:
        # 200+ requests: a 40-request replay left the hit ratio at the mercy of a few coin flips.
        sequence = workload.replay_sequence(max(200, 4 * self.cfg.requests), 0.7, self.cfg.seed)
        distinct = self.fresh_items(max(sequence) + 1)
        res = await self.load(url, [distinct[i] for i in sequence], 4, "replay 70%")
        summary = res.summary()
        summary["hit_ratio"] = round(summary["cache"]["hit"] / max(1, summary["ok"]), 3)
        summary["expected_repeat_ratio"] = round(1 - len(set(sequence)) / len(sequence), 3)
        summary["hit_p50_ms"] = res.p(50, lambda s: s.cache == "hit")
        summary["miss_p50_ms"] = res.p(50, lambda s: s.cache == "miss")
        return summary

    async def photo(self) -> Result:
        """A 12 MP JPEG vs the same picture at 1280x960 through HTTP; preprocessing, ours vs theirs."""
        from vqaserve.bench.preprocess import compare

        pairs = [workload.photo_pair(self.cfg.seed, 10_000 + i) for i in range(self.cfg.photo_pairs)]
        with self.server() as (url, _pid):
            await self.warm(url, 1)
            large = await self.load(url, [p[0] for p in pairs], 1, "12 MP")
            small = await self.load(url, [p[1] for p in pairs], 1, "1280x960")
        settings = self.cfg.settings()
        from vqaserve.settings import resolve_model_path

        model_dir = resolve_model_path(settings.llm.model)
        pre = compare(pairs[0][0].data, model_dir if Path(model_dir).is_dir() else None,
                      torch_threads=self.cfg.torch_threads)
        figures = {"photo_12mp_p50_ms": large.p(50), "photo_1280_p50_ms": small.p(50),
                   "photo_12mp_over_1280": ratio(large.p(50), small.p(50)),
                   "preprocess_ours_ms": pre["ours_ms"], "preprocess_transformers_ms": pre["transformers_ms"],
                   "preprocess_ours_over_transformers": pre["ratio"]}
        return figures, {"12mp": large.summary(), "1280": small.summary(), "preprocess": pre,
                         "jpeg_bytes": {"12mp": len(pairs[0][0].data), "1280": len(pairs[0][1].data)}}

    async def soak(self) -> Result:
        """Server RSS over many distinct pictures, sampled every `soak_every` requests."""
        samples: list[dict[str, float]] = []
        with self.server() as (url, pid):
            if pid is None:
                raise ConfigError("soak needs the server's pid for RSS: pass --pid with --url, "
                                  "or run without --url")
            await self.warm(url, 4)
            samples.append({"requests": 0, "rss_mb": round(rss_bytes(pid) / 2**20, 1)})
            done = 0
            while done < self.cfg.soak_requests:
                n = min(self.cfg.soak_every, self.cfg.soak_requests - done)
                res = await self.load(url, self.fresh_items(n), 4, f"soak {done}/{self.cfg.soak_requests}")
                done += n
                samples.append({"requests": done, "rss_mb": round(rss_bytes(pid) / 2**20, 1),
                                "errors": len(res.samples) - len(res.ok)})
        first, last = samples[0]["rss_mb"], samples[-1]["rss_mb"]
        half = samples[len(samples) // 2]["rss_mb"]
        figures = {"soak_requests": done, "rss_start_mb": first, "rss_end_mb": last,
                   "rss_growth_mb": round(last - first, 1),
                   "rss_growth_second_half_mb": round(last - half, 1)}
        return figures, {"samples": samples}
