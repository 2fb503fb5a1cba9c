"""Loading references (COCO format, JSONL) and results (JSONL, capmill run folders), and their bad inputs."""

from __future__ import annotations

import json

import pytest

from capmill.errors import ConfigError
from capmill.eval.refs import load_references
from capmill.eval.results import load_run, load_runs

from .conftest import COCO_PHOTOS, SUBSET, make_record, write_jsonl


def test_coco_references_with_aliases():
    refs = load_references(SUBSET)
    assert len(refs) == 20
    assert refs.captions["397133"][0] == "A man is in a kitchen making pizzas."
    for name in ("397133", "000000397133", "000000397133.jpg", "/data/val2017/000000397133.jpg"):
        assert refs.key_for(name) == "397133"
    assert refs.key_for("nope", None, "x/000000349860.jpg") == "349860"
    assert refs.key_for("123") is None


def test_jsonl_references(tmp_path):
    refs = load_references(COCO_PHOTOS / "images.jsonl")  # image_id + file + captions per line
    assert len(refs) == 12 and len(refs.captions["349860"]) == 5
    p = tmp_path / "r.jsonl"
    p.write_text('{"id": "a", "caption": "one"}\n{"id": "a", "caption": "two"}\n\n{"id": "b", "captions": ["x"]}\n')
    refs = load_references(p)
    assert refs.captions == {"a": ["one", "two"], "b": ["x"]}


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("bad.json", "{not json", "not valid JSON"),
        ("bad.json", '{"images": []}', "'annotations' list"),
        ("bad.json", '{"annotations": [{"image_id": 1}]}', "annotation 0 needs"),
        ("bad.jsonl", '{"id": 1}\n', "bad.jsonl:1: needs 'captions'"),
        ("bad.jsonl", '{"captions": ["a"]}\n', "needs 'image_id' or 'id'"),
    ],
)
def test_bad_references_name_the_input(tmp_path, name, text, message):
    p = tmp_path / name
    p.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_references(p)
    with pytest.raises(ConfigError, match="not found"):
        load_references(tmp_path / "missing.json")


def test_jsonl_results_plain_rows_and_unreadable_lines(tmp_path):
    p = tmp_path / "plain.jsonl"
    p.write_text(
        '{"id": "000000397133", "caption": "a man makes pizza"}\n'
        "garbage line\n"
        '{"id": "x", "caption": 5}\n'
        '{"image_id": 349860}\n'
    )
    run = load_run(p)
    assert run.name == "plain"
    assert [(r.id, r.status, r.caption) for r in run.records] == [
        ("000000397133", "ok", "a man makes pizza"),
        ("349860", "error", None),
    ]
    assert len(run.problems) == 2 and "plain.jsonl:2" in run.problems[0] and "not a string" in run.problems[1]


def test_results_from_a_capmill_run_folder(tmp_path):
    from capmill.run.runfolder import RunFolder

    records = [make_record(397133, "a man in a kitchen"), make_record(349860, None, status="error", error="x: y")]
    folder = RunFolder(str(tmp_path / "run1"), {"profile": "generic"}, fmt="parquet", shard_size=1)
    try:
        for r in records:
            folder.add(r)
        folder.close()
    finally:
        folder.release()
    run = load_run(tmp_path / "run1")
    assert run.name == "run1"
    assert [(r.id, r.status, r.caption) for r in run.records] == [(r.id, r.status, r.caption) for r in records]


def test_duplicate_names_and_missing_results(tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", [make_record(1, "x")])
    (tmp_path / "d").mkdir()
    b = write_jsonl(tmp_path / "d" / "a.jsonl", [make_record(2, "y")])
    assert [r.name for r in load_runs([a, b])] == ["a", "a-2"]
    with pytest.raises(ConfigError, match="not found"):
        load_run(tmp_path / "nothing.jsonl")
    (tmp_path / "empty.jsonl").write_text("oops\n")
    with pytest.raises(ConfigError, match="no readable records"):
        load_run(tmp_path / "empty.jsonl")
    assert json.loads(a.read_text())["id"] == "000000000001"
