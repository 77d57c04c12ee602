"""Batched, seeded sampling from a stock ``StableDiffusionXLPipeline``.

Every image has its own ``torch.Generator`` seeded with its own seed, so an image depends only on
(model, prompt, seed, protocol), never on which batch it landed in.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from tqdm.auto import tqdm


@dataclass(frozen=True)
class SamplingProtocol:
    steps: int = 20
    guidance_scale: float = 5.0
    resolution: int = 32


def generate(
    pipe,
    prompts: Sequence[str],
    seeds: Sequence[int],
    protocol: SamplingProtocol,
    batch_size: int = 64,
    desc: str = "sampling",
):
    """One PIL image per (prompt, seed), in input order."""
    import torch

    if len(prompts) != len(seeds):
        raise ValueError(f"{len(prompts)} prompts but {len(seeds)} seeds")
    pipe.set_progress_bar_config(disable=True)
    images = []
    with torch.inference_mode():
        for start in tqdm(range(0, len(prompts), batch_size), desc=desc, unit="batch", mininterval=2):
            batch = list(prompts[start : start + batch_size])
            generators = [torch.Generator().manual_seed(int(s)) for s in seeds[start : start + batch_size]]
            images += pipe(
                prompt=batch,
                generator=generators,
                num_inference_steps=protocol.steps,
                guidance_scale=protocol.guidance_scale,
                height=protocol.resolution,
                width=protocol.resolution,
            ).images
    return images
