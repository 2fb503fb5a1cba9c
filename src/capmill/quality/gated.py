"""A Captioner with the quality gate (and an image tagger) around its engine, and the gate's counts for
summary.json.

The run pipeline calls `captioner.generate(requests)` and `captioner.finish(item, request, generation)`; this
subclass puts the gate into the first and copies its verdict into the record in the second, so the pipeline,
the ledger and every runner work unchanged (`capmill caption --gate gate.yaml`).
"""

from __future__ import annotations

import dataclasses
import functools
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from capmill.captioner import Captioner
from capmill.errors import ConfigError
from capmill.models.request_builder import RequestBuilder
from capmill.quality.gate import Gate
from capmill.quality.policy import GatePolicy, budget_only_policy, load_policy, parse_budget
from capmill.quality.retry_models import RetryModels, SourceKeepingBuilder, model_attempts
from capmill.records import Generation, Item, Record, Request
from capmill.taggers.wd import TaggerOptions


class GatedCaptioner(Captioner):
    """`Captioner` whose generations pass the gate (checks, image-text score, retries) before they are parsed."""

    def __init__(self, *args: Any, gate: GatePolicy | None = None, tagger: TaggerOptions | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.policy = gate
        self.tagger_options = tagger
        self._gate: Gate | None = None
        self._tagger: Any = None
        self._tagger_files: dict[str, str] | None = None
        self.budget_method: str | None = None
        self.retry_models: RetryModels | None = None
        if gate is not None and gate.budget is not None:
            from capmill.quality.budget_decoding import resolve_method

            self.budget_method = resolve_method(gate.budget, self.engine_name, self.profile.output)
        if model_attempts(gate):  # built and checked now; their weights load when an item first needs them
            self.retry_models = RetryModels(gate, self, kwargs)  # type: ignore[arg-type]

    @property
    def gate(self) -> Gate | None:
        if self._gate is None and self.policy is not None:
            device = self.engine_options.get("device")  # the scorer's "same" device
            self._gate = Gate(
                self.policy,
                output=self.profile.output,
                device=device,
                model=self.model_identity["model"],
                budget_method=self.budget_method or "rewrite",
                models=self.retry_models,
            )
        return self._gate

    def preparer(self) -> RequestBuilder:
        """Requests keep their decoded input when something beside the captioner needs the photo as it is: a retry
        model (its own request), the tagger and the image-text scorer (the photo, not the captioner's resized copy)."""
        builder = super().preparer()
        scorer = self.policy is not None and self.policy.scorer is not None
        keep = self.retry_models is not None or self.tagger_options is not None or scorer
        return SourceKeepingBuilder.of(builder) if keep else builder

    @property
    def tagger(self) -> Any:
        if self._tagger is None and self.tagger_options is not None:
            from capmill.taggers.wd import WDTagger

            self._tagger = WDTagger(self.tagger_options)
        return self._tagger

    def prompt_hash(self, mode: str | None = None) -> str:
        """The gate's policy is part of the run's identity: it changes which captions are kept."""
        from capmill.records import stable_hash

        extra: dict[str, Any] = {}  # only when used, so the identity of runs without them stays what it was
        if self.retry_models is not None:
            extra["retry_models"] = self.retry_models.identity()
        if self.budget_method == "constrain":
            from capmill.quality.budget_decoding import budget_constraint

            extra["budget_constraint"] = budget_constraint(self.policy.budget)  # type: ignore[union-attr]
        return stable_hash(
            {
                "prompt": super().prompt_hash(mode),
                "gate": self.policy.identity() if self.policy else None,
                "tagger": self._tagger_identity(),
                **extra,
            }
        )

    def _tagger_identity(self) -> dict[str, Any] | None:
        """The tagger's options and its files' fingerprint: other weights at the same path are another tagger."""
        if self.tagger_options is None:
            return None
        if self._tagger_files is None:  # read once: the fingerprint reads 3 MiB of the model
            from capmill.taggers.wd import tagger_identity

            self._tagger_files = tagger_identity(self.tagger_options.model)
        return {**self.tagger_options.model_dump(mode="json"), "files": self._tagger_files}

    def generate(self, requests: Sequence[Request]) -> list[Generation]:
        if not requests:
            return []
        gate = self.gate
        generations = gate.run(list(requests), super().generate) if gate else super().generate(requests)
        if self.tagger is not None:
            generations = self._tag(list(requests), generations)
        return generations

    def _tag(self, requests: list[Request], generations: list[Generation]) -> list[Generation]:
        from capmill.quality.requests import photo_of

        todo = [k for k, r in enumerate(requests) if photo_of(r) is not None]
        if not todo:
            return generations
        found = self.tagger.tag([photo_of(requests[k]) for k in todo])
        out = list(generations)
        for k, tags in zip(todo, found, strict=True):
            out[k] = dataclasses.replace(out[k], tags=tags.to_dict())
        return out

    def finish(self, item: Item, request: Request | None, generation: Generation) -> Record:
        quality = generation.quality
        kept = quality["attempt"] - 1 if quality else -1  # the retry that made the kept caption (-1: first try)
        other = self.retry_models.captioners.get(kept) if self.retry_models is not None else None
        if other is not None:
            # the kept caption is another model's: parsed by its profile, and the record names that model
            record = other.finish(item, request, generation)
            record.prompt_hash = self.prompt_hash()  # the run's identity, which includes the retry models
        else:
            record = super().finish(item, request, generation)
        record.tags = generation.tags
        if quality is None:
            return record
        record.quality = quality
        if not quality["passed"]:
            tries = len(quality["attempts"])
            why = ", ".join(quality["reasons"])
            record.notes.append(f"quality gate: {why} after {tries} attempt{'s' if tries > 1 else ''}")
            if self.policy is not None and self.policy.on_fail == "invalid" and record.ok:
                record.status = "invalid"
                record.error = f"quality gate: {why}"
        return record

    def close(self) -> None:
        super().close()
        if self.retry_models is not None:
            self.retry_models.close()


def make_gated_captioner(
    gate: GatePolicy | None, tagger: TaggerOptions | None, kwargs: dict[str, Any]
) -> GatedCaptioner:
    """The factory the CLI hands to the runners (picklable through functools.partial)."""
    return GatedCaptioner(gate=gate, tagger=tagger, **kwargs)


def captioner_maker(
    gate: str | None, tagger: str | None, budget: str | None = None, budget_method: str | None = None
) -> Callable[[dict[str, Any]], GatedCaptioner]:
    """`--gate FILE` (or `--gate` alone: the defaults), `--tagger MODEL|FILE`, `--budget ENCODER:N` and
    `--budget-method` -> the make_captioner the runners call; all are read and checked now, so a bad one fails
    before any work."""
    policy = load_policy(None if gate == "default" else gate) if gate else None
    if budget_method and not budget and not (policy and policy.budget):
        raise ConfigError("--budget-method goes with --budget (or a budget in the gate policy)")
    if budget:
        from capmill.eval.lengths import budget_encoder

        parsed = parse_budget(budget)
        if budget_method:
            parsed = parsed.model_copy(update={"method": budget_method})
        budget_encoder(budget)  # the tokenizer loads now, or the run does not start
        policy = budget_only_policy(parsed) if policy is None else policy.model_copy(update={"budget": parsed})
    elif budget_method and policy is not None and policy.budget is not None:
        policy = policy.model_copy(update={"budget": policy.budget.model_copy(update={"method": budget_method})})
    return functools.partial(make_gated_captioner, policy, load_tagger_options(tagger) if tagger else None)


def load_tagger_options(spec: str) -> TaggerOptions:
    """A tagger folder or hub id (default options), or a YAML file of TaggerOptions."""
    if spec.endswith((".yaml", ".yml")):
        import yaml
        from pydantic import ValidationError

        path = Path(spec)
        if not path.is_file():
            raise ConfigError(f"--tagger {spec}: no such file")
        try:
            return TaggerOptions.model_validate(yaml.safe_load(path.read_text(encoding="utf-8")) or {})
        except (yaml.YAMLError, ValidationError) as exc:
            raise ConfigError(f"--tagger {spec}: {exc}") from exc
    return TaggerOptions(model=spec)


def add_gate_summary(run_dir: str, summary: dict[str, Any], write: bool) -> dict[str, Any]:
    """Put the gate's counts over the whole run folder into `summary` (and its summary.json when `write`)."""
    from capmill.run.runfolder import read_records
    from capmill.run.summary import write_summary

    summary = {**summary, "gate": gate_summary(read_records(run_dir))}
    if write:
        write_summary(str(Path(run_dir) / "summary.json"), summary)
    return summary


def gate_summary(records: Iterable[Record]) -> dict[str, Any]:
    """How many captions the gate passed at once, retried, fixed (and by which attempt) and could not fix."""
    gated = retried = fixed = extra = failed = 0
    fixed_by: Counter[str] = Counter()
    fixed_by_model: Counter[str] = Counter()
    kept_from: Counter[str] = Counter()
    first_reasons: Counter[str] = Counter()
    still: Counter[str] = Counter()
    for record in records:
        quality = record.quality
        if not quality or "attempts" not in quality:
            continue
        gated += 1
        attempts = quality["attempts"]
        extra += len(attempts) - 1
        first_reasons.update(attempts[0]["reasons"])
        if len(attempts) > 1:
            retried += 1
        if quality.get("model"):
            kept_from[quality["model"]] += 1
        if quality.get("fixed_by"):
            fixed += 1
            fixed_by[quality["fixed_by"]] += 1
            if quality.get("model"):
                fixed_by_model[quality["model"]] += 1
        if not quality["passed"]:
            failed += 1
            still.update(quality["reasons"])
    return {
        "gated": gated,
        "passed_first_try": gated - retried,
        "retried": retried,
        "retry_attempts": extra,
        "fixed": fixed,
        "fixed_by": dict(fixed_by.most_common()),
        "fixed_by_model": dict(fixed_by_model.most_common()),
        "kept_captions_by_model": dict(kept_from.most_common()),
        "failed_first_try_by_reason": dict(first_reasons.most_common()),
        "not_fixed": failed,
        "not_fixed_by_reason": dict(still.most_common()),
    }
