"""`--browse RUN_DIR` over HTTP: a run folder written by the real pipeline; filter, search, edit, export."""

from __future__ import annotations

import json
from urllib.parse import quote

import httpx
import pytest


@pytest.fixture(scope="module")
def http(browse_server):  # noqa: ANN001
    with httpx.Client(base_url=browse_server.url, timeout=30) as client:
        yield client


def test_lists_the_runs_records(http, run_dir):  # noqa: ANN001
    from capmill.run.runfolder import read_records

    expected = {r.id: r for r in read_records(str(run_dir))}
    data = http.get("/browse/records").json()
    assert data["total"] == len(expected) == 8
    assert data["counts"]["ok"] == 6 and data["counts"]["error"] == 2
    for row in data["records"]:
        assert row["caption"] == expected[row["id"]].caption
        assert row["raw"] == expected[row["id"]].raw


def test_filter_and_search(http):  # noqa: ANN001
    errors = http.get("/browse/records", params={"status": "error"}).json()["records"]
    assert sorted(r["id"].split("/")[-1] for r in errors) == ["broken.jpg", "truncated.jpg"]
    assert all(r["error"] for r in errors)
    found = http.get("/browse/records", params={"q": "TRUNCATED"}).json()
    assert [r["id"].split("/")[-1] for r in found["records"]] == ["truncated.jpg"]
    word = http.get("/browse/records", params={"status": "ok"}).json()["records"][0]["caption"].split()[0]
    hits = http.get("/browse/records", params={"q": word}).json()["records"]
    assert hits and all(word.lower() in (r["caption"] or "").lower() for r in hits)


def test_thumbnails(http):  # noqa: ANN001
    records = http.get("/browse/records").json()["records"]
    ok = next(r for r in records if r["status"] == "ok")
    thumb = http.get(f"/browse/thumb/{ok['id']}")
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
    from io import BytesIO

    from PIL import Image

    assert max(Image.open(BytesIO(thumb.content)).size) <= 320
    broken = next(r for r in records if r["id"].endswith("broken.jpg"))
    assert http.get(f"/browse/thumb/{broken['id']}").status_code == 404
    assert http.get("/browse/thumb/..%2F..%2Fetc%2Fpasswd").status_code == 404  # only a record's own file


def test_edit_keeps_the_model_output_and_export_applies_it(http, run_dir):  # noqa: ANN001
    from capmill.run.runfolder import read_records

    before = {r.id: r.to_dict() for r in read_records(str(run_dir))}
    target = next(i for i, r in before.items() if r["status"] == "ok")
    saved = http.post(f"/browse/edits/{target}", json={"caption": "A hand-written caption."}).json()
    assert saved["edited_caption"] == "A hand-written caption." and saved["caption"] == before[target]["caption"]
    assert http.post("/browse/edits/no-such-id", json={"caption": "x"}).status_code == 404

    # The model's records are untouched; the edit sits in edits.jsonl.
    assert {r.id: r.to_dict() for r in read_records(str(run_dir))} == before
    edits = [json.loads(line) for line in (run_dir / "edits.jsonl").read_text().splitlines()]
    assert edits[-1]["id"] == target and edits[-1]["model_caption"] == before[target]["caption"]

    assert http.get("/browse/records", params={"status": "edited"}).json()["matched"] >= 1
    export = http.get("/browse/export")
    assert export.headers["content-disposition"].startswith("attachment")
    rows = {row["id"]: row for row in map(json.loads, export.text.splitlines())}
    assert set(rows) == set(before)
    assert rows[target]["caption"] == "A hand-written caption." and rows[target]["edited"] is True
    assert rows[target]["model_caption"] == before[target]["caption"]
    other = next(i for i in rows if i != target and rows[i]["status"] == "ok")
    assert rows[other]["edited"] is False and rows[other]["caption"] == before[other]["caption"]
    only_errors = [json.loads(x) for x in http.get("/browse/export", params={"status": "error"}).text.splitlines()]
    assert {r["status"] for r in only_errors} == {"error"}


def test_browse_only_server_has_no_model(run_dir):  # noqa: ANN001
    from serve_helpers import Server

    from capmill.serve.app import create_app
    from capmill.serve.config import ServeConfig

    with Server(create_app(ServeConfig(browse_dir=run_dir))) as s:
        assert httpx.get(f"{s.url}/healthz").json()["status"] == "browse-only"
        assert httpx.get(f"{s.url}/v1/models").json()["data"] == []
        r = httpx.post(f"{s.url}/v1/captions", json={"image": "aGk="})
        assert r.status_code == 404 and "--model" in r.json()["error"]["message"]
        assert httpx.get(f"{s.url}/browse/records").json()["total"] == 8


def test_bad_browse_folder_fails_at_once(tmp_path):  # noqa: ANN001
    from capmill.errors import ConfigError
    from capmill.serve.app import create_app
    from capmill.serve.config import ServeConfig

    with pytest.raises(ConfigError, match="not a folder"):
        create_app(ServeConfig(browse_dir=tmp_path / "missing"))


# ---------------------------------------------------------------- only the run's own files


@pytest.fixture(scope="module")
def manifest_run(captioner, photos, tmp_path_factory):  # noqa: ANN001
    """A real run over a JSON-lines manifest naming one image beside it and one in an unrelated folder."""
    from serve_helpers import SharedCaptioner

    from capmill.run.local import CaptionJob, LocalRunner
    from capmill.run.pipeline import PipelineOptions

    inputs = tmp_path_factory.mktemp("manifest-inputs")
    elsewhere = tmp_path_factory.mktemp("not-an-input")
    (inputs / "inside.jpg").write_bytes(photos[0].read_bytes())
    (elsewhere / "secret.jpg").write_bytes(photos[1].read_bytes())
    manifest = inputs / "list.jsonl"
    manifest.write_text(
        json.dumps({"path": str(inputs / "inside.jpg")}) + "\n" + json.dumps({"path": str(elsewhere / "secret.jpg")})
    )
    run = tmp_path_factory.mktemp("manifest-run")
    job = CaptionJob(
        inputs=[str(manifest)],
        make_captioner=lambda: SharedCaptioner(captioner),
        run_dir=str(run),
        pipeline=PipelineOptions(workers=0, batch_size=8),
        progress=False,
    )
    LocalRunner(job).run()
    return run, elsewhere


def test_files_outside_the_runs_inputs_are_not_served(captioner, manifest_run):  # noqa: ANN001
    from serve_helpers import serve

    run, elsewhere = manifest_run
    with serve(captioner, browse_dir=run) as s:
        records = httpx.get(f"{s.url}/browse/records").json()["records"]
        by_name = {r["source"].rsplit("/", 1)[-1]: quote(r["id"], safe="") for r in records}
        assert set(by_name) == {"inside.jpg", "secret.jpg"}  # both were captioned: the model read both
        assert httpx.get(f"{s.url}/browse/image/{by_name['inside.jpg']}").status_code == 200
        assert httpx.get(f"{s.url}/browse/thumb/{by_name['inside.jpg']}").status_code == 200
        assert httpx.get(f"{s.url}/browse/image/{by_name['secret.jpg']}").status_code == 404
        assert httpx.get(f"{s.url}/browse/thumb/{by_name['secret.jpg']}").status_code == 404
    with serve(captioner, browse_dir=run, browse_roots=[elsewhere]) as s:  # --browse-root names it
        assert httpx.get(f"{s.url}/browse/image/{by_name['secret.jpg']}").status_code == 200


def test_pages_come_from_the_shards_and_new_shards_appear(tmp_path):  # noqa: ANN001
    """A run of several shards (JSON lines and Parquet) pages in run order, finds by id, and picks up a shard
    committed after the browser started, without re-reading the ones it has."""
    from capmill.run.runfolder import RunFolder, read_records
    from capmill.serve.browse import BrowseService
    from record_samples import records

    def write(fmt: str, start: int, n: int) -> None:
        folder = RunFolder(str(tmp_path / fmt), {"profile": "x"}, fmt=fmt, shard_size=4)
        for k, record in enumerate(records(n)):
            record.id = f"r{start + k:03d}"
            record.status = "error" if (start + k) % 5 == 0 else "ok"
            folder.add(record)
        folder.close()
        folder.release()

    for fmt in ("jsonl", "parquet"):
        write(fmt, 0, 10)
        browse = BrowseService(tmp_path / fmt)
        try:
            expected = [r.id for r in read_records(str(tmp_path / fmt))]
            pages = [browse.query(offset=o, limit=3)["records"] for o in range(0, 12, 3)]
            assert [r["id"] for page in pages for r in page] == expected
            errors = browse.query(status="error")
            assert [r["id"] for r in errors["records"]] == ["r000", "r005"] and errors["counts"]["ok"] == 8
            assert browse.get("r007")["caption"] == next(
                r.caption for r in read_records(str(tmp_path / fmt)) if r.id == "r007"
            )
            assert browse.query(q="R00")["matched"] == 10
            write(fmt, 10, 5)  # the run goes on: two more shards
            browse.load(force=True)
            assert browse.query()["total"] == 15 and browse.get("r014") is not None
            browse.save_edit("r003", "edited by hand")
            assert [r["id"] for r in browse.query(status="edited")["records"]] == ["r003"]
            assert browse.query(q="by hand")["matched"] == 1
            exported = [json.loads(line) for line in browse.export()]
            assert len(exported) == 15 and next(r for r in exported if r["id"] == "r003")["edited"] is True
        finally:
            browse.close()
