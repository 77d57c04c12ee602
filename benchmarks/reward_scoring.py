"""Images per second scored by the shapes-oracle and by a CLIP-architecture reward model of
realistic width (ViT-B/16 image tower, 512-wide 12-layer text tower: the size of the ``clip``
reward; PickScore's ViT-H/14 costs ~8× more), random weights built from a config, saved and loaded
through the real ``from_pretrained`` path. CPU unless ``--device cuda``.

    .venv/bin/python benchmarks/reward_scoring.py [--images 64] [--batch-size 16]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np


def images_and_prompts(n: int, resolution: int):
    from smpo_pipeline.world.grammar import all_compositions
    from smpo_pipeline.world.render import render

    rng = np.random.default_rng(0)
    comps = all_compositions()
    prompts = [comps[int(i)].prompt for i in rng.choice(len(comps), n)]
    return [render(p, resolution, rng=rng) for p in prompts], prompts


def save_vit_b16_clip(path: Path) -> None:
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    from smpo_pipeline.models.tokenizer import train_clip_tokenizer
    from smpo_pipeline.world.grammar import all_compositions

    tokenizer = train_clip_tokenizer([c.prompt for c in all_compositions()], model_max_length=77)
    torch.manual_seed(0)
    config = CLIPConfig(
        text_config={"hidden_size": 512, "intermediate_size": 2048, "num_hidden_layers": 12, "num_attention_heads": 8,
                     "vocab_size": len(tokenizer), "max_position_embeddings": 77,
                     "bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id},
        vision_config={"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12,
                       "image_size": 224, "patch_size": 16},
        projection_dim=512,
    )
    CLIPModel(config).save_pretrained(path)
    CLIPProcessor(image_processor=CLIPImageProcessor(), tokenizer=tokenizer).save_pretrained(path)


def rate(model, images, prompts, batch_size: int) -> float:
    model.score(images[:2], prompts[:2])  # warm-up
    start = time.perf_counter()
    for i in range(0, len(images), batch_size):
        model.score(images[i : i + batch_size], prompts[i : i + batch_size])
    return len(images) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    import torch

    from smpo_pipeline.models.tiny_sdxl import count_parameters
    from smpo_pipeline.rewards import build_reward_model

    images, prompts = images_and_prompts(args.images, 32)
    oracle = rate(build_reward_model("shapes-oracle"), images * 8, prompts * 8, args.batch_size)
    with tempfile.TemporaryDirectory() as tmp:
        save_vit_b16_clip(Path(tmp))
        clip = build_reward_model("clip", model_path=tmp, device=args.device)
        params = count_parameters(clip.model)
        clip_rate = rate(clip, images, prompts, args.batch_size)
    print(f"torch threads: {torch.get_num_threads()}, device: {args.device}")
    print(f"shapes-oracle (32 px, pixels only):          {oracle:9.1f} images/s")
    print(f"clip, ViT-B/16 @224 + 12-layer text ({params / 1e6:.0f} M): {clip_rate:9.1f} images/s")
    print(f"ratio oracle / clip: {oracle / clip_rate:.0f}×")


if __name__ == "__main__":
    main()
