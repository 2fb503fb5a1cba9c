"""Every sink writes records unchanged: each format is read back (by its own reader) to the same records."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import pytest
from make_inputs import jpeg

from capmill.data.sinks import SINKS
from capmill.records import Record
from capmill.run.runfolder import read_shard
from record_samples import records


@pytest.mark.parametrize("fmt", ["jsonl", "parquet", "webdataset"])
def test_shard_formats_round_trip(tmp_path, fmt):
    sink_cls = SINKS.get(fmt)
    path = tmp_path / f"part{sink_cls.extension}"
    rs = records()
    before = [r.to_dict() for r in rs]
    with sink_cls(str(path)) as sink:
        for r in rs:
            sink.write(r, jpeg() if sink_cls.wants_media else None)
    assert [r.to_dict() for r in rs] == before  # the sink did not touch them
    assert [r.to_dict() for r in read_shard(str(path))] == before


def test_jsonl_lines_have_the_cli_fields(tmp_path):
    with SINKS.get("jsonl")(str(tmp_path / "o.jsonl")) as sink:
        sink.write(records(1)[0])
    row = json.loads((tmp_path / "o.jsonl").read_text())
    assert {"id", "source", "status", "caption", "structured", "raw", "error"} <= set(row)


def test_parquet_is_zstd_with_record_columns(tmp_path):
    import pyarrow.parquet as pq

    with SINKS.get("parquet")(str(tmp_path / "o.parquet")) as sink:
        for r in records():
            sink.write(r)
    pf = pq.ParquetFile(tmp_path / "o.parquet")
    assert pf.metadata.row_group(0).column(0).compression == "ZSTD"
    assert pf.schema_arrow.names == list(Record.__dataclass_fields__)


def test_webdataset_sample_has_image_json_txt(tmp_path):
    image = jpeg()
    with SINKS.get("webdataset")(str(tmp_path / "o.tar")) as sink:
        sink.write(records(1)[0], image)
    with tarfile.open(tmp_path / "o.tar") as tar:
        names = tar.getnames()
        exts = sorted(n.split(".", 1)[1] for n in names)
        assert exts == ["jpg", "json", "txt"] and len({n.split(".", 1)[0] for n in names}) == 1
        jpg = next(n for n in names if n.endswith(".jpg"))
        assert tar.extractfile(jpg).read() == image  # never re-encoded


def test_sidecars_next_to_images_and_never_over_a_human_caption(tmp_path):
    rs = records()
    for r in rs:
        path = tmp_path / f"img{r.id[-5]}.jpg"
        path.write_bytes(jpeg())
        r.source = str(path)
    (tmp_path / "img1.txt").write_text("a caption a person wrote\n")
    sink = SINKS.get("sidecar")()
    for r in rs:
        sink.write(r)
    assert (tmp_path / "img0.txt").read_text() == "caption 0 ünïcode\n"
    assert json.loads((tmp_path / "img0.json").read_text())["setting"] == "indoor"
    assert (tmp_path / "img1.txt").read_text() == "a caption a person wrote\n" and sink.skipped
    assert not (tmp_path / "img2.txt").exists()  # an error gets no sidecar
    SINKS.get("sidecar")(overwrite=True, kinds=("txt",)).write(rs[1])
    assert (tmp_path / "img1.txt").read_text() == "caption 1 ünïcode\n"


def test_hf_dataset_saved_to_disk(tmp_path):
    datasets = pytest.importorskip("datasets")
    rs = records()
    with SINKS.get("hf")(str(tmp_path / "ds")) as sink:
        for r in rs:
            sink.write(r)
    ds = datasets.load_from_disk(str(tmp_path / "ds"))
    assert ds["id"] == [r.id for r in rs] and ds["caption"][0] == "caption 0 ünïcode"
    assert not list(tmp_path.glob("*.parquet"))


def test_docs_list_every_record_field():
    """docs/runs.md names every Record field, in order, in its 'Every record has' sentence."""
    import re

    docs = (Path(__file__).resolve().parents[2] / "docs" / "runs.md").read_text(encoding="utf-8")
    sentence = re.search(r"Every record has `([^`]+)`", docs)
    assert sentence is not None
    listed = [name.strip() for name in sentence.group(1).split(",")]
    assert listed == list(Record.__dataclass_fields__)
