"""`--browse RUN_DIR` over HTTP: a run folder written by the real pipeline; filter, search, edit, export."""

from __future__ import annotations

import json

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
