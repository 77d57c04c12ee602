"""Project pipelines.

``bootstrap`` builds the embedded world (base model + raw preference shards); ``train`` ends with
``evaluate`` (also runnable alone); the default pipeline is the whole chain. ``tune`` (the Optuna
study) runs only when named.
"""

from __future__ import annotations

from kedro.framework.project import find_pipelines
from kedro.pipeline import Pipeline


def register_pipelines() -> dict[str, Pipeline]:
    pipelines = find_pipelines(raise_errors=True)
    # Kedro loads only the requested pipelines (``kedro run --pipelines train`` finds ``train``
    # alone), so the evaluation that ends ``train`` is built here, not looked up.
    if "train" in pipelines:
        from smpo_pipeline.pipelines.evaluate import create_pipeline as evaluation

        pipelines["train"] = pipelines["train"] + evaluation()
    pipelines["__default__"] = sum(p for name, p in pipelines.items() if name != "tune")
    return pipelines
