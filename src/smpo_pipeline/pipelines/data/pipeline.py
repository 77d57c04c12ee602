"""validate raw shards → assemble clean pairs (+ quarantine, report)."""

from kedro.pipeline import Node, Pipeline

from smpo_pipeline.pipelines.data.nodes import assemble_clean_pairs, validate_raw_shards


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(validate_raw_shards, ["pickapic_raw", "params:data"], "shard_validation", name="validate_raw_shards"),
            Node(assemble_clean_pairs, ["shard_validation", "params:data"],
                 ["clean_pairs", "quarantine", "data_validation_report"], name="assemble_clean_pairs"),
        ],
        tags="data",
    )
