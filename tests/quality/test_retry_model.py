"""A retry attempt with another model: tiny Qwen2-VL first, tiny BLIP-2 on exactly the items whose caption
failed a real check (a repetition loop: greedy tiny Qwen2-VL loops on some of these photos and not on others),
loaded only when needed, each item once."""

from __future__ import annotations

import json

import pytest

from capmill.errors import ConfigError
from capmill.quality.degenerate import is_loop
from capmill.quality.gated import GatedCaptioner, captioner_maker
from capmill.quality.policy import Attempt, Checks, GatePolicy

MAX_NEW = 6
QWEN_PROFILE, BLIP2_PROFILE = "inkscope-2b", "blip2-lora"


@pytest.fixture(scope="module")
def models(tiny_model):
    return str(tiny_model("qwen2_vl")), str(tiny_model("blip2"))


def _policy(second: str, loops: bool = True) -> GatePolicy:
    return GatePolicy(
        checks=Checks(empty=False, repetition_loop=loops, refusal=False, truncated=False),
        attempts=[Attempt(model=second, profile=BLIP2_PROFILE)],
        max_attempts=2,
        stop_repetition=False,
    )


def _kwargs(model: str, profile: str) -> dict:
    return {"model": model, "profile": profile, "decoding": {"max_new_tokens": MAX_NEW}, "batch_size": 4}


def test_the_other_model_retries_exactly_the_failed_items_with_its_own_caption(models, coco_photos):
    from capmill.captioner import Captioner

    qwen, blip2 = models
    photos = [str(p) for p in coco_photos[:8]]
    # with no check that fails, the retry model never loads
    with GatedCaptioner(gate=_policy(blip2, loops=False), **_kwargs(qwen, QWEN_PROFILE)) as gated:
        scored = gated.caption(photos)
        assert gated.retry_models.captioners[0]._engine is None
    failing = {r.id for r in scored if is_loop(r.raw)}
    assert 0 < len(failing) < len(photos)
    with Captioner(**_kwargs(blip2, BLIP2_PROFILE)) as direct:
        theirs = {r.id: r for p in photos for r in direct.caption([p])}  # the second model on each photo alone

    with GatedCaptioner(gate=_policy(blip2), **_kwargs(qwen, QWEN_PROFILE)) as gated:
        records = gated.caption(photos)
        retry = gated.retry_models.captioners[0]
        assert retry._engine is not None  # loaded once an item reached the attempt
    assert retry._engine is None  # and closed with the run's captioner
    qwen_id = gated.model_identity["model"]
    blip2_id = retry.model_identity["model"]
    retried = set()
    for first, record in zip(scored, records, strict=True):
        attempts = record.quality["attempts"]
        assert attempts[0]["text"] == first.raw and attempts[0]["model"] == qwen_id
        if len(attempts) == 1:
            assert not attempts[0]["reasons"] and record.model == qwen_id and record.profile == QWEN_PROFILE
            continue
        retried.add(record.id)
        assert attempts[0]["reasons"] == ["repetition_loop"]
        second = attempts[1]
        assert second["model"] == blip2_id and second["change"].startswith(f"model={blip2} ({BLIP2_PROFILE})")
        assert second["text"] == theirs[record.id].raw  # that model's own caption of the photo
        kept = attempts[record.quality["attempt"]]
        assert record.quality["model"] == kept["model"] and record.raw == kept["text"]
        if record.quality["attempt"] == 1:  # the record names the model that wrote its caption
            assert record.model == blip2_id and record.profile == BLIP2_PROFILE
            assert record.caption == theirs[record.id].caption and record.quality["fixed_by"] == second["change"]
        else:
            assert record.model == qwen_id and record.profile == QWEN_PROFILE
    assert retried == failing


def test_cli_retry_model_runs_each_item_once_across_a_resume(models, coco_photos, tmp_path):
    from capmill.cli.main import main

    qwen, blip2 = models
    gate = tmp_path / "gate.yaml"
    gate.write_text(
        "checks: {empty: false, refusal: false, truncated: false}\nstop_repetition: false\nmax_attempts: 2\n"
        f"attempts:\n  - {{model: {blip2}, profile: {BLIP2_PROFILE}}}\n"
    )
    photos = tmp_path / "photos"
    photos.mkdir()
    for p in coco_photos[:3]:
        (photos / p.name).write_bytes(p.read_bytes())
    run_dir = tmp_path / "run"
    args = ["caption", str(photos), "--model", qwen, "--profile", QWEN_PROFILE, "--max-new-tokens", str(MAX_NEW)]
    args += ["--gate", str(gate), "--run-dir", str(run_dir), "-q"]
    assert main(args) == 0
    for p in coco_photos[3:5]:  # two more photos: the resumed run captions (and retries) only those
        (photos / p.name).write_bytes(p.read_bytes())
    assert main(args) == 0
    rows = [json.loads(line) for f in sorted((run_dir / "records").glob("*.jsonl")) for line in f.open()]
    assert sorted(r["id"] for r in rows) == sorted(f"photos/{p.name}" for p in coco_photos[:5])  # each item once
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["session"]["skipped_done"] == 3
    looped = [r for r in rows if is_loop(r["quality"]["attempts"][0]["text"])]
    assert 0 < len(looped) < 5
    for row in rows:  # the items that looped, and only those, went to the other model, once
        used = [a["model"] for a in row["quality"]["attempts"]]
        assert used == ([qwen, blip2] if row in looped else [qwen])
    assert summary["gate"]["retried"] == len(looped) == summary["gate"]["retry_attempts"]
    assert sum(summary["gate"]["kept_captions_by_model"].values()) == 5
    assert summary["gate"]["fixed_by_model"].get(blip2, 0) == summary["gate"]["fixed"]
    # the retry model is part of the run's identity: another retry model is another run
    other = gate.read_text().replace(
        f"model: {blip2}, profile: {BLIP2_PROFILE}", f"model: {qwen}, profile: {QWEN_PROFILE}"
    )
    assert other != gate.read_text()
    assert rows[0]["prompt_hash"] == _hash_of(tmp_path, gate.read_text(), qwen)
    assert rows[0]["prompt_hash"] != _hash_of(tmp_path, other, qwen)


def _hash_of(tmp_path, policy_text: str, qwen: str) -> str:
    path = tmp_path / "other.yaml"
    path.write_text(policy_text)
    make = captioner_maker(str(path), None)
    return make(_kwargs(qwen, QWEN_PROFILE)).prompt_hash()


def test_the_retry_model_is_checked_before_any_model_loads(models, tiny_model):
    qwen, blip2 = models
    bad = [
        (Attempt(model=blip2, profile="no-such-profile"), "no-such-profile"),
        (Attempt(model=blip2, engine="vllm"), "cannot run blip2"),
        (Attempt(model=blip2, engine_options={"no_such_option": 1}), "no_such_option"),
        (Attempt(model=blip2, profile=QWEN_PROFILE), "profile"),  # a Qwen profile for a BLIP-2 folder
    ]
    for attempt, said in bad:
        policy = GatePolicy(attempts=[attempt], max_attempts=2)
        with pytest.raises(ConfigError, match=r"attempts\[0\]\.model") as err:
            GatedCaptioner(gate=policy, **_kwargs(qwen, QWEN_PROFILE))
        assert said in str(err.value)
    # two attempts naming the same model share one captioner (one load); nothing has loaded yet
    same = GatePolicy(attempts=[Attempt(model=blip2), Attempt(model=blip2, temperature=0.7)], max_attempts=3)
    gated = GatedCaptioner(gate=same, **_kwargs(qwen, QWEN_PROFILE))
    assert gated.retry_models.captioners[0] is gated.retry_models.captioners[1]
    assert gated._engine is None and gated.retry_models.captioners[0]._engine is None
    with pytest.raises(ConfigError, match="go with a model"):
        GatePolicy(attempts=[Attempt(profile=BLIP2_PROFILE)]).check_config()


def test_cli_a_bad_retry_model_fails_before_any_work(models, coco_photos, tmp_path, capsys):
    from capmill.cli.main import main

    qwen, blip2 = models
    gate = tmp_path / "gate.yaml"
    gate.write_text(f"attempts:\n  - {{model: {blip2}, profile: no-such-profile}}\nmax_attempts: 2\n")
    run_dir = tmp_path / "run"
    args = ["caption", str(coco_photos[0]), "--model", qwen, "--profile", QWEN_PROFILE, "--gate", str(gate)]
    assert main([*args, "--run-dir", str(run_dir), "-q"]) == 2
    err = capsys.readouterr().err
    assert "attempts[0].model" in err and "no-such-profile" in err
    assert not list(run_dir.glob("records/*"))  # nothing was captioned
