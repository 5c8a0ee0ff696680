"""The parts `vqa bench story` (bench/loop_story.py) drives the service with, as a shop's people and
programs would: catalogue questions whose true answers are known, `vqa` commands run as a user types
them, the support agent at the review list, and clients that keep asking while an adapter goes live."""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import sys
import time
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from vqaserve.bench.load import LoadResult
from vqaserve.bench.procs import SRC
from vqaserve.bench.workload import chat_request, encode
from vqaserve.errors import ConfigError
from vqaserve.eval.scoring import is_correct

if TYPE_CHECKING:
    import httpx

ANSWER_TOKENS = 64  # as `vqa eval` asks (eval/harness.py), so served answers and the gate's agree


# --- questions whose answers are known ---------------------------------------------------------------
@dataclass(frozen=True)
class Asked:
    body: bytes  # a chat completion request: the picture as PNG, the question; no `model` (the shop's default)
    question: str
    gold: str  # the catalogue's true answer
    type: str


def catalogue_questions(split: str, n: int, seed: int, qtype: str | None = None, **extra: object) -> list[Asked]:
    """n catalogue pictures of a split with a question each: the seven types in turn (as `vqa data synth`
    writes them), or all of `qtype` with English and Chinese alternating. `extra` goes in the body."""
    from vqaserve.train.questions import LANGS
    from vqaserve.train.synthetic import make_sample

    out = []
    for index in range(n):
        s = make_sample(split, seed, index, qtype=qtype, lang=LANGS[index % len(LANGS)] if qtype else None)
        body = chat_request(encode(s.image), "image/png", s.question, None, ANSWER_TOKENS, **extra)
        out.append(Asked(json.dumps(body).encode(), s.question, s.answer, s.type))
    return out


def accuracy(asked: list[Asked], result: LoadResult) -> float:
    """Share answered right (a failed request counts as wrong)."""
    right = sum(s.status == 200 and is_correct(s.answer, a.gold) for a, s in zip(asked, result.samples, strict=True))
    return round(right / len(asked), 4)


def answered_by(result: LoadResult, adapter: str) -> float:
    """Share of the answers given by `adapter` (x-vqa-model is NAME@FINGERPRINT for an adapter)."""
    ok = result.ok
    return round(sum(s.model.startswith(adapter + "@") for s in ok) / len(ok), 4) if ok else 0.0


# --- `vqa` commands ------------------------------------------------------------------------------------
@dataclass
class Step:
    """One `vqa` command the story ran: as a user types it, its exit status, time and what it printed."""

    command: str
    rc: int
    seconds: float
    printed: str  # stdout
    said: str  # the end of stderr (progress bars and messages)

    def record(self) -> dict[str, Any]:
        return {"command": self.command, "rc": self.rc, "seconds": round(self.seconds, 1),
                "printed": self.printed.strip().splitlines(), "said": self.said.strip().splitlines()[-8:]}

    def must_pass(self) -> Step:
        if self.rc != 0:
            last = next((ln for ln in reversed(self.said.strip().splitlines()) if ln.strip()), "no message")
            raise ConfigError(f"`{self.command}` failed (exit {self.rc}): {last.strip()}")
        return self


async def vqa(*args: str, env: dict[str, str] | None = None, timeout_s: float = 1800.0) -> Step:
    """`vqa ARGS` as a subprocess of this checkout's code (the VQA_* environment it is given, no other)."""
    full = {k: v for k, v in os.environ.items() if not k.startswith("VQA_")}
    full["PYTHONPATH"] = str(SRC) + os.pathsep + full.get("PYTHONPATH", "")
    full.update(env or {})
    started = time.perf_counter()
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "vqaserve", *args, env=full,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    command = "vqa " + " ".join(shlex.quote(a) for a in args)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout_s)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise ConfigError(f"`{command}` did not finish within {timeout_s:.0f} s") from None
    said = err.decode(errors="replace").replace("\r", "\n")  # progress bars redraw with \r
    return Step(command, proc.returncode or 0, time.perf_counter() - started, out.decode(errors="replace"),
                "\n".join(said.splitlines()[-40:]))


# --- people at the service -----------------------------------------------------------------------------
async def thumbs_down(client: httpx.AsyncClient, ids: list[str]) -> int:
    """Customers press *wrong* under these answers (the page posts POST /v1/feedback). Returns how many saved."""
    saved = 0
    for answer_id in ids:
        resp = await client.post("/v1/feedback", json={"id": answer_id, "rating": "down"})
        _ok(resp, "POST /v1/feedback")
        saved += 1
    return saved


async def review(client: httpx.AsyncClient, truth: dict[str, str]) -> dict[str, int]:
    """The support agent at the review page: every answer it lists (flagged or thumbs-down), its photo
    looked at, and the right answer typed as its correction (*Save correction*), or *Answer is right*.
    `truth`: the answers the agent's eyes would give, by answer id."""
    listed: list[dict[str, Any]] = []
    while True:
        resp = await client.get("/v1/captures", params={"view": "review", "limit": 200, "offset": len(listed)})
        page = _ok(resp, "GET /v1/captures")
        listed += page["data"]
        if not page["data"] or len(listed) >= page["total"]:
            break
    counts: Counter[str] = Counter(listed=len(listed))
    for row in listed:
        for picture in row["images"]:
            resp = await client.get(f"/v1/captures/{row['id']}/pictures/{picture}")
            counts["photos_seen" if resp.status_code == 200 and resp.headers["content-type"] == "image/png"
                   else "photos_missing"] += 1
        gold = truth.get(row["id"])
        if gold is None:
            counts["not_ours"] += 1
            continue
        right = is_correct(row["answer"], gold)
        body = {"id": row["id"], "rating": "up"} if right else {"id": row["id"], "rating": "down", "correction": gold}
        _ok(await client.post("/v1/feedback", json=body), "POST /v1/feedback")
        counts["confirmed" if right else "corrected"] += 1
    return dict(counts)


def _ok(resp: httpx.Response, what: str) -> Any:
    if resp.status_code != 200:
        raise ConfigError(f"{what} answered {resp.status_code}: {resp.text[:300]}")
    return resp.json()


# --- traffic that keeps coming while the adapter goes live ----------------------------------------------
class Traffic:
    """`clients` clients asking about `bodies` in turn (the answer cache skipped, so every request reaches
    the model) until stopped; each request counted under the phase it was sent in."""

    def __init__(self, url: str, headers: dict[str, str], bodies: list[bytes], clients: int = 4) -> None:
        self.url, self.headers, self.bodies, self.clients = url, headers, bodies, clients
        self.phase = "start"
        self.done: list[tuple[str, int, str]] = []  # (phase, status, x-vqa-model)
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._next = 0

    async def __aenter__(self) -> Traffic:
        self._tasks = [asyncio.create_task(self._ask()) for _ in range(self.clients)]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)

    async def _ask(self) -> None:
        import httpx

        async with httpx.AsyncClient(base_url=self.url, headers=self.headers, timeout=900.0) as client:
            while not self._stop.is_set():
                await self._one(client)

    async def _one(self, client: httpx.AsyncClient) -> None:
        import httpx

        body = self.bodies[self._next % len(self.bodies)]
        self._next += 1
        phase = self.phase
        try:
            resp = await client.post("/v1/chat/completions", content=body, headers={"content-type": "application/json"})
            status, model = resp.status_code, resp.headers.get("x-vqa-model", "")
        except httpx.HTTPError:
            status, model = 599, ""  # no answer at all (connection refused or dropped, timeout)
        self.done.append((phase, status, model))

    def changing(self, to: str) -> None:
        """Requests sent from now until `enter` are counted apart: a change is under way, and which model
        answers them depends on when it lands."""
        self.phase = f"while changing to {to}"

    async def enter(self, phase: str, answers: int, timeout_s: float = 900.0) -> None:
        """From now on requests are sent under `phase`; returns once `answers` of them are answered."""
        self.phase = phase
        end = time.monotonic() + timeout_s
        while sum(p == phase for p, _, _ in self.done) < answers:
            if time.monotonic() > end:
                raise ConfigError(f"the clients got fewer than {answers} answers in {timeout_s:.0f} s ({phase})")
            await asyncio.sleep(0.05)

    def summary(self, adapter: str) -> dict[str, dict[str, Any]]:
        """Per phase (in order, the changes between them included): requests, failed (any status but 200),
        and the share the adapter answered."""
        out: dict[str, dict[str, Any]] = {}
        for phase in dict.fromkeys(p for p, _, _ in self.done):
            rows = [(s, m) for p, s, m in self.done if p == phase]
            ok = [m for s, m in rows if s == 200]
            by_adapter = sum(m.startswith(adapter + "@") for m in ok)
            out[phase] = {"requests": len(rows), "failed": len(rows) - len(ok),
                          "statuses": dict(Counter(str(s) for s, _ in rows)),
                          "adapter_share": round(by_adapter / len(ok), 4) if ok else 0.0}
        return out
