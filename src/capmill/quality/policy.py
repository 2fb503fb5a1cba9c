"""The gate's policy: which checks fail a caption, and what each retry changes (`--gate gate.yaml`).

```yaml
checks: {empty: true, repetition_loop: true, refusal: true, truncated: true, structured_invalid: true,
         language: en, min_clip_score: 0.6}
scorer: {model: openai/clip-vit-base-patch32, device: cpu, batch_size: 32}
attempts:            # retries in order, each a change to the item's request
  - {do_sample: true, temperature: 0.7, repetition_penalty: 1.15, seed: 1}
  - {prompt: "Describe this photo in two sentences.", max_new_tokens_factor: 2}
  - {model: internlm/CapRL-3B, profile: caprl-3b}   # another model, loaded only when an item needs it
max_attempts: 3      # the first try included
on_fail: keep        # keep | invalid: what a caption that fails every attempt becomes
stop_repetition: true
```
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from capmill.errors import ConfigError

REASONS = (
    "error",
    "empty",
    "repetition_loop",
    "refusal",
    "truncated",
    "structured_invalid",
    "wrong_language",
    "low_score",
    "over_budget",
)


class Checks(BaseModel):
    """Which degenerate outputs fail a caption; `language` and `min_clip_score` are off unless given."""

    model_config = ConfigDict(extra="forbid")

    empty: bool = True
    repetition_loop: bool = True
    refusal: bool = True
    truncated: bool = True
    structured_invalid: bool = True
    language: str | None = None  # ISO 639-1, e.g. "en"
    min_clip_score: float | None = Field(None, ge=0.0, le=2.5)


class Scorer(BaseModel):
    """The image-text scorer: a CLIP-family model in the Hugging Face format; its score is a record column."""

    model_config = ConfigDict(extra="forbid")

    model: str
    device: str = "same"  # "same": the captioner's device; or cpu, cuda, cuda:1, ...
    batch_size: int = Field(32, ge=1)


class Budget(BaseModel):
    """A text encoder's token budget every caption must fit (`--budget clip:77`), special tokens included."""

    model_config = ConfigDict(extra="forbid")

    encoder: str  # clip | t5 | a tokenizer's hub id or path
    limit: int = Field(ge=3)
    # constrain: a word-limit grammar on the first try where the engine can constrain decoding (then checked, and
    # rewritten when still over); rewrite: ask again with a word limit in the prompt; auto: constrain if it can
    method: Literal["auto", "constrain", "rewrite"] = "auto"

    def hint(self) -> str:
        """What a retry adds to the prompt: a word count that fits (about 1.3 tokens per English word)."""
        words = max(3, int((self.limit - 2) / 1.3))
        return f" Answer in at most {words} words."


class Attempt(BaseModel):
    """One retry: what changes in the request. Unset fields keep the item's own values."""

    model_config = ConfigDict(extra="forbid")

    prompt: str | None = None
    do_sample: bool | None = None
    temperature: float | None = Field(None, ge=0.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    repetition_penalty: float | None = Field(None, gt=0.0)
    max_new_tokens: int | None = Field(None, ge=1)
    max_new_tokens_factor: float | None = Field(None, gt=0.0)
    seed: int | None = None
    # another captioner for this attempt (hub id or folder), loaded only when an item reaches it; profile, engine
    # and engine options default to what the model implies and the run's own engine and options
    model: str | None = None
    profile: str | None = None
    engine: str | None = None
    engine_options: dict[str, Any] | None = None

    def label(self) -> str:
        """A short name for what this attempt changes, e.g. "temperature=0.7, repetition_penalty=1.15"."""
        skip = {"prompt", *MODEL_FIELDS}
        parts = [f"{k}={v}" for k, v in self.model_dump(exclude_none=True).items() if k not in skip]
        if self.prompt is not None:
            parts.insert(0, "prompt")
        if self.model is not None:
            parts.insert(0, f"model={self.model}" + (f" ({self.profile})" if self.profile else ""))
        return ", ".join(parts) or "same request"


MODEL_FIELDS = ("model", "profile", "engine", "engine_options")


DEFAULT_ATTEMPTS = (
    Attempt(do_sample=True, temperature=0.7, top_p=0.95, repetition_penalty=1.15, seed=1),
    Attempt(do_sample=True, temperature=0.9, top_p=0.95, repetition_penalty=1.3, max_new_tokens_factor=2.0, seed=2),
)


class GatePolicy(BaseModel):
    """Checks, an optional scorer, the retries and what a caption that never passes becomes."""

    model_config = ConfigDict(extra="forbid")

    checks: Checks = Field(default_factory=Checks)
    scorer: Scorer | None = None
    attempts: list[Attempt] = Field(default_factory=lambda: list(DEFAULT_ATTEMPTS))
    max_attempts: int = Field(3, ge=1)
    on_fail: Literal["keep", "invalid"] = "keep"
    stop_repetition: bool = True
    budget: Budget | None = None

    def retries(self) -> list[Attempt]:
        return self.attempts[: self.max_attempts - 1]

    def check_config(self) -> None:
        if self.checks.min_clip_score is not None and self.scorer is None:
            raise ConfigError("gate: checks.min_clip_score needs a scorer (scorer: {model: ...})")
        for i, attempt in enumerate(self.attempts):
            if attempt.model is None and any(getattr(attempt, k) is not None for k in MODEL_FIELDS[1:]):
                raise ConfigError(f"gate: attempts[{i}]: profile, engine and engine_options go with a model")

    def identity(self) -> dict[str, Any]:
        """The policy as it enters the run's identity. Fields added later (an attempt's model, the budget's method)
        are left out here when unset, so the identity of a policy without them is what it always was; the retry
        models and the budget method as resolved are added by the captioner (see GatedCaptioner.prompt_hash)."""
        exclude: dict[str, Any] = {"attempts": {"__all__": set(MODEL_FIELDS)}}
        if self.budget is not None:
            exclude["budget"] = {"method"}
        return self.model_dump(mode="json", exclude=exclude)


def budget_only_policy(budget: Budget) -> GatePolicy:
    """`--budget` without `--gate`: only the budget is checked; a caption over it is asked for again with a word
    limit in the prompt, first as it was decoded, then sampled."""
    return GatePolicy(
        checks=Checks(empty=False, repetition_loop=False, refusal=False, truncated=False, structured_invalid=False),
        attempts=[Attempt(), Attempt(do_sample=True, temperature=0.7, top_p=0.95, seed=1)],
        stop_repetition=False,
        budget=budget,
    )


def parse_budget(spec: str) -> Budget:
    name, sep, limit = spec.rpartition(":")
    if not sep or not name or not limit.isdigit():
        raise ConfigError(f"--budget {spec!r}: expected ENCODER:TOKENS, e.g. clip:77, t5:512 or a tokenizer path:N")
    return Budget(encoder=name, limit=int(limit))


def load_policy(path: str | Path | None) -> GatePolicy:
    """The policy in a YAML (or JSON) file; None gives the defaults. ConfigError names the file and the field."""
    if path is None:
        policy = GatePolicy()
    else:
        import yaml

        file = Path(path)
        if not file.is_file():
            raise ConfigError(f"--gate {path}: no such file")
        try:
            data: Any = yaml.safe_load(file.read_text(encoding="utf-8")) or {}
            policy = GatePolicy.model_validate(data)
        except yaml.YAMLError as exc:
            raise ConfigError(f"--gate {path}: not YAML ({exc})") from exc
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
            raise ConfigError(f"--gate {path}: {problems}") from exc
    policy.check_config()
    return policy
