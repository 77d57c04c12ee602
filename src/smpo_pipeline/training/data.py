"""What a training run reads: pairs (and DRO's expert images) whose tensors come from the cache.

``CachedPairs.batch(rows)`` is a ``PairBatch`` of cached VAE latents (a fresh posterior sample per
step, or the mean), text conditioning and, for SmPO's cached forward noise, ReNoise trajectories.
"""

from __future__ import annotations

import functools

import torch

from smpo_pipeline.training.cache import CacheReader, Fingerprints
from smpo_pipeline.training.step import PairBatch


class CachedPairs:
    """Training pairs whose tensors come from the cache (``PairBatch`` per list of rows)."""

    COLUMNS = ("image_w_uid", "image_l_uid", "caption", "p")  # every value a training run reads from the pairs

    def __init__(self, pairs, reader: CacheReader, prints: Fingerprints, with_trajectories: bool) -> None:
        self.pairs = pairs.reset_index(drop=True)
        self.reader, self.prints, self.with_trajectories = reader, prints, with_trajectories

    def __len__(self) -> int:
        return len(self.pairs)

    def latents(self, uids, generator: torch.Generator | None = None) -> torch.Tensor:
        """The images' VAE latents: a fresh posterior sample ``mean + std · ε`` with ``generator``
        (training, as the official code's ``latent_dist.sample()``), the posterior mean without."""
        keys = [self.prints.latent_key(u) for u in uids]
        mean = torch.stack([self.reader.get(k, "latent").float() for k in keys])
        if generator is None:
            return mean
        std = torch.stack([self.reader.get(k, "latent_std").float() for k in keys])
        return mean + std * torch.randn(mean.shape, generator=generator)

    def conditioning(self, captions) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        keys = [self.prints.text_key(c) for c in captions]
        return tuple(torch.stack([self.reader.get(k, name).float() for k in keys])
                     for name in ("prompt_embeds", "pooled", "time_ids"))

    def batch(self, rows, generator: torch.Generator | None = None) -> PairBatch:
        """The pairs of ``rows``; with ``generator``, posterior samples of their latents, except with
        cached trajectories, which were inverted from the posterior mean and must start from it."""
        sel = self.pairs.iloc[list(rows)]
        g = None if self.with_trajectories else generator
        batch = PairBatch(self.latents(sel.image_w_uid, g), self.latents(sel.image_l_uid, g),
                          *self.conditioning(sel.caption), torch.tensor(sel.p.to_numpy(), dtype=torch.float32))
        if self.with_trajectories:
            r, p = self.reader, self.prints
            batch.trajectory_w = torch.stack([r.get(p.trajectory_key(u, c), "trajectory").float()
                                              for u, c in zip(sel.image_w_uid, sel.caption, strict=True)])
            batch.trajectory_l = torch.stack([r.get(p.trajectory_key(u, c), "trajectory").float()
                                              for u, c in zip(sel.image_l_uid, sel.caption, strict=True)])
        return batch


class CachedExperts(CachedPairs):
    """DRO's offline half: expert images (columns ``uid``, ``caption``) read from the cache."""

    def __init__(self, experts, reader: CacheReader, prints: Fingerprints) -> None:
        super().__init__(experts, reader, prints, with_trajectories=False)

    def experts(self, rows, generator: torch.Generator | None = None):
        sel = self.pairs.iloc[list(rows)]
        return self.latents(sel.uid, generator), self.conditioning(sel.caption)

    @functools.cached_property
    def latent_shape(self) -> tuple[int, ...]:
        return tuple(self.latents(self.pairs.uid.iloc[:1]).shape[1:])


def expert_pool(pairs, source: str = "winners", top_k: int | None = None):
    """DRO's expert images (``uid``, ``caption``): the preferred image of every pair, or the
    ``top_k`` images by reward over both sides of every pair, as the DRO paper picks them
    (human labels unused)."""
    import pandas as pd

    if source == "winners":
        return pd.DataFrame({"uid": pairs.image_w_uid, "caption": pairs.caption}).reset_index(drop=True)
    if source == "top_k":
        images = pd.concat([
            pd.DataFrame({"uid": pairs.image_w_uid, "caption": pairs.caption, "reward": pairs.r_w}),
            pd.DataFrame({"uid": pairs.image_l_uid, "caption": pairs.caption, "reward": pairs.r_l}),
        ]).drop_duplicates("uid")
        return images.nlargest(top_k or len(images), "reward", keep="first")[["uid", "caption"]].reset_index(drop=True)
    raise ValueError(f"unknown expert source {source!r}: winners or top_k")
