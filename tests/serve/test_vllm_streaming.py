"""vLLM stepped by capmill: each row's text as it is generated, equal to `LLM.generate`'s, and cancelled rows
aborted (tiny Qwen2-VL, in process; runs in the vLLM environment)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from capmill.engines import streaming
from capmill.records import Item

pytestmark = pytest.mark.vllm

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
COCO = Path(__file__).parents[1] / "data" / "coco"


def test_stepped_vllm_streams_each_row_and_aborts_cancelled_ones(tiny_model):  # noqa: ANN001
    from capmill.captioner import Captioner
    from capmill.engines.vllm_streaming import generate_stepped

    cap = Captioner(
        model=str(tiny_model("qwen2_vl")),
        profile="inkscope-2b",
        engine="vllm",
        engine_options={"enforce_eager": True, "max_model_len": 4096, "dtype": "float32"},
        decoding={"max_new_tokens": 24},
    )
    try:
        engine = cap.engine
        photos = sorted(COCO.glob("*.jpg"))[:3]
        requests = [cap.prepare(Item(id=p.name, source=p.name, data=p.read_bytes()), None) for p in photos]
        whole = engine.generate(requests)
        events: dict[int, list[tuple[str, int]]] = {i: [] for i in range(3)}
        controls = [streaming.RowControl(lambda t, n, i=i: events[i].append((t, n))) for i in range(3)]
        controls[2].on_delta = lambda t, n: setattr(controls[2], "cancelled", True)  # leaves at its first text
        outputs = generate_stepped(
            engine.llm,
            [engine._prompt(r) for r in requests],
            [engine.sampling_params(r) for r in requests],
            controls,
            lambda ids: engine.family.decode(engine.processor, [ids])[0],
        )
        for i in range(2):
            got = engine._generation(outputs[i], 0.0, 3)
            assert got.text == whole[i].text and got.completion_tokens == whole[i].completion_tokens
            counts = [n for _, n in events[i]]
            assert len(counts) >= 3 and counts[0] <= 3 and counts[0] < got.completion_tokens // 2
            assert "".join(t for t, _ in events[i]) == got.text.rstrip("\ufffd").rstrip()
        gone = outputs[2]
        assert len(gone.outputs[0].token_ids) <= 3 < whole[2].completion_tokens  # aborted, its KV cache freed

        # the same through the engine's own generate, as the server calls it: rows with a control are stepped
        fresh = [cap.prepare(Item(id=p.name, source=p.name, data=p.read_bytes()), None) for p in photos]
        seen: list[tuple[str, int]] = []
        streaming.attach(fresh[0], streaming.RowControl(lambda t, n: seen.append((t, n))))
        try:
            streamed = engine.generate(fresh)
        finally:
            streaming.detach(fresh[0])
        assert [g.text for g in streamed] == [g.text for g in whole]
        assert len(seen) >= 3 and seen[0][1] < streamed[0].completion_tokens // 2
        assert "".join(t for t, _ in seen) == streamed[0].text.rstrip("\ufffd").rstrip()
    finally:
        cap.close()
