"""The quality gate: check every generation, retry the failing items with the policy's next attempt, keep all.

`Gate.run(requests, generate)` wraps one engine batch: it generates, checks each output (empty, repetition
loop, refusal, truncation, invalid structured output, wrong language, image-text score under a threshold),
over a text encoder's token budget), sends the failing items back through `generate` together with the next
attempt's changes (prompt, sampling, token budget), or to another model's captioner when the attempt names one
(capmill.quality.retry_models), up to the policy's `max_attempts`, and returns one Generation per request: the
first attempt that passed, or the one with the fewest problems. `Generation.quality` holds the verdict and every
attempt with its reasons and model; the record carries it as `quality`. The item is still one record: the ledger
sees it exactly once. With the constrain budget method, requests carry the budget's word-limit grammar
(capmill.quality.budget_decoding).
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable
from typing import Any

from capmill.engines.stop_point import NOT_RUN
from capmill.quality.degenerate import is_loop, is_refusal, wrong_language
from capmill.quality.policy import Attempt, GatePolicy
from capmill.quality.requests import apply_attempt, photo_of, request_image
from capmill.records import Generation, Request


class Gate:
    """Checks and retries for one captioner; `output` is the profile's ("text" or "tool_call")."""

    def __init__(
        self,
        policy: GatePolicy,
        output: str = "text",
        scorer: Any = None,
        device: str | None = None,
        *,
        model: str | None = None,
        budget_method: str = "rewrite",
        models: Any = None,
    ):
        self.policy = policy
        self.output = output
        self.scorer = scorer
        self.model = model  # the run's own model, named in every attempt it made
        self.models = models  # the policy's retry models (capmill.quality.retry_models.RetryModels), or None
        if scorer is None and policy.scorer is not None:
            from capmill.quality.clip_score import resolve_device, shared_scorer

            wanted = device if policy.scorer.device == "same" else policy.scorer.device
            self.scorer = shared_scorer(policy.scorer.model, resolve_device(wanted), policy.scorer.batch_size)
        self.seconds = 0.0  # the gate's own time so far (checks, scores), and the engine's inside it
        self.engine_seconds = 0.0
        self.counter: Any = None
        self.budget_method = budget_method  # constrain | rewrite, resolved for the run's captioner
        self.budget_constraint: dict[str, Any] | None = None
        self.strict_constraint: dict[str, Any] | None = None
        if policy.budget is not None:
            from capmill.eval.lengths import budget_encoder
            from capmill.quality.budget_decoding import budget_constraint, strict_budget_constraint

            self.counter = budget_encoder(f"{policy.budget.encoder}:{policy.budget.limit}")
            self.budget_constraint = budget_constraint(policy.budget)
            self.strict_constraint = strict_budget_constraint(policy.budget, self.counter.count(""))

    def prepare(self, request: Request, attempt: int | None = None) -> Request:
        """The request as the engine should get it: asking to stop repetition loops during decoding and, with the
        constrain budget method, holding the caption to the budget's word limit (`attempt`: a model attempt's
        index, whose own engine decides)."""
        if self.policy.stop_repetition and request.stop_repetition is None:
            request = dataclasses.replace(request, stop_repetition={})
        method = self.budget_method if attempt is None or self.models is None else self.models.budget_method(attempt)
        if self.budget_constraint is not None and method == "constrain" and request.constraint is None:
            request = dataclasses.replace(request, constraint=self.budget_constraint)
        return request

    def _model_of(self, attempt: int | None) -> str | None:
        if attempt is not None and self.models is not None and self.models.has(attempt):
            return self.models.name(attempt)
        return self.model

    def run(self, requests: list[Request], generate: Callable[[list[Request]], list[Generation]]) -> list[Generation]:
        start = time.perf_counter()
        engine_time = 0.0

        def timed_call(call: Callable[[list[Request]], list[Generation]], batch: list[Request]) -> list[Generation]:
            nonlocal engine_time
            t0 = time.perf_counter()
            try:
                return call(batch)
            finally:
                engine_time += time.perf_counter() - t0

        def timed(batch: list[Request]) -> list[Generation]:
            return timed_call(generate, batch)

        requests = [self.prepare(r) for r in requests]
        first = timed(requests)
        history: list[list[dict[str, Any]]] = [[] for _ in requests]
        chosen: list[Generation] = list(first)
        best: list[tuple[int, int]] = [(10**6, 0)] * len(requests)  # (problems, attempt) of the kept generation
        # items an engine left for a later run (a stop was asked during the call): neither checked nor retried
        not_run = {i for i, g in enumerate(first) if g.finish_reason == NOT_RUN}
        pending = [i for i in range(len(requests)) if i not in not_run]
        current = {i: (requests[i], first[i]) for i in pending}
        labels: dict[int, str] = {}
        hinted: set[int] = set()  # items whose current attempt carries the budget's word limit in its prompt
        retries = self.policy.retries()
        for number in range(len(retries) + 1):
            index = number - 1 if number and retries[number - 1].model is not None else None  # a model attempt
            output = self.models.output(index) if index is not None and self.models is not None else self.output
            verdicts = self.check([current[i][0] for i in pending], [current[i][1] for i in pending], output)
            failing = []
            for i, (reasons, measured) in zip(pending, verdicts, strict=True):
                request, generation = current[i]
                label = labels.get(i, "first try")
                entry = _attempt_entry(number, label, request, generation, reasons, measured)
                entry["model"] = self._model_of(index)
                if self.budget_constraint is not None:
                    entry["budget_method"] = self._method_of(request, i in hinted)
                history[i].append(entry)
                if len(reasons) < best[i][0]:
                    best[i] = (len(reasons), number)
                    chosen[i] = generation
                if reasons:
                    failing.append(i)
            if not failing or number == len(retries):
                break
            attempt = retries[number]
            retry, ready, hinted = self._retry_requests(number, attempt, failing, requests, history)
            todo = [k for k, i in enumerate(failing) if i not in ready]
            if todo:
                if attempt.model is None:
                    found = timed([retry[k] for k in todo])
                else:
                    found = timed_call(functools.partial(self.models.generate, number), [retry[k] for k in todo])
                for k, generation in zip(todo, found, strict=True):
                    ready[failing[k]] = generation
            for i, request in zip(failing, retry, strict=True):
                if ready[i].finish_reason == NOT_RUN:  # the retry was left for a later run: so is the item
                    not_run.add(i)
                    continue
                current[i] = (request, ready[i])
                labels[i] = attempt.label() + (" + word limit" if i in hinted and attempt.prompt is None else "")
            pending = [i for i in failing if i not in not_run]
            if not pending:
                break
        spent = time.perf_counter() - start - engine_time  # the gate's own time: checks and scores
        self.seconds += spent
        self.engine_seconds += engine_time
        out = []
        for i, generation in enumerate(chosen):
            if i in not_run:
                out.append(Generation(text="", finish_reason=NOT_RUN))
                continue
            attempts = history[i]
            kept = attempts[best[i][1]]
            quality = {
                "passed": not kept["reasons"],
                "reasons": kept["reasons"],
                "attempt": best[i][1],
                "fixed_by": kept["change"] if best[i][1] > 0 and not kept["reasons"] else None,
                "attempts": attempts,
                "gate_seconds": spent / max(len(chosen), 1),  # this item's share of the gate's own time
            }
            if "clip_score" in kept:
                quality["clip_score"] = kept["clip_score"]
                quality["clip_truncated"] = kept["clip_truncated"]
            if "budget_tokens" in kept and self.policy.budget is not None:
                budget = self.policy.budget
                quality["budget"] = {
                    "encoder": budget.encoder,
                    "limit": budget.limit,
                    "tokens": kept["budget_tokens"],
                    "method": kept.get("budget_method"),
                }
            if kept.get("model") is not None:
                quality["model"] = kept["model"]  # the model that wrote the kept caption
            out.append(dataclasses.replace(generation, quality=quality))
        return out

    def _retry_requests(
        self, number: int, attempt: Attempt, failing: list[int], requests: list[Request], history: list[list[dict]]
    ) -> tuple[list[Request], dict[int, Generation], set[int]]:
        """The next attempt's request for each failing item (another model's: rebuilt from the item by that
        model's captioner), the items that failed before reaching an engine, and those given the word limit.
        An item over the budget is rewritten: the word limit goes into its prompt and the budget grammar away."""
        budget = self.policy.budget
        out: list[Request] = []
        ready: dict[int, Generation] = {}
        hinted: set[int] = set()
        for i in failing:
            base = requests[i]
            if attempt.model is not None and self.models is not None:
                from capmill.errors import InputError

                try:
                    base = self.prepare(self.models.request(number, base), number)
                except InputError as exc:  # this model cannot take the input (say, a video)
                    ready[i] = Generation(text="", finish_reason="error", error=str(exc), retryable=False)
            over = budget is not None and "over_budget" in history[i][-1]["reasons"]
            request = apply_attempt(base, attempt, hint=budget.hint() if over and budget else None)
            if "error" in history[i][-1]["reasons"] and history[i][-1].get("budget_method") == "constrain":
                request = dataclasses.replace(request, constraint=None)  # a server that refuses the grammar
            if over:
                if request_image(request) is not None:
                    hinted.add(i)
                if request.constraint is not None and request.constraint == self.budget_constraint:
                    request = dataclasses.replace(request, constraint=None)
                    if number == len(self.policy.retries()) - 1:  # the last retry: a limit it cannot exceed
                        request = dataclasses.replace(request, constraint=self.strict_constraint)
            out.append(request)
        return out, ready, hinted

    def _method_of(self, request: Request, hinted: bool) -> str:
        """How an attempt kept to the budget: constrain (the word-limit grammar), rewrite (the word limit in the
        prompt), both with the character-limit grammar (the last retry), or none (the caption was only counted)."""
        if self.budget_constraint is not None and request.constraint == self.budget_constraint:
            return "constrain"
        if self.strict_constraint is not None and request.constraint == self.strict_constraint:
            return "characters"
        return "rewrite" if hinted else "none"

    def check(
        self, requests: list[Request], generations: list[Generation], output: str | None = None
    ) -> list[tuple[list[str], dict]]:
        """(reasons, measurements: clip_score, clip_truncated, budget_tokens) per generation; [] reasons: passed.
        `output`: the form the generating profile writes ("text" or "tool_call"; default: the run's)."""
        output = output or self.output
        checks = self.policy.checks
        texts: list[str] = []
        results: list[list[str]] = []
        for request, generation in zip(requests, generations, strict=True):
            reasons: list[str] = []
            text = generation.text or ""
            if generation.error:
                reasons.append("error")
            elif output == "tool_call":
                text, valid = _structured_text(text)
                if checks.structured_invalid and not valid:
                    reasons.append("structured_invalid")
            if not generation.error:
                if checks.empty and not text.strip():
                    reasons.append("empty")
                if checks.repetition_loop and is_loop(text):
                    reasons.append("repetition_loop")
                if checks.refusal and is_refusal(text):
                    reasons.append("refusal")
                if checks.truncated and _truncated(request, generation):
                    reasons.append("truncated")
                if checks.language and text.strip():
                    found = wrong_language(text, checks.language)
                    if found:
                        reasons.append("wrong_language")
            texts.append(text)
            results.append(reasons)
        extras: list[dict[str, Any]] = [{} for _ in requests]
        if self.counter is not None:
            for k, text in enumerate(texts):
                if generations[k].error:
                    continue
                tokens = self.counter.count(text)
                extras[k]["budget_tokens"] = tokens
                if tokens > self.counter.limit:
                    results[k].append("over_budget")
        scores: list[Any] = [None] * len(requests)
        if self.scorer is not None:
            todo = [k for k, r in enumerate(requests) if request_image(r) is not None and texts[k].strip()]
            if todo:
                found = self.scorer.score([photo_of(requests[k]) for k in todo], [texts[k] for k in todo])
                for k, score in zip(todo, found, strict=True):
                    scores[k] = score
                    extras[k].update(clip_score=score.clip_score, clip_truncated=score.truncated)
                    if checks.min_clip_score is not None and score.clip_score < checks.min_clip_score:
                        results[k].append("low_score")
        if self.scorer is not None and checks.min_clip_score is not None:
            for k, r in enumerate(requests):  # an image with no text to score fails the threshold too
                if scores[k] is None and request_image(r) is not None and "low_score" not in results[k]:
                    results[k].append("low_score")
        return list(zip(results, extras, strict=True))


def _attempt_entry(
    number: int, label: str, request: Request, generation: Generation, reasons: list[str], measured: dict
) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "attempt": number,
        "change": label,
        "text": generation.text,
        "reasons": list(reasons),
        "finish_reason": generation.finish_reason,
        "completion_tokens": generation.completion_tokens,
        "decoding": request.decoding.model_dump(mode="json", exclude_defaults=True),
    }
    if generation.error:
        entry["error"] = generation.error
    entry.update(measured)
    return entry


def _structured_text(raw: str) -> tuple[str, bool]:
    from capmill.captioner import caption_text
    from capmill.schema import parse_tool_call

    result = parse_tool_call(raw, repair=True)
    if result.caption is None:
        return raw, result.status != "invalid"
    structured = result.caption.model_dump(mode="json")
    return caption_text(structured), result.status != "invalid"


def _truncated(request: Request, generation: Generation) -> bool:
    if generation.finish_reason == "length":
        return True
    return "<tool_call>" in generation.text and "</tool_call>" not in generation.text
