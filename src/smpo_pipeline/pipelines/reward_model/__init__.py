"""``reward_model``: train a PickScore-style reward model on the preference pairs, measure it."""

from smpo_pipeline.pipelines.reward_model.pipeline import create_pipeline

__all__ = ["create_pipeline"]
