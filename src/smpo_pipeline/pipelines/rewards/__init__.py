"""``rewards``: score every image of the clean pairs, smooth binary labels into probabilities."""

from smpo_pipeline.pipelines.rewards.pipeline import create_pipeline

__all__ = ["create_pipeline"]
