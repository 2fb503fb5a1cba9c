"""WD-format ONNX taggers (SmilingWolf's wd-v1-4 / wd-v3 and their kind): `model.onnx` + `selected_tags.csv`.

Preprocessing and selection follow the reference tagger space of these models: the image composited on white,
padded to a white square, resized (bicubic) to the model's side, BGR float32 0-255 with no normalisation; the
four rating rows (category 9) give the rating, general rows (0) above `general_threshold` and character rows (4)
above `character_threshold` give the tags, sorted by score, underscores shown as spaces except in kaomoji.
capmill adds a blacklist, a maximum count of general tags, optional rating tag and character-first order.
"""

from __future__ import annotations

import csv
import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from capmill.errors import MissingDependencyError, ModelLoadError

KAOMOJIS = frozenset(
    "0_0 (o)_(o) +_+ +_- ._. <o>_<o> <|>_<|> =_= >_< 3_3 6_9 >_o @_@ ^_^ o_o u_u x_x |_| ||_||".split()
)
RATING, GENERAL, CHARACTER = 9, 0, 4
# what a recipe template reads of a tagger's output: {stages.NAME.FIELD}
TAG_FIELDS = ("tags", "rating", "characters", "general")
SAMPLE = 1 << 20  # bytes of model.onnx hashed at its start, middle and end (see fingerprint)


class TaggerOptions(BaseModel):
    """How tags are chosen from the scores."""

    model_config = ConfigDict(extra="forbid")

    model: str  # a folder with model.onnx and selected_tags.csv, or a hub id of one
    general_threshold: float = Field(0.35, ge=0.0, le=1.0)
    character_threshold: float = Field(0.85, ge=0.0, le=1.0)
    blacklist: list[str] = Field(default_factory=list)
    max_tags: int | None = Field(None, ge=0)  # general tags kept (the highest scores)
    rating_tag: bool = False  # put the rating ("general", "sensitive", ...) first among the tags
    character_first: bool = True
    underscores: bool = False  # keep "long_hair" instead of "long hair"
    escape_parentheses: bool = False  # "\(series\)", as prompt syntax of some trainers needs
    batch_size: int = Field(16, ge=1)


@dataclass
class Tags:
    """One image's tags: the ordered list and the scores they came from."""

    tags: list[str]
    rating: str
    ratings: dict[str, float]
    general: dict[str, float]
    character: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "tags": self.tags,
            "rating": self.rating,
            "ratings": self.ratings,
            "general": self.general,
            "character": self.character,
        }


def tag_fields(tags: dict[str, Any]) -> dict[str, Any]:
    """A record's `tags` as templates read them: the ordered tags, the rating, character and general tag names."""
    return {
        "tags": list(tags.get("tags") or []),
        "rating": tags.get("rating") or "",
        "characters": list(tags.get("character") or {}),
        "general": list(tags.get("general") or {}),
    }


def tagger_identity(model: str) -> dict[str, str]:
    """{"model": absolute folder or hub id, "fingerprint": ...}: what identifies a tagger's outputs. Reads the files
    (a hub id's are downloaded once, as loading would), loads no model; ModelLoadError when they are not there."""
    onnx_file, csv_file = _files(model)
    name = str(Path(model).resolve()) if Path(model).is_dir() else model
    return {"model": name, "fingerprint": fingerprint(onnx_file, csv_file)}


def fingerprint(onnx_file: Path, csv_file: Path) -> str:
    """sha256 (16 hex) of the tag list, the model's size and 1 MiB of it at its start, middle and end: a retrained
    tagger of the same architecture (same size) differs there, and a 300 MB model is not read whole on each run."""
    digest = hashlib.sha256(csv_file.read_bytes())
    size = onnx_file.stat().st_size
    digest.update(f"\0{size}\0".encode())
    with open(onnx_file, "rb") as handle:
        for offset in sorted({0, max(0, size // 2 - SAMPLE // 2), max(0, size - SAMPLE)}):
            handle.seek(offset)
            digest.update(handle.read(SAMPLE))
    return digest.hexdigest()[:16]


def _files(model: str) -> tuple[Path, Path]:
    folder = Path(model)
    if folder.is_dir():
        onnx_file, csv_file = folder / "model.onnx", folder / "selected_tags.csv"
    else:
        from huggingface_hub import hf_hub_download

        try:
            onnx_file = Path(hf_hub_download(model, "model.onnx"))
            csv_file = Path(hf_hub_download(model, "selected_tags.csv"))
        except Exception as exc:  # offline, unknown repo: the tagger cannot load
            raise ModelLoadError(f"tagger {model!r}: not a folder, and not downloadable ({exc})") from exc
    for path in (onnx_file, csv_file):
        if not path.is_file():
            raise ModelLoadError(
                f"tagger {model!r}: {path.name} is missing (a WD tagger has model.onnx and selected_tags.csv)"
            )
    return onnx_file, csv_file


class WDTagger:
    """An ONNX tagger in the WD format, run by onnxruntime on the CPU (or a provider given)."""

    def __init__(self, options: TaggerOptions, providers: list[str] | None = None):
        try:
            import onnxruntime
        except ImportError as exc:
            raise MissingDependencyError("onnxruntime", "tag", "WD taggers") from exc
        self.options = options
        onnx_file, csv_file = _files(options.model)
        try:
            self.session = onnxruntime.InferenceSession(str(onnx_file), providers=providers or ["CPUExecutionProvider"])
        except Exception as exc:  # a file that is not ONNX, or an operator the runtime lacks
            raise ModelLoadError(f"tagger {options.model!r}: {onnx_file.name} does not load ({exc})") from exc
        model_input = self.session.get_inputs()[0]
        self.input_name = model_input.name
        self.side = int(model_input.shape[1])
        with open(csv_file, newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
        self.names = [self._display(row["name"]) for row in rows]
        self.categories = [int(row["category"]) for row in rows]
        blocked = {b.strip() for b in options.blacklist}
        self.blocked = blocked | {b.replace(" ", "_") for b in blocked} | {b.replace("_", " ") for b in blocked}

    def _display(self, name: str) -> str:
        if not self.options.underscores and name not in KAOMOJIS:
            name = name.replace("_", " ")
        if self.options.escape_parentheses:
            name = name.replace("(", "\\(").replace(")", "\\)")
        return name

    def prepare(self, image: Any) -> Any:
        """One image as the model reads it: (side, side, 3) BGR float32."""
        import numpy as np
        from PIL import Image

        rgba = image.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (255, 255, 255))
        canvas.alpha_composite(rgba)
        rgb = canvas.convert("RGB")
        side = max(rgb.size)
        square = Image.new("RGB", (side, side), (255, 255, 255))
        square.paste(rgb, ((side - rgb.size[0]) // 2, (side - rgb.size[1]) // 2))
        if side != self.side:
            square = square.resize((self.side, self.side), Image.BICUBIC)
        return np.asarray(square, dtype=np.float32)[:, :, ::-1]

    def scores(self, images: list[Any]) -> Any:
        """(len(images), n_tags) sigmoid scores, in batches."""
        import numpy as np

        out = []
        for start in range(0, len(images), self.options.batch_size):
            batch = np.stack([self.prepare(im) for im in images[start : start + self.options.batch_size]])
            out.append(self.session.run(None, {self.input_name: np.ascontiguousarray(batch)})[0])
        return np.concatenate(out) if out else np.zeros((0, len(self.names)), dtype=np.float32)

    def tag(self, images: list[Any]) -> list[Tags]:
        return [self.select(row) for row in self.scores(images)]

    def select(self, row: Any) -> Tags:
        """Thresholds, blacklist, maximum count and order applied to one image's scores."""
        o = self.options
        ratings = {n: float(p) for n, c, p in zip(self.names, self.categories, row, strict=True) if c == RATING}
        general = self._above(row, GENERAL, o.general_threshold)
        character = self._above(row, CHARACTER, o.character_threshold)
        if o.max_tags is not None:
            general = dict(list(general.items())[: o.max_tags])
        rating = max(ratings, key=ratings.__getitem__) if ratings else ""
        ordered = [*character, *general] if o.character_first else [*general, *character]
        if o.rating_tag and rating:
            ordered.insert(0, rating)
        return Tags(ordered, rating, ratings, general, character)

    def _above(self, row: Any, category: int, threshold: float) -> dict[str, float]:
        picked = [
            (n, float(p))
            for n, c, p in zip(self.names, self.categories, row, strict=True)
            if c == category and p > threshold and n not in self.blocked
        ]
        return dict(sorted(picked, key=lambda np_: np_[1], reverse=True))

    def describe(self) -> dict[str, Any]:
        return {**self.options.model_dump(exclude={"batch_size"}), "side": self.side, "tags": len(self.names)}
