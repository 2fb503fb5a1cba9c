"""Structure statistics: status rates, schema violations, grounding, fields, encoder lengths, degenerate outputs."""

from __future__ import annotations

import pytest

from capmill.eval.lengths import clip_clean, clip_tokenizer, length_encoders, parse_overrides
from capmill.eval.structure import degenerate_kinds, schema_violations, structure_stats

from .conftest import make_record, subset_captions


def _open_clip_reference_tokenizer():
    """open_clip's copy of OpenAI's SimpleTokenizer, loaded from its file alone (the package import pulls timm)."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.find_spec("open_clip")
    path = Path(spec.submodule_search_locations[0]) / "tokenizer.py"
    mod_spec = importlib.util.spec_from_file_location("open_clip_reference_tokenizer", path)
    module = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(module)
    return module.SimpleTokenizer()


def test_clip_counts_equal_open_clip_reference_tokenizer():
    ref = _open_clip_reference_tokenizer()
    texts = [c for caps in subset_captions().values() for c in caps]
    texts += ["Naïve café — “quotes”, ÉMOJI 😀 &amp; <b>html</b>", "word " * 100, ""]
    tok = clip_tokenizer()
    for t in texts:
        assert tok(clip_clean(t))["input_ids"] == [ref.sot_token_id, *ref.encode(t), ref.eot_token_id], t


def test_length_encoders_are_labelled():
    enc = {e.name: e for e in length_encoders()}
    assert enc["clip"].exact and enc["clip"].limit == 77
    assert not enc["t5"].exact and "approx" in enc["t5"].source and enc["t5"].limit == 512
    assert enc["clip"].count("a photo of a cat") == 7  # <start> a photo of a cat <end>
    assert enc["t5"].count("a photo of a cat") == 6  # five pieces + </s>
    assert enc["t5"].count("word " * 600) == 601  # not truncated at the embedder's 128
    assert parse_overrides(["t5=google/flan-t5-xl", "clip=/m/clip:77"]) == {
        "t5": "google/flan-t5-xl",
        "clip": "/m/clip:77",
    }


def test_schema_violations_by_kind():
    good = {
        "subjects": [{"name": "dog", "attributes": ["black"]}],
        "actions": ["dog on grass"],
        "setting": "outdoor",
        "style": None,
        "mood": None,
    }
    assert schema_violations(good) == []
    bad = {
        "subjects": [{"name": ""}] + [{"name": "x", "attributes": ["a"] * 9}] * 8,
        "actions": ["a"] * 9,
        "setting": "space",
        "style": "noir",
        "extra": 1,
    }
    assert schema_violations(bad) == sorted(
        [
            "too_many_subjects",
            "subject_name_length",
            "too_many_attributes",
            "too_many_actions",
            "bad_setting",
            "style_not_null",
            "unknown_field:extra",
        ]
    )
    assert schema_violations("text") == ["not_an_object"]


@pytest.mark.parametrize(
    ("caption", "kinds"),
    [
        ("A man riding a horse on the beach.", []),
        ("A very very big dog.", []),
        ("a cat on a mat a cat on a mat a cat on a mat", ["repetition_loop"]),
        ("The the the the end", ["repetition_loop"]),
        ("A dog. It is brown. A dog sits here. A dog sits here. A dog sits here. Fine.", ["repetition_loop"]),
        ("I'm sorry, but I can't help with identifying people.", ["refusal"]),
        ("As an AI, I cannot see images.", ["refusal"]),
        ("", ["empty"]),
    ],
)
def test_degenerate_detector(caption, kinds):
    assert degenerate_kinds(make_record(1, caption)) == kinds


def test_truncation_signals():
    r = make_record(1, "A man in a kitchen making")
    assert degenerate_kinds(r) == []
    r.tokens = {"completion": 64}  # hit max_new_tokens=64
    assert degenerate_kinds(r) == ["truncated"]
    r2 = make_record(2, None, status="invalid", raw="<tool_call>\n<function=emit_caption_schema>\n<parameter=subj")
    assert "truncated" in degenerate_kinds(r2)
    r3 = make_record(3, "x y z", meta={"finish_reason": "length"})
    assert degenerate_kinds(r3) == ["truncated"]
    r4 = make_record(4, "x y z", notes=["stopped at max_new_tokens"])  # what capmill's Captioner writes
    assert degenerate_kinds(r4) == ["truncated"]


def test_structure_stats_counts(tmp_path):
    encs = length_encoders()
    recs = [
        make_record(
            1,
            "A dog runs on the grass.",
            structured={
                "subjects": [{"name": "dog", "attributes": ["brown"]}],
                "actions": ["dog runs on grass"],
                "setting": "outdoor",
            },
        ),
        make_record(
            2,
            "A cat.",
            status="repaired",
            notes=["too_many_subjects: kept 8 of 9"],
            structured={
                "subjects": [{"name": "cat", "attributes": []}, {"name": "sofa"}],
                "actions": [],
                "setting": "indoor",
            },
        ),
        make_record(3, None, status="invalid", error="no_tool_call: output held no <tool_call>"),
        make_record(4, "word " * 90, mode="text", grounding={"rate": 0.5}),
        make_record(5, "x", mode="text", grounding={"rate": 1.0}),
    ]
    stats, per = structure_stats(recs, encs)
    assert stats["status_counts"] == {"ok": 3, "repaired": 1, "invalid": 1, "error": 0}
    assert stats["parse_success_rate"] == 0.8
    assert stats["reported_problems"] == {"too_many_subjects": 1, "no_tool_call": 1}
    assert stats["schema_violations"] == {}
    f = stats["fields"]
    assert f["subjects_per_caption"]["mean"] == 1.5 and f["attributes_per_subject"]["mean"] == pytest.approx(1 / 3)
    assert f["actions_per_caption"]["mean"] == 0.5 and f["setting_shares"] == {
        "indoor": 0.5,
        "outdoor": 0.5,
        "unknown": 0.0,
    }
    assert stats["grounding"] == {
        "text_records": 2,
        "with_grounding": 2,
        "mean_rate": 0.75,
        "fully_grounded_share": 0.5,
    }
    assert stats["lengths"]["clip"]["over_limit"] == 1 and per["000000000004"]["clip_tokens"] == 92
    assert stats["lengths"]["t5"]["over_limit"] == 0
    assert stats["degenerate_counts"]["repetition_loop"] == 1  # "word word word ..."


@pytest.mark.parametrize(
    ("note", "kind"),
    [
        ("subjects: 9 items, at most 8 allowed; dropped 'x'", "subjects: # items, at most # allowed"),
        ("subjects: 12 items, at most 8 allowed; dropped 'y', 'z'", "subjects: # items, at most # allowed"),
        (
            "parameter 'subjects' written as a JSON string {\"a\": 1}; strings are raw",
            "parameter written as a json string",
        ),
        ("setting 'Outdoors' read as 'outdoor'", "setting read as"),
        ("subjects[2]: dropped unknown key 'k' = 3", "subjects[]: dropped unknown key"),
        ("schema validation failed: subjects.0.name too long", "schema validation failed"),
        ("too_many_subjects: kept 8 of 9", "too_many_subjects"),
    ],
)
def test_parser_notes_group_by_kind(note, kind):
    from capmill.eval.structure import _note_kind

    assert _note_kind(note) == kind
