"""Which attributes the bootstrap's UNet can learn at all (docs/regime.md, round 8).

Trains a fresh UNet and fresh text encoders the way the bootstrap does
(``training.pretraining.train_unet_and_text_encoders`` with ``conf/base/parameters_bootstrap.yml``'s
``base_model.unet`` recipe), on the shipped base model's VAE and tokenizer, and measures the EMA's
per-attribute accuracy on 48 validation prompts (two images each) every 500 steps, as the bootstrap's
``validation_curve``. With ``--clean`` every caption is the render's own prompt: what the
architecture can learn when nothing in its data is wrong. Without it, the captions carry the shipped
mistake rates (``base_model.captions``). The UNet is the shipped one's config with
``--layers-per-block`` and ``--attention-everywhere`` (cross-attention at the first level too) and
``--unet-channels`` changed, so the variants stay SDXL's ``UNet2DConditionModel``.

    .venv/bin/python benchmarks/base_capacity.py --clean --steps 3000                       # ≈ 10 min
    .venv/bin/python benchmarks/base_capacity.py --clean --steps 3000 --unet-channels 32 64 64 64
    .venv/bin/python benchmarks/base_capacity.py --clean --steps 2000 --layers-per-block 2 --attention-everywhere
    .venv/bin/python benchmarks/base_capacity.py --clean --steps 3000 --position-offset 0.3
    .venv/bin/python benchmarks/base_capacity.py --clean --steps 3000 --zero-terminal-snr
    .venv/bin/python benchmarks/base_capacity.py --steps 3000 --zero-terminal-snr \
        --rate swap_colors=0.25 --rate position=0.35 --rate color=0.15 --rate shape=0.3 --rate size=0.2 --caption-scale 0.5
    .venv/bin/python benchmarks/base_capacity.py --steps 3000 --zero-terminal-snr \
        --rate swap_colors=0.075 --rate position=0.35 --rate color=0.045 --rate shape=0.09 --rate size=0.06

``--position-offset F`` probes a world whose four off-centre positions lie F of the canvas from its
centre instead of the shipped 0.203 (nearer the border, where zero padding tells a convolution where
it is). The world has no setting for it: this process's ``world.render.POSITION_CENTRES``, which the
renders and the oracle both read, is rewritten before anything is drawn.

The caption-mistake rates start from ``base_model.captions`` in ``conf/base/parameters_bootstrap.yml``
as it stands; ``--rate KIND=R`` sets one kind's rate (repeatable), and ``--caption-scale F`` then
multiplies every rate by F: which mistakes, at which rates, keep the UNet from learning an attribute.
The examples above spell every rate out, so they mean the same runs whatever the shipped rates are
(the first is round 13's, every rate of that time halved; the second round 15's).
``--zero-terminal-snr`` trains on SDXL's betas rescaled to zero signal at t = 999 with
v-prediction, and samples with "trailing" spacing (``models.tiny_sdxl.make_noise_schedule``; round 13):
whether position is learned once the noise no longer carries the layout.

Prints the curve and writes it to ``reports/sweeps/base_capacity_<name>.json``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import yaml

BASE = Path("data/01_raw/base_model")
PROMPTS = Path("data/01_raw/prompts")


def fresh_unet(shipped_config: dict, channels: list[int] | None, layers: int, attention_everywhere: bool):
    from diffusers import UNet2DConditionModel

    config = dict(shipped_config)
    if channels:
        n = len(channels)
        config |= {"block_out_channels": channels,
                   "down_block_types": ["DownBlock2D"] + ["CrossAttnDownBlock2D"] * (n - 1),
                   "up_block_types": ["CrossAttnUpBlock2D"] * (n - 1) + ["UpBlock2D"]}
    if attention_everywhere:
        n = len(config["block_out_channels"])
        config |= {"down_block_types": ["CrossAttnDownBlock2D"] * n, "up_block_types": ["CrossAttnUpBlock2D"] * n}
    return UNet2DConditionModel.from_config(config | {"layers_per_block": layers})


def _move_positions(offset: float) -> None:
    """Puts left/right/top/bottom ``offset`` of the canvas from its centre, in the one table that
    rendering and the oracle share (mutated in place, so every module that imported it sees it)."""
    from smpo_pipeline.world.render import POSITION_CENTRES

    if not 0 < offset < 0.5:
        raise SystemExit(f"--position-offset {offset}: must lie in (0, 0.5), a fraction of the canvas")
    POSITION_CENTRES.update({"left": (0.5 - offset, 0.5), "right": (0.5 + offset, 0.5),
                             "top": (0.5, 0.5 - offset), "bottom": (0.5, 0.5 + offset)})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clean", action="store_true", help="captions without mistakes")
    parser.add_argument("--caption-scale", type=float, default=1.0,
                        help="multiply the caption-mistake rates by this, after --rate (0.5: half as many of each)")
    parser.add_argument("--rate", action="append", default=[], metavar="KIND=R",
                        help="set one caption-mistake rate (repeatable), e.g. position=0.35")
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--unet-channels", type=int, nargs="+")
    parser.add_argument("--layers-per-block", type=int, default=1)
    parser.add_argument("--attention-everywhere", action="store_true")
    parser.add_argument("--position-offset", type=float,
                        help="off-centre positions this fraction of the canvas from its centre (shipped: 0.203)")
    parser.add_argument("--zero-terminal-snr", action="store_true",
                        help="v-prediction on a zero-terminal-SNR schedule, trailing spacing (Lin et al. 2024)")
    parser.add_argument("--steps-every", type=int, default=500, help="measure the EMA every N steps")
    parser.add_argument("--name", help="report name (default: from the options)")
    args = parser.parse_args()
    if args.position_offset is not None:
        _move_positions(args.position_offset)

    import torch
    from diffusers import StableDiffusionXLPipeline
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    from smpo_pipeline.models.tiny_sdxl import (
        assemble_pipeline,
        build_sampling_scheduler,
        count_parameters,
        make_noise_schedule,
    )
    from smpo_pipeline.params import BaseModelParams, WorldParams
    from smpo_pipeline.pipelines.bootstrap.nodes import _accuracy_of  # the bootstrap curve's own protocol
    from smpo_pipeline.training.pretraining import PretrainConfig, train_unet_and_text_encoders
    from smpo_pipeline.world.captions import web_captions
    from smpo_pipeline.world.render import POSITION_CENTRES

    conf = yaml.safe_load(Path("conf/base/parameters_bootstrap.yml").read_text())
    world, base = WorldParams(**conf["world"]), BaseModelParams(**conf["base_model"])
    shipped = StableDiffusionXLPipeline.from_pretrained(BASE)
    train = [p for p in (PROMPTS / "train.txt").read_text().splitlines() if p]
    validation = [p for p in (PROMPTS / "validation.txt").read_text().splitlines() if p][:48]

    torch.manual_seed(base.seed)
    unet = fresh_unet(dict(shipped.unet.config), args.unet_channels, args.layers_per_block, args.attention_everywhere)
    text_encoders = (CLIPTextModel(shipped.text_encoder.config), CLIPTextModelWithProjection(shipped.text_encoder_2.config))
    u = base.unet
    rendered = [p for p in train for _ in range(u.renders_per_prompt)]
    rates = base.captions.rates()
    for item in args.rate:
        kind, _, value = item.partition("=")
        try:
            rate = float(value)
        except ValueError:
            rate = -1.0
        if kind not in rates or not 0 <= rate <= 1:
            raise SystemExit(f"--rate {item}: expected KIND=R with KIND one of {sorted(rates)} and R in [0, 1]")
        rates[kind] = rate
    if not 0 <= args.caption_scale * max(rates.values()) <= 1:
        raise SystemExit(f"--caption-scale {args.caption_scale}: every rate must stay within [0, 1]")
    rates = {k: 0.0 if args.clean else v * args.caption_scale for k, v in rates.items()}
    captions, mistakes = web_captions(rendered, rates, base.captions.seed)

    schedule = make_noise_schedule("v_prediction", zero_terminal_snr=True) if args.zero_terminal_snr else None
    curve = []

    def measure(step: int, ema) -> None:
        pipe = assemble_pipeline(shipped.vae, ema["te1"], ema["te2"], shipped.tokenizer, ema["unet"],
                                 build_sampling_scheduler(schedule))
        curve.append({"step": step} | _accuracy_of(pipe, validation, world, base))
        print(f"step {step}: {curve[-1]['accuracy']} reward {curve[-1]['mean_oracle_reward']}", flush=True)

    config = PretrainConfig(
        steps=args.steps, batch_size=u.batch_size, learning_rate=u.learning_rate, warmup_steps=u.warmup_steps,
        grad_clip=u.grad_clip, ema_decay=u.ema_decay, caption_dropout=u.caption_dropout, offset_noise=u.offset_noise,
        renders_per_prompt=u.renders_per_prompt, seed=base.seed, min_snr_gamma=u.min_snr_gamma,
        cosine_decay=u.cosine_decay, checkpoint_every=args.steps_every, noise_schedule=schedule)
    result = train_unet_and_text_encoders(shipped.vae, unet, text_encoders, shipped.tokenizer, train, world.resolution, config,
                                          captions=captions, on_checkpoint=measure)

    name = args.name or "_".join(filter(None, [
        "clean" if args.clean else "shipped-captions" if args.caption_scale == 1 else f"captions-x{args.caption_scale:g}",
        "-".join(a.replace("=", "") for a in args.rate),
        "unet" + "-".join(map(str, unet.config.block_out_channels)),
        f"layers{args.layers_per_block}", "attention-everywhere" if args.attention_everywhere else "",
        f"positions{args.position_offset:g}" if args.position_offset is not None else "",
        "zero-terminal-snr" if args.zero_terminal_snr else ""]))
    report = {"name": name, "steps": args.steps, "caption_mistake_rates": rates, "caption_mistake_shares": mistakes,
              "position_centres": {k: list(v) for k, v in POSITION_CENTRES.items()},
              "unet_config": {k: unet.config[k] for k in ("block_out_channels", "down_block_types", "layers_per_block")},
              "unet_parameters": count_parameters(unet),
              "noise_schedule": schedule, "seconds": result.metrics["seconds"], "validation_curve": curve}
    out = Path("reports/sweeps") / f"base_capacity_{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
