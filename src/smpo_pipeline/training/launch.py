"""The training entry point for several processes: ``python -m torch.distributed.run
--nproc_per_node=N -m smpo_pipeline.training.launch SPEC.json`` (or the DeepSpeed launcher).

Every rank reads the same spec (model directory, cache, pairs, DRO's experts, ``TrainConfig``,
inversion) and
trains under DeepSpeed ZeRO, which averages gradients across ranks; each rank draws its own batches
(seed + rank). Rank 0 writes the trained UNet (safetensors) and the per-step metrics; every rank
writes a checksum of its final weights, so a caller can see that the ranks stayed in sync. Kedro's
``train`` node launches this as a subprocess when ``train.num_processes > 1``, so the ranks never
each run the Kedro pipeline.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path


def main(spec_path: str) -> None:
    import pandas as pd
    import torch

    from smpo_pipeline.runtime import apply_project_environment

    apply_project_environment()  # before diffusers imports huggingface_hub
    from diffusers import DDPMScheduler, StableDiffusionXLPipeline
    from safetensors.torch import save_file

    from smpo_pipeline.inversion import InversionConfig
    from smpo_pipeline.models.tiny_sdxl import NOISE_SCHEDULE
    from smpo_pipeline.training.trainer import CachedExperts, CachedPairs, TrainConfig, train_preference
    from smpo_pipeline.training_cache import CacheReader, Fingerprints, rank_and_world

    spec = json.loads(Path(spec_path).read_text())
    rank, _ = rank_and_world()
    torch.set_num_threads(int(spec.get("threads_per_rank", 1)))
    pipe = StableDiffusionXLPipeline.from_pretrained(spec["model"])
    inversion = InversionConfig(**spec["inversion"])
    config = TrainConfig(**spec["config"])
    reader, prints = CacheReader(Path(spec["cache"])), Fingerprints.of(pipe, inversion)
    data = CachedPairs(pd.read_parquet(spec["pairs"]), reader, prints, config.inversion == "cached")
    experts = CachedExperts(pd.read_parquet(spec["experts"]), reader, prints) if spec.get("experts") else None
    out = Path(spec["output"])
    out.mkdir(parents=True, exist_ok=True)

    def log(step: int, record: dict) -> None:
        if rank == 0:
            with (out / "metrics.jsonl").open("a") as f:
                f.write(json.dumps({"step": step} | record) + "\n")

    policy = train_preference(pipe.unet, data, config, inversion, DDPMScheduler(**NOISE_SCHEDULE).alphas_cumprod, log,
                              experts)
    state = {k: v.contiguous() for k, v in policy.state_dict().items()}
    digest = hashlib.sha256(b"".join(state[k].numpy().tobytes() for k in sorted(state))).hexdigest()
    (out / f"rank{rank}.sha256").write_text(digest)
    if rank == 0:
        save_file(state, out / "unet.safetensors")


if __name__ == "__main__":
    main(sys.argv[1])
