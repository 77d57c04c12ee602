"""The training entry point for several processes: ``python -m torch.distributed.run
--nproc_per_node=N -m smpo_pipeline.training.launch SPEC.json`` (or the DeepSpeed launcher).

Every rank reads the same spec (model directory, cache, pairs, DRO's experts, ``TrainConfig``,
inversion) and
trains under DeepSpeed ZeRO, which averages gradients across ranks; each rank draws its own batches
(seed + rank). Rank 0 writes the trained UNet (safetensors) and the per-step metrics; every rank
writes a checksum of its final weights, so a caller can see that the ranks stayed in sync.
``train_in_processes`` is the caller: Kedro's ``train`` node uses it when ``train.num_processes > 1``,
so the ranks never each run the Kedro pipeline.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import subprocess
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

log = logging.getLogger(__name__)


def train_in_processes(base_model, pairs, experts, config, inversion, *, num_processes: int, cache_root: str,
                       storage_dtype: str = "float32", launcher: str = "torchrun", hostfile: str | None = None,
                       launch_dir: str | None = None):
    """Train under ``num_processes`` ranks of this module, under torchrun on this machine or under
    DeepSpeed's launcher (``hostfile``: several nodes, ``launch_dir`` on storage they share).
    Returns (per-step records of rank 0, the trained UNet)."""
    from safetensors.torch import load_file

    from smpo_pipeline.runtime import deepspeed_command, torchrun_command

    with tempfile.TemporaryDirectory(dir=launch_dir) as tmp:
        tmp = Path(tmp).resolve()
        base_model.save_pretrained(tmp / "model")
        pairs.to_parquet(tmp / "pairs.parquet")
        spec = {"model": str(tmp / "model"), "cache": str(Path(cache_root).resolve()), "pairs": str(tmp / "pairs.parquet"),
                "config": asdict(config), "inversion": asdict(inversion), "output": str(tmp / "out"),
                "threads_per_rank": 1, "storage_dtype": storage_dtype}
        if experts is not None:
            experts.pairs.to_parquet(tmp / "experts.parquet")
            spec["experts"] = str(tmp / "experts.parquet")
        (tmp / "spec.json").write_text(json.dumps(spec))
        if launcher == "deepspeed":
            command = deepspeed_command(hostfile, num_processes, "smpo_pipeline.training.launch", str(tmp / "spec.json"))
        else:
            command = torchrun_command(num_processes, "smpo_pipeline.training.launch", str(tmp / "spec.json"))
        log.info("Launching %s on %d processes: %s", config.objective, num_processes, " ".join(command))
        subprocess.run(command, check=True)
        written = sorted((tmp / "out").glob("rank*.sha256"))
        if len(written) != num_processes:
            raise RuntimeError(f"{config.objective}: {len(written)} ranks ran, {num_processes} were launched")
        if len({path.read_text() for path in written}) != 1:
            raise RuntimeError(f"{config.objective}: the {num_processes} ranks ended with different weights")
        policy = copy.deepcopy(base_model.unet)
        policy.load_state_dict(load_file(tmp / "out" / "unet.safetensors"))
        records = [json.loads(line) for line in (tmp / "out" / "metrics.jsonl").read_text().splitlines()]
    return records, policy.eval()


def main(spec_path: str) -> None:
    import pandas as pd
    import torch

    from smpo_pipeline.runtime import apply_project_environment

    apply_project_environment()  # before diffusers imports huggingface_hub
    from diffusers import StableDiffusionXLPipeline
    from safetensors.torch import save_file

    from smpo_pipeline.inversion import InversionConfig
    from smpo_pipeline.models.tiny_sdxl import noise_schedule
    from smpo_pipeline.runtime import rank_and_world
    from smpo_pipeline.training.cache import CacheReader, Fingerprints
    from smpo_pipeline.training.config import TrainConfig
    from smpo_pipeline.training.data import CachedExperts, CachedPairs
    from smpo_pipeline.training.trainer import train_preference

    spec = json.loads(Path(spec_path).read_text())
    rank, _ = rank_and_world()
    torch.set_num_threads(int(spec.get("threads_per_rank", 1)))
    pipe = StableDiffusionXLPipeline.from_pretrained(spec["model"])
    inversion = InversionConfig(**spec["inversion"])
    config = TrainConfig(**spec["config"])
    reader, prints = CacheReader(Path(spec["cache"])), Fingerprints.of(pipe, inversion, spec.get("storage_dtype", "float32"))
    data = CachedPairs(pd.read_parquet(spec["pairs"]), reader, prints, config.forward_noise == "cached")
    experts = CachedExperts(pd.read_parquet(spec["experts"]), reader, prints) if spec.get("experts") else None
    out = Path(spec["output"])
    out.mkdir(parents=True, exist_ok=True)

    def log(step: int, record: dict) -> None:
        if rank == 0:
            with (out / "metrics.jsonl").open("a") as f:
                f.write(json.dumps({"step": step} | record) + "\n")

    policy = train_preference(pipe.unet, data, config, inversion, noise_schedule(pipe), log,
                              experts)
    state = {k: v.contiguous() for k, v in policy.state_dict().items()}
    digest = hashlib.sha256(b"".join(state[k].numpy().tobytes() for k in sorted(state))).hexdigest()
    (out / f"rank{rank}.sha256").write_text(digest)
    if rank == 0:
        save_file(state, out / "unet.safetensors")


if __name__ == "__main__":
    main(sys.argv[1])
