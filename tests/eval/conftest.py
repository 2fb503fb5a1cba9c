"""Evaluation fixtures: a 20-image COCO caption subset, runs built from its captions, the bundled embedder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from capmill.records import Record

EVAL_DATA = Path(__file__).parents[1] / "data" / "eval"
COCO_PHOTOS = Path(__file__).parents[1] / "data" / "coco"
SUBSET = EVAL_DATA / "captions_val2017_subset.json"
QA_FILE = EVAL_DATA / "qa.jsonl"


def subset_captions() -> dict[int, list[str]]:
    """image_id -> its five COCO captions, in annotation order."""
    data = json.loads(SUBSET.read_text())
    out: dict[int, list[str]] = {}
    for ann in data["annotations"]:
        out.setdefault(ann["image_id"], []).append(ann["caption"])
    return out


def file_name(image_id: int) -> str:
    return f"{image_id:012d}.jpg"


def make_record(image_id: int, caption: str | None, status: str = "ok", **kw) -> Record:
    photo = COCO_PHOTOS / file_name(image_id)
    return Record(
        id=f"{image_id:012d}",
        source=str(photo) if photo.exists() else file_name(image_id),
        content_hash=f"h{image_id}",
        profile="generic",
        engine="transformers",
        model="tiny",
        prompt_hash="p",
        decoding={"max_new_tokens": 64},
        status=status,
        caption=caption,
        **kw,
    )


def write_jsonl(path: Path, records: list[Record]) -> Path:
    path.write_text("".join(json.dumps(r.to_dict()) + "\n" for r in records))
    return path


@pytest.fixture(scope="session")
def loo(tmp_path_factory):
    """Leave-one-out COCO data: references = captions 2..5 (COCO format file), candidates = caption 1."""
    d = tmp_path_factory.mktemp("loo")
    data = json.loads(SUBSET.read_text())
    first: dict[int, str] = {}
    refs = []
    for ann in data["annotations"]:
        if ann["image_id"] not in first:
            first[ann["image_id"]] = ann["caption"]
        else:
            refs.append(ann)
    ref_path = d / "refs.json"
    ref_path.write_text(json.dumps({**data, "annotations": refs}))
    return {"refs": ref_path, "candidates": first, "dir": d}


@pytest.fixture(scope="session")
def two_runs(loo):
    """Run "human": the held-out human caption per image, with one failed item. Run "mismatched": every
    caption belongs to another image, and some outputs are degenerate (loop, refusal, truncation)."""
    d = loo["dir"]
    ids = list(loo["candidates"])
    human = [make_record(i, loo["candidates"][i]) for i in ids[:-1]]
    human.append(make_record(ids[-1], None, status="error", error="decode_failed: truncated JPEG"))
    shifted = ids[1:] + ids[:1]
    mism = [make_record(i, loo["candidates"][j]) for i, j in zip(ids, shifted, strict=True)]
    mism[0].caption = "a dog a dog a dog a dog on the the grass"
    mism[1].caption = "I'm sorry, but I can't help with describing this image."
    mism[2].tokens = {"completion": 64}
    return write_jsonl(d / "human.jsonl", human), write_jsonl(d / "mismatched.jsonl", mism)


@pytest.fixture(scope="session")
def embedder():
    from capmill.eval.embeddings import SentenceEmbedder

    return SentenceEmbedder("all-MiniLM-L6-v2")
