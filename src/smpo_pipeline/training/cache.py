"""The training cache: VAE latents, text embeddings and ReNoise trajectories, computed once.

Layout under ``root``: shards ``rank<r>-<n>.safetensors`` (tensors named ``<entry key>:<tensor>``)
and, per rank, ``manifest.rank<r>.json``. A manifest lists every shard with its entries, bytes,
sha256 and what it was built with; it is rewritten atomically after each shard, so the cache is
always consistent on disk. Entry keys hash everything their value depends on:

- ``latent/<h(image uid, VAE weights, resolution, format)>`` — ``latent`` and ``latent_std`` [C, H, W]: the VAE
  posterior's mean and standard deviation × scaling. Training draws ``mean + std · ε`` afresh at every
  step, as the official DPO/SmPO code does with ``latent_dist.sample()`` (docs/regime.md: a tiny base
  pretrained on posterior samples loses reward when fine-tuned on the mean)
- ``text/<h(caption, text-encoder weights, resolution)>``    — ``prompt_embeds`` [L, D], ``pooled`` [P], ``time_ids`` [6]
- ``traj/<h(image uid, caption, UNet, VAE and text weights,
  K, R, guidance)>``                                          — ``trajectory`` [K + 1, C, H, W]

so changing the UNet invalidates exactly the trajectories, changing the inversion settings exactly
the trajectories, and so on. Every key also holds ``Fingerprints.code``, the digest of this module's
code and all it imports (``keys.code_digest``), and image uids are content uids. Work is split by rank: image items ``i % world_size == rank`` and
distinct captions the same way, so ``torchrun --nproc_per_node=N`` fills the cache N times faster
with no entry written twice. A shard whose checksum does not match (truncated, corrupted) is
dropped from its manifest when the cache is opened and its entries are rebuilt on the next build.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from smpo_pipeline.inversion import InversionConfig
from smpo_pipeline.keys import (
    code_digest,
    digest,
    file_sha256,
    key,
    module_fingerprint,
    tokenizer_fingerprint,
)

log = logging.getLogger(__name__)


LATENT_FORMAT = "posterior-mean+std"  # what a latent entry holds; part of its key (older caches held the mode only)


@dataclass(frozen=True)
class Fingerprints:
    vae: str
    text: str
    unet: str
    resolution: int
    inversion: InversionConfig
    code: str  # the cache's code and all it imports (keys.code_digest): the encoders' and the inversion's
    storage_dtype: str = "float32"  # what the entries are stored as (cache.storage_dtype)

    @classmethod
    def of(cls, pipe, inversion: InversionConfig, storage_dtype: str = "float32") -> Fingerprints:
        """The fingerprints of a pipeline's VAE, text encoders (with their tokenizers) and UNet (the
        reference, with its noise schedule), of the code,
        and the storage dtype: every value an entry holds depends on them."""
        from smpo_pipeline.models.tiny_sdxl import noise_schedule

        return cls(
            vae=module_fingerprint(pipe.vae),
            text=digest(module_fingerprint(torch.nn.ModuleList([pipe.text_encoder, pipe.text_encoder_2])),
                        tokenizer_fingerprint(pipe.tokenizer, pipe.tokenizer_2), length=16),
            # the reference UNet with the schedule it is inverted on (its prediction type and ᾱ)
            unet=digest(module_fingerprint(pipe.unet), noise_schedule(pipe), length=16),
            resolution=pipe.unet.config.sample_size * pipe.vae_scale_factor,
            inversion=inversion,
            code=code_digest("smpo_pipeline.training.cache"),
            storage_dtype=str(storage_dtype).removeprefix("torch."),
        )

    def latent_key(self, image_uid: str) -> str:
        return key("latent", image_uid, self.vae, self.resolution, LATENT_FORMAT, self.code, self.storage_dtype)

    def text_key(self, caption: str) -> str:
        return key("text", caption, self.text, self.resolution, self.code, self.storage_dtype)

    def trajectory_key(self, image_uid: str, caption: str) -> str:
        return key("traj", image_uid, caption, self.unet, self.vae, self.text, self.resolution, asdict(self.inversion),
                   self.code, self.storage_dtype)


class ShardedCache:
    """Read and write side of the cache for one rank (reading sees every rank's manifest)."""

    def __init__(self, root: Path, rank: int = 0) -> None:
        self.root = Path(root)
        self.rank = rank
        self.root.mkdir(parents=True, exist_ok=True)
        self._manifest_path = self.root / f"manifest.rank{rank}.json"
        self.manifest = self._read(self._manifest_path)

    @staticmethod
    def _read(path: Path) -> dict:
        if not path.is_file():
            return {"shards": {}}
        return json.loads(path.read_text())

    def _write_manifest(self) -> None:
        tmp = self._manifest_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.manifest, indent=1))
        tmp.replace(self._manifest_path)

    def verify(self) -> list[str]:
        """Drop this rank's shards that are missing or whose checksum does not match."""
        dropped = []
        for name, info in list(self.manifest["shards"].items()):
            path = self.root / name
            if not path.is_file() or path.stat().st_size != info["bytes"] or file_sha256(path) != info["sha256"]:
                log.warning("cache shard %s is missing or corrupt: its %d entries will be rebuilt", name, len(info["entries"]))
                del self.manifest["shards"][name]
                path.unlink(missing_ok=True)
                dropped.append(name)
        if dropped:
            self._write_manifest()
        return dropped

    def all_manifests(self) -> dict[str, dict]:
        """Every rank's shards (name → info)."""
        shards = {}
        for path in sorted(self.root.glob("manifest.rank*.json")):
            shards.update(self._read(path)["shards"])
        return shards

    def entries(self) -> dict[str, str]:
        """Entry key → shard name, over every rank."""
        return {e: name for name, info in self.all_manifests().items() for e in info["entries"]}

    def write_shard(self, tensors: dict[str, dict[str, torch.Tensor]], built_with: dict) -> str:
        from safetensors.torch import save_file

        index = 1 + max((int(n.split("-")[1].split(".")[0]) for n in self.manifest["shards"]), default=-1)
        name = f"rank{self.rank}-{index:05d}.safetensors"
        flat = {f"{entry}:{t}": v.detach().cpu().contiguous() for entry, parts in tensors.items() for t, v in parts.items()}
        tmp = self.root / f".{name}.tmp"
        save_file(flat, tmp)
        tmp.replace(self.root / name)
        self.manifest["shards"][name] = {
            "entries": sorted(tensors), "bytes": (self.root / name).stat().st_size,
            "sha256": file_sha256(self.root / name), "built_with": built_with,
        }
        self._write_manifest()
        return name


class CacheReader:
    """Loads entries by key, checking each shard's checksum the first time it is opened."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.shards = ShardedCache(root).all_manifests()
        self.where = {e: name for name, info in self.shards.items() for e in info["entries"]}
        self._loaded: dict[str, dict[str, torch.Tensor]] = {}

    def _shard(self, name: str) -> dict[str, torch.Tensor]:
        if name not in self._loaded:
            from safetensors.torch import load_file

            path = self.root / name
            if file_sha256(path) != self.shards[name]["sha256"]:
                raise RuntimeError(f"cache shard {path} does not match its checksum: rebuild the cache (kedro run --pipeline cache)")
            self._loaded[name] = load_file(path)
        return self._loaded[name]

    def get(self, key: str, tensor: str) -> torch.Tensor:
        if key not in self.where:
            raise KeyError(f"{key} is not in the cache at {self.root}: rebuild it (kedro run --pipeline cache)")
        return self._shard(self.where[key])[f"{key}:{tensor}"]

    def summary(self) -> dict:
        kinds: dict[str, dict[str, int]] = {}
        for info in self.shards.values():
            for e in info["entries"]:
                kinds.setdefault(e.split("/")[0], {"entries": 0})["entries"] += 1
        total = sum(info["bytes"] for info in self.shards.values())
        built = {json.dumps(info["built_with"], sort_keys=True) for info in self.shards.values()}
        return {"shards": len(self.shards), "bytes": total, "entries": kinds,
                "built_with": [json.loads(b) for b in sorted(built)]}


class _Encoder:
    """A batch of captions or images as cache entries, computed with the base model."""

    def __init__(self, pipe, prints: Fingerprints, storage_dtype: torch.dtype, trajectories: bool) -> None:
        from smpo_pipeline.inversion import inverse_scheduler
        from smpo_pipeline.models.tiny_sdxl import noise_schedule

        self.pipe, self.prints, self.dtype, self.trajectories = pipe, prints, storage_dtype, trajectories
        self.scheduler = inverse_scheduler(noise_schedule(pipe), prints.inversion.num_steps)

    def conditioning(self, captions: list[str]):
        from smpo_pipeline.models.conditioning import encode_prompts, time_ids

        pipe = self.pipe
        embeds, pooled = encode_prompts((pipe.tokenizer, pipe.tokenizer_2), (pipe.text_encoder, pipe.text_encoder_2),
                                        list(captions))
        return embeds, pooled, time_ids(self.prints.resolution, len(captions))

    def texts(self, captions: list[str]) -> dict[str, dict[str, torch.Tensor]]:
        embeds, pooled, tids = self.conditioning(captions)
        return {self.prints.text_key(c): {"prompt_embeds": embeds[i].to(self.dtype), "pooled": pooled[i].to(self.dtype),
                                          "time_ids": tids[i]} for i, c in enumerate(captions)}

    def images(self, batch: list[tuple[str, str, bytes]]) -> dict[str, dict[str, torch.Tensor]]:
        """Latents (posterior mean and std × scaling) and, with trajectories, the ReNoise inversion
        of each (image, caption) by the reference UNet."""
        from smpo_pipeline.ingest.images import decode_rgb
        from smpo_pipeline.inversion import renoise_inversion
        from smpo_pipeline.models.sampling import to_pixels

        vae, prints = self.pipe.vae, self.prints
        posterior = vae.encode(to_pixels([decode_rgb(b) for _, _, b in batch], prints.resolution)).latent_dist
        x0, x0_std = (v * vae.config.scaling_factor for v in (posterior.mean, posterior.std))
        tensors = {prints.latent_key(uid): {"latent": x0[i].to(self.dtype), "latent_std": x0_std[i].to(self.dtype)}
                   for i, (uid, _, _) in enumerate(batch)}
        if self.trajectories:
            embeds, pooled, tids = self.conditioning([c for _, c, _ in batch])
            cond = {"prompt_embeds": embeds, "pooled": pooled, "time_ids": tids}
            trajectory = renoise_inversion(self.pipe.unet, x0, cond, self.scheduler, prints.inversion)  # [K+1, B, ...]
            for i, (uid, caption, _) in enumerate(batch):
                tensors[prints.trajectory_key(uid, caption)] = {"trajectory": trajectory[:, i].to(self.dtype)}
        return tensors


def _work_of_rank(items, prints: Fingerprints, have: set[str], rank: int, world_size: int, trajectories: bool):
    """(this rank's items, those of them still missing an entry, its captions still missing one).
    All items of an image go to one rank, and distinct captions are dealt out the same way."""
    items = sorted({(u, c): (u, c, b) for u, c, b in items}.values(), key=lambda x: (x[0], x[1]))
    owner = {u: i % world_size for i, u in enumerate(sorted({u for u, _, _ in items}))}
    mine = [it for it in items if owner[it[0]] == rank]
    captions = sorted({c for _, c, _ in items})
    my_captions = {c for i, c in enumerate(captions) if i % world_size == rank}
    todo = [it for it in mine if prints.latent_key(it[0]) not in have
            or (trajectories and prints.trajectory_key(it[0], it[1]) not in have)]
    return mine, todo, sorted(c for c in my_captions if prints.text_key(c) not in have)


def build_cache(
    pipe,
    items: list[tuple[str, str, bytes]],
    root: Path,
    inversion: InversionConfig,
    batch_size: int,
    rank: int = 0,
    world_size: int = 1,
    storage_dtype: torch.dtype = torch.float32,
    progress: bool = True,
    on_shard: Callable[[int], None] | None = None,
    trajectories: bool = True,
) -> dict[str, int]:
    """Fill the cache for ``items`` = (image uid, caption, JPEG bytes) with ``pipe``'s VAE and text
    encoders and its UNet as the reference for the inversion. Returns counts of what was computed.
    ``trajectories=False`` skips the ReNoise inversion (≈ 2K UNet passes per image): latents and text
    embeddings are all that DPO, DRO and SmPO with online or random forward noise read."""
    from tqdm.auto import tqdm

    prints = Fingerprints.of(pipe, inversion, storage_dtype)
    built_with = {"vae": prints.vae, "text_encoders": prints.text, "reference_unet": prints.unet, "code": prints.code,
                  "resolution": prints.resolution, "inversion": asdict(inversion), "dtype": str(storage_dtype),
                  "trajectories": trajectories}
    cache = ShardedCache(root, rank)
    cache.verify()
    mine, todo, text_todo = _work_of_rank(items, prints, set(cache.entries()), rank, world_size, trajectories)
    encoder = _Encoder(pipe, prints, storage_dtype, trajectories)
    batches = [("texts", text_todo[i : i + batch_size]) for i in range(0, len(text_todo), batch_size)]
    batches += [("latents", todo[i : i + batch_size]) for i in range(0, len(todo), batch_size)]
    counts = {"items": len(mine), "latents": 0, "texts": 0, "trajectories": 0, "shards": 0}
    bar = tqdm(total=len(todo) + len(text_todo), desc=f"cache rank {rank}", unit="entry", disable=not progress)
    with torch.no_grad():
        for kind, batch in batches:
            cache.write_shard(encoder.texts(batch) if kind == "texts" else encoder.images(batch), built_with)
            counts[kind] += len(batch)
            counts["trajectories"] += len(batch) if kind == "latents" and trajectories else 0
            counts["shards"] += 1
            bar.update(len(batch))
            if on_shard:
                on_shard(counts["shards"])
    bar.close()
    return counts


def main(argv: list[str] | None = None) -> None:
    """Entry point for multi-process builds: ``torchrun --nproc_per_node=N -m
    smpo_pipeline.training.cache --model DIR --items FILE --root DIR`` (each rank fills its share)."""
    import argparse

    import pyarrow.parquet as pq

    from smpo_pipeline.runtime import apply_project_environment, rank_and_world

    apply_project_environment()  # before diffusers imports huggingface_hub
    from diffusers import StableDiffusionXLPipeline

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--model", required=True)
    parser.add_argument("--items", required=True, help="parquet with image_uid, caption, jpg")
    parser.add_argument("--root", required=True)
    parser.add_argument("--num-steps", type=int, default=10)
    parser.add_argument("--renoise-iterations", type=int, default=1)
    parser.add_argument("--guidance-scale", type=float, default=1.0)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--no-trajectories", action="store_true", help="latents and text embeddings only")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    rank, world = rank_and_world()
    table = pq.read_table(args.items)
    items = list(zip(*(table.column(c).to_pylist() for c in ("image_uid", "caption", "jpg")), strict=True))
    pipe = StableDiffusionXLPipeline.from_pretrained(args.model)
    inversion = InversionConfig(num_steps=args.num_steps, renoise_iterations=args.renoise_iterations,
                                guidance_scale=args.guidance_scale)
    counts = build_cache(pipe, items, Path(args.root), inversion,
                         args.batch_size, rank, world, getattr(torch, args.dtype), progress=rank == 0,
                         trajectories=not args.no_trajectories)
    print(json.dumps({"rank": rank, "world_size": world} | counts))  # noqa: T201 - read by the parent process


if __name__ == "__main__":
    main()
