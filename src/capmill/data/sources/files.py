"""Local files: a folder (recursive), a glob pattern, a single file, or a list of paths in a text file."""

from __future__ import annotations

import glob as globlib
import os
from collections.abc import Iterator

from capmill.data.sources.base import ListingSource, error_item, file_item, input_name, kind_of, relative_id
from capmill.records import Item


def _wanted(path: str, text_mode: bool, include_video: bool) -> bool:
    kind = kind_of(path)
    if text_mode:
        return kind == "text"
    return kind == "image" or (include_video and kind == "video")


def _item_for(item_id: str, path: str, text_mode: bool) -> Item:
    kind = "text" if text_mode else (kind_of(path) or "image")
    return file_item(item_id, path, kind)


def glob_root(pattern: str) -> str:
    """The folder a glob pattern starts from: its leading parts without wildcards (`data/**/*.jpg` -> `data`)."""
    parts = pattern.split(os.sep)
    fixed = []
    for part in parts[:-1]:
        if globlib.has_magic(part):
            break
        fixed.append(part)
    return os.sep.join(fixed) or ("/" if pattern.startswith(os.sep) else ".")


class FolderSource(ListingSource):
    """Every image (or, in text mode, every .txt caption) under a folder, sorted, recursively by default."""

    name = "folder"

    def __iter__(self) -> Iterator[Item]:
        root = self.spec
        text_mode, video = self.options.text_mode, self.options.include_video
        visited: set[str] = set()
        for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
            real = os.path.realpath(dirpath)
            if real in visited:  # a symlink loop, or two links to one folder: each file once
                dirnames.clear()
                continue
            visited.add(real)
            dirnames.sort()
            if not self.options.recursive:
                dirnames.clear()
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            for name in sorted(filenames):
                if name.startswith("."):
                    continue
                path = os.path.join(dirpath, name)
                if _wanted(path, text_mode, video):
                    yield _item_for(relative_id(root, path), path, text_mode)


class GlobSource(ListingSource):
    """Files matching a glob pattern (`**` matches folders recursively)."""

    name = "glob"

    def __iter__(self) -> Iterator[Item]:
        text_mode, video = self.options.text_mode, self.options.include_video
        root = glob_root(self.spec)
        for path in sorted(globlib.iglob(self.spec, recursive=True)):
            if (os.path.isfile(path) or os.path.islink(path)) and _wanted(path, text_mode, video):
                yield _item_for(relative_id(root, path), path, text_mode)


class FileSource(ListingSource):
    """One file named on the command line (it may be missing or a broken link: that is a record, not a crash)."""

    name = "file"

    def __iter__(self) -> Iterator[Item]:
        yield _item_for(input_name(self.spec), self.spec, self.options.text_mode)


class FileListSource(ListingSource):
    """A text file with one path per line (relative paths are relative to the list); `#` starts a comment."""

    name = "files"

    def __iter__(self) -> Iterator[Item]:
        base = os.path.dirname(os.path.abspath(self.spec))
        try:
            handle = open(self.spec, encoding="utf-8")
        except OSError as exc:
            yield error_item(self.spec, self.spec, "unreadable file", str(exc))
            return
        with handle:
            for line in handle:
                entry = line.strip()
                if not entry or entry.startswith("#"):
                    continue
                path = entry if os.path.isabs(entry) else os.path.join(base, entry)
                yield _item_for(entry, path, self.options.text_mode)
