"""Nodes of the ``cache`` pipeline: a thin adapter over ``smpo_pipeline.training.cache``."""

from __future__ import annotations

import logging
import subprocess
import tempfile
from pathlib import Path

from smpo_pipeline.params import CacheParams, DataParams, RuntimeParams
from smpo_pipeline.runtime import torchrun_command

log = logging.getLogger(__name__)


def pair_images(preference_pairs, images_dir: Path) -> list[tuple[str, str, bytes]]:
    """(image uid, caption, JPEG bytes) of both images of every pair, each image once."""
    from smpo_pipeline.ingest.images import pair_image_bytes

    data = pair_image_bytes(preference_pairs, images_dir)
    captions = {}
    for k in (0, 1):
        captions.update(zip(preference_pairs[f"image_{k}_uid"], preference_pairs["caption"], strict=True))
    return [(uid, caption, data[uid]) for uid, caption in captions.items()]


def fill_training_cache(preference_pairs, base_model, cache: CacheParams, data: DataParams, runtime: RuntimeParams) -> dict:
    """Every pair image's latent and trajectory and every caption's embeddings, computed with the
    base model (the reference); entries already cached and intact are not recomputed. With
    ``cache.num_processes > 1`` the same entry point runs under ``torchrun``, one share per rank."""
    import torch

    from smpo_pipeline.inversion import InversionConfig
    from smpo_pipeline.training.cache import CacheReader, build_cache

    items = pair_images(preference_pairs, Path(data.work_dir))
    config = InversionConfig.of(cache.inversion)
    root = Path(cache.root)
    if cache.num_processes == 1:
        counts = build_cache(base_model, items, root, config, cache.batch_size,
                             storage_dtype=getattr(torch, cache.storage_dtype), trajectories=cache.trajectories)
        log.info("Cache: %s", counts)
    else:
        _launch(items, base_model, cache, runtime)
    summary = CacheReader(root).summary()
    summary["per_image_bytes"] = round(summary["bytes"] / max(len(items), 1))
    log.info("Cache at %s: %d shards, %.1f MiB", root, summary["shards"], summary["bytes"] / 2**20)
    return summary


def _launch(items, base_model, cache: CacheParams, runtime: RuntimeParams) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        pq.write_table(pa.table({"image_uid": [u for u, _, _ in items], "caption": [c for _, c, _ in items],
                                 "jpg": [b for _, _, b in items]}), tmp / "items.parquet")
        base_model.save_pretrained(tmp / "model")
        threads = max(1, (runtime.num_threads or 2) // cache.num_processes)
        command = torchrun_command(
            cache.num_processes, "smpo_pipeline.training.cache", "--model", str(tmp / "model"),
            "--items", str(tmp / "items.parquet"), "--root", cache.root, "--num-steps", str(cache.inversion.num_steps),
            "--renoise-iterations", str(cache.inversion.renoise_iterations),
            "--guidance-scale", str(cache.inversion.guidance_scale), "--batch-size", str(cache.batch_size),
            "--dtype", cache.storage_dtype, "--threads", str(threads),
            *([] if cache.trajectories else ["--no-trajectories"]),
        )
        log.info("Launching: %s", " ".join(command))
        subprocess.run(command, check=True)
