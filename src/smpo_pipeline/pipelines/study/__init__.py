"""``study``: the chain's pairs labelled again along one axis of annotator disagreement."""

from smpo_pipeline.pipelines.study.pipeline import create_pipeline

__all__ = ["create_pipeline"]
