"""Whether a recipe's models fit in memory together: an estimate per stage before anything loads, and the choice
between running the stages side by side (every model loaded, records streaming) and one at a time.

A stage's estimate is its weights in the dtype they will load in, read from the safetensors headers (every
tensor's dtype and shape) of a local folder or the Hugging Face cache, else from the weight files' sizes, plus a
margin for activations and caches (a quarter of the weights and 256 MiB). An engine whose options have no
`device` computes elsewhere (a server) and counts zero; one that reserves a KV cache up front (options with
`kv_cache_memory_bytes`) counts that cache, or on a GPU the fraction of the device it takes
(`gpu_memory_utilization`, else 0.9). Stages that use the same device add up and are compared with the memory
available there: on the CPU MemAvailable (/proc/meminfo), on a CUDA device its free memory
(torch.cuda.mem_get_info), less 10% headroom. `CAPMILL_AVAILABLE_MEMORY` (bytes, or with K/M/G/T: `512M`,
`24G`) sets the available figure for every device instead, e.g. to keep a shared machine's models one at a time.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import asdict, dataclass
from typing import Any

from capmill.errors import ConfigError

MiB, GiB = 1 << 20, 1 << 30
MARGIN_FRACTION = 0.25  # activations, the processor, generate's caches: a share of the weights ...
MARGIN_BYTES = 256 * MiB  # ... and a fixed part (batches of images, the tokenizer, allocator slack)
HEADROOM = 0.10  # of the available memory, left free
ENV = "CAPMILL_AVAILABLE_MEMORY"

# safetensors dtype names -> bytes per element; the float ones take the dtype the model loads in
ST_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1, "I64": 8, "I32": 4, "U32": 4}
ST_BYTES |= {"I16": 2, "U16": 2, "I8": 1, "U8": 1, "BOOL": 1, "U64": 8}
FLOATS = {"F64", "F32", "F16", "BF16"}
DTYPE_BYTES = {"float32": 4, "fp32": 4, "float16": 2, "fp16": 2, "bfloat16": 2, "bf16": 2, "float64": 8}
QUANT_BYTES = {"nf4": 0.5, "fp4": 0.5, "int8": 1.0}  # bitsandbytes: a float weight's bytes once quantized


@dataclass(frozen=True)
class StageMemory:
    stage: str
    model: str
    device: str  # "cpu", "cuda:N", "cuda" (device_map over every GPU) or "remote"
    weight_bytes: int | None  # None: unknown (no weights found locally)
    estimate_bytes: int | None
    how: str  # where the figure comes from


@dataclass(frozen=True)
class Choice:
    chosen: bool
    reason: str
    estimate_bytes: int | None
    available_bytes: int | None
    stages: tuple[StageMemory, ...] = ()

    def summary(self) -> dict[str, Any]:
        """What summary.json records under `side_by_side`."""
        return {
            "chosen": self.chosen,
            "reason": self.reason,
            "estimate_bytes": self.estimate_bytes,
            "available_bytes": self.available_bytes,
            "stages": [asdict(s) for s in self.stages],
        }


# ---- the weights ----
def weight_bytes(model: str, load_bytes: float | None) -> tuple[int | None, str]:
    """(bytes of the model's weights once loaded with float tensors at `load_bytes` each (None: as stored), where
    the figure comes from); (None, why) when no weights are found on this machine."""
    folder = model if os.path.isdir(model) else _cached_snapshot(model)
    if folder is None:
        return None, "not in a local folder or the Hugging Face cache"
    names = sorted(os.listdir(folder))
    shards = [n for n in names if n.endswith(".safetensors")]
    index = os.path.join(folder, "model.safetensors.index.json")
    if os.path.isfile(index):
        with open(index, encoding="utf-8") as handle:
            listed = sorted(set(json.load(handle).get("weight_map", {}).values()))
        if listed and all(os.path.isfile(os.path.join(folder, n)) for n in listed):
            shards = listed
    if shards:
        total = 0.0
        for name in shards:
            for dtype, numel in _tensors(os.path.join(folder, name)):
                stored = ST_BYTES.get(dtype, 4)
                total += numel * (load_bytes if load_bytes is not None and dtype in FLOATS else stored)
        return int(total), "safetensors headers"
    files = [n for n in names if n.endswith((".bin", ".pt", ".pth", ".gguf"))]
    if not files:
        return None, f"no weight files in {folder}"
    size = sum(os.path.getsize(os.path.join(folder, n)) for n in files)
    stored = _config_dtype_bytes(folder)
    if load_bytes is None or all(n.endswith(".gguf") for n in files):
        return size, "weight file sizes"
    return int(size / stored * load_bytes), f"weight file sizes, stored at {stored} bytes per weight"


def _tensors(path: str) -> list[tuple[str, int]]:
    """(dtype, number of elements) of every tensor in a safetensors file, from its header alone."""
    try:
        with open(path, "rb") as handle:
            (length,) = struct.unpack("<Q", handle.read(8))
            header = json.loads(handle.read(length))
    except (OSError, ValueError, struct.error) as exc:
        raise ConfigError(f"{path}: not a readable safetensors file ({exc})") from exc
    out = []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        numel = 1
        for dim in info.get("shape", []):
            numel *= int(dim)
        out.append((str(info.get("dtype")), numel))
    return out


def _config_dtype_bytes(folder: str) -> int:
    try:
        with open(os.path.join(folder, "config.json"), encoding="utf-8") as handle:
            config = json.load(handle)
    except (OSError, ValueError):
        return 4
    name = config.get("torch_dtype") or config.get("dtype") or "float32"
    return DTYPE_BYTES.get(str(name).replace("torch.", ""), 4)


def _cached_snapshot(model: str) -> str | None:
    """The Hugging Face cache's snapshot folder for a hub id, if it holds one (no network)."""
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(model, "config.json")
    except Exception:  # noqa: BLE001 - not a valid repo id, or no huggingface_hub: nothing known
        return None
    return os.path.dirname(found) if isinstance(found, str) else None


# ---- one stage ----
def stage_memory(stage: str, model: str, engine: str, options: dict[str, Any]) -> StageMemory:
    """The stage's device and estimate (weights in the dtype they load in, plus the margin or KV cache)."""
    from capmill.engines import ENGINES

    fields = ENGINES.get(engine).Options.model_fields
    if "device" not in fields:  # the model runs behind a server: nothing loads here
        return StageMemory(stage, model, "remote", 0, 0, f"engine {engine!r} loads no weights here")
    device = _device(options)
    dtype = str(options.get("dtype") or "auto").replace("torch.", "")
    if dtype == "auto":
        load: float | None = 2 if device.startswith("cuda") else 4  # bf16 on CUDA, float32 on a CPU
    elif dtype in DTYPE_BYTES:
        load = DTYPE_BYTES[dtype]
    else:
        load = None  # an engine's own dtype name: as stored
    quant = options.get("quantization")
    if quant in QUANT_BYTES:
        load = QUANT_BYTES[quant]
    weights, how = weight_bytes(model, load)
    if weights is None:
        return StageMemory(stage, model, device, None, None, how)
    if "kv_cache_memory_bytes" in fields:  # an engine that reserves its KV cache when it loads
        if device.startswith("cuda"):
            fraction = float(options.get("gpu_memory_utilization") or 0.9)
            total = _cuda_total(device)
            if total is not None:
                return StageMemory(stage, model, device, weights, int(fraction * total), f"{how}; {fraction:.0%} of it")
        kv = options.get("kv_cache_memory_bytes") or _cpu_kv_cache()
        return StageMemory(stage, model, device, weights, weights + MARGIN_BYTES + int(kv), f"{how}; KV cache {kv}")
    margin = int(weights * MARGIN_FRACTION) + MARGIN_BYTES
    return StageMemory(stage, model, device, weights, weights + margin, how)


def _device(options: dict[str, Any]) -> str:
    name = str(options.get("device") or "auto")
    if options.get("device_map") not in (None, "", {}) and not name.startswith("cpu"):
        return "cuda"  # layers spread over every GPU
    if name == "auto":
        return "cuda:0" if _cuda_count() else "cpu"
    if name == "cuda":
        return "cuda:0"
    return name


def _cpu_kv_cache() -> int:
    space = os.environ.get("VLLM_CPU_KVCACHE_SPACE", "").strip()
    if space not in ("", "0"):
        return int(float(space) * GiB)
    return max(1, min(8, available_memory("cpu") // 8 // GiB)) * GiB  # an eighth of it, 1-8 GiB (the engine's rule)


# ---- the devices ----
def parse_size(text: str, where: str = ENV) -> int:
    value = text.strip().upper().removesuffix("B").removesuffix("I")
    scale = {"K": 1 << 10, "M": MiB, "G": GiB, "T": 1 << 40}.get(value[-1:], 1)
    try:
        number = float(value[:-1] if value[-1:] in "KMGT" else value)
    except ValueError:
        raise ConfigError(f"{where}={text!r}: give bytes, or a number with K, M, G or T (e.g. 24G)") from None
    if number < 0:
        raise ConfigError(f"{where}={text!r}: a size cannot be negative")
    return int(number * scale)


def available_memory(device: str) -> int:
    """Bytes free for models on `device` ("cpu", "cuda:N", "cuda": every GPU), before headroom."""
    given = os.environ.get(ENV, "").strip()
    if given:
        return parse_size(given)
    if device.startswith("cuda"):
        import torch

        if device == "cuda":
            return sum(torch.cuda.mem_get_info(i)[0] for i in range(torch.cuda.device_count()))
        return int(torch.cuda.mem_get_info(torch.device(device))[0])
    from capmill.host_memory import available_ram

    return available_ram()


def _cuda_count() -> int:
    try:
        import torch
    except ImportError:
        return 0
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _cuda_total(device: str) -> int | None:
    try:
        import torch

        return int(torch.cuda.mem_get_info(torch.device(device))[1])
    except Exception:  # noqa: BLE001 - no such device here: the weights and cache figure stands
        return None


# ---- the choice ----
def choose(stages: list[StageMemory]) -> Choice:
    """Side by side when every device holds the sum of its stages' estimates with headroom to spare; one at a
    time when one does not, or when a stage's size is unknown (the safe way)."""
    unknown = [s for s in stages if s.estimate_bytes is None]
    if unknown:
        s = unknown[0]
        return Choice(False, f"stage {s.stage!r}: size of {s.model} unknown ({s.how})", None, None, tuple(stages))
    if len(stages) < 2:
        return Choice(False, "a single stage", stages[0].estimate_bytes if stages else 0, None, tuple(stages))
    by_device: dict[str, int] = {}
    for s in stages:
        if s.device != "remote":
            by_device[s.device] = by_device.get(s.device, 0) + int(s.estimate_bytes or 0)
    estimate = sum(by_device.values())
    if not by_device:
        return Choice(True, "no stage loads a model here", 0, None, tuple(stages))
    available_total = 0
    for device, need in sorted(by_device.items()):
        available = available_memory(device)
        available_total += available
        usable = int(available * (1 - HEADROOM))
        if need > usable:
            reason = f"the models need {_gib(need)} on {device}, {_gib(usable)} of {_gib(available)} free is usable"
            return Choice(False, reason, estimate, available_total, tuple(stages))
    where = ", ".join(sorted(by_device))
    reason = f"the models need {_gib(estimate)} together on {where}, {_gib(available_total)} is free"
    return Choice(True, reason, estimate, available_total, tuple(stages))


def _gib(n: int) -> str:
    return f"{n / GiB:.2f} GiB" if n >= GiB else f"{n / MiB:.0f} MiB"
