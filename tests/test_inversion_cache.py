"""ReNoise inversion, the SmPO target, and the training cache (resume, corruption, invalidation,
rank split)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from smpo_pipeline.inversion import (
    InversionConfig,
    ddim_reconstruct,
    inverse_scheduler,
    renoise_inversion,
    smpo_target,
    trajectory_index,
)
from smpo_pipeline.models.tiny_sdxl import NOISE_SCHEDULE
from smpo_pipeline.pickapic import jpeg_bytes
from smpo_pipeline.runtime import torchrun_command
from smpo_pipeline.training.cache import CacheReader, Fingerprints, ShardedCache, build_cache
from smpo_pipeline.world.grammar import all_compositions
from smpo_pipeline.world.render import render

GRID = list(range(1, 1000, 100))


@pytest.fixture(scope="module")
def pipe(tiny_pipeline_dir):
    from diffusers import StableDiffusionXLPipeline

    return StableDiffusionXLPipeline.from_pretrained(tiny_pipeline_dir)


def _conditioning(pipe, n):
    from smpo_pipeline.models.conditioning import encode_prompts, time_ids

    prompts = [c.prompt for c in all_compositions()[:n]]
    with torch.no_grad():
        embeds, pooled = encode_prompts((pipe.tokenizer, pipe.tokenizer_2), (pipe.text_encoder, pipe.text_encoder_2), prompts)
    return {"prompt_embeds": embeds, "pooled": pooled, "time_ids": time_ids(32, n)}


def test_the_grid_is_the_official_one_and_each_timestep_uses_the_last_grid_point_below_it():
    assert inverse_scheduler(NOISE_SCHEDULE, 10).timesteps.tolist() == GRID
    assert inverse_scheduler(NOISE_SCHEDULE, 5).timesteps.tolist() == [1, 201, 401, 601, 801]
    t = torch.tensor([0, 1, 2, 101, 102, 500, 901, 902, 999])
    assert trajectory_index(t, GRID).tolist() == [0, 0, 1, 1, 2, 5, 9, 10, 10]


def test_smpo_target_formula():
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(3, 4, 2, 2, generator=g)
    traj = torch.randn(3, 11, 4, 2, 2, generator=g)
    t = torch.tensor([0, 150, 999])
    alphas = inverse_scheduler(NOISE_SCHEDULE, 10).alphas_cumprod
    reached, target = smpo_target(traj, x0, t, GRID, alphas)
    for i, (ti, k) in enumerate(zip(t.tolist(), [0, 2, 10], strict=True)):
        a = alphas[ti]
        assert torch.allclose(reached[i], traj[i, k])
        assert torch.allclose(target[i], (traj[i, k] - a.sqrt() * x0[i]) / (1 - a).sqrt(), atol=1e-6)


def test_online_inversion_up_to_t_equals_the_cached_trajectory_point(pipe):
    cond = _conditioning(pipe, 2)
    x0 = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(1))
    scheduler = inverse_scheduler(NOISE_SCHEDULE, 10)
    full = renoise_inversion(pipe.unet, x0, cond, scheduler, InversionConfig())
    assert full.shape == (11, 2, 4, 16, 16) and torch.equal(full[0], x0)
    for t in (1, 350, 999):
        online = renoise_inversion(pipe.unet, x0, cond, scheduler, InversionConfig(), up_to=t)[-1]
        assert torch.allclose(online, full[trajectory_index(torch.tensor([t]), GRID).item()], atol=1e-5)


class GaussianDataEpsilon(torch.nn.Module):
    """The exact ε-predictor for data x0 ~ N(μ, σ²·I): ε*(z, t) = √(1−ᾱ)(z − √ᾱ μ)/(ᾱσ² + 1 − ᾱ).
    A deterministic model whose probability-flow ODE is known, so the only inversion error left
    is the discretisation that ReNoise reduces."""

    def __init__(self, mu, sigma):
        super().__init__()
        from diffusers import DDPMScheduler

        self.mu, self.sigma = mu, sigma
        self.alphas = DDPMScheduler(**NOISE_SCHEDULE).alphas_cumprod

    def forward(self, z, t, encoder_hidden_states=None, added_cond_kwargs=None):
        from types import SimpleNamespace

        a = self.alphas[t].view(-1, 1, 1, 1)
        return SimpleNamespace(sample=(1 - a).sqrt() * (z - a.sqrt() * self.mu) / (a * self.sigma**2 + 1 - a))


def test_inversion_reconstructs_and_more_renoising_does_not_hurt(pipe):
    """A deterministic model: invert, sample back with DDIM on the same grid, compare. (On the
    trained embedded base model, see benchmarks/inversion_reconstruction.py.)"""
    cond = _conditioning(pipe, 4)
    g = torch.Generator().manual_seed(2)
    mu, sigma = torch.randn(1, 4, 16, 16, generator=g), 0.5
    model = GaussianDataEpsilon(mu, sigma)
    x0 = mu + sigma * torch.randn(4, 4, 16, 16, generator=g)
    scheduler = inverse_scheduler(NOISE_SCHEDULE, 10)
    errors = {}
    for r in (0, 1, 3):
        z = renoise_inversion(model, x0, cond, scheduler, InversionConfig(num_steps=10, renoise_iterations=r))[-1]
        back = ddim_reconstruct(model, z, cond, NOISE_SCHEDULE, 10)
        errors[r] = (((back - x0) ** 2).mean() / (x0**2).mean()).item()
    assert errors[1] < 0.01, errors
    assert errors[3] <= errors[1] <= errors[0], errors


# ---------------------------------------------------------------------------- the cache


def _items(n, seed=0):
    rng = np.random.default_rng(seed)
    comps = all_compositions()
    out = []
    for i in range(n):
        comp = comps[int(rng.integers(len(comps)))]
        out.append((f"img-{i}", comp.prompt, jpeg_bytes(render(comp, rng=rng))))
    return out


def _entries(root):
    return set(ShardedCache(root).entries())


def test_cache_builds_once_and_stores_what_training_needs(pipe, tmp_path):
    items = _items(6)
    config = InversionConfig(num_steps=10, renoise_iterations=1)
    counts = build_cache(pipe, items, tmp_path, config, batch_size=2, progress=False)
    assert counts == {"items": 6, "latents": 6, "texts": 6, "trajectories": 6, "shards": 6}
    again = build_cache(pipe, items, tmp_path, config, batch_size=2, progress=False)
    assert again["latents"] == again["texts"] == again["trajectories"] == 0
    reader = CacheReader(tmp_path)
    prints = Fingerprints.of(pipe, config)
    uid, caption, _ = items[0]
    assert reader.get(prints.trajectory_key(uid, caption), "trajectory").shape == (11, 4, 16, 16)
    assert torch.equal(reader.get(prints.trajectory_key(uid, caption), "trajectory")[0],
                       reader.get(prints.latent_key(uid), "latent"))
    assert reader.get(prints.text_key(caption), "prompt_embeds").shape == (16, 64)
    assert reader.get(prints.text_key(caption), "time_ids").tolist() == [32, 32, 0, 0, 32, 32]
    summary = reader.summary()
    assert summary["entries"] == {"text": {"entries": 6}, "latent": {"entries": 6}, "traj": {"entries": 6}}
    assert summary["built_with"][0]["inversion"] == {"num_steps": 10, "renoise_iterations": 1, "guidance_scale": 1.0}


def test_training_reads_a_fresh_posterior_sample_of_each_latent_and_the_mean_for_cached_trajectories(pipe, tmp_path):
    """The base was pretrained on VAE posterior samples; training on the posterior mean instead
    lowers its reward (docs/regime.md). So the cache keeps mean and std and training draws anew."""
    import pandas as pd

    from smpo_pipeline.training.data import CachedPairs

    rng = np.random.default_rng(1)
    first = _items(2)
    items = first + [(f"{u}-other", c, jpeg_bytes(render(c, rng=rng))) for u, c, _ in first]  # same prompts
    config = InversionConfig(num_steps=10, renoise_iterations=1)
    build_cache(pipe, items, tmp_path, config, batch_size=4, progress=False)
    prints = Fingerprints.of(pipe, config)
    uids = [u for u, _, _ in items]
    reader = CacheReader(tmp_path)
    std = torch.stack([reader.get(prints.latent_key(u), "latent_std") for u in uids])
    assert std.shape == (4, 4, 16, 16) and bool((std > 0).all())
    pairs = pd.DataFrame({"image_w_uid": uids[:2], "image_l_uid": uids[2:], "caption": [items[0][1], items[1][1]],
                          "p": [0.7, 0.6]})
    data = CachedPairs(pairs, reader, prints, with_trajectories=False)
    mean = data.batch([0, 1]).latents_w
    draws = [data.batch([0, 1], torch.Generator().manual_seed(s)).latents_w for s in range(200)]
    assert not torch.equal(draws[0], draws[1])
    assert torch.allclose(torch.stack(draws).mean(0), mean, atol=0.1)
    assert torch.allclose(torch.stack(draws).std(0), std[:2], rtol=0.2)
    # The cached ReNoise trajectories start at the mean: a pair that reads them keeps it.
    cached = CachedPairs(pairs, reader, prints, with_trajectories=True)
    assert torch.equal(cached.batch([0, 1], torch.Generator().manual_seed(0)).latents_w, mean)


def test_a_cache_without_trajectories_serves_dpo_and_is_refused_for_cached_smpo(pipe, tmp_path):
    from smpo_pipeline.training.runs import check_cache

    items, config = _items(4), InversionConfig(num_steps=10, renoise_iterations=1)
    counts = build_cache(pipe, items, tmp_path, config, batch_size=4, progress=False, trajectories=False)
    assert counts["latents"] == 4 and counts["trajectories"] == 0
    assert not [e for e in _entries(tmp_path) if e.startswith("traj/")]
    report, prints = CacheReader(tmp_path).summary(), Fingerprints.of(pipe, config)
    check_cache(report, prints, config, trajectories=False)  # DPO, DRO, SmPO with random or online noise
    with pytest.raises(ValueError, match=r"cache.trajectories: true"):
        check_cache(report, prints, config, trajectories=True)
    # Asking for them later computes only the trajectories.
    counts = build_cache(pipe, items, tmp_path, config, batch_size=4, progress=False)
    assert counts["trajectories"] == 4 and counts["texts"] == 0
    check_cache(CacheReader(tmp_path).summary(), prints, config, trajectories=True)


def test_changing_the_inversion_invalidates_exactly_the_trajectories(pipe, tmp_path):
    items = _items(4)
    build_cache(pipe, items, tmp_path, InversionConfig(num_steps=10, renoise_iterations=1), batch_size=4, progress=False)
    counts = build_cache(pipe, items, tmp_path, InversionConfig(num_steps=10, renoise_iterations=2), batch_size=4, progress=False)
    assert counts["texts"] == 0 and counts["trajectories"] == 4  # latents are rewritten beside them
    assert len([e for e in _entries(tmp_path) if e.startswith("traj/")]) == 8


def test_another_resolution_rebuilds_the_latents_and_trajectories(pipe, tmp_path):
    """A model sampled at another resolution reads other latents: nothing cached at 32 px is reused."""
    import copy

    items, config = _items(2), InversionConfig(num_steps=10, renoise_iterations=1)
    build_cache(pipe, items, tmp_path, config, batch_size=4, progress=False)
    smaller = copy.copy(pipe)
    smaller.unet = copy.deepcopy(pipe.unet)
    smaller.unet.register_to_config(sample_size=pipe.unet.config.sample_size // 2)
    counts = build_cache(smaller, items, tmp_path, config, batch_size=4, progress=False)
    assert counts["latents"] == 2 and counts["trajectories"] == 2 and counts["texts"] == 2
    prints = Fingerprints.of(smaller, config)
    latent = CacheReader(tmp_path).get(prints.latent_key(items[0][0]), "latent")
    assert latent.shape[-1] == pipe.unet.config.sample_size // 2


def test_another_storage_dtype_rebuilds_every_entry_and_a_run_refuses_the_old_cache(pipe, tmp_path):
    """cache.storage_dtype changes every value the cache holds: no entry stored in float32 is read as
    a bfloat16 one, and a run asking for bfloat16 refuses a cache that has only float32 entries."""
    import torch

    from smpo_pipeline.training.runs import check_cache

    items, config = _items(3), InversionConfig(num_steps=10, renoise_iterations=1)
    build_cache(pipe, items, tmp_path, config, batch_size=4, progress=False, trajectories=False)
    with pytest.raises(ValueError, match="rebuild it"):
        check_cache(CacheReader(tmp_path).summary(), Fingerprints.of(pipe, config, "bfloat16"), config, trajectories=False)
    counts = build_cache(pipe, items, tmp_path, config, batch_size=4, progress=False, trajectories=False,
                         storage_dtype=torch.bfloat16)
    assert counts["latents"] == 3 and counts["texts"] == 3
    prints = Fingerprints.of(pipe, config, "bfloat16")
    assert CacheReader(tmp_path).get(prints.latent_key(items[0][0]), "latent").dtype == torch.bfloat16
    check_cache(CacheReader(tmp_path).summary(), prints, config, trajectories=False)


def test_a_corrupted_shard_is_detected_and_only_its_entries_are_rebuilt(pipe, tmp_path):
    items = _items(6)
    build_cache(pipe, items, tmp_path, InversionConfig(), batch_size=2, progress=False)
    shard = sorted(tmp_path.glob("rank0-*.safetensors"))[-1]
    shard.write_bytes(shard.read_bytes()[:-100])  # truncated
    with pytest.raises(RuntimeError, match="does not match its checksum"):
        reader = CacheReader(tmp_path)
        for key in reader.where:
            reader.get(key, "trajectory" if key.startswith("traj") else "latent" if key.startswith("latent") else "pooled")
    counts = build_cache(pipe, items, tmp_path, InversionConfig(), batch_size=2, progress=False)
    assert counts["trajectories"] == 2 and counts["texts"] == 0


KILLED_BUILD = """
import os, signal, sys, pickle
from pathlib import Path
from smpo_pipeline.runtime import apply_project_environment; apply_project_environment()
from diffusers import StableDiffusionXLPipeline
from smpo_pipeline.inversion import InversionConfig
from smpo_pipeline.training.cache import build_cache
pipe = StableDiffusionXLPipeline.from_pretrained(sys.argv[1])
items = pickle.loads(Path(sys.argv[2]).read_bytes())
def die(shards):
    if shards == 4:
        os.kill(os.getpid(), signal.SIGKILL)   # kill -9 halfway
build_cache(pipe, items, Path(sys.argv[3]), InversionConfig(), 2, progress=False, on_shard=die)
"""


def test_a_killed_build_resumes_without_recomputing_finished_entries(pipe, tiny_pipeline_dir, tmp_path):
    import pickle

    items = _items(6)
    (tmp_path / "items.pkl").write_bytes(pickle.dumps(items))
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(KILLED_BUILD), str(tiny_pipeline_dir),
                           str(tmp_path / "items.pkl"), str(tmp_path / "cache")], capture_output=True)
    assert proc.returncode == -9, proc.stderr[-800:]
    assert len(_entries(tmp_path / "cache")) == 6 + 2 * 2  # 3 text shards + 1 image shard (2 latents, 2 trajectories)
    counts = build_cache(pipe, items, tmp_path / "cache", InversionConfig(), batch_size=2, progress=False)
    assert counts["texts"] == 0 and counts["trajectories"] == 4  # only the rest
    assert len(_entries(tmp_path / "cache")) == 18


def test_two_processes_split_the_work_without_overlap(tiny_pipeline_dir, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    items = _items(7)
    pq.write_table(pa.table({"image_uid": [u for u, _, _ in items], "caption": [c for _, c, _ in items],
                             "jpg": [b for _, _, b in items]}), tmp_path / "items.parquet")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    out = subprocess.run(
        torchrun_command(2, "smpo_pipeline.training.cache", "--model", str(tiny_pipeline_dir),
                         "--items", str(tmp_path / "items.parquet"), "--root", str(tmp_path / "cache"),
                         "--batch-size", "2", "--threads", "1"),
        capture_output=True, text=True, env=env, timeout=600,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    ranks = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    assert sorted(r["rank"] for r in ranks) == [0, 1] and sum(r["trajectories"] for r in ranks) == 7
    per_rank = [{e for info in json.loads((tmp_path / "cache" / f"manifest.rank{r}.json").read_text())["shards"].values()
                 for e in info["entries"]} for r in (0, 1)]
    assert per_rank[0] and per_rank[1] and not per_rank[0] & per_rank[1]
    assert len(per_rank[0] | per_rank[1]) == 7 + 7 + len({c for _, c, _ in items})
