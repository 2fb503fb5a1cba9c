"""The vLLM engine: an in-process `vllm.LLM` with prefix caching, continuous batching and structured outputs.

Prompts are rendered by the family's own processor and chat template, exactly as the transformers engine
renders them, and the prepared images go to vLLM as `multi_modal_data`; so under greedy decoding the two
engines see the same tokens and pixels. Outputs are decoded with the family's decoder for the same reason.
Constraints use the grammars of capmill.engines.grammars through vLLM's llguidance backend ("guidance").
Checkpoints without a processor (InternVL's remote-code format) are rendered by vLLM's own `LLM.chat`.
"""

from __future__ import annotations

import dataclasses
import json
import time
import weakref
from collections.abc import Sequence
from typing import Any, ClassVar

from capmill.engines import streaming
from capmill.engines import vllm_options as setup
from capmill.engines.base import Engine, EngineOptions
from capmill.engines.isolate import failed, run_isolating
from capmill.engines.openai_messages import media_parts, to_openai_messages
from capmill.engines.vllm_options import VLLMOptions
from capmill.errors import ModelLoadError, UnsupportedError
from capmill.models.families import get_family
from capmill.models.resolve import read_model_config, resolve_family
from capmill.quality.repetition import EXTRA_ARG, repetition_settings
from capmill.records import Decoding, Generation, Request

# Tag lists without a repeated tag (capmill.engines.tag_dedupe), by the name vLLM's engine process loads it by.
UNIQUE_TAGS_PROCESSOR = "capmill.engines.vllm_tag_dedupe:UniqueTagsLogitsProcessor"
# Repetition loops ended while decoding (capmill.engines.vllm_repetition), for requests that ask (the quality gate).
REPETITION_PROCESSOR = "capmill.engines.vllm_repetition:RepetitionStopLogitsProcessor"
# capmill families that vLLM runs; BLIP-2 with a T5 decoder is not among vLLM's models.
VLLM_FAMILIES = frozenset({"qwen3_5", "qwen2_vl", "qwen2_5_vl", "internvl", "generic"})
# engines whose core runs in this process (VLLM_ENABLE_V1_MULTIPROCESSING=0): vLLM allows one per process
_IN_PROCESS: weakref.WeakSet = weakref.WeakSet()
# transformers' GenerationConfig defaults: what the card's `generate(do_sample=True)` uses for unset fields.
HF_SAMPLING_DEFAULTS = {"temperature": 1.0, "top_p": 1.0, "top_k": 50, "repetition_penalty": 1.0}


class VLLMEngine(Engine):
    """Runs Qwen3.5, Qwen2-VL, Qwen2.5-VL and InternVL checkpoints on vLLM; see VLLMOptions."""

    name: ClassVar[str] = "vllm"
    supports_video: ClassVar[bool] = True
    supports_constrained: ClassVar[bool] = True
    families: ClassVar[frozenset[str] | None] = VLLM_FAMILIES
    Options: ClassVar[type[EngineOptions]] = VLLMOptions

    def __init__(self, model: str, profile: Any, options: Any = None):
        super().__init__(model, profile, options)
        opts: VLLMOptions = self.options  # type: ignore[assignment]
        config = read_model_config(model)
        self.family_name = resolve_family(model, profile, config)
        if self.family_name not in VLLM_FAMILIES:
            raise UnsupportedError(
                f"{model}: vLLM has no {self.family_name} model (BLIP-2 with a T5 decoder is not among vLLM's "
                "architectures); use the transformers engine: --engine transformers"
            )
        self.family = get_family(self.family_name)
        self.generation_config = _generation_config(model)
        try:
            import vllm  # noqa: F401
        except ImportError as exc:
            raise setup.missing_vllm(exc) from exc
        self.platform = setup.platform_device()
        self._pin = setup.check_device(opts.device, self.platform, opts.tensor_parallel_size)
        self.dtype, self.dtype_reason = setup.resolve_dtype(opts.dtype, config)
        if setup.in_process() and _IN_PROCESS:
            raise UnsupportedError(
                "a second vLLM engine in this process (one per device, --devices) needs vLLM's engine-core "
                "process: unset VLLM_ENABLE_V1_MULTIPROCESSING=0"
            )
        self.processor = None
        self.rendering = opts.prompt_rendering
        if config.get("model_type") == "internvl_chat":
            self.rendering = "chat"  # the remote-code format ships no processor: vLLM renders its prompt
        else:  # renders prompts and decodes outputs exactly as the transformers engine does
            self.processor = self.family.load_processor(model, trust_remote_code=opts.trust_remote_code)
        self.llm = self._load(model, opts)
        if setup.in_process():
            _IN_PROCESS.add(self)
        tokenizer = self.llm.get_tokenizer()
        self._added_tokens = frozenset(t.content for t in getattr(tokenizer, "added_tokens_decoder", {}).values())

    def _load(self, model: str, opts: VLLMOptions) -> Any:
        from vllm import LLM

        limits = opts.limit_mm_per_prompt
        if limits is None:
            limits = {"image": 1, "video": 1 if getattr(self.profile, "video", False) else 0}
        kwargs: dict[str, Any] = {
            "model": model,
            "dtype": self.dtype,
            "tensor_parallel_size": opts.tensor_parallel_size,
            "enforce_eager": opts.enforce_eager,
            "enable_prefix_caching": opts.enable_prefix_caching,
            "limit_mm_per_prompt": limits,
            "trust_remote_code": opts.trust_remote_code,
            "seed": opts.seed,
            "structured_outputs_config": {"backend": opts.structured_outputs_backend},
        }
        if opts.kv_cache_dtype != "auto":
            kwargs["kv_cache_dtype"] = opts.kv_cache_dtype
        for name in VLLMOptions.PASSED:
            value = getattr(opts, name)
            if value is not None:
                kwargs[name] = value
        kv_bytes = setup.kv_cache_choice(opts, self.platform)
        if kv_bytes is not None:
            kwargs["kv_cache_memory_bytes"] = kv_bytes
        kwargs.update(opts.engine_args)
        if not kwargs.get("speculative_config"):  # vLLM refuses custom logits processors beside speculative decoding
            ours = [UNIQUE_TAGS_PROCESSOR, REPETITION_PROCESSOR]
            kwargs["logits_processors"] = [*(kwargs.get("logits_processors") or []), *ours]
        setup.log.info("vLLM runs %s in %s (%s) on %s", model, self.dtype, self.dtype_reason, self.platform)
        try:
            with setup.pinned_to(self._pin):
                return LLM(**kwargs)
        except Exception as exc:
            raise ModelLoadError(f"{model}: vLLM could not load it ({type(exc).__name__}: {_first_line(exc)})") from exc

    def describe(self) -> dict[str, Any]:
        out = super().describe()
        import vllm

        out.update(family=self.family_name, vllm_version=vllm.__version__, rendering=self.rendering)
        model_config = getattr(getattr(self.llm, "llm_engine", None), "model_config", None)
        ran = str(getattr(model_config, "dtype", self.dtype)).removeprefix("torch.")
        out.update(dtype=ran, dtype_reason=self.dtype_reason, platform=self.platform)
        return out

    @classmethod
    def uses_host_cpu(cls, options: dict[str, Any]) -> bool:
        try:
            return setup.platform_device() == "cpu"
        except ImportError:
            return False

    # ---- generation ----
    def generate(self, requests: Sequence[Request]) -> list[Generation]:
        prepared: list[tuple[Any, Any] | Generation] = []
        for request in requests:
            try:
                prepared.append((self._prompt(request), self.sampling_params(request)))
            except Exception as exc:  # noqa: BLE001 - a bad input becomes its own error record
                prepared.append(failed(exc))
        ready = [i for i, p in enumerate(prepared) if not isinstance(p, Generation)]
        results: dict[int, Generation] = {i: p for i, p in enumerate(prepared) if isinstance(p, Generation)}
        if ready:  # vLLM validates a whole call at once: a bad input is isolated
            generations = run_isolating(
                lambda part: self._run([requests[i] for i in part], [prepared[i] for i in part]), ready
            )
            results.update(zip(ready, generations, strict=True))
        return [results[i] for i in range(len(requests))]

    def _prompt(self, request: Request) -> Any:
        """A vLLM prompt: the family-rendered text plus its media, or chat messages for LLM.chat."""
        if self.rendering == "chat":
            return to_openai_messages(request, pil=True)
        if request.prompt_text is not None:
            text = request.prompt_text
        else:
            text = self.family.render(self.processor, request)
        prompt: dict[str, Any] = {"prompt": text}
        media: dict[str, list[Any]] = {}
        for kind, value in media_parts(request):
            media.setdefault(kind, []).append(_video_input(value) if kind == "video" else value)
        if media:
            prompt["multi_modal_data"] = media
            if request.content_hash:  # vLLM keys its media caches by these ids instead of hashing the pixels again
                prompt["multi_modal_uuids"] = media_uuids(request.content_hash, media)
        return prompt

    def sampling_params(self, request: Request) -> Any:
        """SamplingParams with the transformers engine's meaning (greedy, HF sampling defaults, stop strings kept)."""
        from vllm import SamplingParams

        d: Decoding = request.decoding
        kwargs: dict[str, Any] = {
            "max_tokens": d.max_new_tokens,
            "seed": d.seed,
            # transformers' stop_strings keep the stop string in the output; the profiles' parsers expect it
            "stop": list(d.stop) or None,
            "include_stop_str_in_output": bool(d.stop),
        }
        if d.do_sample:
            for name, default in HF_SAMPLING_DEFAULTS.items():
                value = getattr(d, name)
                if value is None:
                    value = self.generation_config.get(name, default)
                kwargs[name] = value if name != "top_k" else (value or 0)
        else:
            kwargs["temperature"] = 0.0
            if d.repetition_penalty is not None:
                kwargs["repetition_penalty"] = d.repetition_penalty
        if request.constraint:
            kwargs["structured_outputs"] = self._structured(request.constraint)
        settings = repetition_settings(request.stop_repetition)
        if settings is not None:  # the row ends at a repetition loop (capmill.engines.vllm_repetition)
            kwargs["extra_args"] = {EXTRA_ARG: dataclasses.asdict(settings)}
        return SamplingParams(**kwargs)

    def _structured(self, constraint: dict[str, Any]) -> Any:
        """StructuredOutputsParams: a JSON schema as `json` (with capmill's one-line layout), else a grammar."""
        from vllm.sampling_params import StructuredOutputsParams

        from capmill.engines.grammars import compact_schema, grammar_for, tool_call_grammar

        grammar_for(constraint, self._added_tokens)  # the same validation (and ConfigError) as transformers
        kind, value = next(iter(constraint.items()))
        if kind == "json_schema":
            return StructuredOutputsParams(json=compact_schema(value))
        if kind == "tool_call":
            return StructuredOutputsParams(grammar=tool_call_grammar(value, self._added_tokens))
        return StructuredOutputsParams(grammar=value)

    def _run(self, requests: list[Request], prepared: list[Any]) -> list[Generation]:
        t0 = time.perf_counter()
        prompts = [p for p, _ in prepared]
        params = [s for _, s in prepared]
        if self.rendering == "chat":
            outputs = []
            for group in _groups(requests):  # LLM.chat takes one tools / chat_kwargs per call
                first = requests[group[0]]
                outs = self.llm.chat(
                    [prompts[i] for i in group],
                    [params[i] for i in group],
                    use_tqdm=False,
                    tools=first.tools,
                    chat_template_kwargs=first.chat_kwargs or None,
                )
                outputs.extend(zip(group, outs, strict=True))
            outputs = [o for _, o in sorted(outputs, key=lambda x: x[0])]
        elif any(controls := streaming.controls_of(requests)):  # a listening or cancellable row: step it here
            from capmill.engines.vllm_streaming import generate_stepped

            decode = (lambda ids: self.family.decode(self.processor, [ids])[0]) if self.processor is not None else None
            outputs = generate_stepped(self.llm, prompts, params, controls, decode or self._detokenize)
        else:
            outputs = self.llm.generate(prompts, params, use_tqdm=False)
        elapsed = (time.perf_counter() - t0) / max(1, len(requests))
        return [self._generation(out, elapsed, len(requests)) for out in outputs]

    def _detokenize(self, ids: list[int]) -> str:
        return self.llm.get_tokenizer().decode(ids, skip_special_tokens=True)

    def _generation(self, out: Any, elapsed: float, batch: int) -> Generation:
        if out is None:  # a row cancelled before its first step (its client left)
            return Generation(text="", finish_reason="cancelled", timings={"generate": elapsed, "batch_size": batch})
        completion = out.outputs[0]
        token_ids = list(completion.token_ids)
        text = completion.text
        if self.processor is not None:
            text = self.family.decode(self.processor, [token_ids])[0]  # the transformers engine's decode
        reason = completion.finish_reason or "stop"
        return Generation(
            text=text,
            prompt_tokens=len(out.prompt_token_ids or []),
            completion_tokens=len(token_ids),
            finish_reason="length" if reason == "length" else "stop" if reason in ("stop", "eos") else reason,
            timings={"generate": elapsed, "batch_size": batch},
        )

    def token_ids(self, requests: Sequence[Request]) -> list[list[int]]:
        """Generated token ids per request (for fidelity checks against other engines)."""
        outs = self.llm.generate(
            [self._prompt(r) for r in requests], [self.sampling_params(r) for r in requests], use_tqdm=False
        )
        return [list(o.outputs[0].token_ids) for o in outs]

    def close(self) -> None:
        llm, self.llm = getattr(self, "llm", None), None
        _IN_PROCESS.discard(self)
        if llm is None:
            return
        core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
        if core is not None and hasattr(core, "shutdown"):
            core.shutdown()
        del llm
        from vllm.distributed.parallel_state import cleanup_dist_env_and_memory

        cleanup_dist_env_and_memory()  # lets a later engine in this process initialise vLLM again


def _first_line(exc: BaseException, limit: int = 400) -> str:
    """vLLM's errors can be pydantic reports of many lines: the first line says what went wrong."""
    text = str(exc).strip().splitlines()
    line = text[0] if text else ""
    return line[:limit] + ("..." if len(line) > limit else "")


def _groups(requests: list[Request]) -> list[list[int]]:
    groups: dict[str, list[int]] = {}
    for i, r in enumerate(requests):
        key = json.dumps([r.tools, r.chat_kwargs], sort_keys=True, default=str)
        groups.setdefault(key, []).append(i)
    return list(groups.values())


def _video_input(frames: list[Any]) -> Any:
    """PIL frames as the (T, H, W, 3) uint8 array vLLM's video processors take."""
    import numpy as np

    return np.stack([np.asarray(f.convert("RGB")) for f in frames])


def _generation_config(model: str) -> dict[str, Any]:
    """generation_config.json of the checkpoint ({} when absent): transformers' defaults for unset decoding."""
    from pathlib import Path

    path = Path(model) / "generation_config.json"
    if not path.is_file():
        try:
            from capmill.models.hub import hub_file

            path = Path(hub_file(model, "generation_config.json"))
        except Exception:  # noqa: BLE001 - no generation config: transformers' own defaults apply
            return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def media_uuids(content_hash: str, media: dict[str, list[Any]]) -> dict[str, list[str]]:
    """One id per image or video: the input's content hash, the item's place and its pixel size (the same bytes
    prepared at another size are other pixels, so another id)."""

    def size(value: Any) -> str:
        shape = getattr(value, "shape", None)  # a video: (frames, height, width, 3)
        if shape is not None:
            return "x".join(map(str, shape))
        width, height = value.size  # a PIL image
        return f"{width}x{height}"

    return {kind: [f"{content_hash}:{kind}{i}:{size(v)}" for i, v in enumerate(vs)] for kind, vs in media.items()}
