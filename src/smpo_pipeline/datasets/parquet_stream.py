"""One parquet file written from an iterable of ``pyarrow.Table`` with the same schema (a
generator keeps memory bounded by one table); written to a temporary file, then renamed."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from kedro.io import AbstractDataset, DatasetError


class ParquetStreamDataset(AbstractDataset):
    def __init__(self, filepath: str, metadata: dict[str, Any] | None = None) -> None:
        self._filepath = Path(filepath)
        self.metadata = metadata

    def load(self):
        import pyarrow.parquet as pq

        if not self._filepath.is_file():
            raise DatasetError(f"{self._filepath} does not exist")
        return pq.read_table(self._filepath)

    def save(self, data: Iterable) -> None:
        import pyarrow.parquet as pq

        self._filepath.parent.mkdir(parents=True, exist_ok=True)
        tmp = self._filepath.with_suffix(".tmp")
        writer = None
        try:
            for table in data:
                if writer is None:
                    writer = pq.ParquetWriter(tmp, table.schema)
                writer.write_table(table)
        finally:
            if writer is not None:
                writer.close()
        if writer is None:
            raise DatasetError(f"{self._filepath}: nothing to write (no table given)")
        tmp.replace(self._filepath)

    def _exists(self) -> bool:
        return self._filepath.is_file()

    def _describe(self) -> dict[str, Any]:
        return {"filepath": str(self._filepath)}
