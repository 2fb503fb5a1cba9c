"""CapRL's Prism-style QA utility: a text-only answerer answers questions about an image from its caption alone.

A caption is useful to the degree that questions about the image can be answered from it. Multiple choice
follows CapRL's reward prompt: the caption between markers, two worked examples, the options shuffled anew for
each sample, an extra last option "Cannot be answered from the caption" so that guessing is not rewarded, and
a one-line answer "The answer is X."; accuracy is averaged over several samples. Open-form questions are scored
by normalised match against the answer and its aliases. The answerer is any capmill Engine.
"""

from __future__ import annotations

import json
import random
import re
import string
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from capmill.engines.base import Engine
from capmill.errors import ConfigError, EngineError
from capmill.records import Decoding, Request

CANNOT_ANSWER = "Cannot be answered from the caption"
LETTERS = string.ascii_uppercase

MC_TEMPLATE = """You will be given an image caption describing the visual content.
Answer the multiple-choice question **strictly based on the caption**, even if the answer seems obvious from prior \
knowledge or from the wording of the question.

Ignore external knowledge. Do not assume anything that the caption does not state or clearly imply.

Example 1:
Caption: <Caption Start> A woman in a red coat is walking a black dog across a snowy park. <Caption End>
Question: What color is the dog?
   - A) Brown
   - B) White
   - C) Black
   - D) Gray
   - E) Cannot be answered from the caption

The answer is C.

Example 2:
Caption: <Caption Start> A child is waving a flag during a parade. <Caption End>
Question: Which country's flag is the child waving?
   - A) France
   - B) Japan
   - C) Brazil
   - D) Canada
   - E) Cannot be answered from the caption

The answer is E.

Now answer the question based on the following caption:

Caption: <Caption Start> {caption} <Caption End>
Question: {question}
{options}

You must output **exactly one line** in the format:
The answer is X.
where X is a single capital letter from A to {last}. Do not output anything else."""

OPEN_TEMPLATE = """Here is a detailed caption of an image: <Caption Start> {caption} <Caption End>
Please answer the question based on the caption only.
Question: {question}
Answer with a single word or a short phrase. If the caption does not tell, answer "cannot be answered"."""


@dataclass
class QAItem:
    """One question about one image: options + index of the right one (multiple choice), or an open answer."""

    qid: str
    image_id: str
    question: str
    category: str = "all"
    options: list[str] | None = None
    correct: int | None = None  # index into options
    answers: list[str] = field(default_factory=list)  # open form: the answer and its aliases

    @property
    def is_choice(self) -> bool:
        return self.options is not None


def _correct_index(row: dict[str, Any], options: list[str], where: str) -> int:
    ans = row.get("answer")
    if isinstance(ans, int) and not isinstance(ans, bool) and 0 <= ans < len(options):
        return ans
    if isinstance(ans, str):
        a = ans.strip()
        if len(a) == 1 and a.upper() in LETTERS[: len(options)]:
            return LETTERS.index(a.upper())
        for i, opt in enumerate(options):
            if _norm(opt) == _norm(a):
                return i
    raise ConfigError(f"{where}: 'answer' must be a letter, an index or the text of one of the options")


def load_qa(path: str | Path) -> list[QAItem]:
    """QA items from JSONL: {"id", "image_id", "question", "options"?: [...], "answer", "category"?, "aliases"?}."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"QA file {path}: not found")
    items = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        where = f"QA file {path}:{n}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{where}: not valid JSON ({exc.msg})") from exc
        if not isinstance(row, dict) or not row.get("question") or row.get("image_id", row.get("image")) is None:
            raise ConfigError(f"{where}: needs 'image_id' and 'question'")
        opts = row.get("options")
        item = QAItem(
            qid=str(row.get("id", f"q{n}")),
            image_id=str(row.get("image_id", row.get("image"))),
            question=str(row["question"]).strip(),
            category=str(row.get("category") or "all"),
        )
        if opts is not None:
            if isinstance(opts, dict):  # {"A": "...", "B": "..."}
                opts = [opts[k] for k in sorted(opts)]
            if not isinstance(opts, list) or len(opts) < 2 or not all(isinstance(o, str) for o in opts):
                raise ConfigError(f"{where}: 'options' must be a list of at least two strings")
            if len(opts) >= len(LETTERS):
                raise ConfigError(f"{where}: at most {len(LETTERS) - 1} options")
            item.options, item.correct = list(opts), _correct_index(row, opts, where)
        else:
            answers = row.get("answer")
            answers = [answers] if isinstance(answers, str) else answers
            answers = list(answers or []) + list(row.get("aliases") or [])
            if not answers or not all(isinstance(a, str) for a in answers):
                raise ConfigError(f"{where}: an open question needs 'answer' (text)")
            item.answers = answers
        items.append(item)
    if not items:
        raise ConfigError(f"QA file {path}: no questions")
    return items


def _norm(text: str) -> str:
    text = text.lower().strip()
    text = re.sub(r"[^\w\s]", " ", text)
    return " ".join(w for w in text.split() if w not in ("a", "an", "the"))


@dataclass
class Prompted:
    """One answerer prompt: which question, which sample, the letters' mapping back to options."""

    qid: str
    sample: int
    text: str
    order: list[int] | None  # order[letter index] = option index; len(options) = the "cannot answer" letter


def shuffled_order(item: QAItem, sample: int, seed: int) -> list[int]:
    order = list(range(len(item.options or [])))
    random.Random(f"{seed}:{item.qid}:{sample}").shuffle(order)
    return order + [len(order)]  # the "cannot be answered" option always comes last, as in CapRL


def build_prompt(item: QAItem, caption: str, sample: int = 0, seed: int = 0) -> Prompted:
    """The answerer's prompt for one sample of one question."""
    caption = " ".join(caption.split())
    if not item.is_choice:
        return Prompted(item.qid, sample, OPEN_TEMPLATE.format(caption=caption, question=item.question), None)
    order = shuffled_order(item, sample, seed)
    texts = [*(item.options or []), CANNOT_ANSWER]
    lines = "\n".join(f"   - {LETTERS[i]}) {texts[j]}" for i, j in enumerate(order))
    text = MC_TEMPLATE.format(caption=caption, question=item.question, options=lines, last=LETTERS[len(order) - 1])
    return Prompted(item.qid, sample, text, order)


def parse_choice(text: str, n_choices: int, option_texts: Sequence[str] = ()) -> int | None:
    """Letter index chosen in an answer, or None. "The answer is C." first, then a leading letter, then CapRL's
    rule (the first allowed capital letter anywhere), then a unique option text quoted in the answer."""
    allowed = LETTERS[:n_choices]
    if not text:
        return None
    m = re.search(r"answer\s*(?:is|:)\s*\**\(?([A-Z])\b", text, re.IGNORECASE)
    if m and m.group(1).upper() in allowed:
        return allowed.index(m.group(1).upper())
    m = re.match(r"\s*\(?([A-Z])(?:[).:]|\s*$|\s+(?![a-z]))", text)  # "C", "B) ...", not "A dog ..."
    if m and m.group(1) in allowed:
        return allowed.index(m.group(1))
    # a lone capital letter that is not the article "A" or the pronoun "I" starting a sentence
    for m in re.finditer(r"\b([A-Z])\b(?!\s+[a-z])", text):
        if m.group(1) in allowed:
            return allowed.index(m.group(1))
    hits = [i for i, o in enumerate(option_texts) if _norm(o) and _norm(o) in _norm(text)]
    return hits[0] if len(hits) == 1 else None


def score_open(answer: str, golds: Sequence[str]) -> bool:
    """An open answer is right when a gold answer (or alias) appears in it as whole words, after normalising."""
    got = f" {_norm(answer)} "
    return any(_norm(g) and f" {_norm(g)} " in got for g in golds)


@dataclass
class QAResult:
    """Accuracy of one run, overall and per category, with per-question details for the report."""

    accuracy: float
    questions: int
    samples: int
    per_category: dict[str, dict[str, float]]
    cannot_answer_rate: float
    unparsed_rate: float
    missing_captions: int
    per_question: list[dict[str, Any]]

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "per_question"}


def evaluate_qa(
    items: Sequence[QAItem],
    captions: dict[str, str | None],
    engine: Engine,
    samples: int = 4,
    decoding: Decoding | None = None,
    seed: int = 0,
    batch_size: int = 32,
) -> QAResult:
    """Ask `engine` every question `samples` times from the caption of its image (captions: image_id -> text).

    A question whose image has no caption in this run scores 0 (the caption failed to carry the answer).
    """
    decoding = decoding or Decoding(max_new_tokens=16, do_sample=True, temperature=0.6, top_p=1.0)
    prompts: list[Prompted] = []
    for item in items:
        cap = captions.get(item.image_id)
        if not cap:
            continue
        for k in range(samples):
            prompts.append(build_prompt(item, cap, k, seed))
    answers: list[tuple[str, str | None]] = []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start : start + batch_size]
        reqs = [
            Request(
                item_id=f"{p.qid}#{p.sample}",
                messages=[{"role": "user", "content": p.text}],
                decoding=decoding.merged(seed=None if decoding.seed is None else decoding.seed + p.sample),
            )
            for p in chunk
        ]
        gens = engine.generate(reqs)
        if len(gens) != len(reqs):
            raise EngineError(f"answerer returned {len(gens)} generations for {len(reqs)} requests")
        answers.extend((g.text or "", g.error) for g in gens)
    by_q: dict[str, list[tuple[Prompted, str, str | None]]] = defaultdict(list)
    for p, (text, err) in zip(prompts, answers, strict=True):
        by_q[p.qid].append((p, text, err))
    rows = []
    cannot = unparsed = total = 0
    for item in items:
        got = by_q.get(item.qid, [])
        correct = []
        responses = []
        for p, text, err in got:
            total += 1
            if item.is_choice:
                order = p.order or []
                texts = [*(item.options or []), CANNOT_ANSWER]
                letter = None if err else parse_choice(text, len(order), [texts[j] for j in order])
                chosen = order[letter] if letter is not None else None
                unparsed += chosen is None
                cannot += chosen == len(item.options or [])
                correct.append(chosen == item.correct)
                responses.append({"response": text, "error": err, "chosen": None if chosen is None else texts[chosen]})
            else:
                ok = not err and score_open(text, item.answers)
                unparsed += bool(err)
                cannot += "cannot be answered" in text.lower()
                correct.append(ok)
                responses.append({"response": text, "error": err})
        acc = sum(correct) / len(correct) if correct else 0.0
        rows.append(
            {
                "qid": item.qid,
                "image_id": item.image_id,
                "category": item.category,
                "question": item.question,
                "accuracy": acc,
                "missing_caption": not got,
                "expected": (item.options or [])[item.correct]
                if item.is_choice and item.correct is not None
                else item.answers[0],
                "responses": responses,
            }
        )
    cats: dict[str, list[float]] = defaultdict(list)
    for r in rows:
        cats[r["category"]].append(r["accuracy"])
    return QAResult(
        accuracy=sum(r["accuracy"] for r in rows) / len(rows) if rows else 0.0,
        questions=len(rows),
        samples=samples,
        per_category={c: {"accuracy": sum(v) / len(v), "questions": len(v)} for c, v in sorted(cats.items())},
        cannot_answer_rate=cannot / total if total else 0.0,
        unparsed_rate=unparsed / total if total else 0.0,
        missing_captions=sum(1 for r in rows if r["missing_caption"]),
        per_question=rows,
    )
