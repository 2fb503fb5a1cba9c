"""QA utility plumbing with a scripted answerer: prompts (golden), shuffling, parsing, averaging, categories.

The scripted answerer only tests the plumbing around an engine; test_qa_real_engine.py runs a real one.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from capmill.engines.base import Engine
from capmill.errors import ConfigError
from capmill.eval.qa_utility import (
    CANNOT_ANSWER,
    QAItem,
    build_prompt,
    evaluate_qa,
    load_qa,
    parse_choice,
    score_open,
    shuffled_order,
)
from capmill.models.catalog import get_profile
from capmill.records import Generation

from .conftest import QA_FILE

GOLDEN = Path(__file__).parent / "golden"


class ReadingAnswerer(Engine):
    """Answers like a careful reader: picks the option whose words occur in the caption, else "cannot answer"."""

    name = "scripted"

    def __init__(self, mode: str = "read"):
        super().__init__("scripted", get_profile("generic"))
        self.mode = mode
        self.seen: list = []

    def generate(self, requests):
        out = []
        for r in requests:
            text = r.messages[0]["content"]
            self.seen.append(r)
            m = re.search(r"following caption:\s*\nCaption: <Caption Start> (.*?) <Caption End>", text, re.S)
            if m is None:  # open form
                cap = re.search(r"<Caption Start> (.*?) <Caption End>", text).group(1).lower()
                q = text.split("Question: ")[1].split("\n")[0].lower()
                out.append(Generation(text="broccoli" if "broccoli" in cap and "vegetable" in q else "a jump"))
                continue
            cap = m.group(1).lower()
            block = text[m.end() :]
            options = re.findall(r"^\s+- ([A-Z])\) (.+)$", block, re.M)
            pick = next((ltr for ltr, o in options if o.lower().removeprefix("a ") in cap), None)
            pick = pick or next(ltr for ltr, o in options if o == CANNOT_ANSWER)
            if self.mode == "first":
                pick = "A"
            out.append(Generation(text=f"The answer is {pick}." if self.mode != "garbage" else "hmm"))
        return out


def test_mc_prompt_matches_golden():
    item = QAItem("q1", "397133", "What food is being prepared?", "object", ["Pizza", "Sushi", "Salad", "Soup"], 0)
    p = build_prompt(item, "A man is in a kitchen\n making pizzas.", sample=0, seed=0)
    assert p.text == (GOLDEN / "qa_mc_prompt.txt").read_text()
    assert p.order == shuffled_order(item, 0, 0) and p.order[-1] == 4  # "cannot answer" always last


def test_open_prompt_matches_golden():
    item = QAItem("q8", "62554", "Which vegetable is on a plate?", answers=["broccoli"])
    assert build_prompt(item, "Plates of broccoli.").text == (GOLDEN / "qa_open_prompt.txt").read_text()


def test_shuffles_differ_between_samples_and_are_reproducible():
    item = QAItem("q", "1", "?", options=list("abcdef"), correct=0)
    orders = [tuple(shuffled_order(item, k, seed=0)) for k in range(8)]
    assert len(set(orders)) > 4
    assert orders == [tuple(shuffled_order(item, k, seed=0)) for k in range(8)]
    assert orders != [tuple(shuffled_order(item, k, seed=1)) for k in range(8)]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The answer is C.", 2),
        ("the answer is (b)", 1),
        ("Answer: **D**", 3),
        ("B) Kitchen", 1),
        ("C", 2),
        ("I think it is E", 4),
        ("A dog is there, so B", 1),
        ("Kitchen", 1),  # the option text, when only one option is quoted
        ("The answer is Z.", None),
        ("", None),
    ],
)
def test_parse_choice(text, expected):
    assert parse_choice(text, 5, ["Bedroom", "Kitchen", "Garage", "Office", CANNOT_ANSWER]) == expected


def test_open_scoring():
    assert score_open("It is broccoli.", ["broccoli"])
    assert score_open("the Broccoli!", ["broccoli"])
    assert not score_open("broccolini", ["broccoli"])
    assert score_open("a jump", ["trick", "jump"])


def test_load_qa_file_and_errors(tmp_path):
    items = load_qa(QA_FILE)
    assert len(items) == 14
    by = {i.qid: i for i in items}
    assert by["q05"].correct == 1 and by["q06"].correct == 2  # answer given as text and as index
    assert by["q04"].answers == ["jump", "trick", "jumping"] and not by["q04"].is_choice
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"image_id": 1, "question": "?", "options": ["a", "b"], "answer": "Q"}\n')
    with pytest.raises(ConfigError, match=r"bad.jsonl:1: 'answer' must be"):
        load_qa(bad)
    bad.write_text('{"image_id": 1}\n')
    with pytest.raises(ConfigError, match="needs 'image_id' and 'question'"):
        load_qa(bad)


def _captions() -> dict[str, str]:
    return {
        "397133": "A man is in a kitchen making pizza.",
        "349860": "A young man doing a jump with his skateboard.",
        "62554": "Plates of broccoli and noodles on a table.",
        "229358": "A man in a bathroom.",  # does not say what he looks at
    }


def test_accuracy_averaging_and_categories():
    items = [i for i in load_qa(QA_FILE) if i.image_id in _captions() or i.qid == "q12"]
    answerer = ReadingAnswerer()
    res = evaluate_qa(items, {**_captions(), "214753": None}, answerer, samples=3)
    acc = {r["qid"]: r["accuracy"] for r in res.per_question}
    # q01 pizza, q02 kitchen, q03 skateboard: the reader finds them; q10: the caption does not tell -> "cannot"
    assert acc == {"q01": 1.0, "q02": 1.0, "q03": 1.0, "q04": 1.0, "q08": 1.0, "q10": 0.0, "q12": 0.0}
    assert res.missing_captions == 1  # q12's image has no caption in this run
    assert res.accuracy == pytest.approx(5 / 7)
    assert res.per_category["object"] == {"accuracy": 0.75, "questions": 4}
    assert res.per_category["count"] == {"accuracy": 0.0, "questions": 1}
    assert res.cannot_answer_rate == pytest.approx(3 / 18)  # q10's three samples out of 6 questions x 3
    assert len(answerer.seen) == 18 and answerer.seen[0].decoding.temperature == 0.6


def test_position_bias_is_averaged_out_and_garbage_is_unparsed():
    items = [i for i in load_qa(QA_FILE) if i.is_choice][:6]
    caps = {i.image_id: "nothing useful" for i in items}
    always_a = evaluate_qa(items, caps, ReadingAnswerer("first"), samples=8)
    assert 0.0 < always_a.accuracy < 0.6  # "A" is right only when the shuffle put the answer first
    garbage = evaluate_qa(items, caps, ReadingAnswerer("garbage"), samples=2)
    assert garbage.accuracy == 0.0 and garbage.unparsed_rate == 1.0
