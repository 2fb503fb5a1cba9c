"""The gate on a real tiny Qwen2-VL and real photos: checks, retries, every attempt kept, the run exactly once."""

from __future__ import annotations

import json

import pytest

from capmill.quality.degenerate import is_loop
from capmill.quality.gate import Gate
from capmill.quality.gated import GatedCaptioner, gate_summary
from capmill.quality.policy import Attempt, Checks, GatePolicy, Scorer
from capmill.records import Decoding, Generation, Request

MAX_NEW = 16


@pytest.fixture(scope="module")
def qwen(tiny_model):
    return tiny_model("qwen2_vl")


def _policy(clip=None, **checks) -> GatePolicy:
    return GatePolicy(
        checks=Checks(truncated=False, **checks),  # a tiny random model never ends by itself
        scorer=Scorer(model=str(clip)) if clip else None,
        attempts=[
            Attempt(do_sample=True, temperature=1.0, repetition_penalty=1.5, seed=1),
            Attempt(do_sample=True, temperature=1.3, repetition_penalty=2.0, seed=2),
        ],
        stop_repetition=False,
    )


def test_gate_on_a_real_model_keeps_every_attempt(qwen, coco_photos, tiny_clip):
    from capmill.captioner import Captioner

    photos = [str(p) for p in coco_photos[:6]]
    kwargs = {"model": str(qwen), "profile": "inkscope-2b", "decoding": {"max_new_tokens": MAX_NEW}, "batch_size": 6}
    with Captioner(**kwargs) as plain:
        baseline = plain.caption(photos)
    with GatedCaptioner(gate=_policy(tiny_clip), **kwargs) as gated:
        records = gated.caption(photos)
    assert len(records) == len(photos)
    loops = 0
    for base, record in zip(baseline, records, strict=True):
        quality = record.quality
        attempts = quality["attempts"]
        # the first try is exactly the plain run's output; a retry only happens after a failed check
        assert attempts[0]["text"] == base.raw and attempts[0]["change"] == "first try"
        for entry in attempts:
            assert ("repetition_loop" in entry["reasons"]) == is_loop(entry["text"])
            assert 0.0 <= entry["clip_score"] <= 2.5
        assert all(entry["reasons"] for entry in attempts[:-1])  # nothing is retried after it passed
        if attempts[0]["reasons"]:
            loops += 1
            assert len(attempts) > 1
            assert attempts[1]["decoding"] == {
                "max_new_tokens": MAX_NEW,
                "do_sample": True,
                "temperature": 1.0,
                "repetition_penalty": 1.5,
                "seed": 1,
            }
        kept = attempts[quality["attempt"]]
        assert record.raw == kept["text"] and quality["reasons"] == kept["reasons"]
        assert len(kept["reasons"]) == min(len(a["reasons"]) for a in attempts)
        assert quality["passed"] == (not kept["reasons"])
        assert quality["fixed_by"] == (kept["change"] if quality["attempt"] and quality["passed"] else None)
        assert quality["clip_score"] == kept["clip_score"]
        if not quality["passed"]:
            assert any(n.startswith("quality gate: ") for n in record.notes)
    assert loops >= 2  # greedy tiny models loop on these photos, so the retry path ran
    summary = gate_summary(records)
    assert summary["gated"] == 6 and summary["retried"] == loops
    assert summary["passed_first_try"] == 6 - loops
    assert summary["fixed"] + summary["not_fixed"] == loops
    assert summary["retry_attempts"] == sum(len(r.quality["attempts"]) - 1 for r in records)


def test_cli_gate_writes_quality_and_counts_it_in_summary_once(qwen, coco_photos, tmp_path, capsys):
    from capmill.cli.main import main

    gate = tmp_path / "gate.yaml"
    gate.write_text(
        "checks: {truncated: false}\nstop_repetition: false\non_fail: invalid\n"
        "attempts:\n  - {do_sample: true, temperature: 1.0, repetition_penalty: 1.5, seed: 1}\nmax_attempts: 2\n"
    )
    photos = tmp_path / "photos"
    photos.mkdir()
    for p in coco_photos[:4]:
        (photos / p.name).write_bytes(p.read_bytes())
    run_dir = tmp_path / "run"
    args = ["caption", str(photos), "--model", str(qwen), "--profile", "inkscope-2b", "--max-new-tokens", "12"]
    assert main([*args, "--gate", str(gate), "--run-dir", str(run_dir), "-q"]) == 0
    summary = json.loads((run_dir / "summary.json").read_text())
    rows = [json.loads(line) for f in sorted((run_dir / "records").glob("*.jsonl")) for line in f.open()]
    assert len(rows) == 4 and all(r["quality"]["attempts"] for r in rows)
    failed = [r for r in rows if not r["quality"]["passed"]]
    assert summary["gate"]["not_fixed"] == len(failed)
    assert all(r["status"] == "invalid" and r["error"].startswith("quality gate: ") for r in failed)
    assert summary["gate"]["gated"] == 4 and summary["run"]["records"] == 4
    # resumed: nothing is captioned (or gated) twice
    assert main([*args, "--gate", str(gate), "--run-dir", str(run_dir), "-q"]) == 0
    again = json.loads((run_dir / "summary.json").read_text())
    assert again["session"]["skipped_done"] == 4 and again["gate"] == summary["gate"]
    # the gate's policy is part of the run identity: a run without it (or with another policy) is another run
    from capmill.captioner import Captioner

    assert rows[0]["prompt_hash"] != Captioner(model=str(qwen), profile="inkscope-2b").prompt_hash()


def test_a_bad_gate_file_fails_before_any_work(qwen, coco_photos, tmp_path, capsys):
    from capmill.cli.main import main

    gate = tmp_path / "gate.yaml"
    gate.write_text("max_attempts: 0\n")
    rc = main(["caption", str(coco_photos[0]), "--model", str(qwen), "--gate", str(gate), "--run-dir", str(tmp_path)])
    assert rc == 2 and "max_attempts" in capsys.readouterr().err


class _Scripted:
    """Plumbing only: answers each request from a script keyed by (item, attempt) to exercise the retry logic."""

    def __init__(self, script):
        self.script = script
        self.calls: list[list[str]] = []

    def __call__(self, requests):
        self.calls.append([r.item_id for r in requests])
        out = []
        for r in requests:
            attempt = sum(r.item_id in c for c in self.calls) - 1
            out.append(Generation(text=self.script[r.item_id][attempt], completion_tokens=5))
        return out


def test_retries_go_as_one_batch_of_the_failing_items_and_the_best_is_kept():
    script = {
        "good": ["A dog on a beach."],
        "fixed": ["a dog a dog a dog a dog", "A dog on a beach."],
        "never": ["", "law law law law law", "I'm sorry, I can't describe this image."],
    }
    generate = _Scripted(script)
    requests = [Request(item_id=k, messages=[], decoding=Decoding(max_new_tokens=8)) for k in script]
    out = Gate(_policy()).run(requests, generate)
    assert generate.calls == [["good", "fixed", "never"], ["fixed", "never"], ["never"]]
    assert [g.text for g in out] == ["A dog on a beach.", "A dog on a beach.", ""]
    good, fixed, never = (g.quality for g in out)
    assert good["passed"] and len(good["attempts"]) == 1 and good["fixed_by"] is None
    assert fixed["fixed_by"] == "do_sample=True, temperature=1.0, repetition_penalty=1.5, seed=1"
    assert [a["reasons"] for a in never["attempts"]] == [["empty"], ["repetition_loop"], ["refusal"]]
    assert not never["passed"] and never["attempt"] == 0  # ties keep the earliest
