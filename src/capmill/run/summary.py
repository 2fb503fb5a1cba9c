"""summary.json: what the whole run holds (from the ledger) and what this session did (counts, speed, time split)."""

from __future__ import annotations

import time
from typing import Any

from capmill.run.runfolder import RunFolder, write_json_atomic
from capmill.run.stats import Stats


def rates(stats: Stats) -> dict[str, float]:
    """images/s and tokens/s over the session's working time (wall time less the model load)."""
    working = max(stats.wall - stats.times.get("load", 0.0), 1e-9)
    return {
        "images_per_s": stats.written / working,
        "captioned_per_s": stats.captioned / working,
        "tokens_per_s": stats.completion_tokens / working,
        "prompt_tokens_per_s": stats.prompt_tokens / working,
    }


def build_summary(stats: Stats, out: RunFolder | None, completed: bool, error: str | None = None) -> dict[str, Any]:
    session: dict[str, Any] = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(stats.started)),
        "completed": completed,
        "wall_s": round(stats.wall, 3),
        "inputs_seen": stats.seen,
        "skipped_done": stats.skipped_done,
        "duplicate_ids_ignored": stats.duplicate_ids,
        "duplicates_copied": stats.duplicates,
        "records_written": stats.written,
        "captioned": stats.captioned,
        "by_status": dict(sorted(stats.status.items())),
        "errors_by_reason": dict(stats.reasons.most_common()),
        "prompt_tokens": stats.prompt_tokens,
        "completion_tokens": stats.completion_tokens,
        **{k: round(v, 3) for k, v in rates(stats).items()},
        "time_s": {k: round(v, 4) for k, v in stats.times.items()},
    }
    if error:
        session["error"] = error
    summary: dict[str, Any] = {"session": session}
    if out is not None:
        summary["run"] = {
            "records": out.ledger.count(),
            "shards": len(out.shard_names()),
            "by_status": out.ledger.by_status(),
            "errors_by_reason": out.ledger.errors_by_reason(),
            "errors_by_kind": out.ledger.errors_by_kind(),  # retryable ones are redone by the next run
            "config": out.config,
        }
    return summary


def write_summary(path: str, summary: dict[str, Any]) -> None:
    write_json_atomic(path, summary)
