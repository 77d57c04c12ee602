"""A directory of parquet shards, written and read one shard at a time.

``save`` takes an iterable of ``pyarrow.Table`` (a generator keeps memory bounded by one shard)
and writes ``shard-00000.parquet``, ``shard-00001.parquet``, ... into a temporary directory that
replaces the target only when every shard is written. ``load`` returns the sorted shard paths, so
the consumer decides how to stream them.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from kedro.io import AbstractDataset, DatasetError


class ParquetShardsDataset(AbstractDataset):
    def __init__(self, path: str, pattern: str = "*.parquet", metadata: dict[str, Any] | None = None) -> None:
        self._path = Path(path)
        self._pattern = pattern
        self.metadata = metadata

    def load(self) -> list[Path]:
        if not self._path.is_dir():
            raise DatasetError(f"shard directory {self._path} does not exist")
        return sorted(self._path.glob(self._pattern))

    def save(self, data: Iterable) -> None:
        import pyarrow.parquet as pq

        tmp = self._path.with_name(self._path.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        for i, table in enumerate(data):
            pq.write_table(table, tmp / f"shard-{i:05d}.parquet")
        if self._path.exists():
            shutil.rmtree(self._path)
        tmp.rename(self._path)

    def _exists(self) -> bool:
        return self._path.is_dir() and any(self._path.glob(self._pattern))

    def _describe(self) -> dict[str, Any]:
        return {"path": str(self._path), "pattern": self._pattern}
