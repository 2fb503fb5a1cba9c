"""Training rows: chat JSONL in the json-coco-format shape and image-caption pairs; bad rows become rejects."""

from __future__ import annotations

import json

import pytest

from capmill.errors import ConfigError
from capmill.schema import StructuredCaption, parse_tool_call, render_tool_call
from capmill.train.data import load_examples


def test_tool_calls_are_written_by_render_tool_call(chat_jsonl):
    examples, rejects = load_examples([str(chat_jsonl)])
    assert len(examples) == 24 and not rejects
    row = json.loads(chat_jsonl.read_text().splitlines()[0])
    args = json.loads(row["messages"][2]["tool_calls"][0]["function"]["arguments"])
    ex = examples[0]
    assert ex.tools and ex.tools[0]["function"]["name"] == "emit_caption_schema"
    assert ex.messages[-1] == {"role": "assistant", "content": render_tool_call(StructuredCaption.model_validate(args))}
    parsed = parse_tool_call(ex.messages[-1]["content"])  # the training target parses back to the same caption
    assert parsed.caption is not None and parsed.caption.model_dump()["subjects"] == args["subjects"]


def test_rows_that_cannot_train_are_rejected_with_a_reason(tmp_path, chat_jsonl):
    good = chat_jsonl.read_text().splitlines()[0]
    bad_schema = json.loads(good)
    bad_schema["messages"][2]["tool_calls"][0]["function"]["arguments"] = json.dumps({"subjects": "not a list"})
    no_answer = json.loads(good)
    no_answer["messages"] = no_answer["messages"][:2]
    path = tmp_path / "mixed.jsonl"
    path.write_text("\n".join([good, "{not json", json.dumps(bad_schema), json.dumps(no_answer), "", good]) + "\n")
    examples, rejects = load_examples([str(path)])
    assert len(examples) == 2
    reasons = {r.source.rsplit(":", 1)[1]: r.reason for r in rejects}
    assert set(reasons) == {"2", "3", "4"}
    assert "not JSON" in reasons["2"] and "caption schema" in reasons["3"] and "assistant" in reasons["4"]


def test_where_filter_and_limit(chat_jsonl):
    assert len(load_examples([str(chat_jsonl)], where={"grounded": False})[0]) == 0
    assert len(load_examples([str(chat_jsonl)], where={"grounded": True}, limit=5)[0]) == 5


def test_image_caption_pairs_one_example_per_caption(pairs_jsonl, coco_rows):
    examples, rejects = load_examples([str(pairs_jsonl)], prompt="Describe this image.")
    assert not rejects
    assert len(examples) == sum(len(r["captions"]) for r in coco_rows)
    first = examples[0]
    assert first.images == [str(pairs_jsonl.parent / coco_rows[0]["file"])]
    user = first.messages[0]["content"]
    assert user[0] == {"type": "image", "image": first.images[0]} and user[1]["text"] == "Describe this image."
    assert first.messages[1] == {"role": "assistant", "content": coco_rows[0]["captions"][0]}
    assert first.prompt_and_target == ("Describe this image.", coco_rows[0]["captions"][0])


def test_pairs_from_csv_and_caption_sidecars(tmp_path, coco_photos):
    import shutil

    shutil.copy(coco_photos[0], tmp_path / "a.jpg")
    (tmp_path / "a.txt").write_text("A kitchen with a stove.\n")
    shutil.copy(coco_photos[1], tmp_path / "b.jpg")  # no sidecar: rejected, not fatal
    examples, rejects = load_examples([str(tmp_path)])
    assert [e.messages[-1]["content"] for e in examples] == ["A kitchen with a stove."]
    assert len(rejects) == 1 and "caption" in rejects[0].reason
    csv_path = tmp_path / "pairs.csv"
    csv_path.write_text("image,caption\na.jpg,One.\nmissing.jpg,Two.\n")
    examples, rejects = load_examples([str(csv_path)])
    assert len(examples) == 1 and "not found" in rejects[0].reason


def test_missing_data_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_examples([str(tmp_path / "nope.jsonl")])
