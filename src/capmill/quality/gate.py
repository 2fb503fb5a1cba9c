"""The quality gate: check every generation, retry the failing items with the policy's next attempt, keep all.

`Gate.run(requests, generate)` wraps one engine batch: it generates, checks each output (empty, repetition
loop, refusal, truncation, invalid structured output, wrong language, image-text score under a threshold),
sends the failing items back through `generate` together with the next attempt's changes (prompt, sampling,
token budget), up to the policy's `max_attempts`, and returns one Generation per request: the first attempt that
passed, or the one with the fewest problems. `Generation.quality` holds the verdict and every attempt with its
reasons; the record carries it as `quality`. The item is still one record: the ledger sees it exactly once.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any

from capmill.quality.degenerate import is_loop, is_refusal, wrong_language
from capmill.quality.policy import Attempt, GatePolicy
from capmill.records import Generation, Request


class Gate:
    """Checks and retries for one captioner; `output` is the profile's ("text" or "tool_call")."""

    def __init__(self, policy: GatePolicy, output: str = "text", scorer: Any = None, device: str | None = None):
        self.policy = policy
        self.output = output
        self.scorer = scorer
        if scorer is None and policy.scorer is not None:
            from capmill.quality.clip_score import resolve_device, shared_scorer

            wanted = device if policy.scorer.device == "same" else policy.scorer.device
            self.scorer = shared_scorer(policy.scorer.model, resolve_device(wanted), policy.scorer.batch_size)
        self.seconds = 0.0  # the gate's own time so far (checks, scores), and the engine's inside it
        self.engine_seconds = 0.0
        self.counter: Any = None
        if policy.budget is not None:
            from capmill.eval.lengths import budget_encoder

            self.counter = budget_encoder(f"{policy.budget.encoder}:{policy.budget.limit}")

    def prepare(self, request: Request) -> Request:
        """The request as the engine should get it: asking to stop repetition loops during decoding."""
        if self.policy.stop_repetition and request.stop_repetition is None:
            return dataclasses.replace(request, stop_repetition={})
        return request

    def run(self, requests: list[Request], generate: Callable[[list[Request]], list[Generation]]) -> list[Generation]:
        start = time.perf_counter()
        engine_time = 0.0

        def timed(batch: list[Request]) -> list[Generation]:
            nonlocal engine_time
            t0 = time.perf_counter()
            try:
                return generate(batch)
            finally:
                engine_time += time.perf_counter() - t0

        requests = [self.prepare(r) for r in requests]
        first = timed(requests)
        history: list[list[dict[str, Any]]] = [[] for _ in requests]
        chosen: list[Generation] = list(first)
        best: list[tuple[int, int]] = [(10**6, 0)] * len(requests)  # (problems, attempt) of the kept generation
        pending = list(range(len(requests)))
        current = {i: (requests[i], first[i]) for i in pending}
        labels: dict[int, str] = {}
        for number in range(len(self.policy.retries()) + 1):
            verdicts = self.check([current[i][0] for i in pending], [current[i][1] for i in pending])
            failing = []
            for i, (reasons, measured) in zip(pending, verdicts, strict=True):
                request, generation = current[i]
                label = labels.get(i, "first try")
                history[i].append(_attempt_entry(number, label, request, generation, reasons, measured))
                if len(reasons) < best[i][0]:
                    best[i] = (len(reasons), number)
                    chosen[i] = generation
                if reasons:
                    failing.append(i)
            if not failing or number == len(self.policy.retries()):
                break
            attempt = self.policy.retries()[number]
            budget = self.policy.budget
            retry = [
                apply_attempt(
                    requests[i],
                    attempt,
                    hint=budget.hint() if budget and "over_budget" in history[i][-1]["reasons"] else None,
                )
                for i in failing
            ]
            for i, request, generation in zip(failing, retry, timed(retry), strict=True):
                current[i] = (request, generation)
                hinted = request.messages != requests[i].messages or request.prompt_text != requests[i].prompt_text
                labels[i] = attempt.label() + (" + word limit" if hinted and attempt.prompt is None else "")
            pending = failing
        spent = time.perf_counter() - start - engine_time  # the gate's own time: checks and scores
        self.seconds += spent
        self.engine_seconds += engine_time
        out = []
        for i, generation in enumerate(chosen):
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
                quality["budget"] = {"encoder": budget.encoder, "limit": budget.limit, "tokens": kept["budget_tokens"]}
            out.append(dataclasses.replace(generation, quality=quality))
        return out

    def check(self, requests: list[Request], generations: list[Generation]) -> list[tuple[list[str], dict]]:
        """(reasons, measurements: clip_score, clip_truncated, budget_tokens) per generation; [] reasons: passed."""
        checks = self.policy.checks
        texts: list[str] = []
        results: list[list[str]] = []
        for request, generation in zip(requests, generations, strict=True):
            reasons: list[str] = []
            text = generation.text or ""
            if generation.error:
                reasons.append("error")
            elif self.output == "tool_call":
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
                found = self.scorer.score([request_image(requests[k]) for k in todo], [texts[k] for k in todo])
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


def apply_attempt(request: Request, attempt: Attempt, hint: str | None = None) -> Request:
    """The request with the attempt's changes: decoding fields, a larger budget, another prompt, and `hint`
    appended to the prompt. Requests without an image or video (text mode: the prompt is the input) keep theirs."""
    budget = attempt.max_new_tokens
    if attempt.max_new_tokens_factor is not None:
        budget = max(budget or 0, int(round(request.decoding.max_new_tokens * attempt.max_new_tokens_factor)))
    decoding = request.decoding.merged(
        do_sample=attempt.do_sample,
        temperature=attempt.temperature,
        top_p=attempt.top_p,
        repetition_penalty=attempt.repetition_penalty,
        max_new_tokens=budget,
        seed=attempt.seed,
    )
    changed = dataclasses.replace(request, decoding=decoding)
    if request_image(request) is None:
        return changed
    prompt = attempt.prompt if attempt.prompt is not None else None
    if hint:
        prompt = (prompt if prompt is not None else prompt_of(request)) + hint
    if prompt is not None:
        changed = with_prompt(changed, prompt)
    return changed


def prompt_of(request: Request) -> str:
    """The text of the request's last user message (or its plain prompt)."""
    if request.prompt_text is not None:
        return request.prompt_text
    for message in reversed(request.messages):
        if message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, str):
                return content
            return " ".join(p.get("text", "") for p in content or [] if isinstance(p, dict) and p.get("type") == "text")
    return ""


def with_prompt(request: Request, prompt: str) -> Request:
    """The request with the text of its last user message (or its plain prompt) replaced by `prompt`."""
    if request.prompt_text is not None:
        return dataclasses.replace(request, prompt_text=prompt)
    messages = [dict(m) for m in request.messages]
    for message in reversed(messages):
        if message.get("role") != "user":
            continue
        content = message.get("content")
        if isinstance(content, str):
            message["content"] = prompt
        else:
            parts = [dict(p) for p in content or [] if not (isinstance(p, dict) and p.get("type") == "text")]
            message["content"] = [*parts, {"type": "text", "text": prompt}]
        break
    return dataclasses.replace(request, messages=messages)


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


def request_image(request: Request) -> Any:
    """The image a request shows the model (a video's middle frame), or None for text."""
    if request.images:
        return request.images[0]
    if request.videos and request.videos[0]:
        return request.videos[0][len(request.videos[0]) // 2]
    return None
