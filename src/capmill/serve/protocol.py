"""Wire formats of each endpoint (pydantic): the OpenAI chat schema, /v1/captions, /v1/models, errors."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

# ---------------------------------------------------------------- errors (OpenAI's shape, for every route)


class ErrorInfo(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorInfo


# ---------------------------------------------------------------- POST /v1/chat/completions


class ImageURL(BaseModel):
    url: str = Field(..., description="data:image/...;base64,... (or http(s) when the server allows URL images)")
    detail: Literal["auto", "low", "high"] | None = None


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class ImagePart(BaseModel):
    type: Literal["image_url"]
    image_url: ImageURL


ContentPart = Annotated[TextPart | ImagePart, Field(discriminator="type")]


class ChatMessage(BaseModel):
    # Unknown fields are ignored, as OpenAI-compatible servers do; unknown content types are not.
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[ContentPart] | None = None
    name: str | None = None


class StreamOptions(BaseModel):
    include_usage: bool = False


class JSONSchemaFormat(BaseModel):
    name: str = "output"
    schema_: dict[str, Any] = Field(..., alias="schema")
    strict: bool | None = None
    description: str | None = None


class ResponseFormat(BaseModel):
    """OpenAI's response_format: free text, any JSON object, or JSON following a schema (constrained decoding)."""

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JSONSchemaFormat | None = None


class ToolFunction(BaseModel):
    model_config = ConfigDict(extra="allow")

    name: str = Field(..., min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    description: str | None = None
    parameters: dict[str, Any] | None = None


class Tool(BaseModel):
    type: Literal["function"]
    function: ToolFunction


class ChatTemplateKwargs(BaseModel):
    """The chat-template switches a client may set (others could rewrite the template's own inputs)."""

    model_config = ConfigDict(extra="forbid")

    enable_thinking: bool | None = None


class StructuredOutputs(BaseModel):
    """vLLM's `structured_outputs`: a Lark/GBNF grammar or a JSON schema to hold the output to."""

    model_config = ConfigDict(extra="forbid")

    grammar: str | None = None
    json_: dict[str, Any] | None = Field(None, alias="json")


class ChatCompletionRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str
    messages: list[ChatMessage] = Field(..., min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    top_k: int | None = Field(None, ge=0)  # vLLM's extra_body
    repetition_penalty: float | None = Field(None, gt=0.0, le=10.0)  # vLLM's extra_body
    seed: int | None = None
    stop: str | list[str] | None = None
    n: int = Field(1, ge=1, le=1, description="only n=1 is supported")
    stream: bool = False
    stream_options: StreamOptions | None = None
    response_format: ResponseFormat | None = None
    tools: list[Tool] | None = Field(None, description="OpenAI tools; default: the profile's (scaffold)")
    chat_template_kwargs: ChatTemplateKwargs | None = None  # vLLM's extension, limited to known switches
    structured_outputs: StructuredOutputs | None = None  # vLLM's extension: a grammar or a JSON schema


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None


class Choice(BaseModel):
    index: int = 0
    message: AssistantMessage
    finish_reason: str | None
    logprobs: None = None


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class CaptionInfo(BaseModel):
    """capmill's reading of the output (an extension field OpenAI clients ignore)."""

    status: str
    caption: str | None = None
    structured: dict[str, Any] | None = None
    notes: list[str] = Field(default_factory=list)


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage
    capmill: CaptionInfo | None = None


class Delta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChunkChoice(BaseModel):
    index: int = 0
    delta: Delta
    finish_reason: str | None = None
    logprobs: None = None


class ChunkInfo(BaseModel):
    """capmill's extension of a chunk: how many tokens the engine had generated when it was cut."""

    tokens: int


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None = None
    capmill: ChunkInfo | None = None


# ---------------------------------------------------------------- POST /v1/captions


class CaptionRequest(BaseModel):
    """JSON form of /v1/captions: an image as base64 (or a data URI), or caption text for text mode."""

    model_config = ConfigDict(extra="forbid")

    image: str | None = Field(None, description="base64 image bytes or a data:image/...;base64 URI")
    text: str | None = Field(None, description="caption text (text mode of profiles that support it)")
    mode: str | None = Field(None, description="caption | structured | text; default: the profile's")
    id: str | None = Field(None, max_length=256)
    model: str | None = None
    constrained: bool | None = Field(None, description="hold tool-call output to its schema (default: the server's)")


class CaptionRecord(BaseModel):
    """The capmill record, exactly as `capmill caption` writes it."""

    id: str
    source: str
    content_hash: str
    profile: str
    engine: str
    model: str
    prompt_hash: str
    decoding: dict[str, Any]
    status: Literal["ok", "repaired", "invalid", "error"]
    caption: str | None = None
    structured: dict[str, Any] | None = None
    raw: str | None = None
    error: str | None = None
    notes: list[str] = Field(default_factory=list)
    grounding: dict[str, Any] | None = None
    mode: str = "caption"
    timings: dict[str, float] = Field(default_factory=dict)
    tokens: dict[str, int] = Field(default_factory=dict)
    meta: dict[str, Any] = Field(default_factory=dict)


# ---------------------------------------------------------------- GET /v1/models, /healthz


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "capmill"
    profile: str | None = None
    root: str | None = None
    modes: list[str] = Field(default_factory=list)


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class Health(BaseModel):
    status: Literal["ok", "loading", "browse-only"]
    model: str | None = None
    queue_depth: int = 0
    fast_paths: dict[str, dict[str, Any]] = {}  # each fast path's state and why (engines/fast_paths.py)
