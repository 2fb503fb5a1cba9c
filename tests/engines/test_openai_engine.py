"""OpenAI-compatible engine: wire format, retries, backoff and concurrency against a real local HTTP server.

These are plumbing tests (a scripted server on 127.0.0.1); that the engine captions for real is shown against
`vllm serve` in test_openai_vllm_serve.py and against `capmill serve` in test_openai_capmill_serve.py.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import time

import pytest
from chat_stub_server import ChatStub, Reply, ok, user_text
from PIL import Image

from capmill.engines import ENGINES
from capmill.engines.openai_engine import OpenAIEngine
from capmill.errors import ConfigError, EngineError
from capmill.models.catalog import get_profile
from capmill.models.families import get_family
from capmill.records import Decoding, Request


def engine(url: str, **options) -> OpenAIEngine:
    options.setdefault("backoff_initial", 0.01)
    return OpenAIEngine("tiny", get_profile("inkscope-2b"), {"base_url": url, **options})


def text_request(text: str, **decoding) -> Request:
    return get_family("generic").build_request(text, prompt=text, system=None, decoding=Decoding(**decoding))


def test_registered_by_name():
    assert ENGINES.get("openai") is OpenAIEngine


def test_payload_image_as_png_data_uri_and_fields(monkeypatch, coco_photos):
    monkeypatch.setenv("CAPMILL_TEST_KEY", "sekret")
    image = Image.open(coco_photos[0]).convert("RGB")
    tools = [{"type": "function", "function": {"name": "emit", "parameters": {"type": "object"}}}]
    request = get_family("qwen2_vl").build_request(
        "p0",
        prompt="Describe.",
        system="Be brief.",
        decoding=Decoding(max_new_tokens=7, stop=("</tool_call>",), repetition_penalty=1.05, seed=3),
        images=[image],
        tools=tools,
        chat_kwargs={"enable_thinking": False},
    )
    with ChatStub(lambda body, n: ok("hello")) as stub:
        out = engine(stub.url, api_key_env="CAPMILL_TEST_KEY").generate([request])
    assert out[0].text == "hello" and out[0].error is None
    assert (out[0].prompt_tokens, out[0].completion_tokens) == (11, 3)
    body, headers = stub.bodies[0], stub.headers[0]
    assert headers.get("Authorization") == "Bearer sekret"
    assert body["model"] == "tiny"
    assert body["max_tokens"] == 7 and body["temperature"] == 0.0 and "top_p" not in body
    assert body["stop"] == ["</tool_call>"] and body["repetition_penalty"] == 1.05 and body["seed"] == 3
    assert body["tools"] == tools and body["tool_choice"] == "none"
    assert body["chat_template_kwargs"] == {"enable_thinking": False}
    assert body["messages"][0] == {"role": "system", "content": "Be brief."}
    parts = body["messages"][1]["content"]
    assert [p["type"] for p in parts] == ["image_url", "text"] and parts[1]["text"] == "Describe."
    url = parts[0]["image_url"]["url"]
    assert url.startswith("data:image/png;base64,")
    sent = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
    assert sent.size == request.images[0].size  # the family's resized pixels, losslessly
    assert sent.convert("RGB").tobytes() == request.images[0].tobytes()


def test_sampling_fields_and_no_key():
    with ChatStub(lambda body, n: ok()) as stub:
        engine(stub.url, api_key_env="CAPMILL_UNSET_KEY_VAR").generate(
            [text_request("x", do_sample=True, temperature=0.7, top_p=0.9, top_k=5, max_new_tokens=3)]
        )
    body = stub.bodies[0]
    assert (body["temperature"], body["top_p"], body["top_k"], body["max_tokens"]) == (0.7, 0.9, 5, 3)
    assert "Authorization" not in stub.headers[0]


def test_429_retried_with_retry_after_then_succeeds():
    def script(body, n):
        return Reply(429, headers={"Retry-After": "0.2"}) if n < 2 else ok("finally")

    with ChatStub(script) as stub:
        eng = engine(stub.url)
        t0 = time.perf_counter()
        out = eng.generate([text_request("a")])
        elapsed = time.perf_counter() - t0
    assert out[0].text == "finally" and out[0].error is None
    assert stub.calls == 3 and eng.stats["retries"] == 2
    assert out[0].timings["retries"] == 2
    assert elapsed >= 0.4  # both Retry-After waits were honoured


def test_5xx_gives_up_per_item_and_the_batch_goes_on():
    def script(body, n):
        return Reply(503) if user_text(body) == "bad" else ok(user_text(body).upper())

    with ChatStub(script) as stub:
        out = engine(stub.url, max_retries=2).generate([text_request("one"), text_request("bad"), text_request("two")])
    assert [g.text for g in out] == ["ONE", "", "TWO"]
    assert out[1].finish_reason == "error" and "gave up after 3 attempts: HTTP 503" in out[1].error
    assert sum(user_text(b) == "bad" for b in stub.bodies) == 3


def test_client_error_is_not_retried_and_names_the_problem():
    reply = Reply(400, {"error": {"message": "max_tokens is too large: 99999"}})
    with ChatStub(lambda body, n: reply) as stub:
        out = engine(stub.url).generate([text_request("a")])
    assert stub.calls == 1
    assert out[0].error == "HTTP 400: max_tokens is too large: 99999"


def test_timeout_is_retried():
    with ChatStub(lambda body, n: Reply(**{**ok("late").__dict__, "delay": 1.5}) if n == 0 else ok("quick")) as stub:
        out = engine(stub.url, timeout=0.5).generate([text_request("a")])
    assert out[0].text == "quick" and out[0].timings["retries"] == 1
    assert stub.calls == 2


def test_dropped_connection_is_retried():
    with ChatStub(lambda body, n: ok("back")) as stub:
        url = stub.url
        eng = engine(url, check_server=False, max_retries=1)
    # the server is gone: every attempt fails to connect, the item gets an error naming it
    out = eng.generate([text_request("a")])
    assert out[0].finish_reason == "error" and "connection error" in out[0].error and "2 attempts" in out[0].error


def test_concurrency_limit_holds_and_is_used():
    with ChatStub(lambda body, n: Reply(**{**ok(user_text(body)).__dict__, "delay": 0.15})) as stub:
        out = engine(stub.url, concurrency=3).generate([text_request(f"r{i}") for i in range(10)])
    assert [g.text for g in out] == [f"r{i}" for i in range(10)]  # order kept
    assert stub.max_in_flight == 3


def test_unreachable_server_is_an_engine_error():
    with ChatStub(lambda body, n: ok()) as stub:
        url = stub.url
    with pytest.raises(EngineError, match="cannot reach"):
        engine(url).generate([text_request("a")])


def test_unknown_model_is_a_config_error_listing_served_models():
    with ChatStub(lambda body, n: ok(), models=("caprl", "other")) as stub:
        with pytest.raises(ConfigError, match="serves: caprl, other"):
            engine(stub.url).generate([text_request("a")])
        out = engine(stub.url, served_model="caprl").generate([text_request("a")])
    assert out[0].text == "a caption" and stub.bodies[-1]["model"] == "caprl"


def test_bad_base_url_is_a_config_error():
    with pytest.raises(ConfigError, match="must start with http"):
        engine("127.0.0.1:8000/v1")


def test_constraints_travel_as_response_format_or_grammar():
    from capmill.schema import CAPTION_JSON_SCHEMA, EMIT_CAPTION_TOOL

    schema_req = text_request("s")
    schema_req.constraint = {"json_schema": CAPTION_JSON_SCHEMA}
    tool_req = text_request("t")
    tool_req.constraint = {"tool_call": EMIT_CAPTION_TOOL}
    with ChatStub(lambda body, n: ok("{}")) as stub:
        engine(stub.url, concurrency=1).generate([schema_req, tool_req])
    rf = stub.bodies[0]["response_format"]
    assert rf["type"] == "json_schema" and rf["json_schema"]["strict"] is True
    assert rf["json_schema"]["schema"]["properties"].keys() == CAPTION_JSON_SCHEMA["properties"].keys()
    grammar = stub.bodies[1]["structured_outputs"]["grammar"]
    assert "<tool_call>" in grammar and "emit_caption_schema" in grammar


def test_server_parsed_tool_calls_come_back_as_native_text():
    from capmill.schema import parse_tool_call

    args = {"subjects": [{"name": "dog", "attributes": ["brown"]}], "actions": [], "setting": "outdoor"}
    call = {"id": "c1", "type": "function", "function": {"name": "emit_caption_schema", "arguments": json.dumps(args)}}
    reply = ok(None)
    reply.body["choices"][0]["message"]["tool_calls"] = [call]
    with ChatStub(lambda body, n: reply) as stub:
        out = engine(stub.url).generate([text_request("a")])
    assert out[0].text.startswith("<tool_call>\n<function=emit_caption_schema>\n<parameter=subjects>\n")
    parsed = parse_tool_call(out[0].text)
    assert parsed.status == "ok" and parsed.caption.subjects[0].name == "dog" and parsed.caption.setting == "outdoor"


def test_stop_string_reported_by_vllm_is_kept():
    with ChatStub(lambda body, n: ok("<tool_call>x", stop_reason="</tool_call>")) as stub:
        out = engine(stub.url).generate([text_request("a", stop=("</tool_call>",))])
    assert out[0].text == "<tool_call>x</tool_call>"


def test_video_is_a_per_item_error():
    frames = [Image.new("RGB", (32, 32))] * 2
    video = get_family("generic").build_request("v", prompt="x", system=None, decoding=Decoding(), videos=[frames])
    with ChatStub(lambda body, n: ok()) as stub:
        out = engine(stub.url).generate([video, text_request("fine")])
    assert out[0].finish_reason == "error" and "video" in out[0].error
    assert out[1].text == "a caption" and stub.calls == 1


def test_generate_works_inside_a_running_event_loop():
    with ChatStub(lambda body, n: ok("in loop")) as stub:
        eng = engine(stub.url)

        async def main():
            return eng.generate([text_request("a")])

        out = asyncio.run(main())
    assert out[0].text == "in loop"


def test_backoff_grows_exponentially_with_jitter_and_honours_retry_after():
    eng = OpenAIEngine("m", get_profile("generic"), {"backoff_initial": 1.0, "backoff_max": 8.0})
    for attempt, full in enumerate([1.0, 2.0, 4.0, 8.0, 8.0]):
        delays = [eng.backoff(attempt) for _ in range(50)]
        assert all(full / 2 <= d <= full for d in delays)
        assert max(delays) - min(delays) > 0  # jittered
    assert eng.backoff(0, retry_after=3.0) == 3.0
    assert eng.backoff(0, retry_after=100.0) == 8.0  # capped


def test_extra_headers_travel_with_every_request(monkeypatch):
    monkeypatch.setenv("CAPMILL_TEST_KEY", "sekret")
    with ChatStub(lambda body, n: ok()) as stub:
        engine(stub.url, api_key_env="CAPMILL_TEST_KEY", extra_headers={"X-Tenant": "captions"}).generate(
            [text_request("a"), text_request("b")]
        )
    assert [h.get("X-Tenant") for h in stub.headers] == ["captions", "captions"]
    assert all(h.get("Authorization") == "Bearer sekret" for h in stub.headers)
