"""One engine per device: device lists and batch splitting (pure, no GPU), and two real CPU engines side by side."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from capmill.errors import ConfigError
from capmill.run.devices import captioner_factory, engine_options_for, resolve_devices, split_batch


def test_resolve_devices():
    assert resolve_devices(None, cuda_count=0) == ["cpu"]
    assert resolve_devices("auto", cuda_count=3) == ["cuda:0", "cuda:1", "cuda:2"]
    assert resolve_devices("all", cuda_count=2) == ["cuda:0", "cuda:1"]
    assert resolve_devices("1,0", cuda_count=2) == ["cuda:1", "cuda:0"]
    assert resolve_devices("cuda:0, cuda:3", cuda_count=4) == ["cuda:0", "cuda:3"]
    assert resolve_devices("cpu,cpu") == ["cpu", "cpu"]
    for bad, count in (("all", 0), ("2", 2), ("0,0", 1), ("gpu0", 1), ("0,,1", 2), ("cuda:x", 1)):
        with pytest.raises(ConfigError):
            resolve_devices(bad, cuda_count=count)


def test_split_batch_examples():
    assert split_batch([1, 1, 1, 1], 2) == [[0, 2], [1, 3]]
    assert split_batch([5, 1, 1, 1, 1, 1], 2) == [[0, 4, 5], [1, 2, 3]]  # the small ones go beside the big one
    assert split_batch([1, 2, 3], 4) == [[2], [1], [0], []]
    assert split_batch([], 3) == [[], [], []]
    with pytest.raises(ConfigError):
        split_batch([1], 0)


@given(st.lists(st.integers(0, 10_000), max_size=64), st.integers(1, 8))
def test_split_batch_properties(costs, n):
    shares = split_batch(costs, n)
    assert len(shares) == n
    flat = sorted(i for share in shares for i in share)
    assert flat == list(range(len(costs)))  # every request exactly once
    sizes = [len(s) for s in shares]
    assert max(sizes) - min(sizes) <= 1  # counts balanced
    assert all(share == sorted(share) for share in shares)  # input order kept
    assert split_batch(costs, n) == shares  # deterministic
    loads = [sum(costs[i] for i in share) for share in shares]
    if costs:  # no device carries more than a fair share plus the largest single request
        assert max(loads) <= sum(costs) / n + max(costs)


def test_engine_options_and_conflicts():
    assert engine_options_for({"dtype": "float32"}, "cuda:1") == {"dtype": "float32", "device": "cuda:1"}
    kwargs = {"engine": "transformers", "engine_options": {"device": "cpu"}}
    with pytest.raises(ConfigError, match="not both"):
        captioner_factory(kwargs, "cpu,cpu", lambda kw: kw)
    make, n = captioner_factory({"engine": "transformers", "engine_options": {}}, "cpu", lambda kw: kw)
    assert n == 1 and make()["engine_options"] == {"device": "cpu"}
    make, n = captioner_factory({"engine": "transformers"}, None, lambda kw: kw)
    assert n == 1 and make() == {"engine": "transformers"}


def test_engines_with_a_device_option_take_part():
    """vLLM has a device option (its engine core is pinned to the GPU); a remote server has none."""
    make, n = captioner_factory({"engine": "vllm", "engine_options": {"enforce_eager": True}}, "cpu,cpu", lambda kw: kw)
    assert n == 2
    with pytest.raises(ConfigError, match="engine 'openai' has no device option"):
        captioner_factory({"engine": "openai", "engine_options": {}}, "cpu,cpu", lambda kw: kw)


@pytest.mark.slow
def test_two_cpu_engines_give_the_records_of_one(tiny_model, coco_photos, tmp_path):
    """`--devices cpu,cpu`: two engines, each with its share of every batch; records equal one engine's."""
    from capmill.cli.main import main
    from capmill.run.runfolder import read_records

    model = str(tiny_model("qwen3_5"))
    common = [*map(str, coco_photos[:5]), "--model", model, "--profile", "generic", "--prompt", "Describe."]
    common += ["--max-new-tokens", "6", "--batch-size", "2", "--quiet", "--workers", "0"]

    def records(extra: list[str], name: str) -> list[dict]:
        out = tmp_path / f"{name}.jsonl"
        assert main(["caption", *common, *extra, "--out", str(out)]) == 0
        rows = [r.to_dict() for r in read_records(str(out) + ".capmill")]
        for row in rows:
            row.pop("timings")
        return sorted(rows, key=lambda r: r["id"])

    one = records([], "one")
    two = records(["--devices", "cpu,cpu"], "two")
    assert len(one) == 5 and all(r["status"] == "ok" for r in one)
    assert two == one
    summary = json.loads((tmp_path / "two.jsonl.capmill" / "summary.json").read_text())
    paths = summary["session"]["fast_paths"]  # both devices' engines report; here they agree
    assert set(paths) == {"prefix_cache", "merge_rows", "batch_invariant"} and "devices" not in paths["merge_rows"]
    # The two engines load in parallel threads; transformers' load-time no-op for tie_weights must not outlive them
    # (it did, and every later load in the process left tied weights such as BLIP-2's lm_head on the meta device).
    from transformers import PreTrainedModel

    assert PreTrainedModel.tie_weights.__name__ == "tie_weights"
