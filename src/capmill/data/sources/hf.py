"""Hugging Face datasets: a `save_to_disk` folder, or a hub id when the hub is reachable (streamed)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

from capmill.data.sources.base import Source, input_name
from capmill.data.sources.tabular import RowReader
from capmill.errors import ConfigError, MissingDependencyError
from capmill.records import Item


def _datasets() -> Any:
    try:
        import datasets
    except ImportError as exc:
        raise MissingDependencyError("datasets", "datasets", "Hugging Face dataset inputs") from exc
    return datasets


def _undecoded(ds: Any, datasets: Any) -> Any:
    """Image columns as {bytes, path} rather than decoded PIL images: decoding belongs to the workers."""
    for name, feature in (ds.features or {}).items():
        if isinstance(feature, datasets.Image):
            ds = ds.cast_column(name, datasets.Image(decode=False))
    return ds


class HFDiskSource(Source):
    """A folder written by `Dataset.save_to_disk` / `DatasetDict.save_to_disk`."""

    name = "hf"

    def _splits(self) -> list[tuple[str, Any]]:
        datasets = _datasets()
        loaded = datasets.load_from_disk(self.spec)
        if isinstance(loaded, datasets.DatasetDict):
            names = [self.options.split] if self.options.split else list(loaded)
            missing = [n for n in names if n not in loaded]
            if missing:
                raise ConfigError(f"{self.spec}: no split {missing[0]!r}; splits are {list(loaded)}")
            return [(n, loaded[n]) for n in names]
        return [("", loaded)]

    def __iter__(self) -> Iterator[Item]:
        datasets = _datasets()
        base = os.path.abspath(self.spec)
        for split, ds in self._splits():
            ds = _undecoded(ds, datasets)
            origin = f"{self.spec}/{split}" if split else self.spec
            name = input_name(self.spec)
            reader = RowReader(list(ds.column_names), self.options, origin, base, f"{name}/{split}" if split else name)
            for index, row in enumerate(ds):
                yield reader.item(row, index)


class HFHubSource(Source):
    """A dataset on the Hugging Face Hub, streamed; offline this fails at once with a clear message."""

    name = "hf-hub"

    def __iter__(self) -> Iterator[Item]:
        datasets = _datasets()
        split = self.options.split or "train"
        try:
            ds = datasets.load_dataset(self.spec, split=split, streaming=True)
        except Exception as exc:  # noqa: BLE001 - offline, unknown id, gated: all a config error before work
            raise ConfigError(f"cannot open Hugging Face dataset {self.spec!r} (split {split}): {exc}") from exc
        ds = _undecoded(ds, datasets)
        reader = RowReader(list(ds.column_names or []), self.options, f"{self.spec}/{split}", os.getcwd())
        for index, row in enumerate(ds):
            yield reader.item(row, index)
