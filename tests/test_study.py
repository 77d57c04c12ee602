"""The disagreement study's pure pieces (``smpo_pipeline.study``, ``evaluation.implicit_agreement``):
a level's pairs, the grid's order, the implicit agreement a policy earns on held-out pairs, and the
summary's gains and bands."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from smpo_pipeline.evaluation import implicit_agreement
from smpo_pipeline.params import StudyParams
from smpo_pipeline.study import grid, pairs_at_level, summarize_grid
from smpo_pipeline.training.step import PairBatch


def _clean_pairs() -> pd.DataFrame:
    return pd.DataFrame({"pair_id": ["a", "b", "c"], "caption": ["x"] * 3, "label_0": [1.0, 0.0, 1.0],
                         "label_1": [0.0, 1.0, 0.0], "is_tie": [False] * 3, "split": ["train"] * 3})


def _labels(level: float, label_0: list[float]) -> pd.DataFrame:
    return pd.DataFrame({"pair_id": ["c", "a", "b"], "level": level, "label_0": label_0,
                         "label_1": [1 - v for v in label_0], "is_tie": [v == 0.5 for v in label_0]})


def test_a_level_s_pairs_carry_its_labels_and_drop_its_ties():
    labels = pd.concat([_labels(0.0, [0.0, 1.0, 0.0]), _labels(1.0, [0.5, 0.0, 1.0])])
    at_0 = pairs_at_level(_clean_pairs(), labels, 0.0)
    assert at_0.pair_id.tolist() == ["a", "b", "c"] and at_0.label_0.tolist() == [1.0, 0.0, 0.0]
    at_1 = pairs_at_level(_clean_pairs(), labels, 1.0)
    assert at_1.pair_id.tolist() == ["a", "b"] and at_1.label_0.tolist() == [0.0, 1.0]  # c tied: dropped
    assert len(pairs_at_level(_clean_pairs(), labels, 1.0, drop_ties=False)) == 3
    with pytest.raises(ValueError, match=r"no labels at level 0.5 for 3 clean pairs"):
        pairs_at_level(_clean_pairs(), labels, 0.5)


def test_the_grid_runs_seed_by_seed_so_a_stopped_study_has_whole_seeds():
    cells = grid(StudyParams(levels=[0.0, 1.0], arms=["dpo", "smpo-oracle"], seeds=[3, 4]))
    assert [(c.seed, c.level, c.arm) for c in cells[:4]] == [(3, 0.0, "dpo"), (3, 0.0, "smpo-oracle"),
                                                              (3, 1.0, "dpo"), (3, 1.0, "smpo-oracle")]
    assert {c.seed for c in cells[4:]} == {4} and len(cells) == 8


class _Denoiser(torch.nn.Module):
    """A stand-in UNet: predicts ε exactly for winners whose clean latents are ``known`` (the whole
    held-out set in one batch; it inverts
    x_t = √ᾱ x0 + √(1−ᾱ) ε with that x0), and zeros where ``known`` is None."""

    def __init__(self, known: torch.Tensor | None, alphas: torch.Tensor, prediction_type: str = "epsilon") -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))  # the dtype the MSE casts to
        self.known, self.alphas, self.prediction_type = known, alphas, prediction_type

    def forward(self, x_t, t, encoder_hidden_states=None, added_cond_kwargs=None):
        if self.known is None:
            pred = torch.zeros_like(x_t)
        else:
            a = self.alphas[t].view(-1, 1, 1, 1)
            x0 = self.known.repeat(2, 1, 1, 1)  # the winners' latents for both halves of the batch
            pred = (x_t - a.sqrt() * x0) / (1 - a).sqrt()  # ε
            if self.prediction_type == "v_prediction":
                pred = a.sqrt() * pred - (1 - a).sqrt() * x0
        return type("Out", (), {"sample": pred})()


class _Pairs:
    def __init__(self, winners: torch.Tensor, losers: torch.Tensor) -> None:
        self.w, self.l = winners, losers

    def __len__(self) -> int:
        return len(self.w)

    def batch(self, rows) -> PairBatch:
        rows = list(rows)
        n = len(rows)
        return PairBatch(self.w[rows], self.l[rows], torch.zeros(n, 2, 4), torch.zeros(n, 4), torch.zeros(n, 6),
                         torch.full((n,), 0.5))


def test_implicit_agreement_is_one_half_for_the_reference_and_follows_what_the_policy_learned():
    alphas = torch.linspace(0.99, 0.05, 100)
    g = torch.Generator().manual_seed(0)
    winners, losers = torch.randn(10, 4, 4, 4, generator=g), torch.randn(10, 4, 4, 4, generator=g)
    reference = _Denoiser(None, alphas)
    pairs = _Pairs(winners, losers)
    same = implicit_agreement(reference, reference, pairs, draws=3, alphas_cumprod=alphas, timestep_range=(0, 100),
                              batch_size=4)
    assert same.shape == (10,) and (same == 0.5).all()  # no change, no preference: ties count half
    # A policy that learned the winners denoises them perfectly: every draw ranks every pair right.
    learned = implicit_agreement(_Denoiser(winners, alphas), reference, pairs, 3, alphas, (0, 100), batch_size=10)
    assert (learned == 1.0).all()
    # The same policy on the pairs turned around ranks every one of them wrong.
    turned = implicit_agreement(_Denoiser(winners, alphas), reference, _Pairs(losers, winners), 3, alphas, (0, 100),
                                batch_size=10)
    assert (turned == 0.0).all()



def test_implicit_agreement_of_a_v_prediction_model_measures_the_error_of_its_velocity():
    from smpo_pipeline.evaluation import HeldOutDraws

    alphas = torch.linspace(0.99, 0.05, 100)
    g = torch.Generator().manual_seed(0)
    winners, losers = torch.randn(10, 4, 4, 4, generator=g), torch.randn(10, 4, 4, 4, generator=g)
    reference, pairs = _Denoiser(None, alphas), _Pairs(winners, losers)
    learned = _Denoiser(winners, alphas, "v_prediction")  # predicts the winners' velocity exactly
    draws = {kind: HeldOutDraws(pairs, 2, alphas, (0, 100), reference, batch_size=10, prediction_type=kind)
             for kind in ("v_prediction", "epsilon")}
    winner_errors = {kind: torch.cat([w for w, _ in d._errors(learned)[0]]) for kind, d in draws.items()}
    assert winner_errors["v_prediction"].max() < 1e-10  # measured against v, the right target
    assert winner_errors["epsilon"].min() > 1e-2
    assert (draws["v_prediction"].agreement(learned) == 1.0).all()


def _records(gains: dict[str, list[float]], base: np.ndarray, agreement: float = 0.6) -> dict:
    cells = [{"level": 0.5, "arm": arm, "seed": seed, "test_rewards": (base + gain).tolist(),
              "heldout_agreement": [agreement] * 8, "train_seconds": 1.0}
             for arm, per_seed in gains.items() for seed, gain in enumerate(per_seed)]
    return {"base": {"test_rewards": base.tolist()}, "cells": cells, "trained_now": len(cells)}


def test_the_summary_reports_each_arm_s_gain_with_a_band_over_prompts_and_seeds():
    base = np.random.default_rng(0).uniform(0.3, 0.6, 40)
    study = StudyParams(levels=[0.5], seeds=[0, 1, 2], evaluation={"bootstrap_samples": 500})
    level = [{"level": 0.5, "oracle_agreement": 0.79, "tie_share": 0.08}]
    steady = summarize_grid(_records({"dpo": [0.02] * 3, "smpo-learned": [0.05] * 3, "smpo-oracle": [0.05] * 3},
                                     base), level, study)
    arms = steady["levels"][0]["arms"]
    assert arms["dpo"]["gain"]["estimate"] == pytest.approx(0.02, abs=1e-5)
    assert arms["smpo-learned"]["gain_over_dpo"]["estimate"] == pytest.approx(0.03, abs=1e-5)
    assert "gain_over_dpo" not in arms["dpo"] and arms["dpo"]["seeds"] == [0, 1, 2]
    assert arms["dpo"]["win_rate"]["estimate"] == 1.0 and arms["dpo"]["heldout_agreement"]["estimate"] == 0.6
    assert arms["smpo-oracle"]["heldout_agreement_over_dpo"]["estimate"] == pytest.approx(0.0)
    assert steady["metrics"]["d050"]["smpo-learned"]["gain_over_dpo"] == pytest.approx(0.03, abs=1e-5)
    # Seeds that disagree widen the band even though every prompt moves alike within a seed.
    spread = summarize_grid(_records({"dpo": [-0.03, 0.02, 0.07], "smpo-learned": [0.05] * 3,
                                      "smpo-oracle": [0.05] * 3}, base), level, study)
    band = spread["levels"][0]["arms"]["dpo"]["gain"]
    assert band["estimate"] == pytest.approx(0.02, abs=1e-5) and band["ci_high"] - band["ci_low"] > 0.05
    assert arms["dpo"]["gain"]["ci_high"] - arms["dpo"]["gain"]["ci_low"] < 1e-6
