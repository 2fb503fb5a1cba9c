"""Sample Records shared by the sink and run-folder tests."""

from __future__ import annotations

from capmill.records import Record


def records(n=3):
    out = []
    for i in range(n):
        out.append(
            Record(
                id=f"dir/img.{i}.jpg",
                source=f"/data/dir/img.{i}.jpg",
                content_hash=f"{i:064x}",
                profile="json-captioner",
                engine="transformers",
                model="m",
                prompt_hash="p",
                decoding={"max_new_tokens": 8, "stop": ["</tool_call>"]},
                status="error" if i == 2 else "ok",
                caption=None if i == 2 else f"caption {i} ünïcode",
                structured=None if i else {"subjects": [{"name": "dog", "attributes": ["brown"]}], "setting": "indoor"},
                raw=f"raw {i}",
                error=f"/data/dir/img.{i}.jpg: not an image (cannot identify image file)" if i == 2 else None,
                notes=["repaired"] if i == 1 else [],
                timings={"generate": 0.5},
                tokens={"prompt": 10, "completion": 3},
                meta={"row": i},
            )
        )
    return out
