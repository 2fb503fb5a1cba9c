"""A Captioner with the quality gate around its engine, and the gate's counts for summary.json.

The run pipeline calls `captioner.generate(requests)` and `captioner.finish(item, request, generation)`; this
subclass puts the gate into the first and copies its verdict into the record in the second, so the pipeline,
the ledger and every runner work unchanged (`capmill caption --gate gate.yaml`).
"""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from capmill.captioner import Captioner
from capmill.quality.gate import Gate
from capmill.quality.policy import GatePolicy, load_policy
from capmill.records import Generation, Item, Record, Request


class GatedCaptioner(Captioner):
    """`Captioner` whose generations pass the gate (checks, image-text score, retries) before they are parsed."""

    def __init__(self, *args: Any, gate: GatePolicy | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.policy = gate or GatePolicy()
        self._gate: Gate | None = None

    @property
    def gate(self) -> Gate:
        if self._gate is None:
            self._gate = Gate(self.policy, output=self.profile.output)
        return self._gate

    def prompt_hash(self, mode: str | None = None) -> str:
        """The gate's policy is part of the run's identity: it changes which captions are kept."""
        from capmill.records import stable_hash

        return stable_hash({"prompt": super().prompt_hash(mode), "gate": self.policy.model_dump(mode="json")})

    def generate(self, requests: Sequence[Request]) -> list[Generation]:
        if not requests:
            return []
        return self.gate.run(list(requests), super().generate)

    def finish(self, item: Item, request: Request | None, generation: Generation) -> Record:
        record = super().finish(item, request, generation)
        quality = generation.quality
        if quality is None:
            return record
        record.quality = quality
        if not quality["passed"]:
            tries = len(quality["attempts"])
            why = ", ".join(quality["reasons"])
            record.notes.append(f"quality gate: {why} after {tries} attempt{'s' if tries > 1 else ''}")
            if self.policy.on_fail == "invalid" and record.ok:
                record.status = "invalid"
                record.error = f"quality gate: {why}"
        return record


def make_gated_captioner(policy_path: str | Path | None, kwargs: dict[str, Any]) -> GatedCaptioner:
    """The factory the CLI hands to the runners (picklable through functools.partial)."""
    return GatedCaptioner(gate=load_policy(policy_path), **kwargs)


def captioner_maker(spec: str) -> Callable[[dict[str, Any]], GatedCaptioner]:
    """`--gate FILE` (or `--gate` alone: the defaults) -> the make_captioner the runners call; the policy is read
    and checked now, so a bad file fails before any work."""
    path = None if spec == "default" else spec
    load_policy(path)
    return functools.partial(make_gated_captioner, path)


def add_gate_summary(run_dir: str, summary: dict[str, Any], write: bool) -> dict[str, Any]:
    """Put the gate's counts over the whole run folder into `summary` (and its summary.json when `write`)."""
    from capmill.run.runfolder import read_records
    from capmill.run.summary import write_summary

    summary = {**summary, "gate": gate_summary(read_records(run_dir))}
    if write:
        write_summary(str(Path(run_dir) / "summary.json"), summary)
    return summary


def gate_summary(records: Iterable[Record]) -> dict[str, Any]:
    """How many captions the gate passed at once, retried, fixed (and by which attempt) and could not fix."""
    gated = retried = fixed = extra = failed = 0
    fixed_by: Counter[str] = Counter()
    first_reasons: Counter[str] = Counter()
    still: Counter[str] = Counter()
    for record in records:
        quality = record.quality
        if not quality or "attempts" not in quality:
            continue
        gated += 1
        attempts = quality["attempts"]
        extra += len(attempts) - 1
        first_reasons.update(attempts[0]["reasons"])
        if len(attempts) > 1:
            retried += 1
        if quality.get("fixed_by"):
            fixed += 1
            fixed_by[quality["fixed_by"]] += 1
        if not quality["passed"]:
            failed += 1
            still.update(quality["reasons"])
    return {
        "gated": gated,
        "passed_first_try": gated - retried,
        "retried": retried,
        "retry_attempts": extra,
        "fixed": fixed,
        "fixed_by": dict(fixed_by.most_common()),
        "failed_first_try_by_reason": dict(first_reasons.most_common()),
        "not_fixed": failed,
        "not_fixed_by_reason": dict(still.most_common()),
    }
