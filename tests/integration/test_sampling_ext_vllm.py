"""The upstream body against vLLM's own request model (in .venv-vllm; see scripts/vllm.sh).

What we send must mean to vLLM what it means to us, and every vLLM field name we accept or refuse
by name must still be one of vLLM's: a rename upstream shows up here, not in production.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from vqaserve.engines.upstream_wire import build_body
from vqaserve.server.chat_request import DEFAULT_ONLY, IGNORED_FIELDS, ChatCompletionRequest
from vqaserve.types import EngineRequest, GenerationParams

pytestmark = [pytest.mark.integration, pytest.mark.vllm, pytest.mark.slow]  # importing vLLM takes ~20 s here
ROOT = Path(__file__).resolve().parents[2]
VLLM_PYTHON = Path(os.environ.get("VQA_VLLM_VENV", ROOT / ".venv-vllm")) / "bin" / "python"
# Older vLLM's names, still sent by older clients; refused by name so they get a clear message.
LEGACY = {"best_of", "guided_json", "guided_regex", "guided_choice", "guided_grammar", "guided_decoding_backend",
          "guided_whitespace_pattern"}
PROBE = """
import json, sys
from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest
body = json.loads(sys.stdin.read())
sp = ChatCompletionRequest.model_validate(body).to_sampling_params(body["max_tokens"], {})
names = ["min_tokens", "ignore_eos", "min_p", "repetition_penalty", "stop_token_ids",
         "include_stop_str_in_output", "top_k", "max_tokens", "stop"]
print(json.dumps({"params": {n: getattr(sp, n) for n in names},
                  "fields": sorted(ChatCompletionRequest.model_fields)}))
"""


def test_vllm_reads_our_body_as_we_mean_it() -> None:
    assert VLLM_PYTHON.exists(), "no .venv-vllm: `make test` (scripts/vllm.sh install) creates it"
    params = GenerationParams(max_new_tokens=9, temperature=0.5, top_k=5, stop=("\n",), min_tokens=2,
                              ignore_eos=True, min_p=0.05, repetition_penalty=1.1,
                              stop_token_ids=(151645, 7), include_stop_str_in_output=True)
    body = build_body(EngineRequest(turns=[], params=params), "m", [{"role": "user", "content": "hi"}],
                      stream=True)
    done = subprocess.run([str(VLLM_PYTHON), "-c", PROBE], input=json.dumps(body), capture_output=True,
                          text=True, timeout=240, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["params"] == {"min_tokens": 2, "ignore_eos": True, "min_p": 0.05, "repetition_penalty": 1.1,
                              "stop_token_ids": [151645, 7], "include_stop_str_in_output": True,
                              "top_k": 5, "max_tokens": 9, "stop": ["\n"]}
    vllm_ignored = {"length_penalty", "spaces_between_special_tokens", "priority", "request_id", "session_id"}
    assert vllm_ignored <= IGNORED_FIELDS
    ours = {*seen["params"], *DEFAULT_ONLY, *vllm_ignored} - LEGACY - {"max_tokens", "stop"}
    assert ours <= set(ChatCompletionRequest.model_fields) | set(DEFAULT_ONLY) | IGNORED_FIELDS
    assert not ours - set(seen["fields"])
