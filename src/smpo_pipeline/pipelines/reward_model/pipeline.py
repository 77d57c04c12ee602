"""train reward model → measure reward model (report, reliability figure)."""

from kedro.pipeline import Node, Pipeline

from smpo_pipeline.pipelines.reward_model.nodes import measure_reward_model, train_reward_model


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(train_reward_model, ["clean_pairs", "params:reward_model", "params:data"],
                 ["reward_model", "reward_model_training"], name="train_reward_model"),
            Node(measure_reward_model, ["reward_model", "reward_model_training", "clean_pairs", "params:reward_model",
                                        "params:data"],
                 ["reward_model_report", "reward_model_figure"], name="measure_reward_model"),
        ],
        tags="reward_model",
    )
