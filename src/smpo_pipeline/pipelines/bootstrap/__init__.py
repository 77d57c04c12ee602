"""``bootstrap``: build the embedded world — prompt sets, a tiny SDXL-architecture base model
trained from scratch, and Pick-a-Pic v2 shards of base-model pairs labelled by simulated annotators."""

from smpo_pipeline.pipelines.bootstrap.pipeline import create_pipeline

__all__ = ["create_pipeline"]
