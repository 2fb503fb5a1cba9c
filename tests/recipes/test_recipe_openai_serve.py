"""A recipe whose stages run through the OpenAI-compatible engine against a real `capmill serve` on 127.0.0.1.

Both stages (an image caption with a template, and a text-only rewrite held to a trigger word and a sentence end,
its grammar sent as `structured_outputs`) give the same records as the same recipe on the transformers engine.
"""

from __future__ import annotations

import shutil

import pytest

from capmill.recipes import Recipe
from capmill.run.runfolder import read_records
from live_server import UvicornThread

PROFILE = "inkscope-2b"


def recipe(engine_stage):
    return Recipe.from_dict(
        {
            "stages": [
                {
                    **engine_stage,
                    "name": "detailed",
                    "prompt": "Describe {stem} in detail.",
                    "decoding": {"max_new_tokens": 8},
                },
                {
                    **engine_stage,
                    "name": "short",
                    "mode": "text",
                    "prompt": "Shorten: {stages.detailed}",
                    "decoding": {"max_new_tokens": 10},
                    "constraints": {"prefix": "ohwx, ", "sentence_end": True, "banned": ["law"]},
                },
            ]
        }
    )


def test_recipe_through_capmill_serve_equals_transformers(tmp_path, tiny_model, coco_photos):
    pytest.importorskip("fastapi")
    from capmill.captioner import Captioner
    from capmill.serve.app import create_app
    from capmill.serve.config import ServeConfig

    folder = tmp_path / "photos"
    folder.mkdir()
    for p in coco_photos[:3]:
        shutil.copy(p, folder / p.name)
    model = str(tiny_model("qwen2_vl"))
    local = recipe({"model": model, "profile": PROFILE})
    local.run([str(folder)], str(tmp_path / "local"), progress=False, workers=0)
    served = Captioner(model=model, profile=PROFILE)
    app = create_app(ServeConfig(served_model_names=[PROFILE], max_batch=4, max_wait_ms=20), captioner=served)
    try:
        with UvicornThread(app) as server:
            remote = recipe(
                {"model": PROFILE, "profile": PROFILE, "engine": "openai", "engine_options": {"base_url": server.url}}
            )
            remote.run([str(folder)], str(tmp_path / "remote"), progress=False, workers=0)
    finally:
        served.close()
    want = {r.id: r for r in read_records(str(tmp_path / "local"))}
    got = {r.id: r for r in read_records(str(tmp_path / "remote"))}
    assert set(got) == set(want) and len(got) == 3
    for item_id, record in got.items():
        assert record.engine == "openai" and want[item_id].engine == "transformers"
        for stage in ("detailed", "short"):
            assert record.stages[stage]["caption"] == want[item_id].stages[stage]["caption"]
        assert record.status == "ok" and record.caption.startswith("ohwx, ") and record.caption[-1] in ".!?"
        assert "law" not in record.caption.lower().replace(",", " ").replace(".", " ").split()
