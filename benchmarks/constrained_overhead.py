"""What constrained decoding costs: llguidance masks vs. no masks, side by side in one run.

Part 1, the processor alone on the real Qwen3.5 vocabulary (248k tokens): milliseconds per decoding step
for a batch of rows under the json-captioner's tool-call grammar (mask computation + applying it to the
logits), the same batch with no constraint (the processor returns at once), and the one-time cost of
compiling the grammar. Part 2, end to end on a tiny random Qwen3.5 through the transformers engine:
seconds per generated token, constrained and not, greedy, same requests.

    python benchmarks/constrained_overhead.py [--batch 8] [--steps 200] [--skip-model]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path


def processor_steps(batch: int, steps: int) -> None:
    import torch

    from capmill.engines.constrained import _ll_tokenizer, logits_processors
    from capmill.engines.grammars import grammar_for
    from capmill.schema import EMIT_CAPTION_TOOL
    from capmill.testing.vocab import QWEN3_5_SPECIALS, qwen_tokenizer

    tok = qwen_tokenizer("qwen3_5", QWEN3_5_SPECIALS, None)
    vocab = -(-len(tok) // 64) * 64
    t0 = time.perf_counter()
    ll = _ll_tokenizer(tok, None)
    t1 = time.perf_counter()
    ll.compiled(grammar_for({"tool_call": EMIT_CAPTION_TOOL}, ll.added))
    t2 = time.perf_counter()
    print(f"vocabulary: {len(tok)} tokens ({vocab} logits); batch {batch}; {steps} steps")
    print(f"one-time: llguidance tokenizer + wrap-up masks {t1 - t0:.2f} s, grammar compile {t2 - t1:.2f} s")

    gen = torch.Generator().manual_seed(0)
    emb, out = torch.randn(vocab, 16, generator=gen), torch.randn(vocab, 16, generator=gen)
    results = {}
    for label, constraint in (("unconstrained", None), ("tool-call grammar", {"tool_call": EMIT_CAPTION_TOOL})):
        proc = logits_processors(tok, [constraint] * batch, max_new_tokens=steps)
        ids = torch.randint(0, 50_000, (batch, 8), generator=gen)
        times, model = [], []
        for _ in range(steps):
            m0 = time.perf_counter()
            scores = (emb[ids[:, -1]] @ out.T) * 3  # a stand-in for the model's logits (timed apart)
            scores[:, len(tok) - 40 :] = 0.0
            m1 = time.perf_counter()
            scores = proc(ids, scores)
            times.append(time.perf_counter() - m1)
            model.append(m1 - m0)
            ids = torch.cat([ids, scores.argmax(-1, keepdim=True)], dim=1)
        results[label] = statistics.median(times) * 1000
        print(f"  {label:18s} processor {results[label]:7.3f} ms/step (median)")
    print(f"  mask cost per step for {batch} rows: {results['tool-call grammar'] - results['unconstrained']:.2f} ms")


def end_to_end(batch: int, max_new_tokens: int) -> None:
    import torch

    from capmill.captioner import Captioner
    from capmill.testing import build_tiny_model

    torch.set_num_threads(1)
    photos = sorted(Path(__file__).resolve().parents[1].glob("tests/data/coco/*.jpg"))[:batch]
    scaffold = Path(__file__).resolve().parents[1] / "tests/models/data/scaffold_standin.jsonl"
    with tempfile.TemporaryDirectory() as tmp:
        path = build_tiny_model("qwen3_5", Path(tmp) / "tiny")
        cap = Captioner(model=str(path), profile="json-captioner", scaffold=str(scaffold))
        base = [cap.prepare(cap.to_item(str(p))) for p in photos]
        cap.generate(base[:1])  # load and warm up
        from capmill.schema import EMIT_CAPTION_TOOL

        rows = {}
        for _round in range(2):
            for label, constraint in (("unconstrained", None), ("constrained", {"tool_call": EMIT_CAPTION_TOOL})):
                for r in base:
                    r.constraint = constraint
                    r.decoding = r.decoding.merged(max_new_tokens=max_new_tokens)
                t = time.perf_counter()
                gens = cap.generate(base)
                dt = time.perf_counter() - t
                tokens = sum(g.completion_tokens for g in gens)
                rows.setdefault(label, []).append(dt / max(tokens, 1))
        print(f"tiny Qwen3.5 (vocab {len(cap.processor().tokenizer)}), batch {batch}, greedy:")
        for label, values in rows.items():
            print(f"  {label:14s} {min(values) * 1000:7.2f} ms per generated token (best of 2)")
        ratio = min(rows["constrained"]) / min(rows["unconstrained"])
        print(f"  constrained / unconstrained time per token: {ratio:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--skip-model", action="store_true")
    args = parser.parse_args()
    processor_steps(args.batch, args.steps)
    if not args.skip_model:
        end_to_end(args.batch, args.max_new_tokens)


if __name__ == "__main__":
    main()
