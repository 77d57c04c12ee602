"""A prompt set as a plain text file, one prompt a line — the format of real prompt sets
(Pick-a-Pic test_unique, PartiPrompts, HPDv2 exports) as well as the embedded ones."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kedro.io import AbstractDataset, DatasetError


class PromptListDataset(AbstractDataset):
    def __init__(self, filepath: str, metadata: dict[str, Any] | None = None) -> None:
        self._filepath = Path(filepath)
        self.metadata = metadata

    def load(self) -> list[str]:
        if not self._filepath.is_file():
            raise DatasetError(f"prompt file {self._filepath} does not exist")
        lines = self._filepath.read_text(encoding="utf-8").splitlines()
        prompts = [line.strip() for line in lines if line.strip()]
        if not prompts:  # an evaluation or training set of nothing would fail far from its cause
            raise DatasetError(f"prompt file {self._filepath} holds no prompts (one prompt a line expected)")
        return prompts

    def save(self, data: list[str]) -> None:
        bad = [i for i, p in enumerate(data) if "\n" in p or not p.strip()]
        if bad:
            raise DatasetError(f"{self._filepath}: prompts {bad[:5]} are empty or span lines")
        self._filepath.parent.mkdir(parents=True, exist_ok=True)
        tmp = self._filepath.with_suffix(self._filepath.suffix + ".tmp")
        tmp.write_text("".join(p + "\n" for p in data), encoding="utf-8")
        tmp.replace(self._filepath)

    def _exists(self) -> bool:
        return self._filepath.is_file()

    def _describe(self) -> dict[str, Any]:
        return {"filepath": str(self._filepath)}
