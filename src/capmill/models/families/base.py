"""What a family is: how one architecture turns Requests into model inputs, exactly as its card's code does.

The light half (building messages, the card's own image resizing) runs without torch, so Requests are
engine-neutral: vLLM and HTTP engines receive the same pixels. The heavy half (processor, model class,
encode, decode) is used by the transformers engine and by `render` for `--show-prompt`.
"""

from __future__ import annotations

from typing import Any, ClassVar

from capmill.errors import ModelLoadError
from capmill.records import Decoding, Request


def build_messages(
    *, system: str | None, prompt: str | None, n_images: int = 0, n_videos: int = 0
) -> list[dict[str, Any]]:
    """System turn (if any) + one user turn: media placeholders first, then the text, as every card orders them."""
    content: list[dict[str, Any]] = [{"type": "image"} for _ in range(n_images)]
    content += [{"type": "video"} for _ in range(n_videos)]
    if prompt is not None:
        content.append({"type": "text", "text": prompt})
    messages: list[dict[str, Any]] = []
    if system is not None:
        messages.append({"role": "system", "content": system})
    messages.append({"role": "user", "content": content})
    return messages


def with_media(request: Request) -> list[dict[str, Any]]:
    """The request's messages with placeholders filled by its PIL images / frame lists (for processors)."""
    images, videos = iter(request.images), iter(request.videos)
    out = []
    for message in request.messages:
        content = message["content"]
        if isinstance(content, list):
            filled = []
            for part in content:
                if part.get("type") == "image" and "image" not in part:
                    part = {**part, "image": next(images)}
                elif part.get("type") == "video" and "video" not in part:
                    part = {**part, "video": next(videos)}
                filled.append(part)
            content = filled
        out.append({**message, "content": content})
    return out


class Family:
    """Default behaviour: any image-text-to-text checkpoint with a chat template (the generic profile)."""

    name: ClassVar[str] = "generic"
    supports_video: ClassVar[bool] = False
    supports_text_only: ClassVar[bool] = True
    encoder_decoder: ClassVar[bool] = False  # outputs hold no prompt tokens to trim
    decode_kwargs: ClassVar[dict[str, Any]] = {}

    # ---- light side: no torch ----
    def prepare_image(self, image: Any) -> Any:
        """What the card does to a decoded RGB image before its processor sees it (default: nothing)."""
        return image

    def prepare_video(self, frames: list[Any]) -> list[Any]:
        return frames

    def build_request(
        self,
        item_id: str,
        *,
        prompt: str | None,
        system: str | None,
        decoding: Decoding,
        images: list[Any] | None = None,
        videos: list[list[Any]] | None = None,
        tools: list[dict[str, Any]] | None = None,
        chat_kwargs: dict[str, Any] | None = None,
    ) -> Request:
        images = [self.prepare_image(im) for im in images or []]
        videos = [self.prepare_video(v) for v in videos or []]
        messages = build_messages(system=system, prompt=prompt, n_images=len(images), n_videos=len(videos))
        return Request(
            item_id=item_id,
            messages=messages,
            decoding=decoding,
            images=images,
            videos=videos,
            tools=tools,
            chat_kwargs=dict(chat_kwargs or {}),
        )

    # ---- heavy side: transformers ----
    def model_class(self) -> Any:
        from transformers import AutoModelForImageTextToText

        return AutoModelForImageTextToText

    def check_config(self, config: dict[str, Any], model: str) -> None:
        """Raise a ModelLoadError when this family cannot load this checkpoint (before any weights load)."""

    def load_processor(self, model: str, **kwargs: Any) -> Any:
        from transformers import AutoProcessor

        try:
            processor = AutoProcessor.from_pretrained(model, **kwargs)
        except Exception as exc:
            raise ModelLoadError(f"{model}: could not load its processor ({type(exc).__name__}: {exc})") from exc
        return self.setup_padding(processor)

    def setup_padding(self, processor: Any) -> Any:
        """Left padding (prompts end where generation starts), pad token falling back to eos, as the cards do."""
        tokenizer = self.tokenizer(processor)
        tokenizer.padding_side = "left"
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token_id = tokenizer.eos_token_id
        return processor

    def render(self, processor: Any, request: Request) -> str:
        """The exact prompt text the model sees (placeholders as the chat template writes them)."""
        return processor.apply_chat_template(
            request.messages,
            tools=request.tools,
            add_generation_prompt=True,
            tokenize=False,
            **request.chat_kwargs,
        )

    def encode(self, processor: Any, requests: list[Request]) -> Any:
        """One left-padded batch, through the processor's own chat-template call (the json-captioner card's)."""
        _same(requests, "tools")
        _same(requests, "chat_kwargs")
        conversations = [with_media(r) for r in requests]
        return processor.apply_chat_template(
            conversations if len(conversations) > 1 else conversations[0],
            tools=requests[0].tools,
            add_generation_prompt=True,
            tokenize=True,
            return_dict=True,
            return_tensors="pt",
            processor_kwargs={"padding": True},
            **requests[0].chat_kwargs,
        )

    def decode(self, processor: Any, token_ids: Any) -> list[str]:
        return processor.batch_decode(token_ids, skip_special_tokens=True, **self.decode_kwargs)

    def tokenizer(self, processor: Any) -> Any:
        return getattr(processor, "tokenizer", processor)


def _same(requests: list[Request], attr: str) -> None:
    first = getattr(requests[0], attr)
    if any(getattr(r, attr) != first for r in requests[1:]):
        raise ValueError(f"one batch must share {attr}; group requests before encoding")
