"""One small hierarchy of typed errors: the library raises these, the CLI and the server translate them."""

from __future__ import annotations


class CapmillError(Exception):
    """Base of every error capmill raises on purpose."""

    exit_code = 1
    http_status = 500


class ConfigError(CapmillError):
    """The configuration is wrong; raised before any work starts."""

    exit_code = 2
    http_status = 400


class UnknownNameError(ConfigError):
    """A registry was asked for a name it does not have."""

    http_status = 404

    def __init__(self, kind: str, name: str, choices: list[str]):
        self.kind, self.name, self.choices = kind, name, choices
        super().__init__(f"unknown {kind} {name!r}; choose one of: {', '.join(sorted(choices))}")


class MissingDependencyError(ConfigError):
    """An optional dependency is not installed; the message names the extra that brings it."""

    def __init__(self, package: str, extra: str, what: str = ""):
        self.package, self.extra = package, extra
        purpose = f" for {what}" if what else ""
        super().__init__(f"{package} is needed{purpose}: pip install 'capmill[{extra}]'")


class EngineOptionError(ConfigError):
    """An engine option is unknown or has a wrong value; the message lists every option the engine accepts."""

    def __init__(self, engine: str, problem: str, accepted: list[str]):
        self.engine, self.problem, self.accepted = engine, problem, accepted
        super().__init__(f"engine {engine!r}: {problem}; accepted options: {', '.join(accepted)}")


class UnsupportedError(ConfigError):
    """The combination asked for cannot work (for example BLIP-2 on vLLM)."""


class ScaffoldError(ConfigError):
    """The JSON captioner's system prompt and tools could not be found."""


class RunConflictError(ConfigError):
    """A run folder holds a run with a different configuration."""

    http_status = 409


class ModelLoadError(CapmillError):
    """A checkpoint could not be loaded from the hub id or local path given."""


class EngineError(CapmillError):
    """An engine failed as a whole (not one item)."""

    http_status = 502


class InputError(CapmillError):
    """One input could not be read or decoded; becomes a record with status "error", the run goes on."""

    http_status = 400

    def __init__(self, source: str, reason: str, detail: str = ""):
        self.source, self.reason, self.detail = source, reason, detail
        text = f"{source}: {reason}"
        super().__init__(f"{text} ({detail})" if detail else text)

    def __reduce__(self) -> tuple:
        # picklable, so decode worker processes can hand it back
        return (type(self), (self.source, self.reason, self.detail))

    @property
    def retryable(self) -> bool:
        """A download that timed out, lost its connection or met a 5xx / 429 may work later; a bad file never."""
        reason = self.reason
        return reason in ("timeout", "connection error", "http 429") or reason.startswith("http 5")


class EngineUnavailableError(EngineError):
    """The engine failed on many inputs in a row (a server down, out of memory): the run stops, nothing is lost."""

    exit_code = 3


class ErrorRateError(CapmillError):
    """A finished run holds more error records than --max-error-rate allows."""

    exit_code = 4


class RunInterrupted(CapmillError):
    """Ctrl-C or SIGTERM: every finished record was committed; the same command resumes."""

    def __init__(self, message: str, exit_code: int = 130):
        self.exit_code = exit_code
        super().__init__(message)


class OverloadedError(CapmillError):
    """A queue is full; the caller should retry later."""

    http_status = 503

    def __init__(self, message: str = "server is busy", retry_after: float = 1.0):
        self.retry_after = retry_after
        super().__init__(message)


class TrainingError(CapmillError):
    """A training run failed as a whole (for example every row of a stage was rejected)."""


class MergeFaithfulnessError(CapmillError):
    """A merged checkpoint does not reproduce base + LoRA within the tolerance; nothing is published."""

    def __init__(self, message: str, max_abs_diff: float = float("nan"), tolerance: float = float("nan")):
        self.max_abs_diff, self.tolerance = max_abs_diff, tolerance
        super().__init__(message)
