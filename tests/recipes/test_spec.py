"""Recipe checks before any model loads: each names the stage and the field; templates; prompt sets."""

from __future__ import annotations

import collections
import subprocess
import sys

import pytest

from capmill.errors import ConfigError
from capmill.recipes import Recipe
from capmill.recipes.prompt_sets import for_item, pick, variants
from capmill.recipes.spec import PromptSet
from capmill.recipes.template import MissingValue, Template, item_context


def recipe(*stages, **extra):
    return Recipe.from_dict({"stages": list(stages), **extra})


def test_unknown_variable_names_stage_and_field():
    with pytest.raises(ConfigError, match=r"stage 'b', field 'prompt': unknown template variable \{filenme\}"):
        recipe({"name": "a"}, {"name": "b", "prompt": "Describe {filenme}"})


def test_missing_stage():
    with pytest.raises(ConfigError, match=r"stage 'b', field 'prompt': reads stage 'nope', which the recipe does not"):
        recipe({"name": "a"}, {"name": "b", "prompt": "{stages.nope}"})


def test_later_stage():
    with pytest.raises(ConfigError, match=r"stage 'a', field 'prompt': reads stage 'b', which runs after it"):
        recipe({"name": "a", "prompt": "x {stages.b}"}, {"name": "b"})


def test_cycle():
    with pytest.raises(ConfigError, match=r"cycle: a -> b -> a"):
        recipe({"name": "a", "prompt": "{stages.b}"}, {"name": "b", "prompt": "{stages.a}"})
    with pytest.raises(ConfigError, match=r"cycle: a -> a"):
        recipe({"name": "a", "prompt": "{stages.a}"})


def test_bad_field_names_the_stage():
    with pytest.raises(ConfigError, match=r"stage 'a', field 'decodng'"):
        recipe({"name": "a", "decodng": {}})
    with pytest.raises(ConfigError, match=r"stage name 'a' is used twice"):
        recipe({"name": "a"}, {"name": "a"})
    with pytest.raises(ConfigError, match=r"stage 'a', field 'prompt': a text stage needs a prompt"):
        recipe({"name": "a", "mode": "text"})


def test_constraint_an_engine_cannot_enforce(monkeypatch):
    from capmill.engines import ENGINES
    from capmill.engines.base import Engine

    class NoGrammar(Engine):  # a registered engine without constrained decoding
        name = "no-grammar"

        def generate(self, requests):
            raise AssertionError("never loaded")

    monkeypatch.setitem(ENGINES._targets, "no-grammar", "<test engine>")  # registered for this test only
    monkeypatch.setitem(ENGINES._loaded, "no-grammar", NoGrammar)
    with pytest.raises(ConfigError, match=r"stage 'a', field 'constraints': engine 'no-grammar' cannot constrain"):
        recipe({"name": "a", "engine": "no-grammar", "constraints": {"prefix": "ohwx, "}})
    with pytest.raises(ConfigError, match=r"stage 'a', field 'constraints': profile 'json-captioner' writes a tool"):
        recipe({"name": "a", "profile": "json-captioner", "constraints": {"banned": ["cat"]}})
    with pytest.raises(ConfigError, match=r"stage 'a', field 'constraints'.*'tags' and 'max_words'"):
        recipe({"name": "a", "constraints": {"tags": ["dog"], "max_words": 5}})
    with pytest.raises(ConfigError, match=r"tags: 'a, b' is not a usable tag"):
        recipe({"name": "a", "constraints": {"tags": ["a, b"]}})


def test_tag_file_is_read_relative_to_the_recipe(tmp_path):
    (tmp_path / "vocab.txt").write_text("# comment\ndog\ncat\n\ndog\n")
    (tmp_path / "r.yaml").write_text("stages:\n  - name: t\n    constraints: {tags: vocab.txt, max_tags: 2}\n")
    loaded = Recipe.load(tmp_path / "r.yaml")
    assert loaded.stages[0].constraints.tags == ("dog", "cat")
    (tmp_path / "bad.yaml").write_text("stages:\n  - name: t\n    constraints: {tags: missing.txt}\n")
    with pytest.raises(ConfigError, match="constraints.tags: no such tag file"):
        Recipe.load(tmp_path / "bad.yaml")


def test_template_render_and_escape():
    t = Template.parse("{{literal}} {filename} in {folder}: {meta.tags}; {stages.obj.subjects}; {stages.cap}", "t")
    assert [v.kind for v in t.variables] == ["item", "item", "meta", "stage", "stage"]
    assert t.stages() == ["obj", "cap"]
    ctx = item_context(
        "photos/cats/a.jpg",
        "/data/photos/cats/a.jpg",
        {"tags": ["cat", "sofa"]},
        {
            "obj": {"status": "ok", "structured": {"subjects": [{"name": "cat", "attributes": ["grey"]}]}},
            "cap": {"status": "repaired", "caption": "A cat."},
        },
    )
    assert t.render(ctx) == "{literal} a.jpg in cats: cat, sofa; grey cat; A cat."
    assert Template.parse("{stages.cap.status}/{stages.obj.subjects}", "t").render(ctx) == "repaired/grey cat"
    failed = dict(ctx, stages={**ctx["stages"], "cap": {"status": "error", "error": "x: truncated image"}})
    with pytest.raises(MissingValue, match="stage 'cap' failed for this item"):
        t.render(failed)
    with pytest.raises(MissingValue, match="no metadata column 'tags'"):
        t.render(dict(ctx, meta={}))
    with pytest.raises(ConfigError, match="unbalanced brace"):
        Template.parse("a } b", "t")


def test_prompt_set_all_and_seeded_pick():
    ps = PromptSet.model_validate(
        {
            "styles": {"desc": "Describe {length}.", "tags": {"text": "Tag it", "weight": 3}},
            "lengths": {"short": "briefly", "long": "at length"},
            "choose": "random",
            "seed": 7,
        }
    )
    names = [v.name for v in variants(ps)]
    assert names == ["desc.short", "desc.long", "tags.short", "tags.long"]
    by_name = {v.name: v.template.source for v in variants(ps)}
    assert by_name["desc.long"] == "Describe at length." and by_name["tags.short"] == "Tag it briefly"
    picks = [pick(ps, f"img{i}").name for i in range(2000)]
    assert picks == [pick(ps, f"img{i}").name for i in range(2000)]  # the same id always picks the same
    styles = collections.Counter(p.split(".")[0] for p in picks)
    assert 0.68 < styles["tags"] / len(picks) < 0.82  # weight 3 : 1
    other_seed = ps.model_copy(update={"seed": 8})
    assert [pick(other_seed, f"img{i}").name for i in range(50)] != picks[:50]
    assert len(for_item(ps, "x")) == 1
    assert len(for_item(ps.model_copy(update={"choose": "all"}), "x")) == 4


def test_ready_recipes_are_valid():
    from pathlib import Path

    folder = Path(__file__).parents[2] / "recipes"
    files = sorted(folder.glob("*.yaml"))
    assert len(files) >= 3
    for path in files:
        loaded = Recipe.load(path)
        assert loaded.stages and loaded.description


def test_cli_error_is_one_line(tmp_path, coco_photos):
    (tmp_path / "r.yaml").write_text("stages:\n  - name: a\n    prompt: 'Describe {nope}'\n")
    proc = subprocess.run(
        [sys.executable, "-m", "capmill", "caption", str(coco_photos[0]), "--recipe", str(tmp_path / "r.yaml")],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    error, what_to_do = proc.stderr.strip().splitlines()  # the error, then the one line every failure ends with
    assert error == (
        "capmill caption: error: stage 'a', field 'prompt': unknown template variable {nope}; known: {filename}, "
        "{stem}, {folder}, {id}, {meta.COLUMN}, {stages.NAME[.FIELD]}"
    )
    assert what_to_do.startswith("fix what is named above")


def test_import_capmill_stays_light():
    code = "import sys, capmill; capmill.Recipe; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_id_variable_and_extras_dimension():
    t = Template.parse("{id}|{stem}", "t")
    assert t.render(item_context("set/a.b.png", "/x/set/a.b.png", {}, {})) == "set/a.b.png|a.b"
    ps = PromptSet.model_validate(
        {"styles": {"s": "Caption{extra}"}, "extras": {"plain": "", "notext": " without text"}, "choose": "all"}
    )
    assert [(v.name, v.template.source) for v in variants(ps)] == [
        ("s.plain", "Caption"),
        ("s.notext", "Caption without text"),
    ]


def test_outputs_are_checked_after_decoding():
    from capmill.recipes.spec import Constraints
    from capmill.recipes.stage import check_text

    c = Constraints(prefix="ohwx, ", banned=("photo",), required=("red",), max_words=6)
    assert check_text("ohwx, a red car.", c) == []
    assert check_text("a Photo of a blue car on a road", c) == [
        "does not start with 'ohwx, '",
        "banned word 'photo' present",
        "required word 'red' missing",
        "9 words, more than 6",
    ]
    tags = Constraints(tags=("dog", "cat"), max_tags=1)
    assert check_text("dog, cow", tags) == ["tags not in the vocabulary: cow", "2 tags, more than 1"]


def test_cli_refuses_per_captioner_flags(tmp_path, coco_photos):
    (tmp_path / "r.yaml").write_text("stages:\n  - name: a\n")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "capmill",
            "caption",
            str(coco_photos[0]),
            "--recipe",
            str(tmp_path / "r.yaml"),
            "--model",
            "m",
            "--max-new-tokens",
            "5",
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert "--recipe sets the model, prompt and decoding per stage; drop --model, --max-new-tokens" in proc.stderr


def test_system_prompt_and_text_mode_per_stage(tiny_model):
    from capmill.recipes.runner import RecipeRunner

    r = recipe(
        {"name": "a", "model": str(tiny_model("qwen2_vl"))},
        {
            "name": "b",
            "model": str(tiny_model("qwen2_vl")),
            "mode": "text",
            "prompt": "{stages.a}",
            "system": "Be brief.",
        },
    )
    plans = RecipeRunner(r, ["x"], "unused").plan()  # nothing loads: no weights, no run folder
    assert plans[1].captioner.inner.system_prompt() == "Be brief." and plans[1].captioner.mode == "text"
    assert plans[0].captioner.inner.system_prompt() is None
    assert plans[1].captioner.identity["reads"] == {"a": plans[0].identity_hash}


def test_sidecar_captions_needs_a_recipe(coco_photos):
    proc = subprocess.run(
        [sys.executable, "-m", "capmill", "caption", str(coco_photos[0]), "--sidecar-captions", "lines"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2 and "--sidecar-captions is for --recipe runs" in proc.stderr
