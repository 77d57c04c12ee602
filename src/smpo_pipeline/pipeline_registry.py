"""Project pipelines.

The default pipeline is the chain from the raw inputs on: data → rewards → cache → train (which ends
with ``evaluate``, also runnable alone). ``bootstrap`` rebuilds the raw inputs the repository ships
(the base model, the preference shards, the prompt sets), ``tune`` (the Optuna study) runs and
``study`` labels the pairs again along an axis of annotator disagreement; these run only when named.
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
    pipelines["__default__"] = sum(p for name, p in pipelines.items() if name not in ("tune", "bootstrap", "study"))
    return pipelines
