"""Captioner: inputs of every kind, per-item errors as records, settings, prompts, video, text mode, parsing."""

from __future__ import annotations

from pathlib import Path

import pytest

from capmill.captioner import Captioner, caption_text
from capmill.records import Generation, Item

STANDIN = Path(__file__).parent / "models" / "data" / "scaffold_standin.jsonl"


@pytest.fixture(scope="module")
def cap(tiny_model):
    c = Captioner(model=str(tiny_model("qwen2_vl")), profile="inkscope-2b", decoding={"max_new_tokens": 6})
    yield c
    c.close()


def _video(path: Path, frames: int = 12, fps: int = 6) -> Path:
    import av
    import numpy as np

    with av.open(str(path), "w") as out:
        stream = out.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = 96, 64, "yuv420p"
        for i in range(frames):
            arr = np.zeros((64, 96, 3), dtype=np.uint8)
            arr[:, : 8 * (i + 1)] = (255, 40 * (i % 6), 0)
            for packet in stream.encode(av.VideoFrame.from_ndarray(arr, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def test_paths_pil_images_and_bad_inputs_in_one_call(cap, coco_photos, tmp_path):
    from PIL import Image

    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff not really a jpeg")
    pil = Image.open(coco_photos[1]).convert("RGB")
    records = cap.caption([coco_photos[0], str(tmp_path / "missing.png"), broken, pil])
    assert [r.status for r in records] == ["ok", "error", "error", "ok"]
    assert "file not found" in records[1].error and "missing.png" in records[1].error
    assert "broken.jpg" in records[2].error
    assert records[0].id == coco_photos[0].stem and records[3].source == "<image 3>"
    # the same photo as a path and as a PIL image gives the same caption
    assert records[3].raw == cap.caption([coco_photos[1]])[0].raw
    ok = records[0]
    assert ok.profile == "inkscope-2b" and ok.engine == "transformers" and ok.mode == "caption"
    assert ok.prompt_hash == cap.settings()["prompt_hash"] and ok.decoding["max_new_tokens"] == 6
    assert ok.tokens["completion"] == 6 and set(ok.timings) >= {"prepare", "preprocess", "generate"}
    assert ok.content_hash == Item(id="x", source="x", data=coco_photos[0].read_bytes()).content_hash


def test_settings_change_with_prompt_and_decoding(cap, tiny_model):
    s = cap.settings()
    assert set(s) >= {"profile", "model", "engine", "prompt_hash", "decoding"}
    other = Captioner(
        model=cap.model, profile="inkscope-2b", prompt="Describe briefly.", decoding={"max_new_tokens": 6}
    )
    assert other.settings()["prompt_hash"] != s["prompt_hash"]
    greedy = Captioner(model=str(tiny_model("qwen2_5_vl")), profile="caprl-3b", decoding={"do_sample": False})
    d = greedy.settings()["decoding"]
    assert d["do_sample"] is False and d["temperature"] is None and d["max_new_tokens"] == 2048
    assert "Describe briefly." in other.render_prompt(Item("i", "i", data=b"", image=_pil()))


def _pil():
    from PIL import Image

    return Image.new("RGB", (64, 48), (10, 200, 30))


def test_prepare_raises_input_error_and_error_record(cap):
    from capmill.errors import InputError

    with pytest.raises(InputError, match="empty file"):
        cap.prepare(Item(id="e", source="empty.jpg", data=b""))
    with pytest.raises(InputError, match="needs mode 'text'"):
        cap.prepare(Item(id="t", source="t.txt", kind="text", text="a dog"))
    record = cap.error_record(Item(id="e", source="e.jpg", data=b"x"), "boom")
    assert record.status == "error" and record.error == "boom" and record.caption is None


def test_video_is_sampled_and_captioned(cap, tmp_path):
    video = _video(tmp_path / "clip.mp4")
    by_count = Captioner(model=cap.model, profile="inkscope-2b", decoding={"max_new_tokens": 6}, video_frames=4)
    request = by_count.prepare(by_count.to_item(str(video)))
    assert len(request.videos) == 1 and len(request.videos[0]) == 4 and request.images == []
    assert "<|video_pad|>" in by_count.render_prompt(str(video))
    (record,) = by_count.caption([video])
    assert record.status == "ok" and record.tokens["prompt"] > 20
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"\x00\x00\x00 ftypisom garbage")
    assert by_count.caption([broken])[0].status == "error"
    by_count.close()


def test_blip2_refuses_video_per_item(tiny_model, tmp_path):
    blip = Captioner(model=str(tiny_model("blip2")), profile="blip2-lora", decoding={"max_new_tokens": 4})
    (record,) = blip.caption([_video(tmp_path / "v.mp4")])
    assert record.status == "error" and "video" in record.error


@pytest.fixture(scope="module")
def json_cap(tiny_model):
    c = Captioner(model=str(tiny_model("qwen3_5")), profile="json-captioner", scaffold=STANDIN, mode="text")
    yield c
    c.close()


def test_finish_parses_tool_calls_and_grounds_text_mode(json_cap):
    item = Item(id="t", source="t", kind="text", text="A long restaurant table with rattan rounded back chairs.")
    call = (
        "<tool_call>\n<function=emit_caption_schema>\n<parameter=subjects>\n"
        '[{"name": "restaurant table", "attributes": ["long"]}, {"name": "chairs", "attributes": ["rattan"]}]\n'
        "</parameter>\n<parameter=actions>\n[]\n</parameter>\n<parameter=setting>\nindoor\n</parameter>\n"
        "</function>\n</tool_call>"
    )
    record = json_cap.finish(item, None, Generation(text=call, prompt_tokens=5, completion_tokens=9))
    assert record.status == "ok" and record.structured["setting"] == "indoor"
    assert record.structured["subjects"][0] == {"name": "restaurant table", "attributes": ["long"]}
    assert record.caption == "long restaurant table, rattan chairs | indoor"
    assert record.grounding and record.grounding["rate"] == 1.0
    bad = json_cap.finish(item, None, Generation(text="no call here"))
    assert bad.status == "invalid" and bad.structured is None and bad.error and bad.raw == "no call here"
    failed = json_cap.finish(item, None, Generation(text="", error="RuntimeError: x", finish_reason="error"))
    assert failed.status == "error" and failed.error == "RuntimeError: x"


def test_text_mode_takes_strings_and_txt_files(json_cap, tmp_path):
    txt = tmp_path / "caption.txt"
    txt.write_text("Two dogs play in the snow.\n")
    items = [json_cap.to_item("A cat on a mat."), json_cap.to_item(str(txt))]
    assert items[0].kind == "text" and items[1].text == "Two dogs play in the snow."
    request = json_cap.prepare(items[1])
    assert request.images == [] and request.chat_kwargs == {"enable_thinking": False}
    assert request.messages[-1]["content"] == [{"type": "text", "text": "Two dogs play in the snow."}]


def test_caption_text_rendering():
    assert caption_text({"subjects": [{"name": "dog", "attributes": []}], "actions": [], "setting": "unknown"}) == "dog"


def test_caption_streams_a_window_at_a_time(cap, coco_photos):
    """No input is read before the first window's records are out: a generator of inputs is consumed lazily."""
    taken = []

    def inputs():
        for path in coco_photos[:3] * 7:  # 21 inputs: more than one window of 8 batches of 2
            taken.append(path)
            yield path

    cap.batch_size = 2
    try:
        stream = cap.iter_captions(inputs())
        first = next(stream)
        assert first.status == "ok" and len(taken) == 16  # one window read, not all 21
        rest = list(stream)
        assert len(rest) == 20 and len(taken) == 21
    finally:
        cap.batch_size = 8
