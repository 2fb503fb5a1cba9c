"""The QA utility with a real answerer: the transformers engine on a tiny random-weight Qwen2-VL, text only.

Its answers are nonsense, so this asserts behaviour (every prompt reaches the model and is answered, the
caption changes what the model sees, seeded sampling is reproducible), never accuracy.
"""

from __future__ import annotations

import pytest

from capmill.eval.qa_utility import evaluate_qa, load_qa
from capmill.models.catalog import get_profile
from capmill.records import Decoding

from .conftest import QA_FILE


@pytest.fixture(scope="module")
def answerer(tiny_model):
    from capmill.engines import ENGINES

    eng = ENGINES.get("transformers")(str(tiny_model("qwen2_vl")), get_profile("generic"), {"max_batch_size": 8})
    yield eng
    eng.close()


def test_tiny_transformers_answerer_end_to_end(answerer):
    items = load_qa(QA_FILE)[:5]  # four multiple choice, one open
    caps = {i.image_id: "A man is in a kitchen making pizzas." for i in items}
    sampled = Decoding(max_new_tokens=6, do_sample=True, temperature=0.6, top_p=1.0, seed=7)
    res = evaluate_qa(items, caps, answerer, samples=2, decoding=sampled)
    assert res.questions == 5 and res.missing_captions == 0
    responses = [r for q in res.per_question for r in q["responses"]]
    assert len(responses) == 10
    assert all(r["error"] is None and r["response"].strip() for r in responses)
    assert 0.0 <= res.accuracy <= 1.0 and set(res.per_category) == {"object", "scene", "action"}
    again = evaluate_qa(items, caps, answerer, samples=2, decoding=sampled)
    assert [q["responses"] for q in again.per_question] == [q["responses"] for q in res.per_question]
    greedy = Decoding(max_new_tokens=6)
    other = {i.image_id: "Two people ride horses along a rocky beach at sunset." for i in items}
    a = evaluate_qa(items, caps, answerer, samples=1, decoding=greedy)
    b = evaluate_qa(items, other, answerer, samples=1, decoding=greedy)
    assert [q["responses"] for q in a.per_question] != [q["responses"] for q in b.per_question]


def test_cli_qa_with_transformers_answerer(tiny_model, two_runs, tmp_path):
    import json

    from capmill.cli.main import main

    human, _ = two_runs
    out = tmp_path / "qa-report"
    rc = main(
        [
            "eval",
            str(human),
            "--qa",
            str(QA_FILE),
            "--answerer",
            str(tiny_model("qwen2_vl")),
            "--answerer-engine",
            "transformers",
            "--answerer-profile",
            "generic",
            "--qa-samples",
            "1",
            "--qa-temperature",
            "0",
            "--qa-max-tokens",
            "4",
            "--out",
            str(out),
        ]
    )
    assert rc == 0
    qa = json.loads((out / "metrics.json").read_text())["runs"]["human"]["qa"]
    assert qa["questions"] == 14 and qa["samples"] == 1 and qa["missing_captions"] == 0
    assert "QA utility (CapRL / Prism)" in (out / "index.html").read_text()
    if qa["accuracy"] < 1.0:  # random weights: some question goes unanswered, and the worst page lists it
        assert "questions the captions did not answer" in (out / "worst.html").read_text()


def test_cli_qa_with_default_openai_answerer_on_capmill_serve(tiny_model, two_runs, tmp_path):
    """The default answerer engine (OpenAI-compatible HTTP) against a real `capmill serve` on 127.0.0.1."""
    import json
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parents[1] / "serve"))
    from serve_helpers import serve

    from capmill.captioner import Captioner
    from capmill.cli.main import main

    human, _ = two_runs
    cap = Captioner(model=str(tiny_model("qwen2_vl")), profile="generic", decoding={"max_new_tokens": 8})
    try:
        with serve(cap, served_model_names=["answerer"], max_batch=8, max_wait_ms=20) as server:
            out = tmp_path / "http-qa"
            rc = main(["eval", str(human), "--qa", str(QA_FILE), "--answerer", "answerer", "--answerer-url",
                       f"{server.url}/v1", "--qa-samples", "2", "--qa-max-tokens", "4", "--out", str(out)])  # fmt: skip
            assert rc == 0
    finally:
        cap.close()
    data = json.loads((out / "metrics.json").read_text())["runs"]["human"]
    assert data["qa"]["questions"] == 14 and data["qa"]["samples"] == 2
    responses = [r for q in data["qa_questions"] for r in q["responses"]]
    assert len(responses) == 28 and all(r["error"] is None and r["response"] for r in responses)
