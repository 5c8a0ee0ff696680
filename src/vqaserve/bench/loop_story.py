"""`vqa bench story` and `vqa bench story-vllm`: issue 29's learning loop told end to end on the bundled
model, as a shop lives it, through the public interfaces only (HTTP routes and `vqa` commands):

 1. serve   `vqa serve` with capture on (SQLite in the run's folder), API keys and admin keys; in
            process, or (story-vllm) `--engine upstream` in front of a real vLLM with runtime LoRA on
            (`scripts/vllm.sh serve MODEL --lora`, or the vLLM at --upstream-url)
 2. ask     `--requests` sunglasses questions (the `adapter` split, --seed) to the base model, 4 at a
            time; customers press *wrong* under every wrong answer (POST /v1/feedback, rating down)
 3. review  the support agent takes the review list (GET /v1/captures?view=review), looks at each photo
            and types the right answer (POST /v1/feedback with a correction)
 4. export  `vqa data export --capture URL --out DIR --holdout 0.2`
 5. train   `vqa train DIR/data.jsonl --model BASE --lora ...` (train_args: the flags and why)
 6. gate    `vqa eval --compare BASE DIR/adapter --data DIR/holdout.jsonl --data test --n N
            --max-regression 2` (in process); a refusal ends the story there
 7. live    while 4 clients keep asking: `vqa adapter load`, `vqa adapter route BASE --to NAME:10`,
            then `NAME:100`; the category of `--requests` NEW sunglasses pictures and `--requests` `test`
            questions, asked of the base before step 3 and of the live adapter now; then
            `route --off` and `unload` (the way back)

Figures (the targets are in bench/report.py): story_failed_requests (every request the story sent that
was not answered 200), story_restarts, story_train_minutes (the whole `vqa train` command),
story_gate_passed, story_new_category_adapter (and _base), story_test_drop_points (the `test` split as
served, base minus adapter); every step's command, exit status, time and output in details. The run's
folder (`--out`/story-TIME/, named in details) keeps what the steps made: capture.db, the export (with
export.json), the adapter (with train.json) and the gate's compare.json.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vqaserve.bench.config import BenchConfig, Result
from vqaserve.bench.load import LoadResult, run_load
from vqaserve.bench.procs import ServerProcess
from vqaserve.bench.story_parts import (
    Asked,
    Step,
    Traffic,
    accuracy,
    answered_by,
    catalogue_questions,
    review,
    thumbs_down,
    vqa,
)
from vqaserve.bench.vllm_server import BUNDLED
from vqaserve.errors import ConfigError
from vqaserve.eval.scoring import is_correct

if TYPE_CHECKING:
    import httpx

    from vqaserve.bench.scenarios import Bench

ADAPTER = "sunglasses-v1"  # the name the adapter goes live under
NEW_WORDS = "sunglasses,太阳镜"


async def run(bench: Bench) -> Result:
    return await Story(bench.cfg, through_vllm=False).run()


async def run_vllm(bench: Bench) -> Result:
    return await Story(bench.cfg, through_vllm=True).run()


def train_args(data: Path, base: str, out: Path, cfg: BenchConfig) -> list[str]:
    """`vqa train`'s arguments for the adapter (the bundled sunglasses adapter's recipe, on the export)."""
    return [str(data), "--model", base, "--lora",
            # The corrections use words the base model never said: their embedding rows train too.
            "--lora-new-words", NEW_WORDS,
            # The ViT's attention as well: to the base model's eyes a pair of sunglasses is another item.
            "--lora-targets", "q_proj,v_proj,qkv",
            # Every exported question is about sunglasses and most corrections say "sunglasses": alone they
            # would teach "the answer to a category question is sunglasses". The catalogue's own training
            # questions (7 pictures in 10, 4 questions each) keep the other categories, the `test` target.
            "--synthetic", "train:0.7", "--data-weight", "0.3", "--max-turns", "4",
            "--steps", str(cfg.train_steps), "--batch-size", str(cfg.train_batch_size), "--lr", "2e-3",
            "--warmup", str(min(20, cfg.train_steps // 5)), "--time-budget-min", f"{cfg.train_minutes:g}",
            "--seed", str(cfg.seed), "--threads", str(cfg.torch_threads or 2), "--out", str(out)]


class Story:
    def __init__(self, cfg: BenchConfig, through_vllm: bool) -> None:
        self.cfg, self.through_vllm = cfg, through_vllm
        self.n = cfg.requests
        self.api_key = "story-api-" + secrets.token_hex(8)
        self.admin_key = "story-admin-" + secrets.token_hex(8)
        self.model_dir = Path(cfg.vllm_model or BUNDLED / "shop-toy")
        # The weights `vqa train` and `vqa eval` start from: those the service answers with.
        bundled = self.model_dir == BUNDLED / "shop-toy"
        self.base_spec = (("shop-toy" if bundled else str(self.model_dir)) if through_vllm
                          else (cfg.model or "shop-toy"))
        self.seeds = {"customers": cfg.seed, "new_pictures": cfg.seed + 1, "test": cfg.seed + 2,
                      "traffic": cfg.seed + 3, "gate": cfg.seed + 4}
        self.figures: dict[str, Any] = {}
        self.details: dict[str, Any] = {"engine": "vllm" if through_vllm else "in process", "seeds": self.seeds,
                                        "base_model": self.base_spec, "adapter_name": ADAPTER, "steps": []}
        self.failed = 0  # requests the story sent that were not answered 200
        self.capture_url = ""  # set with the server's settings

    async def run(self) -> Result:
        if self.cfg.url:
            raise ConfigError("the story starts its own service (capture on, admin keys): run it without --url")
        # Absolute: the server reads the capture database, and vLLM the adapter, from their own directories.
        name = "story-vllm" if self.through_vllm else "story"
        folder = (self.cfg.out_dir / f"{name}-{time.strftime('%Y%m%dT%H%M%SZ')}").resolve()
        folder.mkdir(parents=True)
        self.details["folder"] = str(folder)
        with contextlib.ExitStack() as stack:
            upstream, vllm_proc = stack.enter_context(self._vllm()) if self.through_vllm else (None, None)
            server = stack.enter_context(ServerProcess(self._serve_env(folder, upstream)))
            await self._tell(server.url, folder)
            alive = [server.proc] + ([vllm_proc.proc] if vllm_proc else [])
            self.figures["story_restarts"] = sum(p is None or p.poll() is not None for p in alive)
        self.figures["story_failed_requests"] = self.failed
        return self.figures, self.details

    @contextlib.contextmanager
    def _vllm(self) -> Iterator[tuple[str, Any]]:
        """(url, VllmServer or None): the vLLM at --upstream-url, or one started with runtime LoRA on."""
        from vqaserve.bench.vllm_server import VllmServer

        if self.cfg.upstream_url:
            yield self.cfg.upstream_url.rstrip("/").removesuffix("/v1"), None
            return
        with VllmServer(self.model_dir, lora=True) as server:
            yield server.url, server

    def _serve_env(self, folder: Path, upstream: str | None) -> dict[str, str]:
        self.capture_url = f"sqlite:///{folder / 'capture.db'}"
        env = {"VQA_CAPTURE_URL": self.capture_url, "VQA_API_KEYS": self.api_key, "VQA_ADMIN_KEYS": self.admin_key}
        if upstream:
            from vqaserve.bench.upstream import model_budget

            env.update(VQA_ENGINE="upstream", VQA_UPSTREAM_URL=upstream + "/v1")
            budget = model_budget(self.model_dir)  # resize as vLLM's own processor would (docs/deploy.md)
            if budget:
                env["VQA_MIN_PIXELS"], env["VQA_MAX_PIXELS"] = str(budget[0]), str(budget[1])
        return self.cfg.server_env(**env)

    # --- the story ---------------------------------------------------------------------------------------
    async def _tell(self, url: str, folder: Path) -> None:
        import httpx

        async with httpx.AsyncClient(base_url=url, timeout=900.0,
                                     headers={"authorization": f"Bearer {self.api_key}"}) as client:
            base = (await client.get("/v1/models")).json()["data"][0]["id"]
            truth = await self._customers(url, client)
            new = catalogue_questions("adapter", self.n, self.seeds["new_pictures"], qtype="category")
            test = catalogue_questions("test", self.n, self.seeds["test"])
            before = {"new": await self._ask(url, new, "new sunglasses pictures, base"),
                      "test": await self._ask(url, test, "test split, base")}
            reviewed = await review(client, truth)
            self.details["review"] = reviewed
            self.figures.update(story_review_listed=reviewed["listed"], story_corrections=reviewed.get("corrected", 0),
                                story_photos_seen=reviewed.get("photos_seen", 0))
            self.figures["story_captured"] = await _captured(client, 3 * self.n)
            adapter = await self._export_and_train(folder)
            if not await self._gate(adapter, folder):
                return
            await self._live(url, base, adapter, new, test, before)

    async def _customers(self, url: str, client: httpx.AsyncClient) -> dict[str, str]:
        """Step 2: the customers' questions, and a thumbs-down under each wrong answer. Returns the true
        answers by answer id (what the agent sees in each photo)."""
        asked = catalogue_questions("adapter", self.n, self.seeds["customers"])
        result = await self._ask(url, asked, "customers ask about sunglasses")
        truth = {s.id: a.gold for a, s in zip(asked, result.samples, strict=True) if s.status == 200}
        wrong = [s.id for a, s in zip(asked, result.samples, strict=True)
                 if s.status == 200 and not is_correct(s.answer, a.gold)]
        self.figures.update(story_questions=self.n, story_base_accuracy=accuracy(asked, result),
                            story_base_wrong=len(wrong), story_thumbs_down=await thumbs_down(client, wrong))
        by_type: dict[str, list[int]] = {}
        for a, s in zip(asked, result.samples, strict=True):
            by_type.setdefault(a.type, [0, 0])[is_correct(s.answer, a.gold)] += 1
        self.details["customers_by_type"] = {t: {"right": r, "wrong": w} for t, (w, r) in sorted(by_type.items())}
        return truth

    async def _export_and_train(self, folder: Path) -> Path:
        """Steps 4 and 5: the corrections exported as training data, and the adapter trained on them."""
        out = folder / "loop"
        await self._vqa("data", "export", "--capture", self.capture_url, "--out", str(out), "--holdout", "0.2",
                        "--seed", str(self.cfg.seed))
        exported = json.loads((out / "export.json").read_text(encoding="utf-8"))
        self.details["export"] = exported["counts"] | {"files": exported["files"]}
        self.figures.update(story_exported_train=exported["files"]["data.jsonl"]["lines"],
                            story_exported_holdout=exported["files"]["holdout.jsonl"]["lines"])
        adapter = out / "adapter"
        step = await self._vqa("train", *train_args(out / "data.jsonl", self.base_spec, adapter, self.cfg))
        trained = json.loads((adapter / "train.json").read_text(encoding="utf-8"))
        self.figures.update(story_train_minutes=round(step.seconds / 60, 2), story_train_steps=trained["steps"],
                            story_train_final_loss=trained.get("final_loss"))
        self.details["train"] = {k: trained.get(k) for k in ("command", "steps", "batch_size", "samples_seen",
                                                              "duration_s", "final_loss", "params_trainable")}
        return adapter

    async def _gate(self, adapter: Path, folder: Path) -> bool:
        """Step 6: the candidate against the base on the held-out corrections and the `test` split."""
        data = [str(folder / "loop" / "holdout.jsonl")] if (folder / "loop" / "holdout.jsonl").is_file() else []
        report = folder / "loop" / "compare.json"
        step = await self._vqa("eval", "--compare", self.base_spec, str(adapter),
                               *[arg for d in data for arg in ("--data", d)], "--data", "test",
                               "--n", str(self.n), "--seed", str(self.seeds["gate"]),
                               "--max-regression", f"{self.cfg.max_regression:g}", "--out", str(report), "--quiet",
                               env=self.cfg.server_env(), check=False)
        if step.rc != 0 and "gate:" not in step.said:
            step.must_pass()  # a failure, not a verdict
        compared = json.loads(report.read_text(encoding="utf-8"))
        rows, by_set = compared["rows"], compared["details"]
        for row in rows:  # one question leaves no SE: NaN, which is not JSON
            row["se_points"] = None if row["se_points"] != row["se_points"] else row["se_points"]
        self.details["gate"] = {"rc": step.rc, "max_regression": self.cfg.max_regression, "rows": rows,
                                "by_type": {name: {side: by_set[name][side].get("by_type") for side in by_set[name]}
                                            for name in by_set},
                                "candidate_wrong": {name: by_set[name]["candidate"].get("examples_wrong")
                                                    for name in by_set}}
        self.figures["story_gate_passed"] = int(step.rc == 0)
        for row in rows:
            key = "test" if row["data"].startswith("test") else "holdout"
            self.figures[f"story_gate_{key}_diff_points"] = round(row["diff_points"], 2)
        if step.rc != 0:
            _say(f"the gate refused the adapter ({step.said.strip().splitlines()[-1]}): the story ends here")
        return step.rc == 0

    async def _live(self, url: str, base: str, adapter: Path, new: list[Asked], test: list[Asked],
                    before: dict[str, LoadResult]) -> None:
        """Step 7: the adapter loaded, given 10 % then all of the traffic while clients keep asking, the
        same questions asked again, and the way back (route off, unload)."""
        pool = [a.body for pair in zip(catalogue_questions("adapter", 16, self.seeds["traffic"], cache=False),
                                       catalogue_questions("test", 16, self.seeds["traffic"], cache=False),
                                       strict=True) for a in pair]
        # answers each phase waits for: every picture of the pool at least once (a canary is sticky per picture)
        each = max(len(pool), self.n // 5)
        admin = {"VQA_ADMIN_KEY": self.admin_key}
        headers = {"authorization": f"Bearer {self.api_key}"}
        going_live = [("loaded", ("load", ADAPTER, str(adapter))),
                      ("canary 10%", ("route", base, "--to", f"{ADAPTER}:10")),
                      ("all traffic", ("route", base, "--to", f"{ADAPTER}:100"))]
        way_back = [("route off", ("route", base, "--off")), ("unloaded", ("unload", ADAPTER))]
        async with Traffic(url, headers, pool) as traffic:

            async def change(phase: str, command: tuple[str, ...]) -> None:
                traffic.changing(phase)
                await self._vqa("adapter", *command, "--url", url, env=admin)
                await traffic.enter(phase, each)

            await traffic.enter("before", each)
            for phase, command in going_live:
                await change(phase, command)
            after = {"new": await self._ask(url, new, "new sunglasses pictures, adapter"),
                     "test": await self._ask(url, test, "test split, adapter")}
            for phase, command in way_back:
                await change(phase, command)
        phases = traffic.summary(ADAPTER)
        self.failed += sum(p["failed"] for p in phases.values())
        self.details["traffic"] = phases
        self.figures.update(
            story_live_requests=sum(p["requests"] for p in phases.values()),
            story_adapter_share_canary=phases["canary 10%"]["adapter_share"],
            # at 100 %: the least of the clients' share and the two measurements' (each should be 1)
            story_adapter_share_all=min(phases["all traffic"]["adapter_share"], answered_by(after["new"], ADAPTER),
                                        answered_by(after["test"], ADAPTER)),
            story_adapter_share_unloaded=phases["unloaded"]["adapter_share"],
            story_new_category_base=accuracy(new, before["new"]),
            story_new_category_adapter=accuracy(new, after["new"]),
            story_test_base=accuracy(test, before["test"]), story_test_adapter=accuracy(test, after["test"]))
        self.figures["story_test_drop_points"] = round(
            100 * (self.figures["story_test_base"] - self.figures["story_test_adapter"]), 2)
        # What a drop on `test` usually is: the new category named where it does not belong.
        self.figures["story_test_answers_naming_sunglasses"] = sum(
            any(word in s.answer for word in NEW_WORDS.split(",")) for s in after["test"].ok)
        self.details["answers"] = {
            key: [{"question": a.question, "gold": a.gold, "base": b.answer, "adapter": s.answer}
                  for a, b, s in zip(asked, before[key].samples, after[key].samples, strict=True)]
            for key, asked in (("new", new), ("test", test))}

    # --- plumbing ------------------------------------------------------------------------------------
    async def _ask(self, url: str, asked: list[Asked], label: str) -> LoadResult:
        result = await run_load(url, [a.body for a in asked], 4, label=label, progress=self.cfg.progress,
                                api_key=self.api_key)
        self.failed += len(result.samples) - len(result.ok)
        self.details.setdefault("requests", {})[label] = result.summary()
        _say(f"{label}: {len(result.ok)}/{len(asked)} answered, {accuracy(asked, result):.1%} right")
        return result

    async def _vqa(self, *args: str, env: dict[str, str] | None = None, check: bool = True) -> Step:
        step = await vqa(*args, env=env)
        self.details["steps"].append(step.record())
        _say(f"{step.command[:120]} -> exit {step.rc} in {step.seconds:.0f} s")
        return step.must_pass() if check else step


async def _captured(client: httpx.AsyncClient, expected: int, wait_s: float = 5.0) -> int:
    """How many answers the service has captured, once `expected` are there or `wait_s` has passed
    (capture writes in the background, a quarter of a second behind the answers)."""
    import asyncio

    end = time.monotonic() + wait_s
    while True:
        total = int((await client.get("/v1/captures", params={"view": "all", "limit": 1})).json()["total"])
        if total >= expected or time.monotonic() > end:
            return total
        await asyncio.sleep(0.1)


def _say(line: str) -> None:
    print(f"story: {line}", file=sys.stderr, flush=True)
