"""What the endpoints do, without HTTP: turn chat and caption requests into engine Requests and answer them.

Longer than most modules (~350 lines): every endpoint's steps (check, prepare, queue with a control, cancel, read)
share the one engine queue and its cancellation; HTTP lives in router.py, limits in limits.py and guards.py.

The Captioner prepares every image exactly as `capmill caption` would (same decoding, resizing, scaffold),
the Batcher groups requests into engine batches, and the Captioner turns Generations into Records.
"""

from __future__ import annotations

import asyncio
import copy
import io
import time
import uuid
from dataclasses import dataclass, replace
from typing import Any

from capmill.engines import streaming
from capmill.engines.isolate import run_isolating
from capmill.engines.openai_messages import chat_turns, decoding_from_fields, hf_messages
from capmill.errors import InputError, UnknownNameError
from capmill.records import Generation, Item, Record, Request, sha256_hex
from capmill.serve import limits
from capmill.serve.batcher import Batcher
from capmill.serve.config import ServeConfig
from capmill.serve.constraints import GrammarChecker, check_size, requested_constraint
from capmill.serve.guards import before_queue
from capmill.serve.httperrors import HTTPProblem, bad_request, too_large
from capmill.serve.metrics import Metrics
from capmill.serve.protocol import ChatCompletionRequest


@dataclass
class Ticket:
    """A queued request: its future, its control inside the engine, and its text as generated (streaming)."""

    request: Request
    future: asyncio.Future
    control: streaming.RowControl
    deltas: asyncio.Queue | None
    queued_at: float
    gone: bool = False  # the client disconnected


@dataclass
class PreparedChat:
    """A chat request turned into one engine Request, with the item its images came from."""

    id: str
    model: str
    item: Item
    request: Request
    created: int
    mode: str


class CaptionService:
    """The captioner behind the API: prepares requests, queues them on the batcher, reads the output."""

    def __init__(self, captioner: Any, config: ServeConfig, metrics: Metrics):
        self.captioner = captioner
        self.config = config
        self.metrics = metrics
        self.settings: dict[str, Any] = dict(captioner.settings())
        self.profile = captioner.profile
        self.names = config.names(self.profile.name, getattr(captioner, "model", None))
        self.created = int(time.time())
        self._views: dict[str, Any] = {}
        self.grammars = GrammarChecker(config)
        self.batcher = Batcher(
            self._run_batch,
            max_batch=config.max_batch,
            max_wait_s=config.max_wait_ms / 1000.0,
            max_queue=config.max_queue,
            metrics=metrics,
        )

    # ---------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        await asyncio.to_thread(self._load)
        await self.batcher.start()

    def _load(self) -> None:
        """Load the engine now (not on the first request), then make one view of the captioner per mode.

        The Captioner reads its mode when it writes a Record (mode, prompt hash, grounding in text mode); the
        views are shallow copies that share the one loaded engine and differ only in mode."""
        _ = getattr(self.captioner, "engine", None)
        for mode in self.profile.modes:
            if getattr(self.captioner, "mode", mode) == mode:
                self._views[mode] = self.captioner
            else:
                view = copy.copy(self.captioner)
                view.mode = mode
                self._views[mode] = view

    async def stop(self) -> None:
        await self.batcher.stop()
        self.grammars.close()

    def _run_batch(self, requests: list[Request]) -> list[Generation]:
        """Runs on the engine thread. A batch that fails as a whole is retried one by one, so one bad request
        cannot fail the other clients' requests that happened to share its batch."""
        return run_isolating(self.captioner.generate, requests, raise_alone=True)

    # ---------------------------------------------------------------- shared steps

    def fast_paths(self) -> dict[str, dict[str, Any]]:
        """The engine's fast paths and their states ({} while the engine loads)."""
        report = getattr(self.captioner, "fast_paths", None)
        return report() if report is not None else {}

    def check_model(self, name: str | None) -> str:
        if name is None:
            return self.names[0]
        if name not in self.names:
            raise UnknownNameError("model", name, self.names)
        return name

    def check_pixels(self, data: bytes, source: str) -> None:
        """Refuse an image with too many pixels from its header alone, before anything decodes it."""
        from PIL import Image

        try:
            with Image.open(io.BytesIO(data)) as img:
                width, height = img.size
        except Exception:
            return  # not readable as an image: prepare() says what is wrong, with the reason
        if width * height > self.config.max_image_pixels:
            raise too_large(f"{source}: image of {width}x{height} pixels exceeds {self.config.max_image_pixels}")

    async def prepare(self, item: Item, mode: str) -> Request:
        if item.data is not None:
            self.check_pixels(item.data, item.source)
        return await asyncio.to_thread(self.captioner.prepare, item, mode)

    async def generate(self, request: Request) -> Generation:
        return await self.wait(self.submit(request))

    def submit(self, request: Request, stream: bool = False) -> Ticket:
        """Queue a request with a control attached (its text as generated when `stream`, and a cancel switch)."""
        deltas: asyncio.Queue | None = asyncio.Queue() if stream else None
        on_delta = None
        if deltas is not None:
            loop = asyncio.get_running_loop()

            def on_delta(text: str, tokens: int) -> None:  # on the engine thread
                loop.call_soon_threadsafe(deltas.put_nowait, (text, tokens))

        control = streaming.RowControl(on_delta)
        streaming.attach(request, control)
        try:
            future = self.batcher.submit(request)
        except BaseException:
            streaming.detach(request)
            raise
        return Ticket(request, future, control, deltas, time.perf_counter())

    async def wait(self, ticket: Ticket, receive: Any = None) -> Generation:
        """The Generation, within the request timeout (504). With `receive` (the ASGI channel, body already read),
        a client that disconnects cancels its request: off the queue, or out of its running batch at the next
        token (answered 499, which nobody reads)."""
        watcher = asyncio.create_task(self._watch(receive, ticket)) if receive is not None else None
        try:
            return await asyncio.wait_for(ticket.future, self.config.request_timeout_s)
        except (asyncio.TimeoutError, TimeoutError) as exc:
            self.cancel(ticket, "timeout")
            self.metrics.reject("timeout")
            raise HTTPProblem(
                504, f"generation did not finish within {self.config.request_timeout_s:g} s", code="timeout"
            ) from exc
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if ticket.gone and not (task is not None and task.cancelling()):
                raise HTTPProblem(499, "the client closed the connection", code="client_closed") from None
            self.cancel(ticket, "cancelled")
            raise
        finally:
            if watcher is not None:
                watcher.cancel()
            self.release(ticket)

    async def _watch(self, receive: Any, ticket: Ticket) -> None:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                ticket.gone = True
                self.cancel(ticket, "disconnect")
                return

    def cancel(self, ticket: Ticket, reason: str) -> None:
        """Stop a request wherever it is: off the queue, or its row at the next step of its batch."""
        if ticket.future.done():
            return
        ticket.control.cancelled = True
        ticket.future.cancel()
        self.metrics.cancelled.labels(reason).inc()

    def release(self, ticket: Ticket) -> None:
        streaming.detach(ticket.request)

    def finish(self, item: Item, request: Request, generation: Generation, mode: str | None = None) -> Record:
        captioner = self._views.get(mode or "", self.captioner)
        record = captioner.finish(item, request, generation)
        self.metrics.record_status(record.status)
        return record

    def check_mode(self, mode: str | None, *, has_text: bool) -> str:
        modes = tuple(self.profile.modes)
        if has_text and "text" not in modes:
            raise bad_request(
                f"profile {self.profile.name} does not caption text; its modes: {', '.join(modes)}", "text"
            )
        if mode is None:
            mode = "text" if has_text and "text" in modes else self.profile.default_mode
        if mode not in modes:
            raise bad_request(
                f"mode {mode!r} is not offered by profile {self.profile.name}; choose one of {modes}", "mode"
            )
        if has_text != (mode == "text"):
            need = "caption text ('text')" if mode == "text" else "an image"
            raise bad_request(f"mode {mode!r} needs {need}", "mode")
        return mode

    # ---------------------------------------------------------------- /v1/captions

    def tool_constraint(self, request: Request) -> dict[str, Any]:
        """Constrained decoding of the profile's tool call (the JSON captioner's emit_caption_schema)."""
        if self.profile.output != "tool_call" or not request.tools:
            raise bad_request(f"profile {self.profile.name} writes free text; there is no tool call to constrain")
        self.check_constrainable()
        return {"tool_call": request.tools[0]}

    def check_constrainable(self) -> None:
        engine = getattr(self.captioner, "engine", None)
        if not getattr(type(engine), "supports_constrained", False):
            raise bad_request(f"the {getattr(engine, 'name', 'current')} engine cannot constrain output")

    async def caption(
        self,
        item: Item,
        mode: str | None,
        arrival: Any = None,
        constrained: bool | None = None,
        scope: dict[str, Any] | None = None,
        receive: Any = None,
    ) -> Record:
        """Caption one item; `arrival` (from the EarlyArrivals middleware) is closed once it is queued, and the
        preparation counts against the receive deadline kept in `scope`."""
        mode = self.check_mode(mode, has_text=item.kind == "text")
        async with before_queue(scope or {}):
            request = await self.prepare(item, mode)
        if constrained if constrained is not None else (self.config.constrained and self.profile.output == "tool_call"):
            request.constraint = self.tool_constraint(request)
        ticket = self.submit(request)
        if arrival is not None:
            arrival.done()
        generation = await self.wait(ticket, receive)
        return self.finish(item, request, generation, mode)

    # ---------------------------------------------------------------- /v1/chat/completions

    async def prepare_chat(self, chat: ChatCompletionRequest) -> PreparedChat:
        """OpenAI messages -> one engine Request: the client's messages, rendered the profile's way."""
        model = self.check_model(chat.model)
        fields = chat.model_dump(exclude={"messages"})
        limits.check_request_limits(chat, fields, self.config)
        turns = chat_turns([m.model_dump() for m in chat.messages])
        images: list[bytes] = []
        for m, (role, parts) in enumerate(turns):
            for p, (kind, value) in enumerate(parts):
                if kind != "image_url":
                    continue
                if role != "user":
                    raise bad_request(f"messages[{m}]: images are only accepted in user messages", "messages")
                if len(images) >= self.config.max_images_per_request:
                    raise too_large(
                        f"more than {self.config.max_images_per_request} images in one request (max_images_per_request)"
                    )
                param = f"messages[{m}].content[{p}].image_url"
                images.append(await limits.image_url_bytes(value, param=param, config=self.config))
                parts[p] = ("image", len(images) - 1)
        if not any(role == "user" for role, _ in turns):
            raise bad_request("messages: at least one user message is needed", "messages")

        chat_id = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        if images:
            mode = self.profile.default_mode if self.profile.default_mode != "text" else "caption"
            bases = []
            for i, data in enumerate(images):
                item = Item(id=f"{chat_id}-{i}", source=f"image_url[{i}]", kind="image", data=data)
                bases.append(await self.prepare(item, mode))
            base, item = bases[0], Item(id=chat_id, source="chat", kind="image", data=images[0])
            pil_images = [b.images[0] if b.images else None for b in bases]
        else:
            text = "\n".join(v for _, parts in turns for k, v in parts if k == "text")
            item = Item(id=chat_id, source="chat", kind="text", text=text or " ")
            mode = "text"
            if "text" in self.profile.modes:
                base = await self.prepare(item, "text")
            else:
                base = Request(item_id=chat_id, messages=[], decoding=self.profile.decoding,
                               chat_kwargs=dict(self.profile.chat_kwargs))  # fmt: skip
            pil_images = []
        prompt_text = None
        if base.prompt_text is not None:  # families without a chat template take the last user text
            user_texts = [v for role, parts in turns if role == "user" for k, v in parts if k == "text"]
            prompt_text = user_texts[-1] if user_texts else base.prompt_text
        request = replace(
            base,
            item_id=chat_id,
            messages=hf_messages(turns, base, pil_images),
            images=[img for img in pil_images if img is not None],
            decoding=decoding_from_fields(base.decoding, fields),
            prompt_text=prompt_text,
            constraint=await self._response_format(chat),
            tools=[t.model_dump(exclude_none=True) for t in chat.tools] if chat.tools is not None else base.tools,
            chat_kwargs={
                **base.chat_kwargs,
                **(chat.chat_template_kwargs.model_dump(exclude_none=True) if chat.chat_template_kwargs else {}),
            },
        )
        return PreparedChat(chat_id, model, item, request, int(time.time()), mode)

    async def chat(self, chat: ChatCompletionRequest) -> tuple[PreparedChat, Generation, Record | None]:
        prepared = await self.prepare_chat(chat)
        generation = await self.generate(prepared.request)
        return prepared, generation, self.read(prepared, generation)

    def read(self, prepared: PreparedChat, generation: Generation) -> Record | None:
        """capmill's reading of a chat answer (caption, structured, status); None if it cannot be read."""
        try:
            return self.finish(prepared.item, prepared.request, generation, prepared.mode)
        except Exception:  # the chat answer stands without capmill's reading
            return None

    async def _response_format(self, chat: ChatCompletionRequest) -> dict[str, Any] | None:
        """OpenAI response_format -> an engine constraint, checked (size, llguidance, time) before queueing."""
        constraint, param = requested_constraint(chat)
        if constraint is None:
            return None
        check_size(next(iter(constraint.values())), param, self.config)
        self.check_constrainable()
        await self.grammars.check(constraint, param)
        return constraint


def upload_item(data: bytes, filename: str | None, item_id: str | None) -> Item:
    source = filename or "upload"
    return Item(id=item_id or f"upload-{sha256_hex(data)[:12]}", source=source, kind="image", data=data)


def text_item(text: str, item_id: str | None) -> Item:
    if not text.strip():
        raise InputError("text", "empty caption text")
    return Item(id=item_id or f"text-{sha256_hex(text)[:12]}", source="text", kind="text", text=text)
