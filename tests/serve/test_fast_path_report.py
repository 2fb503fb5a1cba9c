"""The server says which fast paths serve its model: /healthz in detail, /metrics as one series per path and state."""

from __future__ import annotations

import re

import httpx


def test_healthz_and_metrics_report_the_engines_fast_paths(server, captioner):  # noqa: ANN001
    health = httpx.get(f"{server.url}/healthz").json()
    assert health["fast_paths"] == captioner.fast_paths()
    assert set(health["fast_paths"]) == {"prefix_cache", "merge_rows", "batch_invariant"}
    assert health["fast_paths"]["batch_invariant"]["state"] == "off"  # the server was started without --exact
    text = httpx.get(f"{server.url}/metrics").text
    for path, info in health["fast_paths"].items():
        line = re.search(rf'^capmill_fast_path\{{path="{path}",state="{info["state"]}"\}} (\S+)$', text, re.M)
        assert line and float(line.group(1)) == 1.0, f"/metrics lacks {path}'s state {info['state']}"
