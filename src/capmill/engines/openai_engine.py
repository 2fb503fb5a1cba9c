"""The OpenAI-compatible engine: any chat-completions server (vllm serve, SGLang, llama.cpp, Ollama, hosted APIs).

A batch runs concurrently over one async httpx client, at most `concurrency` requests in flight; 429, 5xx,
timeouts and dropped connections are retried with exponential backoff (honouring Retry-After). A request
that still fails becomes a Generation with `error`, so one bad item never ends a run; a server that cannot
be reached at all, or does not serve the model, is an EngineError / ConfigError before any work.
"""

from __future__ import annotations

import asyncio
import os
import random
import threading
import time
from collections.abc import Sequence
from typing import Any, ClassVar, Literal

from pydantic import Field

from capmill.engines.base import Engine, EngineOptions
from capmill.engines.openai_messages import response_format, sampling_fields, to_openai_messages, tool_calls_to_text
from capmill.errors import ConfigError, EngineError
from capmill.records import Generation, Request

INPUT_STATUSES = frozenset({400, 413, 414, 415, 422})  # the request (the input) is at fault, not the server
RETRY_STATUSES = frozenset({408, 409, 425, 429, 500, 502, 503, 504, 520, 521, 522, 523, 524, 529})


class OpenAIOptions(EngineOptions):
    # default: $OPENAI_BASE_URL (as the openai SDK reads it), else a local `vllm serve`
    base_url: str = Field(default_factory=lambda: os.environ.get("OPENAI_BASE_URL") or "http://127.0.0.1:8000/v1")
    api_key_env: str = "OPENAI_API_KEY"  # the key is read from this variable, never from options or files
    served_model: str | None = None  # the server's model name (vllm serve --served-model-name); None: the model
    concurrency: int = Field(8, ge=1)
    timeout: float = Field(300.0, gt=0)  # seconds per attempt
    max_retries: int = Field(5, ge=0)
    backoff_initial: float = Field(0.5, ge=0)
    backoff_max: float = Field(30.0, ge=0)
    image_format: Literal["png", "jpeg", "webp"] = "png"  # png: lossless, the server sees capmill's pixels
    jpeg_quality: int = Field(95, ge=1, le=100)
    # Tools are rendered into the prompt by the server's chat template; "none" keeps the model's own tool-call
    # text in `content` (vLLM refuses "auto" unless started with --enable-auto-tool-choice). None: not sent.
    tool_choice: str | None = "none"
    extra_body: dict[str, Any] = {}  # merged into every request body (e.g. {"top_k": 1} or server-specific keys)
    check_server: bool = True  # GET /models once before the first batch
    extra_headers: dict[str, str] = {}  # sent with every request (a gateway's routing or tenant header)

    # Options that change how requests travel, never what a server answers: outside the run identity.
    identity_exempt: ClassVar[frozenset[str]] = frozenset(
        {"api_key_env", "concurrency", "timeout", "max_retries", "backoff_initial", "backoff_max", "check_server",
         "extra_headers"}
    )  # fmt: skip


class OpenAIEngine(Engine):
    """Sends each Request to `{base_url}/chat/completions`; see OpenAIOptions."""

    name: ClassVar[str] = "openai"
    supports_video: ClassVar[bool] = False
    supports_constrained: ClassVar[bool] = True
    Options: ClassVar[type[EngineOptions]] = OpenAIOptions

    def __init__(self, model: str, profile: Any, options: Any = None):
        super().__init__(model, profile, options)
        opts: OpenAIOptions = self.options  # type: ignore[assignment]
        self.base_url = opts.base_url.rstrip("/")
        if not self.base_url.startswith(("http://", "https://")):
            raise ConfigError(f"base_url {opts.base_url!r} must start with http:// or https://")
        self.served_model = opts.served_model or model
        self._checked = not opts.check_server
        self.stats = {"requests": 0, "attempts": 0, "retries": 0}

    def describe(self) -> dict[str, Any]:
        out = super().describe()
        out.update(base_url=self.base_url, served_model=self.served_model)
        return out

    def _headers(self) -> dict[str, str]:
        key = os.environ.get(self.options.api_key_env)  # type: ignore[attr-defined]
        headers = dict(self.options.extra_headers)  # type: ignore[attr-defined]
        if key:
            headers["Authorization"] = f"Bearer {key}"
        return headers

    # ---- generation ----
    def generate(self, requests: Sequence[Request]) -> list[Generation]:
        """Runs the batch concurrently; usable from plain code and from inside a running event loop."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(self.agenerate(requests))
        box: dict[str, Any] = {}

        def run() -> None:
            try:
                box["out"] = asyncio.run(self.agenerate(requests))
            except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
                box["err"] = exc

        worker = threading.Thread(target=run, name="capmill-openai")
        worker.start()
        worker.join()
        if "err" in box:
            raise box["err"]
        return box["out"]

    async def agenerate(self, requests: Sequence[Request]) -> list[Generation]:
        import httpx

        opts: OpenAIOptions = self.options  # type: ignore[assignment]
        limits = httpx.Limits(max_connections=opts.concurrency, max_keepalive_connections=opts.concurrency)
        async with httpx.AsyncClient(
            base_url=self.base_url, headers=self._headers(), timeout=opts.timeout, limits=limits
        ) as client:
            if not self._checked:
                await self._check(client)
            slots = asyncio.Semaphore(opts.concurrency)
            return list(await asyncio.gather(*(self._one(client, slots, r) for r in requests)))

    async def _check(self, client: Any) -> None:
        """Fail fast, before any work, when the server is unreachable or does not serve the model."""
        import httpx

        try:
            resp = await client.get("/models")
        except httpx.HTTPError as exc:
            raise EngineError(f"cannot reach the OpenAI-compatible server at {self.base_url}: {exc!r}") from exc
        if resp.status_code in (401, 403):
            raise ConfigError(
                f"{self.base_url} refused the API key (HTTP {resp.status_code}); set {self.options.api_key_env}"  # type: ignore[attr-defined]
            )
        if resp.status_code == 200:
            try:
                served = [m.get("id") for m in resp.json().get("data", [])]
            except (ValueError, AttributeError):
                served = []
            if served and self.served_model not in served:
                raise ConfigError(
                    f"{self.base_url} does not serve model {self.served_model!r}; it serves: {', '.join(map(str, served))}"
                    " (set served_model in the engine options)"
                )
        self._checked = True  # other statuses: some servers have no /models; the requests will tell

    def payload(self, request: Request) -> dict[str, Any]:
        """The chat-completions request body for one Request."""
        opts: OpenAIOptions = self.options  # type: ignore[assignment]
        body: dict[str, Any] = {
            "model": self.served_model,
            "messages": to_openai_messages(request, image_format=opts.image_format, quality=opts.jpeg_quality),
        }
        body.update(sampling_fields(request.decoding))
        if request.tools:
            body["tools"] = request.tools
            if opts.tool_choice is not None:
                body["tool_choice"] = opts.tool_choice
        if request.chat_kwargs:
            body["chat_template_kwargs"] = dict(request.chat_kwargs)  # vLLM and SGLang pass these to the template
        body.update(response_format(request.constraint))
        body.update(opts.extra_body)
        return body

    async def _one(self, client: Any, slots: asyncio.Semaphore, request: Request) -> Generation:
        t0 = time.perf_counter()
        try:
            body = self.payload(request)
        except Exception as exc:  # noqa: BLE001 - an unusable input is this item's error
            return Generation(text="", finish_reason="error", error=f"{type(exc).__name__}: {exc}", retryable=False)
        stops = list(request.decoding.stop)
        async with slots:  # held through the backoff too: an overloaded server gets fewer requests, not more
            generation = await self._post(client, body, stops)
        generation.timings["request"] = time.perf_counter() - t0
        return generation

    async def _post(self, client: Any, body: dict[str, Any], stops: list[str]) -> Generation:
        import httpx

        opts: OpenAIOptions = self.options  # type: ignore[assignment]
        self.stats["requests"] += 1
        error = ""
        for attempt in range(opts.max_retries + 1):
            self.stats["attempts"] += 1
            if attempt:
                self.stats["retries"] += 1
            retry_after: float | None = None
            try:
                resp = await client.post("/chat/completions", json=body)
            except httpx.TimeoutException as exc:
                error = f"timeout after {opts.timeout:g}s ({type(exc).__name__})"
            except httpx.TransportError as exc:
                error = f"connection error: {type(exc).__name__}: {exc}"
            else:
                if resp.status_code == 200:
                    try:
                        return _generation(resp.json(), stops, attempt)
                    except (ValueError, KeyError, IndexError, TypeError) as exc:
                        return Generation(
                            text="", finish_reason="error", error=f"malformed response: {exc!r}", retryable=True
                        )
                error = f"HTTP {resp.status_code}: {_error_text(resp)}"
                if resp.status_code not in RETRY_STATUSES:  # final when the server refuses this input itself
                    return Generation(
                        text="",
                        finish_reason="error",
                        error=error,
                        timings={"retries": attempt},
                        retryable=resp.status_code not in INPUT_STATUSES,
                    )
                retry_after = _retry_after(resp.headers.get("retry-after"))
            if attempt < opts.max_retries:
                await asyncio.sleep(self.backoff(attempt, retry_after))
        return Generation(
            text="",
            finish_reason="error",
            error=f"gave up after {opts.max_retries + 1} attempts: {error}",
            timings={"retries": opts.max_retries},
            retryable=True,  # the server is down or overloaded: a later run retries this input
        )

    def backoff(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds before retry `attempt + 1`: the server's Retry-After if given, else exponential with jitter."""
        opts: OpenAIOptions = self.options  # type: ignore[assignment]
        if retry_after is not None:
            return min(retry_after, opts.backoff_max)
        delay = min(opts.backoff_max, opts.backoff_initial * 2**attempt)
        return delay / 2 + random.uniform(0, delay / 2)  # "equal jitter": spread retries, keep a floor


def _generation(data: dict[str, Any], stops: list[str], retries: int) -> Generation:
    choice = data["choices"][0]
    message = choice.get("message") or {}
    text = message.get("content") or ""
    if message.get("tool_calls"):  # the server parsed the call: give the profile the model's native text back
        text = (text + "\n" if text else "") + tool_calls_to_text(message["tool_calls"])
    # vLLM reports which stop string ended the output; keep it, as the transformers engine's stop strings do
    stop_reason = choice.get("stop_reason")
    if isinstance(stop_reason, str) and stop_reason in stops and not text.endswith(stop_reason):
        text += stop_reason
    usage = data.get("usage") or {}
    reason = choice.get("finish_reason") or "stop"
    return Generation(
        text=text,
        prompt_tokens=int(usage.get("prompt_tokens") or 0),
        completion_tokens=int(usage.get("completion_tokens") or 0),
        finish_reason="length" if reason == "length" else "stop",
        timings={"retries": retries},
    )


def _error_text(resp: Any, limit: int = 300) -> str:
    try:
        data = resp.json()
        err = data.get("error", data) if isinstance(data, dict) else data
        text = err.get("message", str(err)) if isinstance(err, dict) else str(err)
    except ValueError:
        text = resp.text
    text = " ".join(str(text).split())
    return text[:limit] + ("..." if len(text) > limit else "")


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # an HTTP date: use our own backoff
