"""`capmill eval` at the scale of a real validation set: cost per stage, and capmill's COCO metrics against a
direct pycocoevalcap run on the same data, side by side (equal values, time ratio ~1: no overhead).

Takes N images of COCO val2017 (../shared/data/coco/captions_val2017.json), holds out each image's first
caption as the "human" run and a caption of another image as the "mismatched" run, keeps the other four as
references, and times: loading, structure statistics, COCO metrics (capmill vs direct), embeddings and both
Frechet distances (bundled all-MiniLM-L6-v2). CPU seconds are printed beside wall seconds because the machine
may be shared.

    python benchmarks/eval_scale.py [--images 500] [--coco ../shared/data/coco/captions_val2017.json]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_COCO = ROOT.parent / "shared" / "data" / "coco" / "captions_val2017.json"


class Clock:
    def __init__(self) -> None:
        self.rows: list[tuple[str, float, float]] = []

    @contextlib.contextmanager
    def stage(self, name: str):  # noqa: ANN201
        w, c = time.perf_counter(), time.process_time()
        yield
        self.rows.append((name, time.perf_counter() - w, time.process_time() - c))


def direct_pycocoevalcap(gts: dict[str, list[str]], res: dict[str, str]) -> dict[str, float]:
    """COCOEvalCap.evaluate's steps without SPICE, with a fresh METEOR process."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.meteor.meteor import Meteor
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    out = {}
    with contextlib.redirect_stdout(io.StringIO()):
        tok = PTBTokenizer()
        g = tok.tokenize({k: [{"caption": c} for c in v] for k, v in gts.items()})
        r = tok.tokenize({k: [{"caption": res[k]}] for k in gts})
        meteor = Meteor()
        for scorer, names in [(Bleu(4), ["Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4"]), (meteor, ["METEOR"]),
                              (Rouge(), ["ROUGE_L"]), (Cider(), ["CIDEr"])]:  # fmt: skip
            score, _ = scorer.compute_score(g, r)
            for n, s in zip(names, score if len(names) > 1 else [score], strict=True):
                out[n] = float(s)
        meteor.meteor_p.kill()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=500)
    ap.add_argument("--coco", default=str(DEFAULT_COCO))
    args = ap.parse_args()

    from capmill.eval.coco_metrics import close_meteor, coco_scores
    from capmill.eval.embeddings import SentenceEmbedder
    from capmill.eval.frechet import embedding_distances
    from capmill.eval.lengths import length_encoders
    from capmill.eval.refs import load_references
    from capmill.eval.results import load_run
    from capmill.eval.structure import structure_stats
    from capmill.records import Record

    clock = Clock()
    data = json.loads(Path(args.coco).read_text())
    ids = sorted({a["image_id"] for a in data["annotations"]})[: args.images]
    keep = set(ids)
    first: dict[int, str] = {}
    refs_ann = []
    for a in data["annotations"]:
        if a["image_id"] in keep:
            if a["image_id"] in first:
                refs_ann.append(a)
            else:
                first[a["image_id"]] = a["caption"]
    tmp = Path(tempfile.mkdtemp(prefix="capmill-eval-bench-"))
    (tmp / "refs.json").write_text(json.dumps({"images": [i for i in data["images"] if i["id"] in keep],
                                               "annotations": refs_ann}))  # fmt: skip
    runs = {}
    for name, pick in (
        ("human", lambda k: first[k]),
        ("mismatched", lambda k: first[ids[(ids.index(k) + 1) % len(ids)]]),
    ):
        rows = [Record(id=f"{k:012d}", source=f"{k:012d}.jpg", content_hash="", profile="", engine="", model="",
                       prompt_hash="", decoding={}, status="ok", caption=pick(k)).to_dict() for k in ids]  # fmt: skip
        (tmp / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        runs[name] = tmp / f"{name}.jsonl"

    with clock.stage("load references + runs"):
        refs = load_references(tmp / "refs.json")
        loaded = {n: load_run(p) for n, p in runs.items()}
    with clock.stage("length tokenizers (load)"):
        encoders = length_encoders()
    with clock.stage("structure, both runs"):
        for run in loaded.values():
            structure_stats(run.records, encoders)
    gts = {str(k): refs.captions[str(k)] for k in ids}
    res = {str(k): first[k] for k in ids}
    with clock.stage("COCO metrics, capmill"):
        ours = coco_scores(gts, res, ["bleu", "meteor", "rouge", "cider"])
    close_meteor()
    with clock.stage("COCO metrics, direct pycocoevalcap"):
        direct = direct_pycocoevalcap(gts, res)
    with clock.stage("embedder (load)"):
        emb = SentenceEmbedder("all-MiniLM-L6-v2")
    dist = {}
    with clock.stage("embed + distances, both runs"):
        # one batched pass over every distinct text, as capmill.eval.suite does; the rest hits the cache
        emb.encode(
            sorted({r.caption for run in loaded.values() for r in run.records} | {c for v in gts.values() for c in v})
        )
        for name, run in loaded.items():
            caps = emb.encode([r.caption for r in run.records])
            ref_vecs = [emb.encode(refs.captions[refs.key_for(r.id)]) for r in run.records]
            dist[name] = embedding_distances([r.id for r in run.records], caps, ref_vecs)

    print(f"capmill eval at scale: {len(ids)} COCO val2017 images, 4 references each\n")
    print(f"{'stage':38} {'wall s':>8} {'cpu s':>8}")
    for name, w, c in clock.rows:
        print(f"{name:38} {w:8.2f} {c:8.2f}")
    (_, w_ours, _), (_, w_direct, _) = clock.rows[3], clock.rows[4]
    print(f"\nCOCO metrics capmill / direct wall time: {w_ours / w_direct:.2f}x (each starts its own METEOR)")
    same = all(ours.corpus[k] == v for k, v in direct.items())
    print("values identical to direct pycocoevalcap:", same)
    print("  " + ", ".join(f"{k} {v:.4f}" for k, v in ours.corpus.items()))
    for name, d in dist.items():
        print(f"{name:11} per-pair FGD {d.pair_fgd:.4f}   set Frechet {d.set_frechet:.4f}")


if __name__ == "__main__":
    main()
