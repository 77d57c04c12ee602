"""``data``: stream Pick-a-Pic v2 shards through a Great Expectations suite; lose nothing."""

from smpo_pipeline.pipelines.data.pipeline import create_pipeline

__all__ = ["create_pipeline"]
