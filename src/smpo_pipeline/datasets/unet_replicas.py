"""Replicate runs of one objective as a Kedro dataset: ``{seed: UNet2DConditionModel}``.

Each UNet is a stock diffusers model directory (``<path>/seed-<k>/``, safetensors), loadable with
``UNet2DConditionModel.from_pretrained`` and swappable into the objective's pipeline. The first
seed's run is the objective's pipeline itself (``DiffusersPipelineDataset``); this dataset holds
the others. Saved atomically, like the pipeline dataset: a killed save leaves the old set whole.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from kedro.io import AbstractDataset, DatasetError

from smpo_pipeline.datasets.diffusers_pipeline import replace_directory

_SEED_DIR = re.compile(r"^seed-(-?\d+)$")


class UNetReplicasDataset(AbstractDataset):
    def __init__(self, path: str, metadata: dict[str, Any] | None = None) -> None:
        self._path = Path(path)
        self.metadata = metadata

    def load(self) -> dict[int, Any]:
        from diffusers import UNet2DConditionModel

        if not self._path.is_dir():
            raise DatasetError(f"{self._path}: no replicas saved here (run the train pipeline)")
        replicas = {}
        for child in sorted(self._path.iterdir()):
            match = _SEED_DIR.match(child.name)
            if match is None:
                continue
            if not (child / "config.json").is_file():
                raise DatasetError(f"{child}: not a diffusers UNet directory (no config.json)")
            replicas[int(match.group(1))] = UNet2DConditionModel.from_pretrained(child).eval()
        return replicas

    def save(self, data: dict[int, Any]) -> None:
        def write(tmp: Path) -> None:
            for seed, unet in data.items():
                unet.save_pretrained(tmp / f"seed-{int(seed)}", safe_serialization=True)
            # Always one file, so that an objective trained with one seed still has an output (DVC).
            (tmp / "replicas.json").write_text(json.dumps({"seeds": sorted(int(s) for s in data)}) + "\n")

        replace_directory(self._path, write)

    def _exists(self) -> bool:
        return self._path.is_dir()

    def _describe(self) -> dict[str, Any]:
        return {"path": str(self._path)}
