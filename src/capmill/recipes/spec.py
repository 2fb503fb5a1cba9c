"""A recipe: stages over one record, as data (YAML or Python), checked before any model loads.

Every check names the stage and the field: an unknown template variable, a stage that reads a missing or later
stage, a cycle, a constraint the stage's engine or output cannot enforce.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from capmill.errors import ConfigError
from capmill.recipes.template import Template
from capmill.taggers.wd import TAG_FIELDS, TaggerOptions

STAGE_NAME = r"^[A-Za-z_][A-Za-z0-9_\-]*$"


class Constraints(BaseModel):
    """Vocabulary and form constraints on a free-text stage, enforced by constrained decoding (llguidance)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    prefix: str = ""  # the output starts with this (a trigger word: "ohwx woman, ")
    banned: tuple[str, ...] = ()  # words and phrases that never appear (whole words, any case)
    required: tuple[str, ...] = ()  # words that must appear before the output may end
    tags: tuple[str, ...] | str | None = None  # a comma-separated tag list from this vocabulary (or a file of tags)
    max_tags: int | None = Field(None, ge=1)
    max_words: int | None = Field(None, ge=1)  # at most this many words, ending at a sentence end
    sentence_end: bool = False  # end at a full stop / question / exclamation mark (the token budget too)

    def resolved(self, base: Path) -> Constraints:
        """A copy whose `tags` file (a path, one tag per line, relative to the recipe) is read into a list."""
        if not isinstance(self.tags, str):
            return self
        path = Path(self.tags) if os.path.isabs(self.tags) else base / self.tags
        if not path.is_file():
            raise ConfigError(f"constraints.tags: no such tag file {str(path)!r}")
        lines = path.read_text(encoding="utf-8").splitlines()
        tags = tuple(dict.fromkeys(t.strip() for t in lines if t.strip() and not t.startswith("#")))
        return self.model_copy(update={"tags": tags})

    def grammar(self) -> str:
        from capmill.engines.grammars import text_form_grammar

        tags = self.tags if self.tags is None or not isinstance(self.tags, str) else None
        if isinstance(self.tags, str):
            raise ConfigError("constraints.tags: a tag file must be resolved first (Recipe.load reads it)")
        return text_form_grammar(
            prefix=self.prefix,
            banned=self.banned,
            required=self.required,
            tags=tags,
            max_tags=self.max_tags,
            max_words=self.max_words,
            sentence_end=self.sentence_end,
        )


class Option(BaseModel):
    """One choice of a prompt-set dimension: its text and its weight in a random choice."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    text: str
    weight: float = Field(1.0, ge=0.0)


class PromptSet(BaseModel):
    """Many captions per image: caption styles x lengths x extra options, all of them or a seeded random pick.

    A style's text is a template that may also use `{length}` and `{extra}`; when it does not, the length and
    the extra are appended (separated by a space)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    styles: dict[str, str | Option]
    lengths: dict[str, str | Option] = {}
    extras: dict[str, str | Option] = {}
    choose: Literal["all", "random"] = "all"
    seed: int = 0

    @field_validator("styles")
    @classmethod
    def _some_style(cls, value: dict[str, Any]) -> dict[str, Any]:
        if not value:
            raise ValueError("give at least one style")
        return value


class Stage(BaseModel):
    """One stage: a model, profile and engine, a prompt template (or prompt set), decoding and constraints; or
    an image tagger (`tagger`: a WD-format ONNX tagger and its options, no language model and no prompt)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=STAGE_NAME)
    model: str | None = None
    profile: str | None = None
    engine: str = "transformers"
    engine_options: dict[str, Any] = {}
    mode: Literal["caption", "structured", "text"] | None = None  # text: no image, the prompt is the input text
    prompt: str | None = None  # a template; None: the profile's own prompt
    prompt_set: PromptSet | None = None
    system: str | None = None  # replaces the profile's system prompt
    scaffold: str | None = None  # json-captioner: the file with its system prompt and tools
    decoding: dict[str, Any] = {}
    constrained: bool = False  # structured profiles: hold the output to its tool call
    constraints: Constraints | None = None
    batch_size: int = Field(8, ge=1)
    tagger: TaggerOptions | None = None

    @field_validator("tagger", mode="before")
    @classmethod
    def _tagger_shorthand(cls, value: Any) -> Any:
        return {"model": value} if isinstance(value, str) else value  # `tagger: MODEL`, as `--tagger MODEL`

    def templates(self) -> list[tuple[str, Template]]:
        """(field, parsed template) of every template of this stage."""
        where = f"stage {self.name!r}"
        out = []
        if self.prompt is not None:
            out.append(("prompt", Template.parse(self.prompt, f"{where}, field 'prompt'")))
        if self.prompt_set is not None:
            for name, option in self.prompt_set.styles.items():
                text = option.text if isinstance(option, Option) else option
                field = f"prompt_set.styles.{name}"
                out.append((field, Template.parse(text, f"{where}, field {field!r}", local=("length", "extra"))))
        return out

    def reads(self) -> list[str]:
        """The stages this one reads, in order of first use."""
        names: list[str] = []
        for _, template in self.templates():
            names.extend(n for n in template.stages() if n not in names)
        return names


class Recipe(BaseModel):
    """Stages run in the order listed; each reads the item and the stages before it through its templates."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = ""
    description: str = ""
    stages: tuple[Stage, ...]
    output: str | None = None  # the stage whose output is the record's caption (default: the last)
    metadata: str | None = None  # a JSONL/CSV file of extra columns per item ({meta.COLUMN}), matched by id or name
    # every stage at once, each model loaded, records streaming to the next stage; auto: when the models fit
    side_by_side: bool | Literal["auto"] = "auto"
    base_dir: str = "."  # where relative paths of the recipe (scaffolds, tag files, metadata) are resolved

    @classmethod
    def load(cls, path: str | Path) -> Recipe:
        """Read a YAML (or JSON) recipe file and check it; ConfigError names the file and the problem."""
        import yaml

        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"--recipe {str(path)!r}: no such file")
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from exc
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: a recipe is a mapping with a 'stages' list")
        data.setdefault("base_dir", str(path.parent.resolve()))
        return cls.from_dict(data, where=str(path))

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "recipe") -> Recipe:
        try:
            recipe = cls.model_validate(data)
        except ValidationError as exc:
            first = exc.errors()[0]
            loc = _where(data, first["loc"])
            raise ConfigError(f"{where}: {loc}: {first['msg']}") from exc
        return recipe.checked()

    def checked(self) -> Recipe:
        """Check names, references, cycles and constraints; returns the recipe with tag files read."""
        if not self.stages:
            raise ConfigError("recipe: give at least one stage")
        names = [s.name for s in self.stages]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ConfigError(f"recipe: stage name {dupes[0]!r} is used twice")
        graph = {s.name: s.reads() for s in self.stages}
        _check_cycles(graph)
        position = {n: i for i, n in enumerate(names)}
        base = Path(self.base_dir)
        stages = []
        for stage in self.stages:
            for read in graph[stage.name]:
                field = next(f for f, t in stage.templates() if read in t.stages())
                if read not in position:
                    raise ConfigError(
                        f"stage {stage.name!r}, field {field!r}: reads stage {read!r}, which the recipe does not have "
                        f"(stages: {', '.join(names)})"
                    )
                if position[read] > position[stage.name]:
                    raise ConfigError(
                        f"stage {stage.name!r}, field {field!r}: reads stage {read!r}, which runs after it "
                        "(stages run in the order listed)"
                    )
                if self.stages[position[read]].tagger is not None:
                    _check_tag_fields(stage, read)
            if stage.tagger is not None:
                stage = _checked_tagger(stage, base)
            if stage.mode == "text" and stage.prompt is None and stage.prompt_set is None:
                raise ConfigError(f"stage {stage.name!r}, field 'prompt': a text stage needs a prompt template")
            if stage.prompt is not None and stage.prompt_set is not None:
                raise ConfigError(f"stage {stage.name!r}, field 'prompt_set': give a prompt or a prompt set, not both")
            if stage.constraints is not None:
                _check_constraints(stage)
                stage = stage.model_copy(update={"constraints": stage.constraints.resolved(base)})
                stage.constraints.grammar()  # a malformed setting fails here, naming it
            stages.append(stage)
        if self.output is not None and self.output not in position:
            raise ConfigError(f"recipe, field 'output': no stage {self.output!r} (stages: {', '.join(names)})")
        return self.model_copy(update={"stages": tuple(stages)})

    @property
    def output_stage(self) -> str:
        return self.output or self.stages[-1].name

    def stage(self, name: str) -> Stage:
        return next(s for s in self.stages if s.name == name)

    def path(self, value: str) -> str:
        """A path of the recipe, relative to its file."""
        return value if os.path.isabs(value) else str(Path(self.base_dir) / value)

    def run(self, inputs: list[str] | str, run_dir: str, **options: Any) -> dict[str, Any]:
        """Run the recipe over `inputs` into `run_dir` (resumable); returns the summary. See RecipeRunner."""
        from capmill.recipes.runner import RecipeRunner

        return RecipeRunner(self, [inputs] if isinstance(inputs, str) else list(inputs), run_dir, **options).run()


def _check_constraints(stage: Stage) -> None:
    """Constraints the stage's engine or output cannot enforce fail here, before any model loads."""
    from capmill.engines import ENGINES

    where = f"stage {stage.name!r}, field 'constraints'"
    engine = ENGINES.get(stage.engine)
    if not engine.supports_constrained:
        raise ConfigError(f"{where}: engine {stage.engine!r} cannot constrain decoding")
    if stage.constrained:
        raise ConfigError(f"{where}: 'constrained' already holds the output to its tool call; drop one of them")
    from capmill.models.resolve import resolve_profile

    profile = resolve_profile(stage.model or "", stage.profile)
    if profile.output == "tool_call":
        raise ConfigError(f"{where}: profile {profile.name!r} writes a tool call; text constraints are for free text")
    c = stage.constraints
    if c is not None and c.tags is not None and c.max_words is not None:
        raise ConfigError(f"{where}: 'tags' and 'max_words' are two different forms; choose one")


# the fields a tagger stage may set: everything else is about a language model
TAGGER_STAGE_FIELDS = frozenset({"name", "tagger", "batch_size"})
TAGGER_READ_FIELDS = (*TAG_FIELDS, "caption", "status", "error", "notes", "model", "profile", "engine")


def _checked_tagger(stage: Stage, base: Path) -> Stage:
    """A tagger stage sets only its name, its tagger and a batch size; its model path is relative to the recipe."""
    extra = sorted(stage.model_fields_set - TAGGER_STAGE_FIELDS)
    if extra:
        raise ConfigError(
            f"stage {stage.name!r}, field {extra[0]!r}: a tagger stage has no language model, so no "
            f"{extra[0]}; it takes only {', '.join(sorted(TAGGER_STAGE_FIELDS))} (the tagger's options go under "
            "'tagger')"
        )
    assert stage.tagger is not None
    model = stage.tagger.model
    if not model.strip():
        raise ConfigError(f"stage {stage.name!r}, field 'tagger.model': give a tagger folder or hub id")
    local = Path(model) if os.path.isabs(model) else base / model
    if local.is_dir():
        tagger = stage.tagger.model_copy(update={"model": str(local.resolve())})
        return stage.model_copy(update={"tagger": tagger})
    return stage


def _check_tag_fields(stage: Stage, tagger_stage: str) -> None:
    """`{stages.TAGS.FIELD}` of a tagger stage names one of its fields (it has no structured output)."""
    for field, template in stage.templates():
        for var in template.variables:
            if var.kind != "stage" or var.name != tagger_stage or not var.path:
                continue
            if len(var.path) > 1 or var.path[0] not in TAGGER_READ_FIELDS:
                raise ConfigError(
                    f"stage {stage.name!r}, field {field!r}: {{{var.text}}}: stage {tagger_stage!r} is a tagger; "
                    f"its fields are {', '.join(TAG_FIELDS)} (or {{stages.{tagger_stage}}}: the tags comma-joined)"
                )


def _check_cycles(graph: dict[str, list[str]]) -> None:
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in graph.get(node, []):
            if nxt not in graph:
                continue
            if state.get(nxt) == 1:
                cycle = path[path.index(nxt) :] + [nxt] if nxt in path else [node, nxt]
                raise ConfigError(f"stage {node!r}: stages read each other in a cycle: {' -> '.join(cycle)}")
            if nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for name in graph:
        if name not in state:
            visit(name, [name])


def _where(data: Any, loc: tuple[Any, ...]) -> str:
    """A validation error's location, with stage names instead of list indexes."""
    parts = []
    node = data
    for key in loc:
        if isinstance(key, int) and isinstance(node, list) and key < len(node):
            item = node[key]
            parts.append(f"stage {item.get('name')!r}" if isinstance(item, dict) and "name" in item else f"[{key}]")
            node = item
        else:
            parts.append(f"field {key!r}" if parts else str(key))
            node = node.get(key) if isinstance(node, dict) else None
    return ", ".join(parts)
