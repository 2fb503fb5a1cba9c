"""The input of one stage: the recipe's inputs with each item's metadata and earlier outputs, prompt rendered.

Registered as the source kind `recipe-stage` (its target is the stage's `plan.json`), so a stage runs through
the ordinary run machinery: an image stage's items keep their image and carry their rendered prompt; a text
stage's items are the rendered prompt itself (no image). An input an earlier stage failed for is left out (the
recipe's record is that stage's error); one a template cannot be filled for (a missing metadata column, a
missing structured field) becomes an error item: the run goes on.
"""

from __future__ import annotations

import dataclasses
import json
import os
import threading
from collections.abc import Iterator
from typing import Any

from capmill.data.sources.base import Source, SourceOptions
from capmill.recipes.metadata import KEY_COLUMNS, ManifestRows, MetadataIndex, SeenIds, read_table
from capmill.recipes.outputs import Outputs
from capmill.recipes.prompt_sets import for_item
from capmill.recipes.spec import Stage
from capmill.recipes.stage import BASE_ID_KEY, PROMPT_KEY, VARIANT_KEY, StageItem
from capmill.recipes.template import MissingValue, Template, item_context
from capmill.records import Item, sha256_hex

# stage folder -> an event set when that stage's run has ended, for stages running side by side (see runner.py)
RUNNING: dict[str, threading.Event] = {}
POLL_S = 0.2


class StageSource(Source):
    """`recipe-stage:PLAN`: the stage's items, in the order of the recipe's inputs (see the module docstring)."""

    name = "recipe-stage"

    def __init__(self, spec: str, options: SourceOptions | None = None):
        super().__init__(spec, options)
        with open(spec, encoding="utf-8") as handle:
            plan = json.load(handle)
        self.inputs: list[str] = plan["inputs"]
        self.source_options = SourceOptions(**plan["source_options"])
        self.stage = Stage.model_validate_json(plan["stage"])
        self.reads = {name: Outputs(path) for name, path in plan["reads"].items()}
        self.running = {name: RUNNING.get(os.path.abspath(path)) for name, path in plan["reads"].items()}
        self.metadata_path = plan.get("metadata")
        self.index_dir = plan.get("index_dir") or os.path.dirname(os.path.abspath(spec))
        self.text = self.stage.mode == "text"
        where = f"stage {self.stage.name!r}"
        self.template = Template.parse(self.stage.prompt, f"{where}, field 'prompt'") if self.stage.prompt else None

    def describe(self) -> dict[str, Any]:
        return {"kind": self.name, "stage": self.stage.name, "inputs": self.inputs}

    def count(self) -> int | None:
        from capmill.data.sources import open_sources

        n = open_sources(self.inputs, self.source_options).count()
        ps = self.stage.prompt_set
        if n is None or ps is None or ps.choose != "all":
            return n
        return n * len(ps.styles) * max(1, len(ps.lengths)) * max(1, len(ps.extras))

    def __iter__(self) -> Iterator[Item]:
        from capmill.data.sources import open_sources

        metadata = MetadataIndex(self.metadata_path, self.index_dir)  # on disk: memory stays flat
        seen = SeenIds()
        try:
            for spec in self.inputs:
                rows = ManifestRows(spec) if os.path.isfile(spec) and _is_manifest(spec) else None
                try:
                    for item in open_sources([spec], self.source_options):
                        if not seen.add(item.id):
                            continue
                        row = rows.get(item.meta.get("row")) if rows is not None else {}
                        yield from self._items(item, row, metadata)
                finally:
                    if rows is not None:
                        rows.close()
        finally:
            metadata.close()
            seen.close()

    def _items(self, item: Item, row: dict[str, Any], metadata: MetadataIndex) -> Iterator[Item]:
        stages = {name: self._output(name, item.id) for name in self.reads}
        if any(out is None or out.get("status") not in ("ok", "repaired") for out in stages.values()):
            # an earlier stage failed for this input (or has not reached it): its record stands for the input, and
            # nothing is recorded here, so a later run takes the input up once the earlier stage has it
            return
        context = item_context(item.id, item.source, {}, stages)
        context["meta"] = {**row, **metadata.lookup(context, item.source)}
        if self.stage.prompt_set is not None:
            where = f"stage {self.stage.name!r}, field 'prompt_set'"
            variants = for_item(self.stage.prompt_set, item.id, where)
            many = self.stage.prompt_set.choose == "all"
            for order, variant in enumerate(variants):
                item_id = f"{item.id}#{variant.name}" if many else item.id
                yield self._one(item, item_id, variant.template, context, {VARIANT_KEY: variant.name, "order": order})
        else:
            yield self._one(item, item.id, self.template, context, {})

    def _output(self, name: str, item_id: str) -> dict[str, Any] | None:
        """An earlier stage's output for this input; side by side, wait until it is committed or the stage ends."""
        outputs, running = self.reads[name], self.running.get(name)
        found = outputs.get(item_id)
        while found is None and running is not None:
            ended = running.wait(POLL_S)
            outputs.refresh()
            found = outputs.get(item_id)
            if ended:
                break
        return found

    def _one(
        self, item: Item, item_id: str, template: Template | None, context: dict[str, Any], extra: dict[str, Any]
    ) -> Item:
        meta = {
            **item.meta,
            BASE_ID_KEY: item.id,
            **{f"recipe_{k}" if k == "order" else k: v for k, v in extra.items()},
        }
        error = item.error
        text = None
        if template is not None and error is None:
            try:
                text = template.render(context)
            except MissingValue as exc:
                error = f"missing input: {exc}"
        if self.text:
            return StageItem(id=item_id, source=item.source, kind="text", text=text, meta=meta, error=error)
        fields = {f.name: getattr(item, f.name) for f in dataclasses.fields(Item)}
        fields.update(id=item_id, meta=meta, error=error)
        salt = ""
        if text is not None:
            meta[PROMPT_KEY] = text
            salt = sha256_hex(text)
        return StageItem(**fields, salt=salt)


def _is_manifest(path: str) -> bool:
    return path.lower().endswith((".jsonl", ".ndjson", ".csv", ".tsv"))


__all__ = ["KEY_COLUMNS", "RUNNING", "StageSource", "read_table"]
