"""build prompt sets → train tokenizer → train VAE → train base model → train a second generator →
measure them → sample candidate images → label pairs of them with annotators → report."""

from kedro.pipeline import Node, Pipeline

from smpo_pipeline.pipelines.bootstrap.nodes import (
    label_pairs_with_annotators,
    measure_base_model,
    sample_candidates,
    split_prompt_sets,
    train_base_model,
    train_base_vae,
    train_prompt_tokenizer,
    train_second_generator,
    write_bootstrap_report,
    write_raw_manifest,
)


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(split_prompt_sets, "params:world", ["prompts_train", "prompts_validation", "prompts_test"],
                 name="split_prompt_sets"),
            Node(train_prompt_tokenizer, "params:base_model", "tokenizer", name="train_prompt_tokenizer"),
            Node(train_base_vae, ["prompts_train", "params:world", "params:base_model"],
                 ["base_vae", "base_vae_metrics"], name="train_base_vae"),
            Node(train_base_model,
                 ["base_vae", "tokenizer", "prompts_train", "prompts_validation", "params:world", "params:base_model"],
                 ["base_model", "base_unet_metrics"], name="train_base_model"),
            Node(train_second_generator,
                 ["base_model", "prompts_train", "params:world", "params:base_model", "params:pairs"],
                 "second_generator", name="train_second_generator"),
            Node(measure_base_model, ["base_model", "second_generator", "prompts_test", "params:world",
                                      "params:base_model", "params:pairs"],
                 "base_model_accuracy", name="measure_base_model"),
            Node(sample_candidates, ["base_model", "second_generator", "prompts_train", "params:world", "params:pairs"],
                 "candidate_images", name="sample_candidates"),
            Node(label_pairs_with_annotators, ["candidate_images", "params:annotators", "params:pairs"],
                 ["pickapic_raw", "annotation_summary"], name="label_pairs_with_annotators"),
            Node(write_raw_manifest, ["base_model", "pickapic_raw", "prompts_train", "prompts_validation",
                                      "prompts_test", "params:raw_data"], "raw_manifest", name="write_raw_manifest"),
            Node(write_bootstrap_report,
                 ["base_vae_metrics", "base_unet_metrics", "base_model_accuracy", "annotation_summary"],
                 "bootstrap_report", name="write_bootstrap_report"),
        ],
        tags="bootstrap",
    )
