"""Constrained decoding (llguidance) on the transformers engine.

Random-weight models write garbage, so an output that always parses and validates under a constraint,
over many images, seeds and budgets, is a real test: without the constraint these outputs do not parse.
"""

from __future__ import annotations

import json
import re
import unicodedata

import pytest

from capmill.engines.grammars import compact_schema, grammar_for, tool_call_grammar
from capmill.errors import ConfigError
from capmill.schema import CAPTION_JSON_SCHEMA, EMIT_CAPTION_TOOL, StructuredCaption, parse_tool_call
from capmill.schema.render import render_tool_call

torch = pytest.importorskip("torch")
llguidance = pytest.importorskip("llguidance")

SCAFFOLD = "tests/models/data/scaffold_standin.jsonl"
# A schema with every kind of bound a constraint must keep: integer range, string lengths, item counts, enum.
BOUNDED = {
    "type": "object",
    "properties": {
        "count": {"type": "integer", "minimum": 2, "maximum": 9},
        "label": {"type": "string", "minLength": 3, "maxLength": 12},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 8}, "minItems": 1, "maxItems": 3},
        "kind": {"enum": ["cat", "dog"]},
    },
    "required": ["count", "label", "tags", "kind"],
}
# A tool with a raw-string and an integer parameter, to cover the non-JSON values of the Qwen call shape.
TAG_TOOL = {
    "type": "function",
    "function": {
        "name": "tag_image",
        "parameters": {
            "type": "object",
            "properties": {
                "title": {"type": "string", "maxLength": 20},
                "stars": {"type": "integer", "minimum": 1, "maximum": 5},
                "note": {"type": "null"},
            },
        },
    },
}


def _no_controls(value) -> bool:
    """No C0/C1 control character, DEL or Unicode line separator in any string inside ``value``."""
    text = json.dumps(value, ensure_ascii=False)
    return not any(unicodedata.category(c) == "Cc" or c in "\u2028\u2029" for c in text)


def _check_bounded(text: str) -> dict:
    value = json.loads(text)
    assert set(value) == {"count", "label", "tags", "kind"}, text
    assert isinstance(value["count"], int) and 2 <= value["count"] <= 9, text
    assert 3 <= len(value["label"]) <= 12, text
    assert 1 <= len(value["tags"]) <= 3 and all(len(t) <= 8 for t in value["tags"]), text
    assert value["kind"] in ("cat", "dog"), text
    assert _no_controls(value), text
    return value


def _parse_tag_call(text: str) -> dict:
    m = re.fullmatch(
        r"<tool_call>\n<function=tag_image>\n<parameter=title>\n(.+)\n</parameter>\n"
        r"<parameter=stars>\n(\d+)\n</parameter>\n</function>\n</tool_call>",
        text,
    )
    assert m, text
    title, stars = m.group(1), int(m.group(2))
    assert 1 <= len(title) <= 20 and title == title.strip() and _no_controls(title), text
    assert 1 <= stars <= 5, text
    return {"title": title, "stars": stars}


def _check_caption_call(text: str) -> StructuredCaption:
    result = parse_tool_call(text)
    assert result.status == "ok", (result.errors, text)
    assert _no_controls(result.caption.model_dump()), text
    return result.caption


# ---------------------------------------------------------------- grammars, no model


@pytest.fixture(scope="module")
def qwen_tok():
    from capmill.testing.vocab import QWEN3_5_SPECIALS, qwen_tokenizer

    return qwen_tokenizer("qwen3_5", QWEN3_5_SPECIALS, 4096)


@pytest.fixture(scope="module")
def ll(qwen_tok):
    from capmill.engines.constrained import _ll_tokenizer

    return _ll_tokenizer(qwen_tok, None)


def _accepts(ll, grammar: str, text: str) -> bool:
    m = llguidance.LLMatcher(ll.ll, grammar, log_level=0)
    tokens = ll.ll.tokenize_str(text)
    return m.try_consume_tokens(tokens) == len(tokens) and m.is_accepting()


def test_tool_call_grammar_accepts_what_the_chat_template_writes(ll):
    grammar = grammar_for({"tool_call": EMIT_CAPTION_TOOL}, ll.added)
    caption = StructuredCaption.model_validate(
        {
            "subjects": [{"name": "restaurant table", "attributes": ["long"]}, {"name": "chairs", "attributes": []}],
            "actions": ["chairs around table"],
            "setting": "indoor",
        }
    )
    text = render_tool_call(caption)
    assert _accepts(ll, grammar, text), text
    assert parse_tool_call(text).caption == caption


@pytest.mark.parametrize(
    "bad",
    [
        "<parameter=setting>\nkitchen\n</parameter>\n",  # not in the enum
        "<parameter=setting>\n indoor\n</parameter>\n",  # stray blank
        '<parameter=subjects>\n[{"name": ""}]\n</parameter>\n',  # name too short
        '<parameter=subjects>\n[{"name": "' + "x" * 65 + '"}]\n</parameter>\n',  # name too long
        '<parameter=subjects>\n[{"name": "a\\nb"}]\n</parameter>\n',  # escaped control character
        '<parameter=subjects>\n[{"name": "a\u0085b"}]\n</parameter>\n',  # C1 control (NEL)
        '<parameter=subjects>\n[{"name": "a", "colour": "red"}]\n</parameter>\n',  # unknown key
        '<parameter=subjects>\n[{"name":"a"}]\n</parameter>\n',  # not the template's one-line layout
        "<parameter=style>\nbold\n</parameter>\n",  # style is const null
    ],
)
def test_tool_call_grammar_refuses_what_the_schema_refuses(ll, bad):
    grammar = grammar_for({"tool_call": EMIT_CAPTION_TOOL}, ll.added)
    good = {
        "subjects": '<parameter=subjects>\n[{"name": "a"}]\n</parameter>\n',
        "actions": "<parameter=actions>\n[]\n</parameter>\n",
        "setting": "<parameter=setting>\nindoor\n</parameter>\n",
    }
    key = re.match(r"<parameter=(\w+)>", bad).group(1)
    parts = dict(good)
    if key in parts:
        parts[key] = bad
    body = "".join(parts.values()) + ("" if key in good else bad)
    text = f"<tool_call>\n<function=emit_caption_schema>\n{body}</function>\n</tool_call>"
    assert not _accepts(ll, grammar, text)
    assert _accepts(ll, grammar, text.replace(bad, good.get(key, "")))


def test_json_schema_grammar_bounds(ll):
    grammar = grammar_for({"json_schema": BOUNDED}, ll.added)
    ok = {"count": 3, "label": "abc", "tags": ["x"], "kind": "cat"}
    assert _accepts(ll, grammar, json.dumps(ok))
    for change in ({"count": 10}, {"count": 1}, {"label": "ab"}, {"label": "a" * 13}, {"tags": []}, {"kind": "cow"}):
        assert not _accepts(ll, grammar, json.dumps({**ok, **change})), change
    assert not _accepts(ll, grammar, json.dumps({**ok, "extra": 1}))
    assert not _accepts(ll, grammar, json.dumps({**ok, "label": "a\tbc"}))
    assert not _accepts(ll, grammar, json.dumps(ok, indent=1))


def test_malformed_constraints_are_config_errors(ll):
    for bad in ({}, {"json_schema": 3}, {"regexp": "a"}, {"grammar": ""}, {"tool_call": {"parameters": {}}}):
        with pytest.raises(ConfigError):
            grammar_for(bad, ll.added)
    with pytest.raises(ConfigError):
        tool_call_grammar({"name": "bad name!", "parameters": {}})
    assert compact_schema(CAPTION_JSON_SCHEMA)["properties"]["subjects"]["type"] == "array"
    assert "x-guidance" not in CAPTION_JSON_SCHEMA  # the caller's schema is not changed


# ---------------------------------------------------------------- the processor on random logits


def _random_walk(tok, constraints, max_new, seed, vocab=None):
    """Greedy decoding of a fixed random bigram "model" through the processor; returns the new token rows."""
    from capmill.engines.constrained import logits_processors

    vocab = vocab or len(tok) + 31
    g = torch.Generator().manual_seed(seed)
    emb, out = torch.randn(vocab, 32, generator=g), torch.randn(vocab, 32, generator=g)
    proc = logits_processors(tok, constraints, max_new_tokens=max_new)
    rows = len(constraints)
    ids = torch.full((rows, 6), tok.pad_token_id)
    ids[:, 1 + seed % 3 :] = torch.randint(0, 4000, (rows, 5 - seed % 3), generator=g)  # left padded prompts
    raw = []
    for _ in range(max_new):
        scores = (emb[ids[:, -1]] + emb[ids[:, -2]]) @ out.T
        scores[:, len(tok) - 40 :] = 0.0  # specials (eos included) never win unless the grammar demands them
        raw.append(scores.clone())
        scores = proc(ids, scores)
        ids = torch.cat([ids, scores.argmax(-1, keepdim=True)], dim=1)
    return ids[:, 6:], proc, raw


@pytest.mark.parametrize("max_new", [90, 150, 400])
def test_random_logits_always_give_valid_outputs(qwen_tok, max_new):
    constraints = [{"tool_call": EMIT_CAPTION_TOOL}, {"json_schema": CAPTION_JSON_SCHEMA}, {"json_schema": BOUNDED}]
    constraints = constraints * 2 + [{"tool_call": TAG_TOOL}, None]
    wrapped = 0
    for seed in range(5):
        new, proc, _ = _random_walk(qwen_tok, constraints, max_new, seed)
        assert proc.errors == [None] * len(constraints)
        wrapped += sum(proc.wrapped)
        for row, constraint in zip(new, constraints, strict=True):
            text = qwen_tok.decode(row, skip_special_tokens=True)
            if constraint is None:
                continue
            if constraint.get("tool_call") is EMIT_CAPTION_TOOL:
                _check_caption_call(text)
            elif constraint.get("tool_call") is TAG_TOOL:
                _parse_tag_call(text)
            elif constraint["json_schema"] is BOUNDED:
                _check_bounded(text)
            else:
                value = json.loads(text)
                StructuredCaption.model_validate(value)
                assert _no_controls(value)
    if max_new <= 150:
        assert wrapped, "the budget never ran short: the closing path went untested"


def test_unconstrained_rows_are_untouched(qwen_tok):
    constraints = [None, {"tool_call": EMIT_CAPTION_TOOL}, None]
    new, _, _ = _random_walk(qwen_tok, constraints, 40, seed=1)
    free, _, _ = _random_walk(qwen_tok, [None, None, None], 40, seed=1)
    assert torch.equal(new[0], free[0]) and torch.equal(new[2], free[2])
    assert not torch.equal(new[1], free[1])


def test_finished_rows_stay_finished(qwen_tok):
    """After the grammar ends, only end-of-sequence tokens are allowed, whatever the model prefers."""
    new, proc, _ = _random_walk(qwen_tok, [{"json_schema": {"enum": ["yes", "no"]}}], 30, seed=2)
    row = new[0].tolist()
    text = qwen_tok.decode(row, skip_special_tokens=True)
    assert text in ('"yes"', '"no"')
    end = next(k for k, t in enumerate(row) if t in proc.tok.eos_set)
    assert all(t in proc.tok.eos_set for t in row[end:])


def test_batch_size_mismatch_is_refused(qwen_tok):
    from capmill.engines.constrained import logits_processors

    proc = logits_processors(qwen_tok, [{"json_schema": {"type": "integer"}}])
    with pytest.raises(ConfigError, match="beam search"):
        proc(torch.zeros((2, 3), dtype=torch.long), torch.zeros((2, len(qwen_tok))))


# ---------------------------------------------------------------- a real tiny Qwen3.5 through the engine


@pytest.fixture(scope="module")
def captioner(tiny_model):
    from capmill.captioner import Captioner

    path = tiny_model("qwen3_5")
    return Captioner(
        model=str(path),
        profile="json-captioner",
        scaffold=SCAFFOLD,
        decoding={"max_new_tokens": 140, "do_sample": True, "temperature": 2.5},
        engine_options={"threads": 1},
    )


def _requests(captioner, photos, constraint):
    requests = [captioner.prepare(captioner.to_item(str(p))) for p in photos]
    for r in requests:
        r.constraint = constraint
    return requests


@pytest.mark.slow
def test_tiny_qwen3_5_constrained_outputs_always_parse(captioner, coco_photos):
    """Sampling at a high temperature from a random model: every output parses; unconstrained ones do not."""
    from capmill.records import Decoding

    photos = coco_photos[:4]
    seen, free_ok = set(), 0
    for seed in (1, 2, 3):
        decoding = captioner.decoding.merged(seed=seed)
        tool = _requests(captioner, photos, {"tool_call": EMIT_CAPTION_TOOL})
        bounded = _requests(captioner, photos[:2], {"json_schema": BOUNDED})
        for k, r in enumerate(tool + bounded):  # each row samples from its own seed's generator
            r.decoding = decoding.merged(seed=seed * 100 + k)
        gens = captioner.generate(tool + bounded)
        for g in gens[: len(tool)]:
            assert g.error is None
            seen.add(json.dumps(_check_caption_call(g.text).model_dump(), sort_keys=True))
        for g in gens[len(tool) :]:
            _check_bounded(g.text)
    assert len(seen) >= 3, "the outputs hardly vary: the test would not catch much"
    free = _requests(captioner, photos[:2], None)
    for k, r in enumerate(free):
        r.decoding = Decoding(**{**captioner.decoding.model_dump(), "seed": 1 + k, "max_new_tokens": 40})
    for g in captioner.generate(free):
        free_ok += parse_tool_call(g.text).status == "ok"
    assert free_ok == 0  # the same model unconstrained writes no valid call


@pytest.mark.slow
def test_tiny_qwen3_5_unconstrained_rows_unchanged_in_a_mixed_batch(captioner, coco_photos):
    """Greedy: a row without a constraint comes out exactly as in a batch where nothing is constrained."""
    from capmill.records import Decoding

    greedy = Decoding(max_new_tokens=24)
    plain = _requests(captioner, coco_photos[:3], None)
    mixed = _requests(captioner, coco_photos[:3], None)
    mixed[1].constraint = {"tool_call": EMIT_CAPTION_TOOL}
    for r in plain + mixed:
        r.decoding = greedy
    a, b = captioner.generate(plain), captioner.generate(mixed)
    assert a[0].text == b[0].text and a[2].text == b[2].text
    assert b[1].text.startswith("<tool_call>\n<function=emit_caption_schema>\n<parameter=subjects>\n[")
    assert a[1].text != b[1].text


# ---------------------------------------------------------------- --constrained through the Captioner and the CLI


def test_constrained_needs_a_structured_profile(tiny_model):
    from capmill.captioner import Captioner

    with pytest.raises(ConfigError, match="free text"):
        Captioner(model=str(tiny_model("qwen3_5")), profile="generic", prompt="Describe.", constrained=True)


@pytest.mark.slow
def test_cli_constrained_run_gives_only_valid_records(tiny_model, coco_photos, tmp_path):
    from capmill.captioner import Captioner
    from capmill.cli.main import main
    from capmill.run.runfolder import read_records

    model = str(tiny_model("qwen3_5"))
    out = tmp_path / "captions.jsonl"
    args = [*map(str, coco_photos[:4]), "--model", model, "--profile", "json-captioner", "--scaffold", SCAFFOLD]
    args += ["--constrained", "--sample", "--temperature", "2.5", "--seed", "3", "--max-new-tokens", "120"]
    assert main(["caption", *args, "--out", str(out), "--quiet", "--workers", "1"]) == 0
    records = list(read_records(str(out) + ".capmill"))
    assert len(records) == 4
    assert all(r.status == "ok" and r.structured is not None for r in records), [r.error for r in records]
    plain = Captioner(model=model, profile="json-captioner", scaffold=SCAFFOLD)
    assert records[0].prompt_hash != plain.prompt_hash()  # a constrained run never resumes an unconstrained one
