"""vLLM with row controls: what `LLM.generate` returns, but stepped here so rows stream and cancelled rows leave.

`LLM.generate` asks vLLM for final outputs only and steps its engine to the end. `generate_stepped` adds the
same prompts to the same engine asking for cumulative outputs, steps it itself, hands each listening row its
text so far (decoded as the caller decodes), and aborts a row whose control is cancelled (vLLM frees its KV
cache at once, so the batch really shrinks). The outputs come back in prompt order, as from `LLM.generate`.

Version-sensitive: uses `LLM.llm_engine.add_request / step / abort_request` and
`SamplingParams.output_kind`; checked against vLLM 0.32.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from typing import Any

from capmill.engines.streaming import RowControl

_ids = itertools.count()


def generate_stepped(
    llm: Any,
    prompts: Sequence[Any],
    params: Sequence[Any],
    controls: Sequence[RowControl | None],
    decode: Callable[[list[int]], str],
) -> list[Any]:
    """One RequestOutput per prompt, in order; a cancelled row's is its last partial output (or None)."""
    from vllm.sampling_params import RequestOutputKind

    engine = llm.llm_engine
    index: dict[str, int] = {}
    for i, (prompt, param) in enumerate(zip(prompts, params, strict=True)):
        param = param.clone()
        param.output_kind = RequestOutputKind.CUMULATIVE
        request_id = f"capmill-stream-{next(_ids)}"
        try:
            engine.add_request(request_id, prompt, param)
        except Exception:
            engine.abort_request(list(index))
            raise
        index[request_id] = i
    outputs: list[Any] = [None] * len(prompts)
    live = set(index)
    while live and engine.has_unfinished_requests():
        for out in engine.step():
            i = index.get(out.request_id)
            if i is None:
                continue
            outputs[i] = out
            control = controls[i]
            if out.finished:
                live.discard(out.request_id)
            if control is None:
                continue
            token_ids = list(out.outputs[0].token_ids)
            if control.on_delta is not None:
                control.feed(decode(token_ids), len(token_ids))
            if control.cancelled and not out.finished:
                engine.abort_request([out.request_id])
                live.discard(out.request_id)
    return outputs
