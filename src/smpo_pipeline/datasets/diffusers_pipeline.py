"""A diffusers pipeline directory as a Kedro dataset (``save_pretrained`` / ``from_pretrained``).

Saved atomically: written to a sibling temporary directory, then renamed over the target, so an
interrupted save never leaves a half-written model where a later stage would load it.
"""

from __future__ import annotations

import importlib
import shutil
from pathlib import Path
from typing import Any

from kedro.io import AbstractDataset, DatasetError


class DiffusersPipelineDataset(AbstractDataset):
    def __init__(
        self,
        path: str,
        pipeline_class: str = "diffusers.StableDiffusionXLPipeline",
        load_args: dict[str, Any] | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        self._path = Path(path)
        self._pipeline_class = pipeline_class
        self._load_args = load_args or {}
        self.metadata = metadata

    def _class(self):
        module, _, name = self._pipeline_class.rpartition(".")
        return getattr(importlib.import_module(module), name)

    def load(self):
        if not (self._path / "model_index.json").is_file():
            raise DatasetError(f"{self._path} holds no diffusers pipeline (no model_index.json)")
        return self._class().from_pretrained(self._path, **self._load_args)

    def save(self, data) -> None:
        tmp = self._path.with_name(self._path.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        data.save_pretrained(tmp, safe_serialization=True)
        old = self._path.with_name(self._path.name + ".old")
        if self._path.exists():
            shutil.rmtree(old, ignore_errors=True)
            self._path.rename(old)
        tmp.rename(self._path)
        shutil.rmtree(old, ignore_errors=True)

    def _exists(self) -> bool:
        return (self._path / "model_index.json").is_file()

    def _describe(self) -> dict[str, Any]:
        return {"path": str(self._path), "pipeline_class": self._pipeline_class}
