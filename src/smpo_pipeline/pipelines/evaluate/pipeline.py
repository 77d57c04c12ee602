"""generate images of every model (same prompts and seeds) → score them with every reward model →
measure per-attribute accuracies → summarise with gains and win rates (intervals over prompts and
training seeds), plot the reward distributions, draw the image grid."""

from kedro.pipeline import Node, Pipeline

from smpo_pipeline.pipelines.evaluate.nodes import (
    draw_image_grid,
    generate_base_images,
    generate_dpo_images,
    generate_dro_images,
    generate_smpo_images,
    measure_attributes,
    plot_reward_distributions,
    score_images,
    summarize_evaluation,
)

MODELS = ("base", "dpo", "smpo", "dro")


def create_pipeline(**kwargs) -> Pipeline:
    generators = {"base": generate_base_images, "dpo": generate_dpo_images, "smpo": generate_smpo_images,
                  "dro": generate_dro_images}
    image_sets = [f"{m}_evaluation_images" for m in MODELS]
    return Pipeline(
        [
            *[Node(generators[m], [f"{m}_model", *([f"{m}_replicas"] if m != "base" else []), "evaluation_prompts",
                                   "params:evaluation"], f"{m}_evaluation_images", name=f"generate_{m}_images")
              for m in MODELS],
            Node(measure_attributes, [*image_sets, "params:evaluation"], "evaluation_attributes",
                 name="measure_attributes"),
            Node(score_images, [*image_sets, "params:evaluation"], "evaluation_scores", name="score_images"),
            Node(summarize_evaluation, ["evaluation_scores", "params:evaluation"],
                 ["evaluation_report", "evaluation_table"], name="summarize_evaluation"),
            Node(plot_reward_distributions, ["evaluation_scores", "params:evaluation"], "evaluation_reward_plot",
                 name="plot_reward_distributions"),
            Node(draw_image_grid, [*image_sets, "params:evaluation"], "evaluation_grid", name="draw_image_grid"),
        ],
        tags="evaluate",
    )
