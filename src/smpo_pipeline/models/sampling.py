"""Batched, seeded sampling from a stock ``StableDiffusionXLPipeline``.

Every image has its own ``torch.Generator`` seeded with its own seed, so an image depends only on
(model, prompt, seed, protocol), never on which batch it landed in. ``generate_cached`` keeps the
images as PNG files keyed by exactly that, and generates only what is missing or unreadable.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

SCHEDULERS = {"euler": "EulerDiscreteScheduler", "euler_a": "EulerAncestralDiscreteScheduler",
              "dpm++": "DPMSolverMultistepScheduler", "ddim": "DDIMScheduler"}


@dataclass(frozen=True)
class SamplingProtocol:
    steps: int = 20
    guidance_scale: float = 5.0
    resolution: int = 32
    scheduler: str | None = None  # a key of SCHEDULERS; None: the model's own scheduler


def use_scheduler(pipe, name: str | None) -> str:
    """Switch ``pipe`` to the protocol's scheduler (same noise schedule); returns its class name."""
    if name is not None:
        import diffusers

        if name not in SCHEDULERS:
            raise ValueError(f"unknown scheduler {name!r}: one of {sorted(SCHEDULERS)}")
        pipe.scheduler = getattr(diffusers, SCHEDULERS[name]).from_config(pipe.scheduler.config)
    return type(pipe.scheduler).__name__


def generate(
    pipe,
    prompts: Sequence[str],
    seeds: Sequence[int],
    protocol: SamplingProtocol,
    batch_size: int = 64,
    desc: str = "sampling",
    progress: bool = True,
):
    """One PIL image per (prompt, seed), in input order."""
    import torch

    if len(prompts) != len(seeds):
        raise ValueError(f"{len(prompts)} prompts but {len(seeds)} seeds")
    pipe.set_progress_bar_config(disable=True)
    images = []
    with torch.inference_mode():
        for start in tqdm(range(0, len(prompts), batch_size), desc=desc, unit="batch", mininterval=2,
                          disable=not progress):
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


def to_pixels(images: Sequence, resolution: int | None = None):
    """PIL images (or HWC uint8 arrays) as the VAE's input: float [B, 3, H, W] in [-1, 1], resized
    to ``resolution`` when given."""
    import numpy as np
    import torch
    from PIL import Image

    def rgb(image):
        image = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image))
        image = image.convert("RGB")
        return image.resize((resolution, resolution)) if resolution and image.size != (resolution, resolution) else image

    pixels = np.stack([np.asarray(rgb(i)) for i in images])
    return torch.from_numpy(pixels).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def vae_round_trip(vae, images: Sequence, sample: bool = False) -> list:
    """``images`` (PIL, RGB) encoded by ``vae`` and decoded again: the posterior mean, or a draw from
    the posterior with ``sample``. What fine-tuning on re-encoded images can at best reproduce, and the
    ceiling of anything the model draws (docs/regime.md)."""
    import torch
    from PIL import Image

    with torch.no_grad():
        posterior = vae.encode(to_pixels(images)).latent_dist
        decoded = vae.decode(posterior.sample() if sample else posterior.mean).sample
    out = decoded.clamp(-1, 1).add(1).mul(127.5).round().byte().permute(0, 2, 3, 1).numpy()
    return [Image.fromarray(a) for a in out]


def model_fingerprint(pipe) -> str:
    """What a pipeline draws depends on: every weight of its UNet, VAE and text encoders, its
    tokenizers and its scheduler's config (the noise schedule it samples with)."""
    import torch

    from smpo_pipeline.keys import digest, module_fingerprint, tokenizer_fingerprint

    weights = module_fingerprint(torch.nn.ModuleList([pipe.unet, pipe.vae, pipe.text_encoder, pipe.text_encoder_2]))
    return digest(weights, tokenizer_fingerprint(pipe.tokenizer, pipe.tokenizer_2), dict(pipe.scheduler.config),
                  length=16)


def _readable(path: Path) -> bool:
    from PIL import Image

    try:
        with Image.open(path) as image:
            image.verify()
        return True
    except Exception:  # noqa: BLE001 - a truncated or foreign file: generate it again
        return False


def generate_cached(pipe, fingerprint: str, prompts: Sequence[str], seeds: Sequence[int], protocol: SamplingProtocol,
                    root: Path, batch_size: int = 64, desc: str = "sampling") -> list[Path]:
    """The PNG path of every (prompt, seed) under ``root/<fingerprint>/``, generating the missing
    ones in batches. The key covers (model fingerprint, prompt, seed, protocol incl. the scheduler
    class), so a changed model or protocol never reuses an image."""
    import os

    from smpo_pipeline.keys import code_digest, digest

    scheduler = use_scheduler(pipe, protocol.scheduler)
    folder = Path(root) / fingerprint
    folder.mkdir(parents=True, exist_ok=True)
    spec = protocol.__dict__ | {"scheduler": scheduler}
    code = code_digest("smpo_pipeline.models.sampling")  # the sampling code itself
    paths = [folder / (digest(fingerprint, p, int(s), spec, code, length=24) + ".png")
             for p, s in zip(prompts, seeds, strict=True)]
    todo = [i for i, path in enumerate(paths) if not (path.is_file() and _readable(path))]
    bar = tqdm(total=len(paths), initial=len(paths) - len(todo), desc=desc, unit="img", mininterval=2)
    for start in range(0, len(todo), batch_size):
        chunk = todo[start : start + batch_size]
        images = generate(pipe, [prompts[i] for i in chunk], [seeds[i] for i in chunk], protocol, batch_size,
                          progress=False)
        bar.update(len(chunk))
        for i, image in zip(chunk, images, strict=True):
            tmp = paths[i].with_suffix(".tmp")
            image.save(tmp, format="PNG")
            os.replace(tmp, paths[i])  # atomic: a killed run leaves whole images only
    bar.close()
    return paths
