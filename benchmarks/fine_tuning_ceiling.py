"""What limits fine-tuning of the embedded base model, measured on validation prompts (docs/regime.md).

1. The VAE's round trip: the mean shapes-oracle reward of ideal renders and of the base model's own
   samples, as drawn and after encoding and decoding (posterior mean, posterior sample). Fine-tuning
   on re-encoded images can at best reproduce the round trip.
2. The upper bound of any fine-tuning in a budget: supervised fine-tuning on *ideal renders with
   their true captions*, with the project's LoRA (``training.policy.add_lora``) or the full UNet,
   the latents drawn from the VAE posterior (``--latents sample``, as the pretraining) or its mean.
   A preference objective should not be expected to beat perfect supervision on as many images.

3. What pairs from a far better generator would give DPO (``dpo-on-renders``): Diffusion-DPO with
   the project's loss (``training.step.preference_loss``) on pairs whose preferred image is the ideal
   render of the caption and whose rejected image is the base model's own candidate of a training
   pair (its latents from the training cache). Against ``sft-on-renders`` it says whether DPO can
   use a large quality difference between the two images of a pair, which the shipped pairs, drawn
   from one model, do not have. ``dpo-on-generator-pairs`` replaces the render by a sample of a
   second generator (the base fine-tuned on renders for ``--generator-steps``), the pair ordered
   by the shapes-oracle: pairs from two generators, as Pick-a-Pic's are.

4. How the VAE's fidelity grows with training (``vae-training``): the bootstrap's VAE recipe
   (``conf/base/parameters_bootstrap.yml``) trained from scratch for ``--steps``, with the PSNR, the
   posterior's width and the reward of round-tripped renders every ``--every`` steps.

    .venv/bin/python benchmarks/fine_tuning_ceiling.py round-trip
    .venv/bin/python benchmarks/fine_tuning_ceiling.py vae-training --steps 600 --every 150
    .venv/bin/python benchmarks/fine_tuning_ceiling.py sft-on-renders --steps 150 --lora-rank 8 --lr 1e-3
    .venv/bin/python benchmarks/fine_tuning_ceiling.py dpo-on-renders --steps 300 --lora-rank 0 --lr 3e-5
    .venv/bin/python benchmarks/fine_tuning_ceiling.py dpo-on-generator-pairs --generator-steps 600 --steps 300 \
        --every 100 --lr 3e-5 --lora-rank 0
    .venv/bin/python benchmarks/fine_tuning_ceiling.py dpo-on-generator-pairs --generator-steps 600 --steps 75 \
        --every 25 --lr 1e-4 --lora-rank 0 --accumulation 8 --warmup 5     # the default regime's 256 pairs a step

Validation prompts only (the first ``--prompts``, one image each, seeds 0…N−1, Euler 20 steps,
guidance 3, as ``benchmarks/preference_regime.py``).
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path

BASE = Path("data/01_raw/base_model")
PROMPTS = Path("data/01_raw/prompts")


def _prompts(name: str, n: int | None = None) -> list[str]:
    lines = [p for p in (PROMPTS / f"{name}.txt").read_text().splitlines() if p]
    return lines[:n] if n else lines


def _reward(images, prompts) -> float:
    import numpy as np

    from smpo_pipeline.world.oracle import oracle_reward

    return float(np.mean([oracle_reward(i, p) for i, p in zip(images, prompts, strict=True)]))


def round_trip(pipe, prompts: list[str]) -> None:
    import numpy as np

    from smpo_pipeline.models.sampling import SamplingProtocol, generate, vae_round_trip
    from smpo_pipeline.world.render import render

    rng = np.random.default_rng(0)
    sets = {
        "ideal renders": [render(p, 32, rng=rng) for p in prompts],
        "base-model samples": generate(pipe, prompts, list(range(len(prompts))), SamplingProtocol(20, 3.0, 32), 64,
                                       progress=False),
    }
    print(f"{'images':<20} {'as drawn':>9} {'round trip (mean)':>18} {'(sample)':>9} {'kept':>6}")
    for name, images in sets.items():
        drawn = _reward(images, prompts)
        mean = _reward(vae_round_trip(pipe.vae, images), prompts)
        sample = _reward(vae_round_trip(pipe.vae, images, sample=True), prompts)
        print(f"{name:<20} {drawn:>9.4f} {mean:>18.4f} {sample:>9.4f} {mean / drawn:>6.1%}")


def sft_on_renders(pipe, prompts: list[str], steps: int, every: int, batch_size: int, lr: float, lora_rank: int,
                   latents: str, images: int):
    """Fine-tunes a copy of ``pipe``'s UNet on ideal renders with their true captions, prints the
    validation reward every ``every`` steps and returns the fine-tuned UNet (LoRA merged)."""
    import numpy as np
    import torch

    from smpo_pipeline.evaluation import oracle_rewards
    from smpo_pipeline.models.conditioning import drop_captions, encode_prompts, time_ids
    from smpo_pipeline.models.sampling import SamplingProtocol
    from smpo_pipeline.models.tiny_sdxl import build_training_scheduler, noise_schedule
    from smpo_pipeline.training.policy import add_lora, merged_unet
    from smpo_pipeline.training.pretraining import render_batch
    from smpo_pipeline.training.step import add_noise, prediction_target

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    captions = [str(c) for c in rng.choice(_prompts("train"), images)]
    with torch.no_grad():
        posterior = pipe.vae.encode(render_batch(captions, 32, rng)).latent_dist
        mean, std = (v * pipe.vae.config.scaling_factor for v in (posterior.mean, posterior.std))
        embeds, pooled = encode_prompts((pipe.tokenizer, pipe.tokenizer_2), (pipe.text_encoder, pipe.text_encoder_2),
                                        captions)
    schedule = noise_schedule(pipe)  # the base's own: its ᾱ and its target (ε or v)
    alphas = build_training_scheduler(schedule).alphas_cumprod
    unet = add_lora(copy.deepcopy(pipe.unet), lora_rank, None) if lora_rank else copy.deepcopy(pipe.unet)
    unet.train()
    optimizer = torch.optim.AdamW([p for p in unet.parameters() if p.requires_grad], lr=lr)
    protocol = SamplingProtocol(20, 3.0, 32)

    def validation_reward() -> float:
        trained = (merged_unet(unet) if lora_rank else copy.deepcopy(unet)).eval()
        candidate = type(pipe)(**{**pipe.components, "unet": trained})
        return float(oracle_rewards(candidate, prompts, list(range(len(prompts))), protocol, 64, progress=False).mean())

    base = float(oracle_rewards(pipe, prompts, list(range(len(prompts))), protocol, 64, progress=False).mean())
    print(f"base model: validation reward {base:.4f}")
    for step in range(1, steps + 1):
        idx = torch.from_numpy(rng.integers(0, images, batch_size))
        x0 = mean[idx] + (std[idx] * torch.randn_like(std[idx]) if latents == "sample" else 0)
        noise = torch.randn_like(x0)
        t = torch.randint(0, 1000, (batch_size,))
        e, p = drop_captions(embeds[idx], pooled[idx], torch.rand(batch_size) < 0.2)
        pred = unet(add_noise(x0, noise, t, alphas), t, encoder_hidden_states=e,
                    added_cond_kwargs={"text_embeds": p, "time_ids": time_ids(32, batch_size)}).sample
        loss = torch.nn.functional.mse_loss(pred, prediction_target(x0, noise, t, alphas, schedule["prediction_type"]))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        optimizer.step()
        if step % every == 0 or step == steps:
            reward = validation_reward()
            print(f"step {step:>4}: validation reward {reward:.4f} ({reward - base:+.4f} over the base)", flush=True)
    return (merged_unet(unet) if lora_rank else unet).eval()


def _encode(vae, images):
    """Posterior mean and standard deviation of PIL ``images`` (scaled latents), in chunks of 512."""
    import numpy as np
    import torch

    means, stds = [], []
    with torch.no_grad():
        for start in range(0, len(images), 512):
            chunk = np.stack([np.asarray(i.convert("RGB")) for i in images[start:start + 512]])
            posterior = vae.encode(torch.from_numpy(chunk).permute(0, 3, 1, 2).float().div(127.5).sub(1)).latent_dist
            means.append(posterior.mean * vae.config.scaling_factor)
            stds.append(posterior.std * vae.config.scaling_factor)
    return torch.cat(means), torch.cat(stds)


def dpo_on_renders(pipe, prompts: list[str], steps: int, every: int, batch_size: int, lr: float, beta: float,
                   generator_unet=None, accumulation: int = 1, warmup: int = 0) -> None:
    """DPO against the base's rejected images. The other image of a pair is the ideal render of the
    caption, or, with ``generator_unet``, a sample of that second generator (the base's VAE and text
    encoders, Euler 20 steps, guidance 3), in which case the shapes-oracle orders the pair. Each
    optimiser step averages ``accumulation`` micro-batches of ``batch_size`` pairs, after a linear
    warmup of ``warmup`` steps, as the trainer does (``train.gradient_accumulation``, ``warmup_steps``)."""
    import numpy as np
    import pandas as pd
    import torch

    from smpo_pipeline.evaluation import oracle_rewards
    from smpo_pipeline.inversion import InversionConfig
    from smpo_pipeline.models.sampling import SamplingProtocol
    from smpo_pipeline.models.tiny_sdxl import build_training_scheduler, noise_schedule
    from smpo_pipeline.smoothing import training_pairs
    from smpo_pipeline.training.cache import CacheReader, Fingerprints
    from smpo_pipeline.training.data import CachedPairs
    from smpo_pipeline.training.pretraining import render_batch
    from smpo_pipeline.training.schedules import warmup_then_cosine

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    generator = torch.Generator().manual_seed(0)
    pairs = training_pairs(pd.read_parquet("data/04_feature/preference_pairs.parquet"), "label")
    data = CachedPairs(pairs, CacheReader(Path("data/05_model_input/training_cache")),
                       Fingerprints.of(pipe, InversionConfig(num_steps=10, renoise_iterations=1, guidance_scale=1.0)), False)
    swap = torch.zeros(len(pairs), dtype=torch.bool)  # True: the base's image wins the pair
    if generator_unet is None:
        means, stds = [], []
        with torch.no_grad():  # the winners: an ideal render of every pair's caption, encoded once
            for start in range(0, len(pairs), 512):
                posterior = pipe.vae.encode(render_batch(list(pairs.caption[start:start + 512]), 32, rng)).latent_dist
                means.append(posterior.mean * pipe.vae.config.scaling_factor)
                stds.append(posterior.std * pipe.vae.config.scaling_factor)
        mean, std = torch.cat(means), torch.cat(stds)
    else:
        from smpo_pipeline.models.sampling import generate
        from smpo_pipeline.world.oracle import oracle_reward

        captions = sorted(set(pairs.caption))
        second = type(pipe)(**{**pipe.components, "unet": generator_unet})
        images = generate(second, captions, [10_000 + i for i in range(len(captions))], SamplingProtocol(20, 3.0, 32),
                          64, desc="second generator")
        rewards = {c: oracle_reward(i, c) for c, i in zip(captions, images, strict=True)}
        by_caption = {c: i for i, c in enumerate(captions)}
        mean, std = _encode(pipe.vae, images)
        index = torch.tensor([by_caption[c] for c in pairs.caption])
        mean, std = mean[index], std[index]
        swap = torch.tensor([rewards[c] < r for c, r in zip(pairs.caption, pairs.reference_r_l, strict=True)])
        print(f"second generator: oracle reward {np.mean(list(rewards.values())):.4f} on {len(captions)} training "
              f"prompts; its image wins {1 - swap.float().mean():.1%} of pairs against the base's rejected image")
    schedule = noise_schedule(pipe)
    alphas = build_training_scheduler(schedule).alphas_cumprod
    policy, reference = copy.deepcopy(pipe.unet).train(), copy.deepcopy(pipe.unet).eval().requires_grad_(False)
    optimizer = torch.optim.AdamW(policy.parameters(), lr=lr)
    protocol = SamplingProtocol(20, 3.0, 32)

    def validation_reward() -> float:
        candidate = type(pipe)(**{**pipe.components, "unet": copy.deepcopy(policy).eval()})
        return float(oracle_rewards(candidate, prompts, list(range(len(prompts))), protocol, 64, progress=False).mean())

    base = float(oracle_rewards(pipe, prompts, list(range(len(prompts))), protocol, 64, progress=False).mean())
    print(f"base model: validation reward {base:.4f}; {len(pairs)} pairs (render ≻ the base's rejected image)")
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_then_cosine(warmup, steps, cosine=False))
    for step in range(1, steps + 1):
        optimizer.zero_grad(set_to_none=True)
        for _ in range(accumulation):
            metrics = _dpo_micro_step(policy, reference, data, mean, std, swap, rng, generator, batch_size, beta,
                                      alphas, accumulation, schedule["prediction_type"])
        torch.nn.utils.clip_grad_norm_(policy.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        if step % every == 0 or step == steps:
            reward = validation_reward()
            print(f"step {step:>4}: validation reward {reward:.4f} ({reward - base:+.4f} over the base), "
                  f"implicit accuracy {metrics['implicit_accuracy']:.2f}", flush=True)


def _dpo_micro_step(policy, reference, data, mean, std, swap, rng, generator, batch_size: int, beta: float, alphas,
                    accumulation: int, prediction_type: str) -> dict:
    """One micro-batch of ``dpo_on_renders``: its loss, divided by ``accumulation``, backpropagated."""
    import torch

    from smpo_pipeline.models.conditioning import drop_captions
    from smpo_pipeline.training.step import PairBatch, preference_loss

    rows = rng.integers(0, len(data), batch_size)
    loser = data.batch(rows, generator)
    idx = torch.from_numpy(rows)
    other = mean[idx] + std[idx] * torch.randn(mean[idx].shape, generator=generator)
    flip = swap[idx].view(-1, 1, 1, 1)
    batch = PairBatch(torch.where(flip, loser.latents_l, other), torch.where(flip, other, loser.latents_l),
                      loser.prompt_embeds, loser.pooled, loser.time_ids, loser.prob)
    batch.prompt_embeds, batch.pooled = drop_captions(batch.prompt_embeds, batch.pooled,
                                                      torch.rand(batch_size, generator=generator) < 0.2)
    loss, metrics = preference_loss(policy, reference, batch, torch.randint(0, 1000, (batch_size,), generator=generator),
                                    "dpo", beta, 10.0, "none", alphas, generator, prediction_type=prediction_type)
    (loss / accumulation).backward()
    return metrics


def vae_training(prompts: list[str], steps: int, every: int) -> None:
    import math

    import numpy as np
    import torch
    import yaml

    from smpo_pipeline.models.sampling import vae_round_trip
    from smpo_pipeline.models.tiny_sdxl import build_vae
    from smpo_pipeline.params import BaseModelParams, WorldParams
    from smpo_pipeline.pipelines.bootstrap.nodes import _spec
    from smpo_pipeline.training.pretraining import render_batch
    from smpo_pipeline.world.render import render

    conf = yaml.safe_load(Path("conf/base/parameters_bootstrap.yml").read_text())
    world, base = WorldParams.model_validate(conf["world"]), BaseModelParams.model_validate(conf["base_model"])
    v = base.vae
    torch.manual_seed(base.seed)
    rng = np.random.default_rng(base.seed)
    vae = build_vae(_spec(world, base))
    optimizer = torch.optim.AdamW(vae.parameters(), lr=v.learning_rate)
    renders = [render(p, world.resolution, rng=np.random.default_rng(1)) for p in prompts]
    pixels = torch.from_numpy(np.stack([np.asarray(r) for r in renders])).permute(0, 3, 1, 2).float().div(127.5).sub(1)
    train = _prompts("train")
    print(f"{'step':>5} {'PSNR dB':>8} {'std/spread':>11} {'round-trip reward':>18}")
    for step in range(1, steps + 1):
        vae.train()
        images = render_batch(rng.choice(train, v.batch_size), world.resolution, rng)
        posterior = vae.encode(images).latent_dist
        loss = torch.nn.functional.mse_loss(vae.decode(posterior.sample()).sample, images) \
            + v.kl_weight * posterior.kl().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step % every == 0 or step == steps:
            vae.eval()
            with torch.no_grad():
                held_out = vae.encode(pixels).latent_dist
                mse = float((vae.decode(held_out.mean).sample.clamp(-1, 1) - pixels).pow(2).mean())
            width = float((held_out.std / held_out.mean.std()).mean())
            reward = _reward(vae_round_trip(vae, renders), prompts)
            print(f"{step:>5} {10 * math.log10(4 / mse):>8.2f} {width:>11.3f} {reward:>18.4f}", flush=True)


def main() -> None:
    from diffusers import StableDiffusionXLPipeline

    from smpo_pipeline.runtime import apply_project_environment

    apply_project_environment()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("measure", choices=["round-trip", "sft-on-renders", "dpo-on-renders", "dpo-on-generator-pairs",
                                            "vae-training"])
    parser.add_argument("--prompts", type=int, default=96, help="the first N validation prompts")
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--every", type=int, default=75)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--lora-rank", type=int, default=8, help="0: the full UNet")
    parser.add_argument("--latents", choices=["sample", "mean"], default="sample")
    parser.add_argument("--beta", type=float, default=5000.0, help="dpo-on-renders: Diffusion-DPO's β")
    parser.add_argument("--images", type=int, default=4096, help="renders of training prompts to fine-tune on")
    parser.add_argument("--accumulation", type=int, default=1,
                        help="dpo-on-*: micro-batches of --batch-size averaged into each optimiser step")
    parser.add_argument("--warmup", type=int, default=0, help="dpo-on-*: linear warmup steps of the learning rate")
    parser.add_argument("--generator-steps", type=int, default=600,
                        help="dpo-on-generator-pairs: fine-tuning steps of the second generator")
    args = parser.parse_args()
    pipe = StableDiffusionXLPipeline.from_pretrained(BASE)
    prompts = _prompts("validation", args.prompts)
    if args.measure == "vae-training":
        vae_training(prompts, args.steps, args.every)
    elif args.measure == "dpo-on-renders":
        dpo_on_renders(pipe, prompts, args.steps, args.every, args.batch_size, args.lr, args.beta, None,
                       args.accumulation, args.warmup)
    elif args.measure == "dpo-on-generator-pairs":
        print(f"second generator: the base fine-tuned on ideal renders, full UNet, lr 1e-4, "
              f"{args.generator_steps} steps")
        second = sft_on_renders(pipe, prompts, args.generator_steps, args.generator_steps, args.batch_size, 1e-4, 0,
                                "sample", args.images)
        dpo_on_renders(pipe, prompts, args.steps, args.every, args.batch_size, args.lr, args.beta, second,
                       args.accumulation, args.warmup)
    elif args.measure == "round-trip":
        round_trip(pipe, prompts)
    else:
        sft_on_renders(pipe, prompts, args.steps, args.every, args.batch_size, args.lr, args.lora_rank, args.latents,
                       args.images)


if __name__ == "__main__":
    main()
