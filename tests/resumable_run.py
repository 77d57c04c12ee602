"""One DRO training run that can kill itself with SIGKILL after a given step, for the resume test
(``tests/test_training_step.py``): ``python -m tests.resumable_run MODEL CACHE PAIRS CKPT LOG KILL_AT``
in a process of its own, or ``run(...)`` in the test's process."""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path


def run(model: str, cache: str, pairs: str, checkpoint_dir: str, log_file: str, kill_at: int) -> None:
    import pandas as pd
    from diffusers import StableDiffusionXLPipeline

    from smpo_pipeline.inversion import InversionConfig
    from smpo_pipeline.models.tiny_sdxl import NOISE_SCHEDULE
    from smpo_pipeline.training.cache import CacheReader, Fingerprints
    from smpo_pipeline.training.config import DROConfig, TrainConfig
    from smpo_pipeline.training.data import CachedExperts, CachedPairs, expert_pool
    from smpo_pipeline.training.trainer import train_preference

    pipe = StableDiffusionXLPipeline.from_pretrained(model)
    inversion = InversionConfig(num_steps=5, renoise_iterations=1)
    reader, prints = CacheReader(Path(cache)), Fingerprints.of(pipe, inversion)
    data = CachedPairs(pd.read_parquet(pairs), reader, prints, True)
    experts = CachedExperts(expert_pool(pd.read_parquet(pairs)), reader, prints)
    # DRO: a sampling network refreshed every 3 steps and a buffer of 3 states: both must be restored.
    config = TrainConfig(objective="dro", beta=5000.0, gamma=10.0, forward_noise="cached", steps=6, batch_size=2,
                         learning_rate=1e-3, warmup_steps=1, grad_clip=1.0, caption_dropout=0.5, seed=0,
                         checkpoint_dir=checkpoint_dir, checkpoint_every=2, keep_last=2,
                         dro=DROConfig(refresh_every=3, buffer_size=3))

    def log(step: int, record: dict) -> None:
        with open(log_file, "a") as f:
            f.write(json.dumps({"step": step, "loss": record["loss"]}) + "\n")
        if step == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)  # kill -9 in the middle of the run

    train_preference(pipe.unet, data, config, inversion, NOISE_SCHEDULE, log, experts)


if __name__ == "__main__":
    from smpo_pipeline.runtime import apply_project_environment

    apply_project_environment()
    model, cache, pairs, checkpoint_dir, log_file, kill_at = sys.argv[1:]
    run(model, cache, pairs, checkpoint_dir, log_file, int(kill_at))
