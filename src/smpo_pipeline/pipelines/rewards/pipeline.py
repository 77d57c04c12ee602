"""score pair images → smooth preferences (+ report, histogram)."""

from kedro.pipeline import Node, Pipeline

from smpo_pipeline.pipelines.rewards.nodes import score_pair_images, smooth_preferences


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(score_pair_images, ["clean_pairs", "reward_model_training", "params:rewards", "params:data"],
                 "reward_scores",
                 name="score_pair_images"),
            Node(smooth_preferences, ["clean_pairs", "reward_scores", "params:rewards"],
                 ["preference_pairs", "rewards_report", "rewards_histogram"], name="smooth_preferences"),
        ],
        tags="rewards",
    )
