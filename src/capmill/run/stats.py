"""Counters and stage timers of one pipeline session, shared by its threads."""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass, field

# Stages timed; see docs/runs.md. Engine-reported stages (engine_*, prefill) are summed from Generation.timings.
STAGES = (
    "load",  # model load (set by the caller)
    "read",  # fetch + decode in the worker processes (CPU time there, overlapped with the model)
    "preprocess",  # Captioner.prepare: prompt rendering (main process, overlapped with the model)
    "wait",  # the model thread waiting for a batch: the part of reading/preprocessing NOT hidden
    "engine",  # Captioner.generate wall time, of which:
    "engine_preprocess",  # ... the processor turning requests into tensors
    "prefill",  # ... the prompt pass, when the engine reports it
    "generate",  # ... generation (including prefill when the engine does not report it apart)
    "engine_decode",  # ... token ids -> text
    "parse",  # Captioner.finish: parsing and validation (writer thread, overlapped)
    "write",  # sinks, shard commits, ledger (writer thread, overlapped)
)


@dataclass
class Stats:
    started: float = field(default_factory=time.time)
    seen: int = 0  # inputs read from the sources
    skipped_done: int = 0  # already in the ledger: resumed
    duplicate_ids: int = 0  # the same id twice in the inputs: the second is ignored
    duplicates: int = 0  # same content as another input: captioned once, record copied
    written: int = 0
    captioned: int = 0  # records that went through the model this session
    total: int | None = None  # inputs in the sources, when they can be counted cheaply
    status: Counter = field(default_factory=Counter)
    reasons: Counter = field(default_factory=Counter)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    batches: int = 0  # engine calls whose records were handed to the run folder
    phase: str = "starting"  # what the run is doing now: starting, loading model, captioning, finishing
    times: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STAGES, 0.0))
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add_time(self, stage: str, seconds: float) -> None:
        with self.lock:
            self.times[stage] = self.times.get(stage, 0.0) + seconds

    def count_record(self, status: str, reason: str | None) -> None:
        with self.lock:
            self.written += 1
            self.status[status] += 1
            if status == "error":
                self.reasons[reason or "unknown"] += 1

    @property
    def wall(self) -> float:
        return time.time() - self.started

    @property
    def errors(self) -> int:
        return self.status.get("error", 0)
