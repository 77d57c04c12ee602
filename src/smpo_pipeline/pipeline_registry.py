"""Project pipelines.

``bootstrap`` builds the embedded world (base model + raw preference shards); ``train`` ends with
``evaluate`` (also runnable alone); the default pipeline is everything registered.
"""

from __future__ import annotations

from kedro.framework.project import find_pipelines
from kedro.pipeline import Pipeline


def register_pipelines() -> dict[str, Pipeline]:
    pipelines = find_pipelines(raise_errors=True)
    pipelines["train"] = pipelines["train"] + pipelines["evaluate"]
    pipelines["__default__"] = sum(pipelines.values())
    return pipelines
