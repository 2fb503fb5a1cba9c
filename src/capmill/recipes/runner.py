"""Run a recipe: each stage an exactly-once sub-run in `RUN_DIR/stages/NAME/`, then the joined records.

Longer than most modules (~350 lines) because stage planning, identity, folder replacement and joining share one
state (the recipe's stage folders); the templates, source and outputs live beside it.

A stage's identity is its own settings (captioner settings, templates, prompt set, constraints) plus the identities
of the stages it reads. Its folder keeps the identity it was made with: the same identity resumes it (nothing done
is redone), a different one sets the old folder aside under `stages/.replaced/` (where it is taken back if the
stage returns to that identity) and starts afresh. So adding a stage runs only it, and changing one reruns it and
the stages that read it. Stages run one after another, one model loaded at a time, or all at once, each stage's
records streaming to the next through its run folder: `side_by_side: auto` (the default) chooses the second when
the models' estimated memory fits in what the devices have free (memory.py), `true`/`false` decide.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from typing import Any

from capmill.data.sources import SOURCES, SourceOptions
from capmill.errors import ConfigError
from capmill.recipes.outputs import Outputs, joined
from capmill.recipes.prompt_sets import variants
from capmill.recipes.spec import Recipe, Stage
from capmill.recipes.stage import StageCaptioner
from capmill.records import stable_hash
from capmill.run.pipeline import PipelineOptions

log = logging.getLogger("capmill.recipes")
SOURCES.register("recipe-stage", "capmill.recipes.source:StageSource")
STREAM_SHARD = 16  # records per stage shard when stages run side by side
FINAL_FORMATS = {"jsonl": ("jsonl", ".jsonl"), "parquet": ("parquet", ".parquet"), "sidecar": ("jsonl", ".jsonl")}


@dataclass
class StagePlan:
    stage: Stage
    captioner: StageCaptioner
    folder: str
    identity_hash: str


@dataclass
class RecipeRunner:
    recipe: Recipe
    inputs: list[str]
    run_dir: str
    fmt: str = "jsonl"
    out_file: str | None = None
    shard_size: int = 1000
    source: SourceOptions = field(default_factory=SourceOptions)
    pipeline: PipelineOptions = field(default_factory=PipelineOptions)
    sidecar: dict[str, Any] = field(default_factory=dict)
    progress: bool | None = None
    workers: int | None = None  # None: 0 for a model on this machine's CPU, else cores - 1 (as `capmill caption`)
    side_by_side: bool | str | None = None  # True, False, "auto"; None: as the recipe says
    runner: str = "local"  # a name in capmill.run.RUNNERS: what runs each stage's sub-run
    runner_options: dict[str, Any] = field(default_factory=dict)  # that runner's knobs (Ray: address, actors)

    def __post_init__(self) -> None:
        if self.fmt not in FINAL_FORMATS:
            raise ConfigError(f"--format {self.fmt}: a recipe writes {', '.join(FINAL_FORMATS)}")
        if not self.inputs:
            raise ConfigError("no INPUT given")

    # ---- planning: everything checked, nothing loaded ----
    def plan(self) -> list[StagePlan]:
        """Each stage's captioner (no weights yet) and identity; ConfigError before any model loads."""
        plans: dict[str, StagePlan] = {}
        metadata = self.recipe.path(self.recipe.metadata) if self.recipe.metadata else None
        if metadata and not os.path.isfile(metadata):
            raise ConfigError(f"recipe, field 'metadata': no such file {metadata!r}")
        for stage in self.recipe.stages:
            captioner = self._captioner(stage)
            reads = {name: plans[name].identity_hash for name in stage.reads()}
            uses_meta = any(v.kind == "meta" for _, t in stage.templates() for v in t.variables)
            exclude: dict[str, Any] = {"batch_size": True, "engine_options": True, "scaffold": True}
            exclude["tagger"] = {"batch_size"} if stage.tagger is not None else True  # unchanged without one
            identity = {
                "stage": stage.model_dump(mode="json", exclude=exclude),
                "captioner": captioner.settings(),
                "reads": reads,
                **({"variants": [v.name for v in variants(stage.prompt_set)]} if stage.prompt_set else {}),
                **({"metadata": _file_hash(metadata)} if uses_meta and metadata else {}),
            }
            wrapped = StageCaptioner(stage, captioner, identity)
            folder = os.path.join(self.run_dir, "stages", stage.name)
            plans[stage.name] = StagePlan(stage, wrapped, folder, wrapped.identity_hash)
        return list(plans.values())

    def _captioner(self, stage: Stage) -> Any:
        from capmill.captioner import Captioner
        from capmill.models.families import get_family
        from capmill.models.resolve import resolve_profile

        where = f"stage {stage.name!r}"
        if stage.tagger is not None:
            from capmill.taggers.captioner import tagger_captioner

            return tagger_captioner(stage.tagger, where)
        try:
            profile = resolve_profile(stage.model or "", stage.profile)
            if stage.system is not None:
                profile = profile.model_copy(update={"system_prompt": stage.system})
            if stage.mode == "text" and "text" not in profile.modes:
                profile = profile.model_copy(update={"modes": (*profile.modes, "text")})
            captioner = Captioner(
                model=stage.model,
                profile=profile,
                engine=stage.engine,
                mode=stage.mode,
                scaffold=self.recipe.path(stage.scaffold) if stage.scaffold else None,
                decoding=stage.decoding or None,
                engine_options=stage.engine_options,
                batch_size=stage.batch_size,
                constrained=stage.constrained,
            )
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from exc
        if captioner.mode == "text" and not get_family(captioner.family_name).supports_text_only:
            raise ConfigError(f"{where}, field 'mode': the {captioner.family_name} family cannot caption text")
        return captioner

    # ---- running ----
    def run(self) -> dict[str, Any]:
        start = time.perf_counter()
        plans = self.plan()
        os.makedirs(self.run_dir, exist_ok=True)
        self._check_runner(self.side_by_side if self.side_by_side is not None else self.recipe.side_by_side)
        choice = self.choose_side_by_side(plans)
        side_by_side = bool(choice["chosen"])
        jobs = []
        for plan in plans:
            self._claim(plan)
            jobs.append(self._job(plan, self._write_plan(plan), side_by_side, last=plan is plans[-1]))
        outputs = {plan.stage.name: Outputs(plan.folder) for plan in plans}
        try:
            summaries = self._side_by_side(plans, jobs) if side_by_side else self._one_by_one(plans, jobs)
            for index in outputs.values():
                index.refresh()
            return self._finish(plans, outputs, summaries, time.perf_counter() - start, choice)
        finally:
            for index in outputs.values():
                index.close()

    def choose_side_by_side(self, plans: list[StagePlan]) -> dict[str, Any]:
        """{chosen, reason, estimate_bytes, available_bytes, ...}: as set, or (auto) from the models' estimated
        memory against what the devices they use have free; said in one log line."""
        given = self.side_by_side if self.side_by_side is not None else self.recipe.side_by_side
        if given != "auto":
            chosen = bool(given)
            choice = {"chosen": chosen, "reason": f"side_by_side: {str(chosen).lower()} given"}
            choice |= {"estimate_bytes": None, "available_bytes": None}
        elif not self._in_process():
            reason = f"--runner {self.runner} runs the stages one at a time"
            choice = {"chosen": False, "reason": reason, "estimate_bytes": None, "available_bytes": None}
        elif sum(not _finished(p) for p in plans) < 2:  # side by side would load models with nothing to do
            left = [p.stage.name for p in plans if not _finished(p)]
            reason = f"stage {left[0]!r} alone has work left" if left else "every stage has finished"
            choice = {"chosen": False, "reason": reason, "estimate_bytes": None, "available_bytes": None}
        else:
            from capmill.recipes.memory import choose, stage_memory

            estimates = [
                p.captioner.inner.memory(p.stage.name)  # a stage that is no language model (a tagger) says its own
                if hasattr(p.captioner.inner, "memory")
                else stage_memory(p.stage.name, p.captioner.inner.model, p.stage.engine, p.stage.engine_options)
                for p in plans
            ]
            choice = choose(estimates).summary()
        way = "side by side" if choice["chosen"] else "one at a time"
        log.info("recipe stages %s: %s", way, choice["reason"])
        return choice

    def _job(self, plan: StagePlan, plan_file: str, side_by_side: bool, last: bool) -> Any:
        from capmill.run.local import CaptionJob

        workers = self.workers
        if workers is None:
            from capmill.cli.caption import default_workers

            workers = default_workers({"engine": plan.stage.engine, "engine_options": plan.stage.engine_options}, None)
        return CaptionJob(
            inputs=[f"recipe-stage:{plan_file}"],
            make_captioner=lambda plan=plan: plan.captioner,
            run_dir=plan.folder,
            fmt="jsonl",
            # side by side, small shards: a later stage sees an earlier one's records as soon as they are committed
            shard_size=min(self.shard_size, STREAM_SHARD) if side_by_side else self.shard_size,
            source=self.source,
            pipeline=_stage_pipeline(self.pipeline, plan.stage, workers, side_by_side),
            progress=False if side_by_side and not last else self.progress,  # one progress display at a time
            runner_options=self.runner_options,
        )

    def _in_process(self) -> bool:
        from capmill.run import RUNNERS

        return bool(getattr(RUNNERS.get(self.runner), "in_process", True))

    def _check_runner(self, side_by_side: bool | str) -> None:
        """The runner exists, and can run the stages the way asked; before any stage folder or model."""
        in_process = self._in_process()  # an unknown runner name fails here
        if side_by_side is True and not in_process:
            raise ConfigError(
                f"--runner {self.runner}: stages side by side share this process (each stage's records stream to "
                f"the next through it), which this runner does not run in; set 'side_by_side: false' in the recipe"
            )

    def _one_by_one(self, plans: list[StagePlan], jobs: list[Any]) -> dict[str, Any]:
        """One stage after another: one model in memory at a time (each is freed when its stage ends), each stage
        a run of the chosen runner; a runner with a `session` (Ray: one cluster) keeps it across the stages."""
        import contextlib

        from capmill.run import RUNNERS

        runner_cls = RUNNERS.get(self.runner)
        session = getattr(runner_cls, "session", None)
        summaries = {}
        with session() if session is not None else contextlib.nullcontext():
            for plan, job in zip(plans, jobs, strict=True):
                summaries[plan.stage.name] = runner_cls(job).run()
                index = Outputs(plan.folder)  # the next stages look its outputs up here
                index.refresh()
                index.close()
        return summaries

    def _side_by_side(self, plans: list[StagePlan], jobs: list[Any]) -> dict[str, Any]:
        """Every stage at once, each with its model loaded: a stage takes an input up as soon as the stages it reads
        have committed theirs (it waits for them, and leaves an input out once they end without it)."""
        import threading

        from capmill.recipes.source import RUNNING
        from capmill.run.local import LocalRunner

        summaries: dict[str, Any] = {}
        errors: list[BaseException] = []
        events = {plan.stage.name: threading.Event() for plan in plans}

        def work(plan: StagePlan, job: Any) -> None:
            try:
                summaries[plan.stage.name] = LocalRunner(job).run()
            except BaseException as exc:  # noqa: BLE001 - raised in the calling thread
                errors.append(exc)
            finally:
                events[plan.stage.name].set()  # the stages reading it stop waiting

        for plan in plans:
            # every model loads here, one after another, before the stages start: loading (and the first import of
            # an engine's libraries) from several threads at once is not safe
            _ = plan.captioner.engine
            RUNNING[os.path.abspath(plan.folder)] = events[plan.stage.name]
        threads = [
            threading.Thread(target=work, args=(p, j), name=f"capmill-stage-{p.stage.name}", daemon=True)
            for p, j in zip(plans, jobs, strict=True)
        ]
        try:
            for thread in threads:
                thread.start()
            for thread in threads:
                while thread.is_alive():
                    thread.join(0.2)
        finally:
            for plan in plans:
                RUNNING.pop(os.path.abspath(plan.folder), None)
        if errors:
            raise errors[0]
        return {p.stage.name: summaries[p.stage.name] for p in plans}

    def _claim(self, plan: StagePlan) -> None:
        """Make the stage folder hold this identity: keep it, set it aside, or take back an earlier one."""
        marker = os.path.join(plan.folder, "stage.json")
        current = _read_identity(marker)
        if current == plan.identity_hash:
            return
        aside = os.path.join(self.run_dir, "stages", ".replaced")
        if current is not None or os.path.isdir(plan.folder):
            os.makedirs(aside, exist_ok=True)
            target = os.path.join(aside, f"{plan.stage.name}-{current or 'unknown'}")
            shutil.rmtree(target, ignore_errors=True)
            os.replace(plan.folder, target)
        earlier = os.path.join(aside, f"{plan.stage.name}-{plan.identity_hash}")
        if os.path.isdir(earlier):
            os.replace(earlier, plan.folder)
            return
        os.makedirs(plan.folder, exist_ok=True)
        from capmill.run.runfolder import write_json_atomic

        write_json_atomic(marker, {"identity": plan.identity_hash, "settings": plan.captioner.identity})

    def _write_plan(self, plan: StagePlan) -> str:
        from capmill.run.runfolder import write_json_atomic

        path = os.path.join(plan.folder, "plan.json")
        reads = {name: os.path.join(self.run_dir, "stages", name) for name in plan.stage.reads()}
        metadata = self.recipe.path(self.recipe.metadata) if self.recipe.metadata else None
        write_json_atomic(
            path,
            {
                "inputs": list(self.inputs),  # as typed: ids are formed from them
                "source_options": {k: getattr(self.source, k) for k in SourceOptions.__dataclass_fields__},
                "stage": plan.stage.model_dump_json(),  # text: the file is written with sorted keys
                "reads": reads,
                "metadata": metadata,
                "index_dir": os.path.join(self.run_dir, "index"),  # the metadata file's on-disk index
            },
        )
        return path

    def _finish(
        self,
        plans: list[StagePlan],
        outputs: dict[str, Outputs],
        summaries: dict[str, Any],
        seconds: float,
        side_by_side: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        from capmill.data.sources import open_sources
        from capmill.run.runfolder import write_json_atomic

        ids = (item.id for item in _unique(open_sources(self.inputs, self.source)))
        counts = write_records(
            joined(ids, outputs, self.recipe.output_stage),
            self.run_dir,
            self.fmt,
            self.shard_size,
            self.sidecar,
            self.out_file,
        )
        manifest = {
            "recipe": self.recipe.model_dump(mode="json", exclude={"base_dir"}),
            "stages": {p.stage.name: p.identity_hash for p in plans},
            "output": self.recipe.output_stage,
            "format": self.fmt,
        }
        write_json_atomic(os.path.join(self.run_dir, "manifest.json"), manifest)
        summary = {
            "run": {"records": sum(counts.values()), "by_status": counts, "stages": manifest["stages"]},
            "stages": summaries,
            "side_by_side": side_by_side,
            "time_s": round(seconds, 3),
        }
        write_json_atomic(os.path.join(self.run_dir, "summary.json"), summary)
        return summary


def write_records(
    records: Any, run_dir: str, fmt: str, shard_size: int, sidecar: dict[str, Any], out_file: str | None
) -> dict[str, int]:
    """Write the joined records as `records/part-NNNNN.ext` shards (rebuilt whole: they derive from the stages),
    plus sidecars and the single `--out` file; returns counts by status."""
    from capmill.data.sinks import SINKS

    sink_name, ext = FINAL_FORMATS[fmt]
    records_dir = os.path.join(run_dir, "records")
    os.makedirs(records_dir, exist_ok=True)
    staging = os.path.join(run_dir, ".records.tmp")
    shutil.rmtree(staging, ignore_errors=True)
    os.makedirs(staging)
    side = SINKS.get("sidecar")("", **sidecar) if fmt == "sidecar" else None
    single = SINKS.get(sink_name)(f"{out_file}.capmill-tmp") if out_file else None
    counts: dict[str, int] = {}
    sink, n, index = None, 0, 0
    for record in records:
        if sink is None or n >= shard_size:
            if sink is not None:
                sink.close()
            sink, n = SINKS.get(sink_name)(os.path.join(staging, f"part-{index:05d}{ext}")), 0
            index += 1
        sink.write(record)
        n += 1
        counts[record.status] = counts.get(record.status, 0) + 1
        if side is not None:
            side.write(record)
        if single is not None:
            single.write(record)
    if sink is not None:
        sink.close()
    for name in os.listdir(records_dir):
        if name.startswith("part-"):
            os.remove(os.path.join(records_dir, name))
    for name in sorted(os.listdir(staging)):
        os.replace(os.path.join(staging, name), os.path.join(records_dir, name))
    os.rmdir(staging)
    if single is not None and out_file:
        single.close()
        os.replace(f"{out_file}.capmill-tmp", out_file)
    return counts


def _stage_pipeline(base: PipelineOptions, stage: Stage, workers: int, side_by_side: bool) -> PipelineOptions:
    import dataclasses

    options = dataclasses.replace(base, mode=None, batch_size=stage.batch_size, workers=workers)
    if side_by_side:  # a batch goes to the engine as soon as it is full, not a window of eight: records flow sooner
        options = dataclasses.replace(options, group_batches=1)
    return options


def _unique(items: Any) -> Any:
    seen: set[str] = set()
    for item in items:
        if item.id not in seen:
            seen.add(item.id)
            yield item


def _finished(plan: StagePlan) -> bool:
    """Whether the stage's folder holds this identity and its last session completed (inputs added since then
    are not seen here: the choice then errs towards one at a time, which is always correct)."""
    import json

    if _read_identity(os.path.join(plan.folder, "stage.json")) != plan.identity_hash:
        return False
    try:
        with open(os.path.join(plan.folder, "summary.json"), encoding="utf-8") as handle:
            return bool(json.load(handle).get("session", {}).get("completed"))
    except (OSError, ValueError, AttributeError):
        return False


def _read_identity(path: str) -> str | None:
    import json

    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle).get("identity")
    except (OSError, ValueError):
        return None


def _file_hash(path: str) -> str:
    import hashlib

    digest = hashlib.sha256()  # read in blocks: a metadata file of millions of rows is never in memory whole
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


__all__ = ["RecipeRunner", "StagePlan", "stable_hash"]
