"""Client constraints (`response_format`, `structured_outputs`) -> an engine constraint, checked within limits.

A grammar or schema is size-capped as sent, then checked by llguidance on a small worker pool (never on the
event loop) within a time limit; grammars that passed are remembered in a bounded least-recently-used cache,
so a client repeating a schema costs nothing and a client sending endless new ones cannot grow memory.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import threading
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from capmill.errors import CapmillError
from capmill.serve.config import ServeConfig
from capmill.serve.httperrors import HTTPProblem, bad_request

CHECK_WORKERS = 2  # grammar checks at once; a request finding both busy waits its turn within the time limit


def requested_constraint(chat: Any) -> tuple[dict[str, Any] | None, str]:
    """(constraint dict or None, the request field it came from) from a ChatCompletionRequest."""
    fmt, outputs = chat.response_format, chat.structured_outputs
    if outputs is not None:
        if (outputs.grammar is not None) + (outputs.json_ is not None) != 1:
            raise bad_request("structured_outputs: give exactly one of 'grammar' or 'json'", "structured_outputs")
        if outputs.grammar is not None:
            return {"grammar": outputs.grammar}, "structured_outputs"
        return {"json_schema": outputs.json_}, "structured_outputs"
    if fmt is not None and fmt.type == "json_object":
        return {"json_schema": {"type": "object"}}, "response_format"
    if fmt is not None and fmt.type == "json_schema":
        if fmt.json_schema is None:
            raise bad_request("response_format: type json_schema needs a json_schema", "response_format")
        return {"json_schema": fmt.json_schema.schema_}, "response_format"
    return None, "response_format"


def check_size(value: Any, param: str, config: ServeConfig) -> None:
    """413 when a grammar, schema or tool list is larger, as sent, than `max_grammar_bytes`."""
    size = len(value.encode()) if isinstance(value, str) else len(json.dumps(value, separators=(",", ":")).encode())
    if size > config.max_grammar_bytes:
        raise HTTPProblem(
            413,
            f"{param}: {size} bytes exceeds the limit of {config.max_grammar_bytes} bytes (max_grammar_bytes)",
            param=param,
            code="grammar_too_large",
        )


class GrammarChecker:
    """Checks constraints with llguidance off the event loop, with a time limit and an LRU of grammars that passed."""

    def __init__(self, config: ServeConfig):
        self.config = config
        self._passed: OrderedDict[str, None] = OrderedDict()
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=CHECK_WORKERS, thread_name_prefix="capmill-grammar")

    def __len__(self) -> int:
        return len(self._passed)

    async def check(self, constraint: dict[str, Any], param: str) -> None:
        """400 naming the problem for a bad or too complex grammar; returns when the engine can take it."""
        key = hashlib.sha256(json.dumps(constraint, sort_keys=True, default=str).encode()).hexdigest()
        with self._lock:
            if key in self._passed:
                self._passed.move_to_end(key)
                return
        future = asyncio.get_running_loop().run_in_executor(self._pool, _validate, constraint)
        try:
            problem = await asyncio.wait_for(future, self.config.grammar_timeout_s)
        except (asyncio.TimeoutError, TimeoutError) as exc:
            raise bad_request(
                f"{param}: checking the grammar took over {self.config.grammar_timeout_s:g} s "
                "(grammar_timeout_s); simplify it",
                param,
                "grammar_too_complex",
            ) from exc
        except CapmillError as exc:
            raise bad_request(f"{param}: {exc}", param, "bad_grammar") from exc
        except Exception as exc:  # llguidance's own complaint about the schema
            raise bad_request(f"{param}: cannot constrain to this: {exc}", param, "bad_grammar") from exc
        if problem:
            raise bad_request(f"{param}: {next(iter(constraint))}: {problem.strip()}", param, "bad_grammar")
        with self._lock:
            self._passed[key] = None
            while len(self._passed) > self.config.grammar_cache_size:
                self._passed.popitem(last=False)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def _validate(constraint: dict[str, Any]) -> str:
    """llguidance's verdict on the grammar ('' when fine); its parser limits bound the work it does."""
    import llguidance

    from capmill.engines.grammars import grammar_for

    return llguidance.LLMatcher.validate_grammar(grammar_for(constraint), limits=llguidance.LLParserLimits())
