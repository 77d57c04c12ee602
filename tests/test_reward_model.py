"""The PickScore-style reward model (``rewards.pickscore_training``): its loss, its measures, that
it learns a preference, that an interrupted run resumes on the same curve, and that what it saves
loads through the ``pickscore`` reward model's own loading code."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from smpo_pipeline.params import ScorerSizeParams, ScorerTrainingParams
from smpo_pipeline.rewards import pickscore_training as ps
from smpo_pipeline.world.grammar import all_compositions
from smpo_pipeline.world.render import render

SIZE = ScorerSizeParams(hidden_size=32, layers=1, heads=2, projection_dim=32)


def test_the_loss_is_the_cross_entropy_against_the_label_distribution_with_ties_as_halves():
    logits = torch.tensor([[2.0, 0.0], [0.0, 0.0], [1.0, 3.0]])
    label_0 = torch.tensor([1.0, 0.5, 0.0])
    expected = torch.stack([-logits[0].log_softmax(0)[0], -logits[1].log_softmax(0).mean(), -logits[2].log_softmax(0)[1]])
    assert ps.preference_loss(logits, label_0).item() == pytest.approx(expected.mean().item(), rel=1e-6)
    # a tie is best fitted by equal scores
    tie = torch.tensor([0.5])
    assert ps.preference_loss(torch.tensor([[1.0, 1.0]]), tie) < ps.preference_loss(torch.tensor([[1.5, 0.5]]), tie)


def test_calibration_and_agreement_measures():
    y = np.array([1.0, 0.0] * 50)
    perfect = ps.calibration(y * 0.9 + 0.05, y, bins=10)
    assert perfect["ece"] == pytest.approx(0.05) and perfect["brier"] == pytest.approx(0.0025)
    coin = ps.calibration(np.full(100, 0.5), y)
    assert coin["ece"] == pytest.approx(0.0) and coin["log_loss"] == pytest.approx(np.log(2))
    share, low, high = ps.agreement_interval(np.array([True] * 70 + [False] * 30), samples=500)
    assert share == pytest.approx(0.7) and low < 0.7 < high and high - low < 0.25
    # 20 prompts of 5 pairs each, every pair of a prompt alike: resampling prompts widens the interval.
    alike = np.repeat([True] * 14 + [False] * 6, 5)
    _, pair_low, pair_high = ps.agreement_interval(alike, samples=500)
    share, low, high = ps.agreement_interval(alike, samples=500, groups=np.repeat(np.arange(20), 5))
    assert share == pytest.approx(0.7) and high - low > 1.8 * (pair_high - pair_low)
    with pytest.raises(ValueError, match="100 pairs, but 99 group labels"):
        ps.agreement_interval(alike, groups=np.arange(99))
    with pytest.raises(ValueError, match="no decided pair"):
        ps.agreement_interval(np.array([], dtype=bool))


def _colour_pairs(processor, n: int, seed: int) -> ps.PairTensors:
    """Pairs whose preferred image shows the caption and the rejected one its colours swapped."""
    rng = np.random.default_rng(seed)
    comps = [all_compositions()[i] for i in rng.choice(len(all_compositions()), n)]
    swapped = [replace(c, color=c.background, background=c.color) for c in comps]
    first = rng.random(n) < 0.5  # which side the right image is on
    right = [render(c.prompt, 32, rng=rng) for c in comps]
    wrong = [render(s.prompt, 32, rng=rng) for s in swapped]
    images_0 = [r if f else w for r, w, f in zip(right, wrong, first, strict=True)]
    images_1 = [w if f else r for r, w, f in zip(right, wrong, first, strict=True)]
    return ps.pair_tensors(processor, images_0, images_1, [c.prompt for c in comps], first.astype(float), 16)


@pytest.fixture(scope="module")
def scorer_data(grammar_tokenizer):
    _, processor = ps.build_scorer(grammar_tokenizer, SIZE)
    return processor, _colour_pairs(processor, 256, seed=0), _colour_pairs(processor, 128, seed=1)


def test_the_scorer_learns_which_image_matches_its_caption(grammar_tokenizer, scorer_data):
    _, train, held_out = scorer_data
    torch.manual_seed(0)
    model, _ = ps.build_scorer(grammar_tokenizer, SIZE)
    before = ps.predict(model, held_out)
    model, losses = ps.train_scorer(model, train, ScorerTrainingParams(steps=150, batch_size=32, learning_rate=3e-3,
                                                                      warmup_steps=10), progress=False)
    after = ps.predict(model, held_out)
    label = held_out.label_0.numpy() == 1
    assert ((after > 0.5) == label).mean() > 0.8 > ((before > 0.5) == label).mean()
    assert np.mean(losses[-20:]) < np.mean(losses[:20])


def test_an_interrupted_run_resumes_on_the_same_curve(grammar_tokenizer, scorer_data, tmp_path, monkeypatch):
    from smpo_pipeline.training import checkpoints

    _, train, _ = scorer_data
    settings = ScorerTrainingParams(steps=30, batch_size=16, warmup_steps=5)

    def fresh():
        torch.manual_seed(1)
        return ps.build_scorer(grammar_tokenizer, SIZE)[0]

    straight, straight_losses = ps.train_scorer(fresh(), train, settings, progress=False)
    real_save, saved = checkpoints.save, []

    def save_then_die(*args, **kwargs):  # the process dies right after its first checkpoint
        saved.append(real_save(*args, **kwargs))
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoints, "save", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        ps.train_scorer(fresh(), train, settings, tmp_path / "run", checkpoint_every=10, progress=False)
    monkeypatch.setattr(checkpoints, "save", real_save)
    assert [p.name for p in saved] == ["step-0000010"]
    resumed, resumed_losses = ps.train_scorer(fresh(), train, settings, tmp_path / "run", checkpoint_every=10,
                                              progress=False)
    assert len(resumed_losses) == 20  # steps 11–30 only
    np.testing.assert_allclose(resumed_losses, straight_losses[10:], rtol=1e-5)
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, msg=name)
    _, again = ps.train_scorer(fresh(), train, settings, tmp_path / "run", checkpoint_every=10, progress=False)
    assert again == []  # finished: a re-run trains nothing


def test_the_saved_scorer_loads_and_scores_through_the_pickscore_reward_model(grammar_tokenizer, scorer_data, tmp_path):
    from smpo_pipeline.datasets import PretrainedDirectoryDataset
    from smpo_pipeline.rewards import build_reward_model

    processor, _, _ = scorer_data
    model, _ = ps.build_scorer(grammar_tokenizer, SIZE)
    PretrainedDirectoryDataset(str(tmp_path / "scorer")).save({"model": model, "processor": processor})
    reward = build_reward_model("pickscore", model_path=str(tmp_path / "scorer"))
    comps = all_compositions()[:4]
    images = [render(c.prompt, 32, rng=np.random.default_rng(0)) for c in comps]
    scores = reward.score(images, [c.prompt for c in comps])
    # PickScore's score as SmPO reads it: the raw cosine, i.e. the pair logit without logit_scale
    tensors = ps.pair_tensors(processor, images, images[::-1], [c.prompt for c in comps], np.ones(4), 16)
    with torch.no_grad():
        expected = (ps.pair_logits(model.eval(), tensors)[:, 0] / model.logit_scale.exp()).numpy()
    np.testing.assert_allclose(scores, expected, atol=1e-5)
    assert reward.model_id.startswith("pickscore-")
    # another model of the same shape is another model id: its cached scores are not reused
    other, _ = ps.build_scorer(grammar_tokenizer, SIZE)
    PretrainedDirectoryDataset(str(tmp_path / "scorer")).save({"model": other, "processor": processor})
    assert build_reward_model("pickscore", model_path=str(tmp_path / "scorer")).model_id != reward.model_id
