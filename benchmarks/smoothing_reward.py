"""What a realistic reward model costs SmPO: SmPO smoothed by the reward model the ``reward_model``
pipeline learned from the pairs, against SmPO smoothed by the shapes-oracle (the world's ground
truth, which the evaluation scores with), beside Diffusion-DPO and the base model, on the **test**
prompts, over several training seeds (README, docs/results.md).

    kedro run --pipelines data,reward_model,rewards,cache     # once: the pairs, both scorings, the cache
    .venv/bin/python benchmarks/smoothing_reward.py --seeds 0 1 2

Every arm trains with the ``train`` section of ``conf/base`` as it is (the embedded default regime,
chosen on validation prompts: docs/regime.md) and only the smoothing differs; nothing is chosen
here, the test prompts are only measured. Each image is generated with the evaluation's protocol and
seeds (``conf/base/parameters_evaluate.yml``) and scored by the shapes-oracle; intervals resample
prompts and training seeds (``evaluation.summarize``). Runs are cached in
``reports/smoothing_reward.json`` under their settings, seed and the chain's inputs, so a re-run
trains only what is missing; the table goes to ``reports/smoothing_reward.md``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

ARMS = {
    "dpo": {"objective": "dpo"},
    "smpo-learned": {"objective": "smpo"},  # smoothed by rewards.model (the learned reward model)
    "smpo-oracle": {"objective": "smpo", "train": {"smoothing_by": "reference"}},
}


def _test_images(chain: dict, params: dict) -> tuple[list[str], list[int]]:
    """(prompt, seed) of every test image, as the evaluate pipeline draws them: image k of a prompt
    has seed evaluation.seed + k."""
    from smpo_pipeline.params import EvaluationParams

    e = EvaluationParams.model_validate(params["evaluation"])
    prompts = chain["prompts_test"][: e.max_prompts] if e.max_prompts else chain["prompts_test"]
    return ([p for p in prompts for _ in range(e.seeds_per_prompt)],
            [e.seed + k for _ in prompts for k in range(e.seeds_per_prompt)])


def _validation_reward(unet, chain: dict, params: dict, prompts: int = 96) -> float:
    """The mean oracle reward on the first validation prompts, one image each, as the regime sweeps
    measure it (``benchmarks/preference_regime.py``)."""
    from smpo_pipeline.evaluation import oracle_rewards
    from smpo_pipeline.models.sampling import SamplingProtocol

    base = chain["base_model"]
    e = params["train"]["evaluation"]
    protocol = SamplingProtocol(e["steps"], e["guidance_scale"], base.unet.config.sample_size * base.vae_scale_factor)
    val = chain["prompts_validation"][:prompts]
    pipe = type(base)(**{**base.components, "unet": unet})
    return float(oracle_rewards(pipe, val, list(range(len(val))), protocol, e["batch_size"], progress=False).mean())


def _scores(unet, chain: dict, params: dict) -> list[float]:
    from smpo_pipeline.evaluation import oracle_rewards
    from smpo_pipeline.models.sampling import SamplingProtocol
    from smpo_pipeline.params import EvaluationParams

    base = chain["base_model"]
    e = EvaluationParams.model_validate(params["evaluation"])
    protocol = SamplingProtocol(e.protocol.steps, e.protocol.guidance_scale,
                                base.unet.config.sample_size * base.vae_scale_factor)
    prompts, seeds = _test_images(chain, params)
    pipe = type(base)(**{**base.components, "unet": unet})
    return oracle_rewards(pipe, prompts, seeds, protocol, e.batch_size, progress=False).tolist()


def main() -> None:
    import pandas as pd
    from preference_regime import load_chain, merged_train, run_context, train_run

    from smpo_pipeline.evaluation import markdown_table, summarize
    from smpo_pipeline.runtime import apply_project_environment

    apply_project_environment()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", default="reports")
    args = parser.parse_args()
    chain, params = load_chain({}, extra=("prompts_test",))
    context = run_context(chain, params, {"prompts": "test", "every": 0})
    path = Path(args.out) / "smoothing_reward.json"
    results = json.loads(path.read_text()) if path.is_file() else {}
    key = lambda *parts: hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]  # noqa: E731
    protocol = params["evaluation"]["protocol"] | {"seeds_per_prompt": params["evaluation"]["seeds_per_prompt"]}
    base_key = key("base", context, protocol)
    if results.get("base", {}).get("key") != base_key:
        results["base"] = {"key": base_key, "scores": _scores(chain["base_model"].unet, chain, params),
                           "validation_reward": _validation_reward(chain["base_model"].unet, chain, params)}
        path.write_text(json.dumps(results))
    for seed in args.seeds:
        for arm, config in ARMS.items():
            settings = merged_train(params, config).model_dump(mode="json", exclude={"evaluation"})
            run_key = key(arm, settings, seed, context, protocol)
            if results.get(f"{arm}/seed-{seed}", {}).get("key") == run_key:
                continue
            unet, records = train_run(config, seed, chain, params)
            results[f"{arm}/seed-{seed}"] = {"key": run_key, "scores": _scores(unet, chain, params),
                                             "validation_reward": _validation_reward(unet, chain, params),
                                             "seconds": sum(r["step_time"] for r in records)}
            path.write_text(json.dumps(results))
            done = results[f"{arm}/seed-{seed}"]
            print(f"{arm} seed {seed}: test {pd.Series(done['scores']).mean():.4f}, validation "
                  f"{done['validation_reward']:.4f} (base {results['base']['validation_reward']:.4f})", flush=True)
    prompts, seeds = _test_images(chain, params)
    rows = [{"model": "base", "replica": 0, "prompt": p, "seed": s, "reward_model": "shapes-oracle", "score": v}
            for p, s, v in zip(prompts, seeds, results["base"]["scores"], strict=True)]
    for arm in ARMS:
        for r, seed in enumerate(args.seeds):
            rows += [{"model": arm, "replica": r, "prompt": p, "seed": s, "reward_model": "shapes-oracle", "score": v}
                     for p, s, v in zip(prompts, seeds, results[f"{arm}/seed-{seed}"]["scores"], strict=True)]
    report = summarize(pd.DataFrame(rows), ["base", *ARMS], "base", samples=2000, confidence=0.95, seed=0)
    table = markdown_table(report, protocol | {"training seeds": args.seeds})
    val = {arm: [results[f"{arm}/seed-{seed}"]["validation_reward"] - results["base"]["validation_reward"]
                 for seed in args.seeds] for arm in ARMS}
    table += "\n## Validation prompts (the first 96, one image each): gain over the base per seed\n\n"
    table += "\n".join(f"- {arm}: " + ", ".join(f"{g:+.4f}" for g in gains) for arm, gains in val.items()) + "\n"
    (Path(args.out) / "smoothing_reward.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
