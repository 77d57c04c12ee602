"""The reward models. Each has a ``model_id`` that changes whenever its weights or scoring change,
so cached scores are keyed by it."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image


class RewardModel:
    name: str = ""
    model_id: str = ""

    def score(self, images: Sequence[Image.Image], prompts: Sequence[str]) -> np.ndarray:
        raise NotImplementedError


class ShapesOracleReward(RewardModel):
    """``shapes-oracle``: the embedded world's pixel reward in [0, 1] (``world.oracle``)."""

    name = "shapes-oracle"

    def __init__(self) -> None:
        from smpo_pipeline.keys import code_digest

        # The reward is its code (the oracle and the world it reads): key the cache by it.
        self.model_id = "shapes-oracle-" + code_digest("smpo_pipeline.world.oracle")

    def score(self, images, prompts):
        from smpo_pipeline.world.oracle import oracle_reward

        return np.array([oracle_reward(img, p) for img, p in zip(images, prompts, strict=True)], dtype=np.float64)


def _directory_fingerprint(path: str) -> str:
    """Hash of a local checkpoint's files (names and bytes): a retrained model of the same shape
    has other scores, so its cached scores must not be reused; a hub id is its own fingerprint."""
    from smpo_pipeline.keys import digest, file_sha256

    p = Path(path)
    if not p.exists():
        return path
    return digest([(str(f.relative_to(p)), file_sha256(f)) for f in sorted(f for f in p.rglob("*") if f.is_file())],
                  length=12)


class ClipReward(RewardModel):
    """Image–text cosine similarity of a CLIP model (``scale`` × cos).

    ``pickscore``: PickScore v1 with scale 1 — the raw cosine SmPO normalises with its published
    bounds (``docs/objectives.md``). ``clip``: any CLIP checkpoint, scale 100 (the
    usual CLIP-score convention).
    """

    def __init__(self, name: str, model_path: str, processor_path: str | None = None, scale: float = 1.0,
                 device: str = "cpu", dtype: str = "float32") -> None:
        import torch
        from transformers import CLIPModel, CLIPProcessor

        self.name, self.scale, self.device = name, scale, device
        self.model = CLIPModel.from_pretrained(model_path, dtype=getattr(torch, dtype)).to(device).eval()
        self.processor = CLIPProcessor.from_pretrained(processor_path or model_path)
        self.model_id = f"{name}-{_directory_fingerprint(model_path)}-x{scale:g}"

    def score(self, images, prompts):
        import torch

        max_length = min(self.processor.tokenizer.model_max_length, self.model.config.text_config.max_position_embeddings)
        inputs = self.processor(text=list(prompts), images=[i.convert("RGB") for i in images], return_tensors="pt",
                                padding=True, truncation=True, max_length=max_length)
        inputs = {k: v.to(self.device) for k, v in inputs.items()}
        with torch.inference_mode():
            out = self.model(**inputs)
            cosine = (out.image_embeds * out.text_embeds).sum(dim=-1)  # both L2-normalised
        return (self.scale * cosine).float().cpu().numpy().astype(np.float64)


class AestheticMLP:
    """The LAION aesthetic predictor's head (improved-aesthetic-predictor): 768 → 1024 → 128 → 64 →
    16 → 1, dropout between the first layers (inactive at inference)."""

    @staticmethod
    def build(input_dim: int = 768):
        import torch.nn as nn

        return nn.Sequential(
            nn.Linear(input_dim, 1024), nn.Dropout(0.2), nn.Linear(1024, 128), nn.Dropout(0.2),
            nn.Linear(128, 64), nn.Dropout(0.1), nn.Linear(64, 16), nn.Linear(16, 1),
        )


def load_state_dict(path: str) -> dict:
    """Weights from safetensors, or from a torch file with ``weights_only=True`` (never pickles)."""
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(path)
    import torch

    return torch.load(path, map_location="cpu", weights_only=True)


class AestheticReward(RewardModel):
    """``aesthetic``: L2-normalised CLIP ViT-L/14 image embedding → MLP (the prompt is unused)."""

    name = "aesthetic"

    def __init__(self, clip_path: str, mlp_path: str, device: str = "cpu") -> None:
        import torch
        from transformers import CLIPImageProcessor, CLIPModel

        self.device = device
        self.clip = CLIPModel.from_pretrained(clip_path).to(device).eval()
        self.processor = CLIPImageProcessor.from_pretrained(clip_path)
        self.mlp = AestheticMLP.build(self.clip.config.projection_dim)
        state = load_state_dict(mlp_path)
        # The published file names its layers "layers.N.*"; ours is a bare Sequential.
        state = {k.removeprefix("layers."): v for k, v in state.items()}
        self.mlp.load_state_dict(state)
        self.mlp.to(device).eval()
        from smpo_pipeline.keys import file_sha256

        self.model_id = f"aesthetic-{_directory_fingerprint(clip_path)}-{file_sha256(Path(mlp_path))[:12]}"
        self._torch = torch

    def score(self, images, prompts):
        torch = self._torch
        pixels = self.processor(images=[i.convert("RGB") for i in images], return_tensors="pt").pixel_values
        with torch.inference_mode():
            pooled = self.clip.vision_model(pixel_values=pixels.to(self.device)).pooler_output
            embeds = torch.nn.functional.normalize(self.clip.visual_projection(pooled), dim=-1)
            return self.mlp(embeds).squeeze(-1).float().cpu().numpy().astype(np.float64)


REWARD_MODELS = ("shapes-oracle", "pickscore", "clip", "aesthetic")


def build_reward_model(name: str, **options) -> RewardModel:
    """``options``: ``model_path`` / ``processor_path`` (pickscore, clip; a local directory or a hub
    id), ``clip_path`` / ``mlp_path`` (aesthetic), ``device``."""
    if name == "shapes-oracle":
        return ShapesOracleReward()
    if name == "pickscore":
        return ClipReward("pickscore", options["model_path"], options.get("processor_path"), 1.0,
                          options.get("device", "cpu"), options.get("dtype", "float32"))
    if name == "clip":
        return ClipReward("clip", options["model_path"], options.get("processor_path"), 100.0,
                          options.get("device", "cpu"), options.get("dtype", "float32"))
    if name == "aesthetic":
        return AestheticReward(options["clip_path"], options["mlp_path"], options.get("device", "cpu"))
    raise ValueError(f"unknown reward model {name!r}; known: {', '.join(REWARD_MODELS)}")
