"""The one place that turns errors into HTTP answers: capmill.errors types, request validation, our own limits.

Every error body has OpenAI's shape, `{"error": {"message", "type", "param", "code"}}`, so the official client
raises the right exception with the server's message.
"""

from __future__ import annotations

import logging
from typing import Any

from capmill.errors import CapmillError, InputError, OverloadedError, UnknownNameError

log = logging.getLogger("capmill.serve")

# status -> OpenAI error "type"
_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    405: "invalid_request_error",
    408: "timeout_error",
    409: "conflict_error",
    413: "request_too_large",
    429: "rate_limit_error",
    502: "engine_error",
    503: "overloaded_error",
    504: "timeout_error",
}


class HTTPProblem(Exception):
    """An error the server itself decides on (a limit, auth, a bad field): status, message and headers."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None, headers=None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.headers: dict[str, str] = dict(headers or {})


def bad_request(message: str, param: str | None = None, code: str | None = None) -> HTTPProblem:
    return HTTPProblem(400, message, param=param, code=code)


def too_large(message: str, param: str | None = None) -> HTTPProblem:
    return HTTPProblem(413, message, param=param, code="too_large")


def problem_for(exc: BaseException) -> HTTPProblem:
    """Map any exception to the problem the client sees; unknown exceptions are a 500 and are logged."""
    if isinstance(exc, HTTPProblem):
        return exc
    if isinstance(exc, OverloadedError):
        retry = max(1, round(exc.retry_after))
        return HTTPProblem(503, str(exc), code="overloaded", headers={"Retry-After": str(retry)})
    if isinstance(exc, UnknownNameError):
        return HTTPProblem(404, str(exc), param="model", code="model_not_found")
    if isinstance(exc, InputError):
        return HTTPProblem(400, str(exc), code=exc.reason.replace(" ", "_"))
    if isinstance(exc, CapmillError):
        return HTTPProblem(exc.http_status, str(exc), code=type(exc).__name__)
    log.error("internal error", exc_info=exc)
    return HTTPProblem(500, "internal server error", code="internal_error")


def error_body(problem: HTTPProblem) -> dict[str, Any]:
    kind = _TYPES.get(problem.status, "server_error" if problem.status >= 500 else "invalid_request_error")
    return {"error": {"message": problem.message, "type": kind, "param": problem.param, "code": problem.code}}


def validation_message(errors: list[dict[str, Any]]) -> tuple[str, str | None]:
    """A short message from pydantic's errors naming each field and the problem (at most three)."""
    parts, first = [], None
    for err in errors[:3]:
        loc = [str(p) for p in err.get("loc", ()) if p not in ("body", "query", "path", "header")]
        where = ".".join(loc) or "body"
        first = first or where
        parts.append(f"{where}: {err.get('msg', 'invalid')}")
    more = f" (and {len(errors) - 3} more)" if len(errors) > 3 else ""
    return "; ".join(parts) + more, first


def install(app: Any) -> None:
    """Register the handlers on a FastAPI app."""
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException as StarletteHTTPException

    def respond(problem: HTTPProblem) -> JSONResponse:
        return JSONResponse(error_body(problem), status_code=problem.status, headers=problem.headers)

    async def on_validation(request, exc: RequestValidationError):  # noqa: ANN001
        message, param = validation_message(list(exc.errors()))
        return respond(HTTPProblem(400, message, param=param, code="invalid_request"))

    async def on_starlette(request, exc: StarletteHTTPException):  # noqa: ANN001
        detail = exc.detail if isinstance(exc.detail, str) else "error"
        if exc.status_code == 404 and detail == "Not Found":
            detail = f"no route {request.method} {request.url.path}"
        return respond(HTTPProblem(exc.status_code, detail, headers=getattr(exc, "headers", None)))

    async def on_any(request, exc: Exception):  # noqa: ANN001
        return respond(problem_for(exc))

    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_starlette)
    app.add_exception_handler(HTTPProblem, on_any)
    app.add_exception_handler(CapmillError, on_any)
    app.add_exception_handler(Exception, on_any)
