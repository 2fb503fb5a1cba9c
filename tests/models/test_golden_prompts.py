"""The exact prompt every profile renders, against golden files (a change to what a model sees shows in review).

Rendered through each family's own processor and chat template (tiny models carry the real templates).
Regenerate after an intended change with CAPMILL_UPDATE_GOLDEN=1.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from capmill.captioner import Captioner

GOLDEN = Path(__file__).parent / "golden"
STANDIN = Path(__file__).parent / "data" / "scaffold_standin.jsonl"
CASES = [  # (golden name, profile, tiny arch, mode)
    ("json-captioner.structured", "json-captioner", "qwen3_5", "structured"),
    ("json-captioner.text", "json-captioner", "qwen3_5", "text"),
    ("caprl-3b", "caprl-3b", "qwen2_5_vl", None),
    ("caprl-internvl-8b", "caprl-internvl-8b", "internvl", None),
    ("inkscope-2b", "inkscope-2b", "qwen2_vl", None),
    ("blip2-lora", "blip2-lora", "blip2", None),
    ("generic.qwen2_vl", "generic", "qwen2_vl", None),
]


@pytest.mark.parametrize(("golden", "profile", "arch", "mode"), CASES, ids=[c[0] for c in CASES])
def test_rendered_prompt_matches_golden(golden, profile, arch, mode, tiny_model, coco_photos, coco_rows):
    cap = Captioner(model=str(tiny_model(arch)), profile=profile, mode=mode, scaffold=STANDIN)
    target = coco_rows[0]["captions"][0] if mode == "text" else coco_photos[0]
    rendered = cap.render_prompt(target)
    assert cap._engine is None, "rendering a prompt must not load the model"
    path = GOLDEN / f"{golden}.txt"
    if os.environ.get("CAPMILL_UPDATE_GOLDEN"):
        path.write_text(rendered, encoding="utf-8")
    assert path.exists(), f"no golden file {path}: run with CAPMILL_UPDATE_GOLDEN=1 and review it"
    assert rendered == path.read_text(encoding="utf-8"), f"rendered prompt changed: see {path}"


def test_golden_prompts_say_what_the_cards_say():
    """Independent of the renderer: the card's words are in the golden files."""
    read = {p.stem: p.read_text(encoding="utf-8") for p in GOLDEN.glob("*.txt")}
    assert "Extract the structured representation of what this image shows." in read["json-captioner.structured"]
    assert "emit_caption_schema" in read["json-captioner.structured"]
    assert "<think>\n\n</think>" in read["json-captioner.structured"]  # enable_thinking=False
    assert "STAND-IN" in read["json-captioner.text"] and "<|vision_start|>" not in read["json-captioner.text"]
    assert (
        "You are a helpful assistant." in read["caprl-3b"]
        and "Please describe this image in detail" in read["caprl-3b"]
    )
    assert "Please describe this image in detail" in read["caprl-internvl-8b"]
    assert "Generate a detailed caption for this image." in read["inkscope-2b"]
    assert read["blip2-lora"] == "Provide a detailed caption for this photo."
