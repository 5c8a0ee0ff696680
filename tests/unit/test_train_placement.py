"""Where `vqa train` computes and in which precision, on machines with and without a GPU (CUDA simulated)."""

from __future__ import annotations

import pytest

from vqaserve.engines import placement as engine_placement
from vqaserve.errors import ConfigError
from vqaserve.train import precision
from vqaserve.train.precision import TrainPlacement, choose_train_placement

pytestmark = pytest.mark.unit


@pytest.fixture
def machine(monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    """machine(cuda=..., bf16=..., bnb=...): what cuda_state and the bitsandbytes import see."""

    def set_machine(cuda: bool = False, bf16: bool = True, bnb: bool = False) -> None:
        state = (cuda, 1 if cuda else 0, cuda and bf16)
        monkeypatch.setattr(precision, "cuda_state", lambda: state)
        monkeypatch.setattr(engine_placement, "cuda_state", lambda: state)
        monkeypatch.setattr(engine_placement, "flash_attn_available", lambda: False)
        real = precision.importlib.util.find_spec
        monkeypatch.setattr(precision.importlib.util, "find_spec",
                            lambda name: (object() if bnb else None) if name == "bitsandbytes" else real(name))
        for env in ("ACCELERATE_USE_CPU", "ACCELERATE_USE_FSDP", "ACCELERATE_USE_DEEPSPEED"):
            monkeypatch.delenv(env, raising=False)

    return set_machine


def test_auto_follows_the_engine_and_keeps_a_full_cpu_fine_tune_float32(machine) -> None:  # type: ignore[no-untyped-def]
    machine(cuda=False)
    assert choose_train_placement() == TrainPlacement("cpu", "float32")  # the shop-toy recipe's case
    lora = choose_train_placement(lora=True)
    assert lora.device == "cpu" and lora.dtype == engine_placement.choose_placement("cpu", "auto").dtype
    machine(cuda=True, bf16=True)
    assert choose_train_placement() == TrainPlacement("cuda", "bfloat16")  # autocast over float32 weights
    assert choose_train_placement(lora=True) == TrainPlacement("cuda", "bfloat16")
    machine(cuda=True, bf16=False)
    assert choose_train_placement(lora=True) == TrainPlacement("cuda", "float16")


def test_frozen_weights_take_the_compute_dtype_and_trained_ones_stay_float32() -> None:
    bf16 = TrainPlacement("cuda", "bfloat16")
    assert bf16.weights_dtype(lora=True) == "bfloat16" and bf16.weights_dtype(lora=False) == "float32"
    assert bf16.mixed_precision == "bf16" and TrainPlacement("cpu", "float32").mixed_precision == "no"


def test_explicit_settings_win_where_they_can_run(machine) -> None:  # type: ignore[no-untyped-def]
    machine(cuda=True)
    assert choose_train_placement("cpu", "bfloat16") == TrainPlacement("cpu", "bfloat16")
    assert choose_train_placement("cuda", "float16", lora=True) == TrainPlacement("cuda", "float16")
    machine(cuda=False)
    assert choose_train_placement("auto", "bfloat16", lora=True) == TrainPlacement("cpu", "bfloat16")


def test_an_accelerate_cpu_launch_trains_on_the_cpu(machine, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    machine(cuda=True)
    monkeypatch.setenv("ACCELERATE_USE_CPU", "true")
    assert choose_train_placement().device == "cpu"


@pytest.mark.parametrize(("setup", "kwargs", "says"), [
    ({"cuda": False}, {"device": "cuda"}, "--device cuda but CUDA is not available here; use --device cpu"),
    ({"cuda": False}, {"dtype": "float16", "lora": True}, "--dtype float16 trains on CUDA only"),
    ({"cuda": True, "bf16": False}, {"dtype": "bfloat16"}, "this GPU does not compute it; use --dtype float16"),
    ({"cuda": False}, {"device": "gpu"}, "--device 'gpu' is not a device; use auto, cpu, cuda or mps"),
    ({"cuda": False}, {"dtype": "int8"}, "--dtype 'int8' is not a dtype"),
    ({"cuda": False}, {"lora": True, "load_in_4bit": True},
     "--load-in-4bit needs CUDA and bitsandbytes (pip install 'vqaserve[gpu]'); this machine has no CUDA device"),
    ({"cuda": True, "bnb": True}, {"load_in_4bit": True}, "--load-in-4bit trains a LoRA adapter"),
    ({"cuda": True, "bnb": True}, {"device": "cpu", "lora": True, "load_in_4bit": True},
     "--load-in-4bit needs CUDA: use --device cuda"),
    ({"cuda": True, "bnb": False}, {"lora": True, "load_in_4bit": True},
     "--load-in-4bit needs bitsandbytes: pip install 'vqaserve[gpu]'"),
])
def test_what_cannot_run_here_is_refused_with_the_fix(machine, setup, kwargs, says) -> None:  # type: ignore[no-untyped-def]
    machine(**setup)
    with pytest.raises(ConfigError) as err:
        choose_train_placement(**kwargs)
    assert says in str(err.value)


def test_4bit_on_a_gpu_with_bitsandbytes_computes_in_bf16(machine) -> None:  # type: ignore[no-untyped-def]
    machine(cuda=True, bf16=True, bnb=True)
    assert choose_train_placement(lora=True, load_in_4bit=True) == TrainPlacement("cuda", "bfloat16", True)


@pytest.mark.parametrize(("env", "name"), [("ACCELERATE_USE_FSDP", "FSDP"), ("ACCELERATE_USE_DEEPSPEED", "DeepSpeed")])
def test_a_sharding_launch_is_refused_before_any_work(machine, monkeypatch: pytest.MonkeyPatch,  # type: ignore[no-untyped-def]
                                                       env: str, name: str) -> None:
    machine(cuda=True)
    monkeypatch.setenv(env, "true")  # what `accelerate launch` sets for an FSDP or DeepSpeed config
    with pytest.raises(ConfigError, match=f"accelerate launch with {name}: .* launch with DDP instead"):
        choose_train_placement(lora=True)
