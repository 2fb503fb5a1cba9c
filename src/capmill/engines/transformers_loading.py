"""Loading a model for the transformers engine: its options, device, dtype, attention implementation,
device map, bitsandbytes quantization and torch.compile.

`load_model` is the one place a checkpoint becomes a model object, for every family.
"""

from __future__ import annotations

import threading
from typing import Any, Literal

from pydantic import Field

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
    # "auto" / "balanced" / {"module": device}: accelerate places the layers (a model larger than one GPU); the
    # inputs go to `device`, so the embeddings must be there (accelerate's "auto" puts them on the first GPU)
    device_map: str | dict[str, Any] | None = None
    torch_compile: bool = False  # torch.compile the model's forward (minutes of compiling, then faster steps)
    # bitsandbytes: "nf4" (4-bit NormalFloat, double quantization) or "int8"; the vision tower, the projector
    # and lm_head stay in `dtype`, as JoyCaption's loader keeps them (`quantization_skip` overrides the list)
    quantization: Literal["nf4", "fp4", "int8"] | None = None
    quantization_skip: list[str] | None = None
    load_kwargs: dict[str, Any] = Field(default_factory=dict)  # any other from_pretrained keyword (e.g. revision)


DTYPES = {"float32": "float32", "fp32": "float32", "bfloat16": "bfloat16", "bf16": "bfloat16", "float16": "float16"}
DTYPES["fp16"] = "float16"


def load_model(family: Any, model: str, options: TransformersOptions, device: Any, dtype: Any) -> tuple[Any, str]:
    """(the model, on `device` in eval mode; the attention implementation it runs with).

    The best attention implementation is tried first (`best_attention`), falling back to eager when it is
    unavailable for this architecture, unless the user named one: then its failure is the error.
    """
    cls = family.model_class()
    attention = options.attn_implementation or best_attention(device, dtype)
    kwargs = {"dtype": dtype, "trust_remote_code": options.trust_remote_code, **options.load_kwargs}
    placed = bool(options.device_map or options.quantization)  # from_pretrained places it: no .to() after
    if options.quantization:
        kwargs["quantization_config"] = quantization_config(options, dtype)
    if placed:
        kwargs["device_map"] = options.device_map or {"": str(device)}
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
    loaded = loaded.eval() if placed else loaded.to(device).eval()
    if options.torch_compile:
        loaded.compile(dynamic=True)  # nn.Module.compile: the module's __call__, so generate uses it
    return loaded, attention


# Module names (regexes, matched from the start of a parameter's module path up to a dot) of the parts of the
# seed families that bitsandbytes leaves unquantized: vision towers, projectors, and the output head.
QUANTIZATION_SKIP = [
    r"(?:.*\.)?visual",  # Qwen2-VL, Qwen2.5-VL, Qwen3.5
    r"(?:.*\.)?vision_tower",  # InternVL (-HF), LLaVA-style (JoyCaption)
    r"(?:.*\.)?vision_model",  # BLIP-2, InternVL remote code
    r"(?:.*\.)?multi_modal_projector",
    r"(?:.*\.)?mlp1",  # InternVL remote code's projector
    r"(?:.*\.)?qformer",
    r"(?:.*\.)?language_projection",
    r"(?:.*\.)?query_tokens",
    "lm_head",
]


def quantization_config(options: TransformersOptions, dtype: Any) -> Any:
    """transformers' BitsAndBytesConfig for `options.quantization`; ConfigError when bitsandbytes is missing."""
    import importlib.util

    from transformers import BitsAndBytesConfig

    if importlib.util.find_spec("bitsandbytes") is None:
        from capmill.errors import MissingDependencyError

        raise MissingDependencyError("bitsandbytes", "quant", f"quantization={options.quantization}")
    skip = list(options.quantization_skip if options.quantization_skip is not None else QUANTIZATION_SKIP)
    if options.quantization == "int8":
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=skip)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=options.quantization,
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=dtype,
        llm_int8_skip_modules=skip,  # transformers reads this list for 4-bit too
    )


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
