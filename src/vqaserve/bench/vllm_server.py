"""A real vLLM as a child process (`scripts/vllm.sh serve`), for the tests and `vqa bench upstream`.

vLLM starts an API process and an engine-core process: it runs in its own session so that stopping it
stops both, and its CPU time is summed over the whole tree.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import tempfile
from pathlib import Path

from vqaserve.bench.procs import cpu_seconds, free_port, wait_http_ready
from vqaserve.errors import ConfigError

REPO = Path(__file__).resolve().parents[3]
VLLM_SH = REPO / "scripts" / "vllm.sh"
BUNDLED = Path(__file__).resolve().parents[1] / "models"


def vllm_available() -> str | None:
    """None when scripts/vllm.sh can run here, else why not (a source checkout is needed)."""
    if not VLLM_SH.is_file():
        return ("scripts/vllm.sh is not here (vqaserve installed without its source tree); start vLLM "
                "yourself and pass --upstream-url")
    return None


class VllmServer:
    """`scripts/vllm.sh serve MODEL --port N [--adapter NAME=PATH]... [--lora]` on a free loopback port
    (`lora`: LoRA and its runtime endpoints on with no adapter at start-up, for `vqa adapter load`)."""

    def __init__(self, model_dir: Path | str = BUNDLED / "shop-toy", *, adapters: dict[str, str] | None = None,
                 port: int | None = None, extra_args: tuple[str, ...] = (), ready_timeout_s: float = 900.0,
                 env: dict[str, str] | None = None, lora: bool = False) -> None:
        self.model_dir = Path(model_dir)
        self.name = self.model_dir.name
        self.adapters = dict(adapters or {})
        self.lora = lora
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.extra_args = extra_args
        self.ready_timeout_s = ready_timeout_s
        self.env = env or {}
        self.proc: subprocess.Popen[bytes] | None = None
        fd, self.log_path = tempfile.mkstemp(prefix="vqa-vllm-", suffix=".log")
        os.close(fd)

    # --- lifecycle ---------------------------------------------------------------------------------
    def command(self) -> list[str]:
        cmd = ["bash", str(VLLM_SH), "serve", str(self.model_dir), "--port", str(self.port),
               "--served-model-name", self.name]
        for name, path in self.adapters.items():
            cmd += ["--adapter", f"{name}={path}"]
        if self.lora and not self.adapters:
            cmd.append("--lora")
        if self.extra_args:
            cmd += ["--", *self.extra_args]
        return cmd

    def start(self, wait: bool = True) -> VllmServer:
        why = vllm_available()
        if why:
            raise ConfigError(why)
        env = {k: v for k, v in os.environ.items() if not k.startswith("VQA_")}
        env.update(self.env)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.command(), env=env, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self) -> None:
        proc = self.proc
        assert proc is not None
        if not wait_http_ready(proc, f"{self.url}/v1/models", self.ready_timeout_s,
                               lambda: f"vLLM exited with code {proc.returncode} while starting; its log "
                                       f"({self.log_path}) ends with:\n{self.log_tail()}", every_s=0.5):
            self.stop()
            raise ConfigError(f"vLLM was not ready within {self.ready_timeout_s:.0f} s; its log: {self.log_path}")

    def stop(self, sig: int = signal.SIGTERM, grace_s: float = 20.0) -> None:
        """Stop the whole process group (API server and engine core)."""
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, sig)
        try:
            self.proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        with contextlib.suppress(ProcessLookupError):  # a straggler of the group
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc = None

    def kill(self) -> None:
        """Die as a crashed server does: no graceful shutdown."""
        self.stop(signal.SIGKILL, grace_s=10.0)

    def __enter__(self) -> VllmServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- observation -------------------------------------------------------------------------------
    def log_tail(self, lines: int = 30) -> str:
        try:
            text = Path(self.log_path).read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def cpu_seconds(self) -> float:
        """User + system CPU time of vLLM's whole process tree so far."""
        assert self.proc is not None
        return cpu_seconds(self.proc.pid)

    def metrics(self) -> dict[str, float]:
        """vLLM's Prometheus figures summed over labels: {"vllm:num_requests_running": 0.0, ...}."""
        import httpx

        text = httpx.get(f"{self.url}/metrics", timeout=5.0).text
        return parse_prometheus(text)


_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{[^}]*\})?\s+([-+0-9.eEinfNa]+)")


def parse_prometheus(text: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for line in text.splitlines():
        m = _SAMPLE.match(line)
        if m:
            with contextlib.suppress(ValueError):
                out[m.group(1)] = out.get(m.group(1), 0.0) + float(m.group(2))
    return out


