"""Every source kind, the spec parser, and the read-time failures (404, timeout, broken links, corrupt rows)."""

from __future__ import annotations

import csv
import io
import json
import os
import tarfile

import pytest
from local_http import serve
from make_inputs import COCO, jpeg

from capmill.data.fetch import FetchOptions, load
from capmill.data.sources import SOURCES, SourceOptions, open_sources
from capmill.data.sources.spec import infer_kind
from capmill.errors import ConfigError, InputError

PHOTOS = sorted(p.name for p in COCO.glob("*.jpg"))


def loaded(source, fetch=FetchOptions(timeout=0.5, retries=1, backoff=0.05, max_bytes=100_000, total_timeout_factor=2)):
    """(id, data or text, error reason) for every item, fetching lazily as the workers would."""
    out = []
    for item in source:
        if item.error:
            out.append((item.id, None, item.error.split(":")[0]))
            continue
        try:
            load(item, fetch)
        except InputError as exc:
            out.append((item.id, None, exc.reason))
            continue
        out.append((item.id, item.text if item.kind == "text" else item.data, None))
    return out


def test_folder_recursive_sorted_and_glob(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "b" / "x.jpg").write_bytes(jpeg())
    (tmp_path / "y.png").write_bytes(b"png?")
    (tmp_path / "notes.md").write_text("skip me")
    (tmp_path / ".hidden.jpg").write_bytes(jpeg())
    ids = [i.id for i in open_sources([str(tmp_path)])]
    root = tmp_path.name  # ids: the input folder's name, then the path below it
    assert ids == [f"{root}/y.png", f"{root}/a/b/x.jpg"]  # a folder's files, then subfolders
    flat = [i.id for i in open_sources([str(tmp_path)], SourceOptions(recursive=False))]
    assert flat == [f"{root}/y.png"]
    globbed = [i.id for i in open_sources([str(tmp_path / "**" / "*.jpg")])]
    assert globbed == [f"{root}/a/b/x.jpg"]
    assert open_sources([str(tmp_path)]).count() == 2


def test_file_list_and_unreadable_entries(tmp_path):
    (tmp_path / "ok.jpg").write_bytes(jpeg())
    (tmp_path / "adir.jpg").mkdir()  # a directory where a file should be: unreadable
    os.symlink(tmp_path / "gone.jpg", tmp_path / "link.jpg")
    (tmp_path / "list.txt").write_text("# my images\nok.jpg\nadir.jpg\nlink.jpg\nmissing.jpg\n")
    got = loaded(open_sources([str(tmp_path / "list.txt")]))
    assert [(i, r) for i, _, r in got] == [
        ("ok.jpg", None),
        ("adir.jpg", "unreadable file"),
        ("link.jpg", "broken symlink"),
        ("missing.jpg", "missing file"),
    ]


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their permissions")
def test_permission_denied_is_unreadable(tmp_path):
    path = tmp_path / "secret.jpg"
    path.write_bytes(jpeg())
    path.chmod(0)
    assert loaded(open_sources([str(path)]))[0][2] == "unreadable file"


def test_url_list_404_timeout_retry_and_size_cap(tmp_path):
    with serve() as base:
        urls = [f"{base}/img/7.jpg", f"{base}/missing.jpg", f"{base}/slow.jpg", f"{base}/flaky.jpg", f"{base}/big.jpg"]
        urls.append(f"{base}/drip.jpg")
        (tmp_path / "urls.txt").write_text("\n".join(urls) + "\nftp://nope\n")
        assert infer_kind(str(tmp_path / "urls.txt")) == ("urls", str(tmp_path / "urls.txt"))
        got = loaded(open_sources([str(tmp_path / "urls.txt")]))
    reasons = {i: r for i, _, r in got}
    assert reasons == {
        urls[0]: None,
        urls[1]: "http 404",
        urls[2]: "timeout",
        urls[3]: None,  # 503 once, then retried
        urls[4]: "download too large",
        urls[5]: "timeout",  # each byte within the read timeout, the whole beyond 2 timeouts
        "ftp://nope": "bad url",
    }
    assert got[0][1][:2] == b"\xff\xd8"


def _parquet(path, rows, **kw):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), path, **kw)


def test_parquet_bytes_struct_path_and_corrupt_rows(tmp_path):
    good = jpeg()
    (tmp_path / "p.jpg").write_bytes(good)
    _parquet(tmp_path / "bytes.parquet", [{"key": "a", "image": good}, {"key": "b", "image": None}])
    _parquet(tmp_path / "struct.parquet", [{"image": {"bytes": good, "path": "x.jpg"}}])
    _parquet(tmp_path / "paths.parquet", [{"file_name": "p.jpg"}, {"file_name": None}])
    got = loaded(open_sources([str(tmp_path / n) for n in ("bytes.parquet", "struct.parquet", "paths.parquet")]))
    assert [(i, d == good, r) for i, d, r in got] == [
        ("a", True, None),
        ("b", False, "corrupt row"),
        ("struct.parquet#0", True, None),
        ("paths.parquet#0", True, None),
        ("paths.parquet#1", False, "corrupt row"),
    ]


def test_parquet_unreadable_row_group_becomes_error_rows(tmp_path):
    import pyarrow.parquet as pq

    rows = [{"image": jpeg((i, i, i), size=(8, 8))} for i in range(8)]
    path = tmp_path / "broken.parquet"
    _parquet(path, rows, row_group_size=4, compression="snappy")
    meta = pq.ParquetFile(path).metadata.row_group(1).column(0)
    raw = bytearray(path.read_bytes())
    start = meta.data_page_offset + 12
    raw[start : start + 64] = b"\xaa" * 64  # garble the second row group's page data
    path.write_bytes(bytes(raw))
    got = loaded(open_sources([str(path)]))
    assert len(got) == 8
    assert [r for _, _, r in got[:4]] == [None] * 4
    assert {r for _, _, r in got[4:]} == {"corrupt row"}


def test_parquet_text_column_and_arrow(tmp_path):
    import pyarrow as pa

    _parquet(tmp_path / "t.parquet", [{"id": "x", "caption": "a dog on a sofa"}])
    table = pa.Table.from_pylist([{"image": jpeg()}])
    with pa.ipc.new_stream(str(tmp_path / "s.arrow"), table.schema) as writer:
        writer.write_table(table)
    text = loaded(open_sources([str(tmp_path / "t.parquet")], SourceOptions(mode="text")))
    assert text == [("x", "a dog on a sofa", None)]
    assert loaded(open_sources([str(tmp_path / "s.arrow")]))[0][2] is None
    with pytest.raises(ConfigError, match="no text column"):
        list(open_sources([str(tmp_path / "s.arrow")], SourceOptions(mode="text")))


def _tar(path, members):
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_webdataset_samples_and_non_image_member(tmp_path):
    good = jpeg()
    shard = tmp_path / "shard-000.tar"
    _tar(shard, [("s1.jpg", good), ("s1.txt", b"one"), ("d/s2.cls", b"3"), ("d/s2.txt", b"two"), ("s3.jpg", b"text!")])
    got = loaded(open_sources([str(shard)]))
    assert [(i.split("#")[1], r) for i, _, r in got] == [("s1", None), ("d/s2", "not an image"), ("s3", None)]
    assert got[2][1] == b"text!"  # the decoder then calls it "not an image"
    text = loaded(open_sources([str(shard)], SourceOptions(mode="text")))
    assert [t for _, t, _ in text[:2]] == ["one", "two"]


def test_truncated_tar_keeps_complete_samples(tmp_path):
    _tar(tmp_path / "full.tar", [("a.jpg", jpeg()), ("b.jpg", jpeg(size=(400, 400))), ("c.jpg", jpeg())])
    data = (tmp_path / "full.tar").read_bytes()
    (tmp_path / "cut_header.tar").write_bytes(data[:2000])  # inside b's header
    (tmp_path / "cut_data.tar").write_bytes(data[:3000])  # inside b's data
    for name in ("cut_header.tar", "cut_data.tar"):
        got = loaded(open_sources([str(tmp_path / name)]))
        assert [r for _, _, r in got] == [None, "corrupt tar"], name
        assert got[0][0].endswith("#a") and len({i for i, _, _ in got}) == 2


def test_hf_load_from_disk_with_image_feature(tmp_path):
    datasets = pytest.importorskip("datasets")
    photo = str(COCO / PHOTOS[0])
    ds = datasets.Dataset.from_dict({"image": [photo], "text": ["hi"]}).cast_column("image", datasets.Image())
    datasets.DatasetDict({"train": ds, "test": ds}).save_to_disk(str(tmp_path / "hfds"))
    assert infer_kind(str(tmp_path / "hfds"))[0] == "hf"
    got = loaded(open_sources([str(tmp_path / "hfds")]))
    assert [i for i, _, _ in got] == ["hfds/train#0", "hfds/test#0"]
    assert got[0][1] == (COCO / PHOTOS[0]).read_bytes()
    only = loaded(open_sources([str(tmp_path / "hfds")], SourceOptions(split="test", mode="text")))
    assert only == [("hfds/test#0", "hi", None)]


def test_hub_id_is_recognised():
    assert infer_kind("someone/some-dataset") == ("hf-hub", "someone/some-dataset")


def test_jsonl_and_csv_manifests(tmp_path):
    (tmp_path / "a.jpg").write_bytes(jpeg())
    (tmp_path / "m.jsonl").write_text(
        json.dumps({"id": "one", "path": "a.jpg", "caption": "x"})
        + "\n{not json\n"
        + json.dumps({"path": "a.jpg"})
        + "\n"
    )
    with open(tmp_path / "m.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerows([["id", "url"], ["u1", "http://127.0.0.1:9/x.jpg"]])
    got = loaded(open_sources([str(tmp_path / "m.jsonl")]))
    assert [(i, r) for i, _, r in got] == [
        ("one", None),
        ("m.jsonl#2", "corrupt row"),
        ("m.jsonl#3", None),
    ]
    item = next(iter(open_sources([str(tmp_path / "m.csv")])))
    assert item.id == "u1" and item.meta["url"] == "http://127.0.0.1:9/x.jpg"
    text = loaded(open_sources([str(tmp_path / "m.jsonl")], SourceOptions(mode="text", text_column="caption")))
    assert text[0] == ("one", "x", None) and text[2][2] == "corrupt row"


def test_caption_text_files(tmp_path):
    (tmp_path / "caps.txt").write_text("a red bus\n\na cat on a mat\n")
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "img1.txt").write_text("sidecar caption\n")
    (tmp_path / "folder" / "img1.jpg").write_bytes(jpeg())
    text = SourceOptions(mode="text")
    assert loaded(open_sources([str(tmp_path / "caps.txt")], text)) == [
        ("caps.txt#1", "a red bus", None),
        ("caps.txt#3", "a cat on a mat", None),
    ]
    assert loaded(open_sources([str(tmp_path / "folder")], text)) == [("folder/img1.txt", "sidecar caption", None)]


def test_spec_parser(tmp_path):
    for name in ("a.parquet", "a.arrow", "a.tar", "a.jsonl", "a.csv", "a.jpg", "a.mp4"):
        (tmp_path / name).write_bytes(b"")
    kinds = {
        n: infer_kind(str(tmp_path / n))[0] for n in ("a.parquet", "a.arrow", "a.tar", "a.jsonl", "a.csv", "a.jpg")
    }
    assert kinds == {
        "a.parquet": "parquet",
        "a.arrow": "arrow",
        "a.tar": "webdataset",
        "a.jsonl": "jsonl",
        "a.csv": "csv",
        "a.jpg": "file",
    }
    assert infer_kind("https://x.org/a.jpg") == ("url", "https://x.org/a.jpg")
    assert infer_kind(f"files:{tmp_path / 'a.csv'}") == ("files", str(tmp_path / "a.csv"))
    assert next(iter(open_sources([str(tmp_path / "a.mp4")]))).kind == "video"
    with pytest.raises(ConfigError, match="no such file"):
        open_sources([str(tmp_path / "nope" / "x.jpg")])
    assert set(SOURCES.names()) >= {
        "folder",
        "glob",
        "files",
        "urls",
        "parquet",
        "arrow",
        "webdataset",
        "hf",
        "jsonl",
        "csv",
        "text",
    }


def test_folder_symlink_loop_lists_each_file_once(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "a.jpg").write_bytes(jpeg())
    os.symlink(tmp_path, tmp_path / "sub" / "loop")
    assert [i.id for i in open_sources([str(tmp_path)])] == [f"{tmp_path.name}/sub/a.jpg"]


def test_ids_do_not_depend_on_how_the_input_is_spelled(tmp_path, monkeypatch):
    photos = tmp_path / "photos"
    (photos / "sub").mkdir(parents=True)
    (photos / "a.jpg").write_bytes(jpeg())
    (photos / "sub" / "b.jpg").write_bytes(jpeg())
    (tmp_path / "t.parquet").write_bytes(b"")  # only its name matters here
    monkeypatch.chdir(tmp_path)
    spellings = ["photos", "./photos/", str(photos), "photos/../photos"]
    ids = [[i.id for i in open_sources([s])] for s in spellings]
    assert all(got == ["photos/a.jpg", "photos/sub/b.jpg"] for got in ids), ids
    monkeypatch.chdir(photos / "sub")  # from inside, with a relative path upwards
    assert [i.id for i in open_sources([".."])] == ["photos/a.jpg", "photos/sub/b.jpg"]
    assert [i.id for i in open_sources(["../*.jpg"])] == ["photos/a.jpg"]
    assert [i.id for i in open_sources(["../a.jpg"])] == ["a.jpg"]
