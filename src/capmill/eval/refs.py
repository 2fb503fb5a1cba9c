"""Reference captions, read from a COCO caption-annotation file or from JSONL, keyed so records can find them.

A record's id rarely equals a COCO image id exactly ("000000397133", "000000397133.jpg", "val2017/..."), so
every reference set keeps aliases: the image id, its file name and the file name's stem all lead to one key.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from capmill.errors import ConfigError


def _stem(name: str) -> str:
    return PurePosixPath(name.replace("\\", "/")).stem


def _number(text: str) -> str | None:
    """ "000000397133" -> "397133": COCO file names zero-pad the image id."""
    digits = text.lstrip("0")
    return (digits or "0") if text.isdigit() else None


@dataclass
class References:
    """Reference captions per key, with aliases (file names, stems, unpadded ids) pointing at keys."""

    captions: dict[str, list[str]] = field(default_factory=dict)
    aliases: dict[str, str] = field(default_factory=dict)
    source: str = ""

    def add(self, key: str, caption: str, *names: str) -> None:
        self.captions.setdefault(key, []).append(caption)
        self.alias(key, key, *names)

    def alias(self, key: str, *names: str) -> None:
        for name in names:
            if not name:
                continue
            for form in (name, PurePosixPath(name.replace("\\", "/")).name, _stem(name), _number(_stem(name))):
                if form:
                    self.aliases.setdefault(form, key)

    def key_for(self, *candidates: str | None) -> str | None:
        """The reference key for the first candidate (record id, source path ...) that matches, else None."""
        for cand in candidates:
            if not cand:
                continue
            cand = str(cand)
            for form in (cand, PurePosixPath(cand.replace("\\", "/")).name, _stem(cand), _number(_stem(cand))):
                if form and form in self.aliases:
                    return self.aliases[form]
        return None

    def __len__(self) -> int:
        return len(self.captions)


def load_references(path: str | Path) -> References:
    """Read references from a COCO caption-annotation JSON file or a JSONL file (see docs/eval.md)."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"references {path}: file not found")
    if path.suffix == ".jsonl":
        refs = _from_jsonl(path)
    else:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"references {path}: not valid JSON ({exc})") from exc
        refs = _from_coco(path, data)
    if not refs.captions:
        raise ConfigError(f"references {path}: no reference captions found")
    refs.source = str(path)
    return refs


def _from_coco(path: Path, data: Any) -> References:
    if not isinstance(data, dict) or not isinstance(data.get("annotations"), list):
        raise ConfigError(f"references {path}: expected a COCO caption file with an 'annotations' list")
    files = {str(img.get("id")): img.get("file_name", "") for img in data.get("images", []) if isinstance(img, dict)}
    refs = References()
    for i, ann in enumerate(data["annotations"]):
        if not isinstance(ann, dict) or "image_id" not in ann or not isinstance(ann.get("caption"), str):
            raise ConfigError(f"references {path}: annotation {i} needs 'image_id' and a string 'caption'")
        key = str(ann["image_id"])
        refs.add(key, ann["caption"], files.get(key, ""))
    return refs


def _from_jsonl(path: Path) -> References:
    """Lines like {"image_id"|"id": ..., "captions": [...]} or {"id": ..., "caption": "..."}; "file" adds an alias."""
    refs = References()
    with path.open(encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ConfigError(f"references {path}:{n}: not valid JSON ({exc.msg})") from exc
            key = row.get("image_id", row.get("id")) if isinstance(row, dict) else None
            if key is None:
                raise ConfigError(f"references {path}:{n}: needs 'image_id' or 'id'")
            caps = row.get("captions", row.get("references"))
            if caps is None and "caption" in row:
                caps = [row["caption"]]
            if not isinstance(caps, list) or not all(isinstance(c, str) for c in caps) or not caps:
                raise ConfigError(f"references {path}:{n}: needs 'captions' (a list of strings) or 'caption'")
            names = [str(row.get(k, "")) for k in ("file", "file_name", "source")]
            for cap in caps:
                refs.add(str(key), cap, *names)
    return refs
