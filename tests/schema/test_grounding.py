"""Grounding: each name, attribute and action traces back to the source text, or is reported as not doing so."""

from __future__ import annotations

import json

import pytest

from capmill.schema import GroundingReport, StructuredCaption, ground, parse_tool_call, render_tool_call

from .test_schema_golden import SEED_1, SEED_2

SOURCE_1 = "A long restaurant table with rattan rounded back chairs."
SOURCE_2 = "a long table with a plant on top of it surrounded with wooden chairs"


def caption(subjects=(), actions=(), setting="unknown") -> StructuredCaption:
    return StructuredCaption.model_validate(
        {
            "subjects": [{"name": n, "attributes": list(a)} for n, a in subjects],
            "actions": list(actions),
            "setting": setting,
        }
    )


@pytest.mark.parametrize(("example", "source"), [(SEED_1, SOURCE_1), (SEED_2, SOURCE_2)])
def test_both_seed_examples_ground_fully(example, source):
    report = ground(StructuredCaption.model_validate(example), source)
    assert report.rate == 1.0
    assert report.ungrounded == []
    expected_total = sum(1 + len(s["attributes"]) for s in example["subjects"]) + len(example["actions"])
    assert report.total == report.grounded == expected_total


def test_report_lists_each_item_with_its_kind_and_subject():
    report = ground(StructuredCaption.model_validate(SEED_2), SOURCE_2)
    kinds = [(item.kind, item.text, item.subject) for item in report.items]
    assert kinds == [
        ("name", "table", 0),
        ("attribute", "long", 0),
        ("name", "plant", 1),
        ("name", "chairs", 2),
        ("attribute", "wooden", 2),
        ("action", "plant on top of table", None),
        ("action", "table surrounded with wooden chairs", None),
    ]


def test_hallucinated_subject_attribute_and_action_are_caught():
    cap = caption(
        subjects=[("table", ["long", "red"]), ("dog", []), ("chairs", ["rattan"])],
        actions=["dog sleeping under table"],
    )
    report = ground(cap, SOURCE_1)
    bad = {(item.kind, item.text): item.missing for item in report.ungrounded}
    assert bad == {
        ("attribute", "red"): ("red",),
        ("name", "dog"): ("dog",),
        ("action", "dog sleeping under table"): ("dog", "sleeping", "under"),
    }
    assert report.total == 7 and report.grounded == 4
    assert report.rate == pytest.approx(4 / 7)


def test_one_ungrounded_word_makes_the_item_ungrounded():
    report = ground(caption(subjects=[("wooden restaurant table", [])]), SOURCE_1)
    assert report.rate == 0.0 and report.items[0].missing == ("wooden",)


@pytest.mark.parametrize(
    ("phrase", "source"),
    [
        ("chair", "two chairs by a window"),  # plural
        ("Chairs", "TWO CHAIRS by a window"),  # case folding
        ("man riding horse", "a man rides a horse"),  # inflection
        ("woman sitting on bench", "a woman sits on a bench"),  # doubled consonant
        ("men", "two men and a woman"),  # irregular plural
        ("man", "three men"),
        ("knife", "knives on a board"),
        ("boxes", "boxes of apples"),
        ("puppies", "puppies in a basket"),
        ("sang", "a choir sings"),  # irregular verbs, from the lemmatiser's dictionary
        ("began", "the race begins"),
        ("bought", "people buy fruit"),
        ("spoke", "a man speaks"),
        ("woman singing", "a woman sang"),
        ("person", "people on a street"),
        ("leaf", "leaves on the ground"),
        ("one dog", "a dog and 2 cats"),  # "a" is one
        ("two cats", "a dog and 2 cats"),
        ("dogs", "three dogs"),  # a plural agrees with any number over one
        ("three dogs", "3 dogs"),
        ("a pair of shoes", "a pair of shoes"),
        ("t-shirt", "a man in a t shirt"),  # hyphen / space
        ("t shirt", "a man in a t-shirt"),
        ("tshirt", "a man in a t-shirt"),
        ("skate board", "a boy on a skateboard"),  # compound written apart
        ("skateboard", "a boy on a skate board"),
        ("rounded back", "rattan rounded-back chairs"),
        ("man's hat", "the hat of a man"),  # possessive
        ("two dogs", "2 dogs on a couch"),  # digits and number words
        ("the table", "a table"),  # function words are not required
        ("carried bags", "she carries bags"),
    ],
)
def test_normalisation(phrase, source):
    report = ground(caption(subjects=[(phrase, [])]), source)
    assert report.rate == 1.0, report.items[0].missing


@pytest.mark.parametrize(
    ("phrase", "source"),
    [
        ("cat", "a catalog on a desk"),  # no substring matching
        ("tablet", "a table"),
        ("dog on bed", "a dog under a bed"),  # a changed relation word counts
        ("red car", "a blue car"),
        ("it", "a dog"),  # a phrase of only function words is still checked
        ("cares", "two cars"),  # no suffix guessing: cares is care, never car
        ("cars", "she cares"),
        ("two dogs", "a dog and 2 cats"),  # numbers count
        ("one cat", "a dog and 2 cats"),
        ("three cats", "a dog and 2 cats"),
        ("dogs", "a dog on a couch"),  # plurals count
        ("a dog", "dogs on a couch"),
        ("men", "a man and a woman"),
        ("puppies", "a puppy in a basket"),
    ],
)
def test_negatives(phrase, source):
    assert ground(caption(subjects=[(phrase, [])]), source).rate == 0.0


def test_empty_caption_grounds_vacuously():
    report = ground(caption(), "anything")
    assert (report.total, report.grounded, report.rate) == (0, 0, 1.0)


def test_to_dict_is_json_and_names_the_ungrounded():
    report = ground(caption(subjects=[("table", ["red"])]), SOURCE_1)
    data = json.loads(json.dumps(report.to_dict()))
    assert data == {
        "rate": 0.5,
        "grounded": 1,
        "total": 2,
        "ungrounded": [{"kind": "attribute", "text": "red", "missing": ["red"]}],
    }


def test_parse_attaches_grounding_only_with_a_source_and_a_caption():
    text = render_tool_call(StructuredCaption.model_validate(SEED_1))
    with_source = parse_tool_call(text, source_text=SOURCE_1)
    assert isinstance(with_source.grounding, GroundingReport) and with_source.grounding.rate == 1.0
    assert with_source.to_dict()["grounding"]["rate"] == 1.0
    assert parse_tool_call(text).grounding is None
    assert parse_tool_call("no call here", source_text=SOURCE_1).grounding is None
    off = parse_tool_call(text, source_text="a dog on a beach")
    assert off.status == "ok" and off.grounding.rate == 0.0


def test_a_contradicted_count_is_reported_with_its_number():
    report = ground(caption(subjects=[("two dogs", ["brown"])]), "a brown dog and 2 cats")
    assert report.items[0].missing == ("two dogs",)
    assert report.items[1].grounded


def test_actions_count_explicit_numbers_but_not_verb_forms():
    source = "a man rides a horse past two dogs"
    assert ground(caption(actions=["man rides horse"]), source).rate == 1.0  # "rides" is the verb here
    assert ground(caption(actions=["horse past two dogs"]), source).rate == 1.0
    assert ground(caption(actions=["horse past three dogs"]), source).rate == 0.0


def test_the_lemmatiser_works_offline_from_its_wheel(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import lemminflect

    assert lemminflect.getAllLemmas("sang") == {"VERB": ("sing",)}
