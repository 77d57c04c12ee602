"""``train``: fine-tune the base model with each preference objective; compare on validation prompts."""

from smpo_pipeline.pipelines.train.pipeline import create_pipeline

__all__ = ["create_pipeline"]
