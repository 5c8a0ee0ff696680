"""docs/deploy.md's vLLM flags against a real vLLM (CPU build), so the doc cannot tell users a flag
vLLM refuses or ignores.

- Every flag of every `vllm serve` command in the doc (and every `--flag` its prose names) is one
  vLLM 0.32's own `serve` parser knows (or, for the prose, one `vqa` knows).
- The single-GPU command runs as written (its adapter path swapped for a real adapter, its port for a
  free one) on a shrunk Qwen3-VL-2B stand-in, in float32, and each flag shows its effect: the pixel
  budget (prompt tokens of 1, 4 and 12 MP pictures equal in process, through the gateway and direct to
  vLLM), structured output, the LoRA module, the image limit. The multi-GPU and Ray flags are parsed
  only: one CPU has no second GPU to spread over.
"""

from __future__ import annotations

import io
import json
import re
import shlex
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import REPO
from tests.http_support import ServeProcess, random_lora_adapter
from tests.vllm_support import serving
from vqaserve.bench.vllm_server import VllmServer
from vqaserve.images.decode import data_uri, smart_resize

pytestmark = [pytest.mark.integration, pytest.mark.vllm, pytest.mark.timeout(1800)]
DOC = REPO / "docs" / "deploy.md"
BUDGET = (262144, 1310720)  # the doc's --mm-processor-kwargs, and the gateway's default VQA_*_PIXELS
PICTURES = {"1MP": (1152, 864), "4MP": (2304, 1728), "12MP": (4000, 3000)}


def vllm_commands(text: str) -> list[list[str]]:
    """Each `vllm serve ...` command of the doc's code blocks, continuation lines joined, as tokens."""
    commands, blocks = [], re.findall(r"```bash\n(.*?)```", text, flags=re.S)
    for block in blocks:
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            line = line.split("#", 1)[0].strip()
            if line.startswith("vllm serve"):
                commands.append(shlex.split(line.replace("...same flags...", "")))
    return commands


def single_gpu_flags(adapter: str) -> list[str]:
    (command,) = [c for c in vllm_commands(DOC.read_text()) if "--lora-modules" in c]
    args = command[3:]  # after `vllm serve MODEL`
    i = args.index("--port")
    del args[i:i + 2]  # scripts/vllm.sh picks the port
    return [a.replace("/models/adapters/shop-v2", adapter) for a in args]


def test_the_doc_has_the_commands_this_test_reads() -> None:
    commands = vllm_commands(DOC.read_text())
    assert len(commands) >= 4 and any("--lora-modules" in c for c in commands)
    assert "--mm-processor-kwargs" in single_gpu_flags("/x")


def test_every_documented_vllm_flag_is_one_vllm_knows() -> None:
    text = DOC.read_text()
    code_flags = {t.split("=")[0] for c in vllm_commands(text) for t in c if t.startswith("-")}
    prose_flags = set(re.findall(r"`(--[a-z][a-z0-9-]*)", text))
    script = ("import json; from vllm.entrypoints.launchers.cli_args import make_arg_parser; "
              "from vllm.utils.argparse_utils import FlexibleArgumentParser; "
              "p = make_arg_parser(FlexibleArgumentParser()); "
              "print(json.dumps(sorted({s for a in p._actions for s in a.option_strings})))")
    out = subprocess.run(["bash", str(REPO / "scripts" / "vllm.sh"), "python", "-c", script],
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    known = set(json.loads(out.stdout.strip().splitlines()[-1]))
    assert not code_flags - known, f"docs/deploy.md runs vllm serve with flags vLLM 0.32 refuses: {code_flags - known}"
    ours = _vqa_flags() | {"--no-deps"}  # pip's, in the install notes
    assert not prose_flags - known - ours, f"docs/deploy.md names unknown flags: {prose_flags - known - ours}"


def _vqa_flags() -> set[str]:
    import argparse

    from vqaserve.cli import build_parser

    flags, todo = set(), [build_parser()]
    while todo:
        parser = todo.pop()
        for action in parser._actions:
            flags.update(action.option_strings)
            if isinstance(action, argparse._SubParsersAction):
                todo.extend(action.choices.values())
    return flags


@pytest.fixture(scope="module")
def shrunk(shrunk_standin: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    return shrunk_standin, random_lora_adapter(str(shrunk_standin), str(tmp_path_factory.mktemp("shop-v2")))


@pytest.fixture(scope="module")
def doc_vllm(shrunk: tuple[Path, str]) -> Iterator[VllmServer]:
    model, adapter = shrunk
    # the doc's flags as written, then float32: greedy answers compared with the in-process engine's
    yield from serving(VllmServer(model, extra_args=(*single_gpu_flags(adapter), "--dtype", "float32")))


def _jpeg(size: tuple[int, int], seed: int) -> bytes:
    from PIL import Image, ImageDraw

    image = Image.linear_gradient("L").resize(size).convert("RGB")
    draw = ImageDraw.Draw(image)
    for i in range(12):  # some structure, different per picture
        x, y = (seed * 97 + i * 331) % size[0], (seed * 53 + i * 211) % size[1]
        draw.rectangle([x, y, x + size[0] // 6, y + size[1] // 7], fill=(40 * i % 255, 90, 200 - 10 * i))
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=90)
    return buf.getvalue()


def _body(model: str, jpeg: bytes, question: str, **extra: object) -> dict:
    uri = data_uri(jpeg, "image/jpeg")
    return {"model": model, "temperature": 0, "max_tokens": 8, **extra,
            "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": uri}},
                                                      {"type": "text", "text": question}]}]}


def _post(url: str, body: dict) -> dict:
    resp = httpx.post(url + "/v1/chat/completions", json=body, timeout=900)
    assert resp.status_code == 200, resp.text
    return dict(resp.json())


def test_pixel_budget_agrees_in_process_through_the_gateway_and_direct(
        doc_vllm: VllmServer, shrunk: tuple[Path, str], tmp_path: Path) -> None:
    model, _ = shrunk
    name = model.name
    common = {"VQA_SAFETY_IMAGE": "off", "VQA_REQUEST_TIMEOUT_S": "900", "VQA_LLM__UPSTREAM_IMAGE_FORMAT": "png"}
    with ServeProcess(tmp_path / "inproc.log", "--model", str(model), **common) as inproc, \
            ServeProcess(tmp_path / "gw.log", **common, VQA_ENGINE="upstream",
                         VQA_UPSTREAM_URL=doc_vllm.url + "/v1") as gateway:
        for seed, (label, size) in enumerate(PICTURES.items()):
            jpeg = _jpeg(size, seed)
            body = _body(name, jpeg, "What is this product?", cache=False)
            direct = _post(doc_vllm.url, {k: v for k, v in body.items() if k != "cache"})
            through, local = _post(gateway.url, body), _post(inproc.url, body)
            h, w = smart_resize(size[1], size[0], *BUDGET)
            visual = h * w // (32 * 32)
            tokens = [r["usage"]["prompt_tokens"] for r in (local, through, direct)]
            assert tokens == [tokens[0]] * 3, f"{label}: in process / gateway / vLLM = {tokens}"
            assert visual <= 1280 and tokens[0] > visual, f"{label}: {visual} visual tokens, prompt {tokens[0]}"
            answers = [r["choices"][0]["message"]["content"] for r in (local, through)]
            assert answers[0] == answers[1], f"{label}: float32 greedy answers differ: {answers}"


def test_structured_output_lora_module_and_image_limit_take_effect(doc_vllm: VllmServer, shrunk: tuple[Path, str]
                                                                   ) -> None:
    model, _ = shrunk
    listed = [m["id"] for m in httpx.get(doc_vllm.url + "/v1/models", timeout=30).json()["data"]]
    assert model.name in listed and "shop-v2" in listed
    jpeg = _jpeg((640, 480), 5)
    assert _post(doc_vllm.url, _body("shop-v2", jpeg, "What is it?"))["model"] == "shop-v2"
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"],
              "additionalProperties": False}
    reply = _post(doc_vllm.url, _body(model.name, jpeg, "Is it ok?", max_tokens=32, response_format={
        "type": "json_schema", "json_schema": {"name": "ok", "schema": schema}}))
    text = reply["choices"][0]["message"]["content"]
    assert isinstance(json.loads(text)["ok"], bool) and " " not in text  # xgrammar, no whitespace
    body = _body(model.name, jpeg, "How many?")
    body["messages"][0]["content"] = body["messages"][0]["content"][:1] * 9 + body["messages"][0]["content"][1:]
    refused = httpx.post(doc_vllm.url + "/v1/chat/completions", json=body, timeout=300)
    assert refused.status_code == 400 and "image" in refused.text.lower()  # --limit-mm-per-prompt image: 8
