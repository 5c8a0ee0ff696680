"""What one `vqa bench` run was asked for (BenchConfig), and the settings its in-process parts use."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from vqaserve.settings import Settings

# What every scenario returns: (figures, details). Figures are the headline numbers (target ratios
# among them, by the names report.TARGETS knows), details the per-run summaries behind them.
Result = tuple[dict[str, Any], dict[str, Any]]


@dataclass
class BenchConfig:
    url: str | None = None  # a running server; None: start our own
    env: dict[str, str] = field(default_factory=dict)  # VQA_* for servers we start and in-process parts
    model: str | None = None
    requests: int = 16  # per measurement (scenarios that count pictures: how many)
    concurrency: list[int] = field(default_factory=lambda: [1, 4, 16])
    max_new_tokens: int = 16
    seed: int = 0
    soak_requests: int = 200
    soak_every: int = 25
    photo_pairs: int = 4
    rounds: int = 5  # stream: rounds of `concurrency` plain requests and as many streams
    pid: int | None = None  # the --url server's pid, for soak RSS
    api_key: str | None = None
    in_process: bool = True
    # torch intra-op threads for started servers and the in-process engine (None: torch's default).
    # On an oversubscribed CPU, OpenMP workers spin against each other: 1 thread was 8-12x faster
    # than 2 on the shared 2-core bench machine (see docs/benchmarks.md).
    torch_threads: int | None = None
    # vLLM scenarios (upstream, followups, adapter-vllm): a running vLLM, or the model to start one on
    upstream_url: str | None = None
    upstream_pid: int | None = None
    vllm_model: Path | None = None
    answers: int = 200  # upstream: pictures whose answers are compared direct vs through the gateway
    adapter: tuple[str, str] | None = None  # adapter-vllm: (name vLLM serves it as, its directory)
    # story, story-vllm (issue 29): the adapter trained from the corrections, and the gate it must pass
    train_steps: int = 1500  # the LR schedule's length; the time budget usually ends the run first
    train_batch_size: int = 32
    train_minutes: float = 8.5  # `vqa train --time-budget-min`: the whole command within 10 minutes
    max_regression: float = 2.0  # `vqa eval --compare --max-regression`, in points
    progress: bool = True
    out_dir: Path = Path("bench-results")

    def server_env(self, **extra: str) -> dict[str, str]:
        # A slow batch on a loaded machine must show up as latency, not as 504s that skew the figures.
        env = {"VQA_REQUEST_TIMEOUT_S": "900", **self.env}
        if self.model:
            env["VQA_MODEL"] = self.model
        if self.torch_threads:
            env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(self.torch_threads)
        env.update(extra)
        return env

    def settings(self, **extra: str) -> Settings:
        """The settings a server started with `server_env(**extra)` would have, for in-process parts."""
        return settings_for(self.server_env(**extra))

    @property
    def top_concurrency(self) -> int:
        return max(self.concurrency)


def settings_for(env: dict[str, str]) -> Settings:
    """Settings from VQA_* names (flat or VQA_GROUP__FIELD), as a server given them as environment reads
    them; other variables (OMP_NUM_THREADS) are left out, an unknown VQA_* name is a ConfigError."""
    from vqaserve.settings import check_environment, env_names, load_settings

    check_environment(env)
    names = env_names()
    groups: dict[str, dict[str, str]] = {}
    for name, value in env.items():
        if name in names:
            group, fld = names[name]
            groups.setdefault(group, {})[fld] = value
    return load_settings(**groups)


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """torch's intra-op threads set to `n` (as OMP_NUM_THREADS does for the servers) for an in-process
    part, and given back after; None leaves torch's default."""
    if not n:
        yield
        return
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
