"""collect pair images → fill training cache."""

from kedro.pipeline import Node, Pipeline

from smpo_pipeline.pipelines.cache.nodes import fill_training_cache


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(fill_training_cache, ["preference_pairs", "base_model", "params:cache", "params:data", "params:runtime"],
                 "cache_report", name="fill_training_cache"),
        ],
        tags="cache",
    )
