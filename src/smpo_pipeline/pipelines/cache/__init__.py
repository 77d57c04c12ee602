"""``cache``: latents, text embeddings and ReNoise trajectories of every clean pair, computed once."""

from smpo_pipeline.pipelines.cache.pipeline import create_pipeline

__all__ = ["create_pipeline"]
