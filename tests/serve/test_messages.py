"""OpenAI <-> capmill translation lives in one module (engines/openai_messages.py); both directions agree."""

from __future__ import annotations

import pytest
from PIL import Image

from capmill.engines.openai_messages import (
    chat_turns,
    decoding_from_fields,
    hf_messages,
    sampling_fields,
    to_openai_messages,
)
from capmill.records import Decoding, Request


@pytest.mark.parametrize(
    "decoding",
    [
        Decoding(max_new_tokens=30),
        Decoding(max_new_tokens=64, do_sample=True, temperature=0.7, top_p=0.9, top_k=5, seed=3),
        Decoding(max_new_tokens=8, repetition_penalty=1.05, stop=("</tool_call>", "\n\n")),
    ],
)
def test_decoding_survives_the_round_trip(decoding):  # noqa: ANN001
    base = Decoding(max_new_tokens=128, do_sample=True, temperature=1.0, top_p=1.0)
    assert decoding_from_fields(base, sampling_fields(decoding)).model_dump() == {
        **decoding.model_dump(),
        # greedy comes back as greedy with the profile's warpers cleared; stops are added to the profile's
        **({"temperature": None, "top_p": None, "top_k": None} if not decoding.do_sample else {}),
    }


def test_client_fields_go_on_top_of_the_profile():
    profile = Decoding(max_new_tokens=128, stop=("</tool_call>",))
    got = decoding_from_fields(profile, {"max_tokens": 9, "max_completion_tokens": 7, "stop": "END", "seed": 1})
    assert got.max_new_tokens == 7 and got.stop == ("</tool_call>", "END") and got.seed == 1
    assert decoding_from_fields(profile, {}) is profile


def test_messages_both_ways():
    image = Image.new("RGB", (32, 24), (10, 200, 30))
    request = Request(
        item_id="x",
        messages=[
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe."}]},
        ],
        decoding=Decoding(),
        images=[image],
    )
    wire = to_openai_messages(request)
    turns = chat_turns(wire)
    assert [role for role, _ in turns] == ["system", "user"]
    kinds = [kind for kind, _ in turns[1][1]]
    assert kinds == ["image_url", "text"] and turns[1][1][0][1].startswith("data:image/png;base64,")
    turns[1][1][0] = ("image", 0)
    back = hf_messages(turns, request, [image])
    assert back == request.messages
    assert chat_turns([{"role": "developer", "content": "x"}]) == [("system", [("text", "x")])]
    with pytest.raises(ValueError, match="input_audio"):
        chat_turns([{"role": "user", "content": [{"type": "input_audio"}]}])
