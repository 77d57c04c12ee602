"""Reward models behind one interface: score a batch of (image, prompt) pairs → floats.

Selected by name (``build_reward_model``): ``shapes-oracle`` (the embedded world's, the default),
``pickscore`` (PickScore v1 — raw image–text cosine, as SmPO uses it), ``clip`` (CLIP score with any
CLIP checkpoint), ``aesthetic`` (LAION aesthetic predictor: CLIP ViT-L/14 image embedding → MLP).
``hpsv2`` is not offered: its loader (open_clip) needs torchvision, which this project must not
install (it pulls a CUDA build of torch). No Kedro imports.
"""

from smpo_pipeline.rewards.models import REWARD_MODELS, RewardModel, build_reward_model

__all__ = ["REWARD_MODELS", "RewardModel", "build_reward_model"]
