"""A diffusers pipeline directory as a Kedro dataset (``save_pretrained`` / ``from_pretrained``).

Saved atomically: written to a sibling temporary directory, then renamed over the target, so an
interrupted save never leaves a half-written model where a later stage would load it. ``path`` may
also be a hub id (``org/name``; read-only, fetched unless ``HF_HUB_OFFLINE``), and ``vae`` swaps in
another VAE (a hub id or directory, e.g. ``madebyollin/sdxl-vae-fp16-fix``).

An objective that ``train.objectives`` leaves out is saved as a :class:`NotTrained` marker (one small
JSON file) rather than as a copy of the base model: the copy cost 7 GB per skipped objective on SDXL,
and later stages evaluated it under the objective's name.
"""

from __future__ import annotations

import importlib
import json
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from kedro.io import AbstractDataset, DatasetError

NOT_TRAINED = "not_trained.json"


def replace_directory(path: Path, write: Callable[[Path], object]) -> None:
    """Replace the directory ``path`` atomically with what ``write(tmp)`` puts in a fresh sibling:
    an interrupted save never leaves a half-written directory where a later stage would load it."""
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    write(tmp)
    old = path.with_name(path.name + ".old")
    if path.exists():
        shutil.rmtree(old, ignore_errors=True)
        path.rename(old)
    tmp.rename(path)
    shutil.rmtree(old, ignore_errors=True)


@dataclass(frozen=True)
class NotTrained:
    """Stands for the model of an objective that this run did not train; later nodes skip it."""

    objective: str
    reason: str


class DiffusersPipelineDataset(AbstractDataset):
    def __init__(
        self,
        path: str,
        pipeline_class: str = "diffusers.StableDiffusionXLPipeline",
        load_args: dict[str, Any] | None = None,
        vae: str | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        self._source = path
        self._path = Path(path)
        self._vae = vae
        self._pipeline_class = pipeline_class
        self._load_args = load_args or {}
        self.metadata = metadata

    def _class(self):
        module, _, name = self._pipeline_class.rpartition(".")
        return getattr(importlib.import_module(module), name)

    def _is_hub_id(self) -> bool:
        return not self._path.exists() and self._source.count("/") == 1 and not self._source.startswith((".", "/"))

    def load(self):
        marker = self._path / NOT_TRAINED
        if marker.is_file():
            try:
                return NotTrained(**json.loads(marker.read_text()))
            except (ValueError, TypeError) as exc:  # bad JSON, or other fields than objective / reason
                raise DatasetError(f"{marker}: not a not-trained marker ({exc})") from exc
        args = dict(self._load_args)
        if self._vae:
            from diffusers import AutoencoderKL

            args["vae"] = AutoencoderKL.from_pretrained(self._vae, **{k: v for k, v in args.items() if k == "torch_dtype"})
        if self._is_hub_id():
            return self._class().from_pretrained(self._source, **args)
        if not (self._path / "model_index.json").is_file():
            raise DatasetError(f"{self._path} holds no diffusers pipeline (no model_index.json)")
        return self._class().from_pretrained(self._path, **args)

    def save(self, data) -> None:
        if self._is_hub_id():
            raise DatasetError(f"{self._source} is a hub id: give a local directory to save to")
        if isinstance(data, NotTrained):
            replace_directory(self._path, lambda tmp: (tmp / NOT_TRAINED).write_text(json.dumps(asdict(data), indent=2) + "\n"))
        else:
            replace_directory(self._path, lambda tmp: data.save_pretrained(tmp, safe_serialization=True))

    def _exists(self) -> bool:
        return self._is_hub_id() or any((self._path / f).is_file() for f in ("model_index.json", NOT_TRAINED))

    def _describe(self) -> dict[str, Any]:
        return {"path": self._source, "vae": self._vae, "pipeline_class": self._pipeline_class}
