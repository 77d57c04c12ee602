"""``evaluate``: every model on the same prompts and seeds; rewards, win rates with CIs, image grids."""

from smpo_pipeline.pipelines.evaluate.pipeline import create_pipeline

__all__ = ["create_pipeline"]
