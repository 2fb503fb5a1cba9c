"""The recipe's metadata file indexed on disk and a manifest's rows read along with its items: the same values as
keeping every row in a dict (the matching rules of docs/recipes.md), without the rows in memory."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from capmill.errors import ConfigError
from capmill.recipes import Recipe
from capmill.recipes.metadata import KEY_COLUMNS, ManifestRows, MetadataIndex, SeenIds, read_table
from capmill.run.runfolder import read_shard


def dict_lookup(path):
    """The rows-in-a-dict rule the index keeps: key column from the first row; value set, base name if free."""
    rows = [row for _, row in read_table(path)]
    key = next(k for k in KEY_COLUMNS if k in rows[0])
    table = {}
    for row in rows:
        value = str(row.get(key) or "")
        if value:
            table[value] = row
            table.setdefault(os.path.basename(value), row)

    def lookup(context, source):
        for k in (context["id"], source, context["filename"], context["stem"]):
            if k in table:
                return table[k]
        return {}

    return lookup


def contexts():
    names = ["a/x.jpg", "b/x.jpg", "x.jpg", "y.png", "z", "c/d/e.webp", "missing.jpg", "0", "Ünï cödé.jpg"]
    names += ["w.jpg", "p/v.jpg", "v.jpg"]
    out = []
    for name in names:
        base = os.path.basename(name)
        stem = os.path.splitext(base)[0]
        out.append(({"id": name, "filename": base, "stem": stem}, f"/photos/{name}"))
        out.append(({"id": f"other/{name}", "filename": base, "stem": stem}, f"/else/{base}"))
        out.append(({"id": "nothing", "filename": "nothing.jpg", "stem": stem}, "/n"))
    return out


JSONL_ROWS = [
    {"file_name": "a/x.jpg", "tags": ["cat", "sofa"], "n": 1},
    {"file_name": "b/x.jpg", "tags": "dog", "n": 2.5},  # same base name: x.jpg stays the first row's
    {"file_name": "y.png", "caption": "Ünï \u2603", "nested": {"k": [1, None, True]}},
    {"file_name": "", "tags": "no key: only by nothing"},
    {"file_name": 0, "tags": "falsy key: left out"},
    {"file_name": "y.png", "tags": "a later row with the same value wins"},
    {"file_name": "/abs/c/d/e.webp", "tags": "by base name"},
    {"file_name": "p/v.jpg", "tags": "v.jpg by base name first"},
    {"file_name": "v.jpg", "tags": "then an exact value replaces the base-name entry"},
    {"file_name": "z", "extra": 1e300},
    {"file_name": "Ünï cödé.jpg", "tags": "unicode"},
]


@pytest.fixture(params=["jsonl", "csv", "tsv"])
def table(request, tmp_path):
    path = tmp_path / f"meta.{request.param}"
    if request.param == "jsonl":
        lines = [json.dumps(r) for r in JSONL_ROWS]
        lines[3:3] = ["", "not json", "[1, 2]"]  # skipped, as before
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    else:
        sep = "\t" if request.param == "tsv" else ","
        rows = ["id" + sep + "file_name" + sep + "tags"]  # id is the first key column: it wins
        rows += [sep.join([r["file_name"] if isinstance(r["file_name"], str) else "", "f", str(r.get("tags", ""))])
                 for r in JSONL_ROWS[:1]]  # fmt: skip
        rows += [sep.join(["b/x.jpg", "g", '"quoted, with sep"']), sep.join(["w.jpg", "h"])]  # a short row: None
        rows += [sep.join(["v.jpg", "i", "t", "extra1", "extra2"])]  # a long row: extras under the None key
        rows += [sep.join(["", "j", "empty id"]), sep.join(["y.png", "k", "multi\nline"])]
        path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


def test_index_finds_exactly_what_the_dict_found(tmp_path, table):
    expected = dict_lookup(str(table))
    index = MetadataIndex(str(table), str(tmp_path / "index"))
    try:
        found = 0
        for context, source in contexts():
            got = index.lookup(context, source)
            assert got == expected(context, source), (context, source)
            assert list(got) == list(expected(context, source))  # the column order too
            found += bool(got)
        assert found >= 8
    finally:
        index.close()


def test_index_is_built_once_and_again_for_a_changed_file(tmp_path):
    path = tmp_path / "m.csv"
    path.write_text("file_name,tags\nx.jpg,one\n")
    folder = tmp_path / "index"
    MetadataIndex(str(path), str(folder)).close()
    (built,) = folder.glob("metadata-*.sqlite")
    stamp = built.stat().st_mtime_ns
    MetadataIndex(str(path), str(folder)).close()
    assert built.stat().st_mtime_ns == stamp  # reused
    path.write_text("file_name,tags\nx.jpg,two\n")
    os.utime(path, ns=(stamp + 10**9, stamp + 10**9))
    index = MetadataIndex(str(path), str(folder))
    assert index.lookup({"id": "x.jpg", "filename": "x.jpg", "stem": "x"}, "x.jpg") == {
        "file_name": "x.jpg",
        "tags": "two",
    }
    index.close()
    assert [p.name for p in folder.iterdir()] != [built.name] and len(list(folder.iterdir())) == 1  # old one gone


@pytest.mark.parametrize("text", ["name,tags\nx.jpg,one\n", ""])
def test_metadata_without_a_key_column_names_the_file(tmp_path, text):
    path = tmp_path / "m.csv"
    path.write_text(text)
    with pytest.raises(ConfigError, match=r"m\.csv: no key column"):
        MetadataIndex(str(path), str(tmp_path / "index"))


def test_manifest_rows_read_along_equal_the_whole_table(tmp_path, table):
    whole = dict(read_table(str(table)))
    rows = ManifestRows(str(table))
    asked = [1, 2, 2, 3, 4, 5, 7, 9, 12, 13, 40, 3, 1, 6, None, "2", True]  # in order, repeated, past the end, back
    try:
        for lineno in asked:
            want = {} if isinstance(lineno, bool) else whole.get(lineno, {})
            assert rows.get(lineno) == want, lineno
    finally:
        rows.close()


def test_recipe_prompts_from_an_indexed_metadata_file(tmp_path, tiny_model, coco_photos):
    photos = tmp_path / "photos"
    photos.mkdir()
    for p in coco_photos[:5]:
        shutil.copy(p, photos / p.name)
    metadata = tmp_path / "tags.csv"
    names = [p.name for p in coco_photos[:5]]
    lines = ["file_name,tags"] + [f"unrelated/{i}.jpg,noise {i}" for i in range(20000)]
    lines += [f"some/folder/{name},tag of {name}" for name in names]
    metadata.write_text("\n".join(lines) + "\n")
    recipe = Recipe.from_dict(
        {
            "metadata": str(metadata),
            "stages": [
                {
                    "name": "s",
                    "model": str(tiny_model("qwen2_vl")),
                    "prompt": "Tags: {meta.tags}.",
                    "decoding": {"max_new_tokens": 3},
                },  # fmt: skip
            ],
        }
    )
    run_dir = tmp_path / "run"
    recipe.run([str(photos), str(photos)], str(run_dir), progress=False)  # the same inputs twice: once each
    records = [
        r for shard in sorted((run_dir / "stages" / "s" / "records").glob("part-*")) for r in read_shard(str(shard))
    ]
    assert len(records) == 5
    prompts = {os.path.basename(r.id): r.meta["recipe"]["prompt"] for r in records}
    assert prompts == {name: f"Tags: tag of {name}." for name in names}
    assert len(list((run_dir / "index").glob("metadata-*.sqlite"))) == 1


def test_seen_ids_on_disk():
    seen = SeenIds()
    try:
        assert [seen.add(i) for i in ["a", "b", "a", "A", "b", "é", "é"]] == [
            True,
            True,
            False,
            True,
            False,
            True,
            False,
        ]
    finally:
        seen.close()
