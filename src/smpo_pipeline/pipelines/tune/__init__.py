"""``tune``: an Optuna study over SmPO's β and smoothing temperature τ (γ optional)."""

from smpo_pipeline.pipelines.tune.pipeline import create_pipeline

__all__ = ["create_pipeline"]
