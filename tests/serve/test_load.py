"""A short run of benchmarks/serve_load.py against a real in-process server: valid requests keep getting their
captions while other clients send oversize bodies, bad images, slow-drip uploads, and leave mid-request."""

from __future__ import annotations

import sys
from pathlib import Path

import httpx
from serve_helpers import serve

sys.path.insert(0, str(Path(__file__).parents[2] / "benchmarks"))
import serve_load  # noqa: E402


def test_faults_beside_valid_requests(captioner):  # noqa: ANN001
    max_body = 1024 * 1024
    with serve(captioner, max_body_bytes=max_body, receive_timeout_s=1.5, max_batch=8, max_wait_ms=20) as s:
        report = serve_load.load(s.url, seconds=8, workers=len(serve_load.KINDS), max_body=max_body)
        assert report["problems"] == [], report
        for kind, expected in serve_load.EXPECTED.items():
            got = report["statuses"].get(kind, {})
            assert got and set(got) <= expected, (kind, got)
        assert report["server_5xx"] == 0
        assert report["health_probes"] >= 10 and report["health_failures"] == 0
        metrics = httpx.get(f"{s.url}/metrics").text
        assert 'capmill_cancelled_total{reason="disconnect"}' in metrics  # leavers were taken out
        s.idle()
        assert s.app.state.service.batcher.depth == 0
