"""A directory of ``save_pretrained`` components (a transformers model and its processor) as a
Kedro dataset: ``{"model": ..., "processor": ...}`` in, the same out.

Saved atomically (``diffusers_pipeline.replace_directory``); an untrained model is saved as the
:class:`NotTrained` marker, as the diffusers pipelines are. Loading needs nothing of ours: the
directory is what ``CLIPModel.from_pretrained`` and ``CLIPProcessor.from_pretrained`` read.
"""

from __future__ import annotations

import importlib
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from kedro.io import AbstractDataset, DatasetError

from smpo_pipeline.datasets.diffusers_pipeline import NOT_TRAINED, NotTrained, replace_directory


def _class(path: str):
    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)


class PretrainedDirectoryDataset(AbstractDataset):
    def __init__(self, path: str, model_class: str = "transformers.CLIPModel",
                 processor_class: str = "transformers.CLIPProcessor", metadata: dict[str, Any] | None = None) -> None:
        self._path = Path(path)
        self._model_class, self._processor_class = model_class, processor_class
        self.metadata = metadata

    def load(self):
        marker = self._path / NOT_TRAINED
        if marker.is_file():
            try:
                return NotTrained(**json.loads(marker.read_text()))
            except (ValueError, TypeError) as exc:
                raise DatasetError(f"{marker}: not a not-trained marker ({exc})") from exc
        if not (self._path / "config.json").is_file():
            raise DatasetError(f"{self._path} holds no saved model (no config.json)")
        return {"model": _class(self._model_class).from_pretrained(self._path),
                "processor": _class(self._processor_class).from_pretrained(self._path)}

    def save(self, data) -> None:
        if isinstance(data, NotTrained):
            replace_directory(self._path, lambda tmp: (tmp / NOT_TRAINED).write_text(json.dumps(asdict(data), indent=2) + "\n"))
            return

        def write(tmp: Path) -> None:
            data["model"].save_pretrained(tmp, safe_serialization=True)
            data["processor"].save_pretrained(tmp)

        replace_directory(self._path, write)

    def _exists(self) -> bool:
        return any((self._path / f).is_file() for f in ("config.json", NOT_TRAINED))

    def _describe(self) -> dict[str, Any]:
        return {"path": str(self._path), "model_class": self._model_class, "processor_class": self._processor_class}
