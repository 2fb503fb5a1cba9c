"""Bring decoded tool-call arguments into the caption schema, noting each repair or refusing with a reason.

Safe repairs keep every word the model wrote and only change its shape (a string where a list belongs, a
subject written as a bare name, enum case), or drop content the schema can never hold (non-null style/mood,
unknown keys, items past the limit of 8: exactly what schema-constrained decoding would have allowed).
Refused: anything that would need content invented or cut mid-value (a name over 64 characters or empty, a
subject without a name, non-string items). See docs/parsing.md.
"""

from __future__ import annotations

from typing import Any

from capmill.schema.caption import FIELDS, MAX_ITEMS, MAX_NAME, SETTINGS

_SETTING_SYNONYMS = {"indoors": "indoor", "inside": "indoor", "outdoors": "outdoor", "outside": "outdoor"}
_SUBJECT_KEYS = ("name", "attributes")


def _preview(value: Any, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _split_string(value: str) -> list[str]:
    return [part.strip() for part in value.split(",") if part.strip()]


class Normalizer:
    """Collects `notes` (repairs made) and `refusals` (why the arguments cannot become a caption)."""

    __slots__ = ("notes", "refusals")

    def __init__(self) -> None:
        self.notes: list[str] = []
        self.refusals: list[str] = []

    def arguments(self, args: dict[str, Any]) -> dict[str, Any]:
        """Return a dict ready for `StructuredCaption.model_validate`."""
        clean: dict[str, Any] = {}
        if args and not any(key in FIELDS for key in args):
            # Dropping every key would leave an empty caption the model never wrote.
            self.refusals.append(
                f"none of the caption fields (subjects, actions, setting) in the arguments: {list(args)}"
            )
            return clean
        for key, value in args.items():
            if key not in FIELDS:
                self.notes.append(f"dropped unknown parameter {key!r} = {_preview(value)} (not in the schema)")
        if "subjects" in args:
            clean["subjects"] = self.subjects(args["subjects"])
        if "actions" in args:
            clean["actions"] = self.strings(args["actions"], "actions")
        if "setting" in args:
            clean["setting"] = self.setting(args["setting"])
        for key in ("style", "mood"):
            value = args.get(key)
            if value is not None:
                self.notes.append(f"{key} {_preview(value)} set to null ({key} is const null in the schema)")
        return clean

    def _limit(self, items: list[Any], where: str, label: Any = None) -> list[Any]:
        if len(items) <= MAX_ITEMS:
            return items
        dropped = items[MAX_ITEMS:]
        shown = [label(item) if label else item for item in dropped]
        self.notes.append(f"{where}: {len(items)} items, at most {MAX_ITEMS} allowed; dropped {shown!r}")
        return items[:MAX_ITEMS]

    def strings(self, value: Any, where: str) -> list[str]:
        """A list of strings (actions, attributes): a string or null is read as a list, with a note."""
        if value is None:
            self.notes.append(f"{where} was null; read as []")
            return []
        if isinstance(value, str):
            items = _split_string(value)
            self.notes.append(f"{where} given as a string {_preview(value)}; read as the list {items!r}")
            value = items
        if not isinstance(value, list):
            self.refusals.append(f"{where} must be a list of strings, got {type(value).__name__} {_preview(value)}")
            return []
        for index, item in enumerate(value):
            if not isinstance(item, str):
                self.refusals.append(f"{where}[{index}] must be a string, got {type(item).__name__} {_preview(item)}")
                return []
        return self._limit(value, where)

    def subjects(self, value: Any) -> list[dict[str, Any]]:
        if value is None:
            self.notes.append("subjects was null; read as []")
            return []
        if isinstance(value, dict):
            self.notes.append("subjects given as a single object; read as a list of one")
            value = [value]
        if not isinstance(value, list):
            self.refusals.append(f"subjects must be a list, got {type(value).__name__} {_preview(value)}")
            return []
        value = self._limit(value, "subjects", lambda s: s.get("name") if isinstance(s, dict) else s)
        return [subject for index, item in enumerate(value) if (subject := self.subject(item, index)) is not None]

    def subject(self, item: Any, index: int) -> dict[str, Any] | None:
        where = f"subjects[{index}]"
        if isinstance(item, str):
            self.notes.append(
                f"{where} given as the bare name {_preview(item)}; read as {{'name': ..., 'attributes': []}}"
            )
            item = {"name": item}
        if not isinstance(item, dict):
            self.refusals.append(f"{where} must be an object with a name, got {type(item).__name__} {_preview(item)}")
            return None
        for key in item:
            if key not in _SUBJECT_KEYS:
                self.notes.append(f"{where}: dropped unknown key {key!r} = {_preview(item[key])}")
        name = item.get("name")
        if not isinstance(name, str):
            reason = "has no name" if name is None else f"name must be a string, got {type(name).__name__}"
            self.refusals.append(f"{where} {reason}")
            return None
        if not name:
            self.refusals.append(f"{where}.name is empty (1-{MAX_NAME} characters required)")
            return None
        if len(name) > MAX_NAME:
            self.refusals.append(
                f"{where}.name is {len(name)} characters, at most {MAX_NAME} allowed: {_preview(name, 80)}"
            )
            return None
        subject: dict[str, Any] = {"name": name}
        if "attributes" in item:
            subject["attributes"] = self.strings(item["attributes"], f"{where}.attributes ({name!r})")
        return subject

    def setting(self, value: Any) -> str:
        if value in SETTINGS:
            return value
        if value is None:
            self.notes.append("setting was null; read as 'unknown' (the schema default)")
            return "unknown"
        if isinstance(value, str):
            folded = value.strip().lower()
            folded = _SETTING_SYNONYMS.get(folded, folded)
            if folded in SETTINGS:
                self.notes.append(f"setting {value!r} read as {folded!r}")
                return folded
        self.notes.append(
            f"setting {_preview(value)} is not one of indoor/outdoor/unknown; set to 'unknown' (nothing guessed)"
        )
        return "unknown"
