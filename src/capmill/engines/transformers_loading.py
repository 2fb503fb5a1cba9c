"""Loading a model for the transformers engine: its options, device, dtype, attention implementation.

`load_model` is the one place a checkpoint becomes a model object, for every family.
"""

from __future__ import annotations

import threading
from typing import Any

from capmill.engines.base import EngineOptions
from capmill.errors import ConfigError, ModelLoadError

# transformers' from_pretrained swaps PreTrainedModel.tie_weights for a no-op on the class while it builds the model
# (initialization.no_tie_weights) and puts back what it found. Two loads in parallel threads (one engine per device,
# a server loading in a worker thread) can leave the no-op in place for the rest of the process, after which no
# model ties its weights: tied parameters (BLIP-2's T5 lm_head and embeddings) stay on the meta device. So loads
# in this process take turns.
_LOAD_LOCK = threading.Lock()


class TransformersOptions(EngineOptions):
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    dtype: str = "auto"  # auto (bf16 on CUDA, float32 on CPU) | float32 | bfloat16 | float16
    attn_implementation: str | None = None  # None: flash_attention_2 where installed and usable, else sdpa
    max_batch_size: int = 8  # a larger batch from the caller is split into sub-batches of this size
    sort_by_length: bool = True  # group similar lengths in one generate call: less padding
    prefix_cache: bool = True  # reuse the shared prompt prefix's state across unpadded batches
    merge_rows: bool = True  # with prefix_cache: padded batches too (rows from the prefix, one batched decode)
    split_by_length: bool = True  # with prefix_cache: batches of one token length only, so each reuses the prefix
    trust_remote_code: bool = False
    threads: int | None = None  # torch.set_num_threads, for shared CPUs
    batch_invariant: bool = False  # --exact: decode steps row by row in each Linear, bit-equal to the one-row loop


DTYPES = {"float32": "float32", "fp32": "float32", "bfloat16": "bfloat16", "bf16": "bfloat16", "float16": "float16"}
DTYPES["fp16"] = "float16"


def load_model(family: Any, model: str, options: TransformersOptions, device: Any, dtype: Any) -> tuple[Any, str]:
    """(the model, on `device` in eval mode; the attention implementation it runs with).

    The best attention implementation is tried first (`best_attention`), falling back to eager when it is
    unavailable for this architecture, unless the user named one: then its failure is the error.
    """
    cls = family.model_class()
    attention = options.attn_implementation or best_attention(device, dtype)
    kwargs = {"dtype": dtype, "trust_remote_code": options.trust_remote_code}
    try:
        with _LOAD_LOCK:
            try:
                loaded = cls.from_pretrained(model, attn_implementation=attention, **kwargs)
            except (ValueError, ImportError) as exc:
                if options.attn_implementation or not ("sdpa" in str(exc) or "flash" in str(exc).lower()):
                    raise
                attention = "eager"
                loaded = cls.from_pretrained(model, attn_implementation=attention, **kwargs)
    except Exception as exc:
        raise ModelLoadError(f"{model}: could not load the model ({type(exc).__name__}: {exc})") from exc
    return loaded.to(device).eval(), attention


def resolve_device(name: str) -> Any:
    import torch

    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ConfigError(f"unknown device {name!r}") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} asked for, but CUDA is not available here")
    return device


def resolve_dtype(name: str, device: Any) -> Any:
    import torch

    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if name not in DTYPES:
        raise ConfigError(f"unknown dtype {name!r}; choose auto, float32, bfloat16 or float16")
    return getattr(torch, DTYPES[name])


def best_attention(device: Any, dtype: Any) -> str:
    import torch

    if device.type == "cuda" and dtype in (torch.float16, torch.bfloat16):
        try:
            import flash_attn  # noqa: F401

            major, _ = torch.cuda.get_device_capability(device)
            if 8 <= major <= 9:  # Ampere..Hopper; the json-captioner card: no flash-attn kernels on sm_75/sm_120
                return "flash_attention_2"
        except ImportError:
            pass
    return "sdpa"
