"""Nodes of the ``tune`` pipeline: an Optuna study over SmPO's β and τ (γ optional).

A trial costs only training and a validation evaluation: the pairs, the reward scores and the
training cache are reused as they are, and τ only re-smooths the cached normalised rewards
(``smoothing.preference_probability``). A trial trains in segments of ``tune.report_every`` steps,
resuming each time from its own checkpoint, and reports the validation reward after each segment
so the median pruner can stop it early. The study lives in ``tune.storage`` (sqlite, or a journal
file for parallel workers): a killed study started again continues to ``tune.n_trials`` finished
trials; a trial killed mid-way is failed by Optuna's heartbeat and retried with the same
parameters, from its last checkpoint.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import asdict, replace
from pathlib import Path

from smpo_pipeline.params import CacheParams, TrainParams, TuneParams, WorldParams

log = logging.getLogger(__name__)


def _storage(tune: TuneParams):
    import optuna
    from optuna.storages import RetryFailedTrialCallback

    retry = RetryFailedTrialCallback(max_retry=2)
    if tune.storage.startswith("sqlite:///"):
        Path(tune.storage.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        return optuna.storages.RDBStorage(tune.storage, heartbeat_interval=tune.heartbeat_seconds,
                                          grace_period=2 * tune.heartbeat_seconds, failed_trial_callback=retry)
    Path(tune.storage).parent.mkdir(parents=True, exist_ok=True)
    from optuna.storages.journal import JournalFileBackend

    return optuna.storages.JournalStorage(JournalFileBackend(tune.storage))


def _finished(study) -> int:
    from optuna.trial import TrialState

    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))


def run_smpo_study(preference_pairs, base_model, cache_report: dict, prompts_validation: list[str], tune: TuneParams,
                   train: TrainParams, cache: CacheParams, world: WorldParams) -> tuple[dict, dict]:
    """Run (or continue) the study to ``tune.n_trials`` finished trials; returns the best
    parameters as a conf/ fragment and a report of every trial. The study is named
    ``<tune.study_name>-<key>``, the key a digest of everything a trial's value depends on, so a
    changed setting, pair, base model or code starts a new study instead of ranking new trials
    against values measured under the old ones."""
    import optuna

    from smpo_pipeline.training.runs import run_inputs

    run = run_inputs("smpo", preference_pairs, base_model, cache_report, train, cache)
    name = f"{tune.study_name}-{_study_key(run, tune, train, world)}"
    study = optuna.create_study(
        study_name=name, storage=_storage(tune), direction="maximize", load_if_exists=True,
        sampler=optuna.samplers.TPESampler(seed=tune.seed, n_startup_trials=tune.startup_trials),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=tune.startup_trials, n_warmup_steps=tune.report_every),
    )
    remaining = tune.n_trials - _finished(study)
    log.info("Study %r in %s: %d trials finished, %d to go", name, tune.storage, _finished(study), max(0, remaining))
    if remaining > 0:
        study.optimize(_trial_objective(run, base_model, prompts_validation, tune, train, world, name), n_trials=remaining,
                       catch=())
    trials = [{"number": t.number, "state": t.state.name, "params": t.params, "value": t.value,
               "intermediate": {str(k): v for k, v in sorted(t.intermediate_values.items())}}
              for t in study.get_trials(deepcopy=False)]
    best = study.best_trial
    fragment = {"train": {"beta": {"smpo": round(best.params["beta"], 1)}},
                "rewards": {"tau": round(best.params["tau"], 4)}}
    if "gamma" in best.params:
        fragment["train"]["gamma"] = round(best.params["gamma"], 3)
    report = {"study": name, "storage": tune.storage, "finished_trials": _finished(study),
              "best": {"number": best.number, "value": best.value, "params": best.params}, "trials": trials}
    print(f"best trial {best.number}: validation reward {best.value:.4f} with {best.params}")  # noqa: T201
    return fragment, report


def _base_config(run: dict, train: TrainParams):
    """Trials train in plain PyTorch in this process; every other setting is train's."""
    from smpo_pipeline.training.runs import train_config

    return train_config("smpo", train.model_copy(update={"deepspeed_config": None}), run["noise"])


def _study_key(run: dict, tune: TuneParams, train: TrainParams, world: WorldParams) -> str:
    """Everything a trial's value depends on but its sampled β, τ, γ: the training settings, the
    weights, the pairs (τ re-smooths their rewards), the code, and how trials are trained and scored."""
    from smpo_pipeline.keys import digest, run_description

    description = run_description(_base_config(run, train), run["prints"], run["pairs"],
                                  ["image_w_uid", "image_l_uid", "caption", "r_w", "r_l"],
                                  inversion=asdict(run["inversion"]) if run["noise"] == "cached" else None)
    scoring = tune.model_dump(exclude={"study_name", "storage", "trial_root", "n_trials", "heartbeat_seconds"})
    return digest(description, scoring, train.evaluation.model_dump(), world.resolution, length=10)


def _trial_objective(run: dict, base_model, prompts_validation: list[str], tune: TuneParams, train: TrainParams,
                     world: WorldParams, study: str):
    """Optuna's objective: train SmPO with a trial's β, τ (and γ) in segments of
    ``tune.report_every`` steps, reporting the validation reward after each so the pruner can stop it."""
    import optuna

    from smpo_pipeline.evaluation import oracle_rewards, prompt_seed_grid
    from smpo_pipeline.keys import run_description, run_key
    from smpo_pipeline.models.sampling import SamplingProtocol
    from smpo_pipeline.models.tiny_sdxl import noise_schedule
    from smpo_pipeline.smoothing import preference_probability
    from smpo_pipeline.training.data import CachedPairs
    from smpo_pipeline.training.trainer import train_preference

    pairs, schedule = run["pairs"], noise_schedule(base_model)
    prompts, seeds = prompt_seed_grid(prompts_validation[: tune.validation_prompts], tune.seeds_per_prompt)
    protocol = SamplingProtocol(train.evaluation.steps, train.evaluation.guidance_scale, world.resolution)
    base_config = _base_config(run, train)

    def objective(trial: optuna.Trial) -> float:
        beta = trial.suggest_float("beta", tune.beta.low, tune.beta.high, log=tune.beta.log)
        tau = trial.suggest_float("tau", tune.tau.low, tune.tau.high, log=tune.tau.log)
        gamma = trial.suggest_float("gamma", tune.gamma.low, tune.gamma.high, log=tune.gamma.log) if tune.gamma else train.gamma
        data = CachedPairs(pairs.assign(p=preference_probability(pairs.r_w, pairs.r_l, tau)), run["data"].reader,
                           run["prints"], run["noise"] == "cached")
        # A trial's checkpoints are reused only by a trial that would train exactly the same: every
        # training setting (β and γ included), the base model and every value of the pairs (τ's p).
        config = replace(base_config, beta=beta, gamma=gamma)
        key = run_key(run_description(config, run["prints"], data.pairs, CachedPairs.COLUMNS, steps=tune.steps,
                                      inversion=asdict(run["inversion"]) if run["noise"] == "cached" else None))
        config = replace(config, checkpoint_dir=str(Path(tune.trial_root) / study / key),
                         checkpoint_every=tune.report_every, keep_last=1)
        reward = float("nan")
        for done in range(tune.report_every, tune.steps + 1, tune.report_every):
            unet = train_preference(copy.deepcopy(base_model.unet), data, replace(config, steps=done), run["inversion"],
                                    schedule)
            model = type(base_model)(**{**base_model.components, "unet": unet})
            reward = float(oracle_rewards(model, prompts, seeds, protocol,
                                          train.evaluation.batch_size, progress=False).mean())
            trial.report(reward, done)
            log.info("trial %d: β=%.0f τ=%.3g γ=%.3g step %d validation reward %.4f", trial.number, beta, tau, gamma,
                     done, reward)
            if trial.should_prune():
                raise optuna.TrialPruned()
        return reward

    return objective


def plot_study(tuning_report: dict, tune: TuneParams):
    """The optimisation history and the parameter importances (Optuna's matplotlib plots)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna
    from optuna.visualization import matplotlib as oplt

    study = optuna.load_study(study_name=tuning_report["study"], storage=_storage(tune))
    history = oplt.plot_optimization_history(study).figure
    history.set_size_inches(7, 4)
    history.tight_layout()
    completed = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if len(completed) >= 2:
        importance = oplt.plot_param_importances(study).figure
    else:
        importance, ax = plt.subplots()
        ax.text(0.5, 0.5, "importances need two completed trials", ha="center")
    importance.set_size_inches(7, 4)
    importance.tight_layout()
    return history, importance
