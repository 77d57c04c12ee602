"""The shapes world: grammar, renderer, shapes-oracle and the annotator population."""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pytest

from smpo_pipeline.world import grammar
from smpo_pipeline.world.annotators import TIE, AnnotatorPopulation
from smpo_pipeline.world.grammar import Composition, all_compositions, parse_prompt, split_compositions
from smpo_pipeline.world.oracle import ATTRIBUTES, ORACLE_WEIGHTS, oracle_reward, read_image, score_reading
from smpo_pipeline.world.render import render


def test_grammar_has_every_composition_once_and_never_a_background_equal_to_the_color():
    comps = all_compositions()
    assert len(comps) == 2 * 8 * 3 * 5 * 7 == len(set(comps))
    assert all(c.color != c.background for c in comps)
    assert comps[0].prompt == "a small red circle at the left on a green background" or comps[0].prompt


def test_prompt_round_trip_and_clear_errors():
    for comp in all_compositions()[::97]:
        assert parse_prompt(comp.prompt) == comp
    with pytest.raises(ValueError, match="not a shapes-world prompt"):
        parse_prompt("a photo of a cat")
    with pytest.raises(ValueError, match="unknown color 'teal'"):
        parse_prompt("a small teal circle at the left on a red background")
    with pytest.raises(ValueError, match="both 'red'"):
        Composition("small", "red", "circle", "left", "red")


def test_split_is_seeded_disjoint_and_complete():
    a, b = split_compositions(0, 0.1, 0.1), split_compositions(0, 0.1, 0.1)
    assert a == b
    assert split_compositions(1, 0.1, 0.1)["test"] != a["test"]
    sets = {k: set(v) for k, v in a.items()}
    assert not (sets["train"] & sets["test"]) and not (sets["train"] & sets["validation"])
    assert not (sets["validation"] & sets["test"])
    assert sum(map(len, sets.values())) == len(all_compositions())
    assert len(a["test"]) == len(a["validation"]) == 168
    # Every single attribute value still appears in training: the test is of composition.
    for attr, values in [("color", grammar.COLORS), ("shape", grammar.SHAPES), ("position", grammar.POSITIONS)]:
        assert {getattr(c, attr) for c in a["train"]} == set(values)


def test_render_is_deterministic_for_a_seed_and_jitter_varies_it():
    prompt = "a large blue triangle at the top on a yellow background"
    first = np.asarray(render(prompt, rng=np.random.default_rng(3)))
    again = np.asarray(render(prompt, rng=np.random.default_rng(3)))
    other = np.asarray(render(prompt, rng=np.random.default_rng(4)))
    assert first.shape == (32, 32, 3) and first.dtype == np.uint8
    assert np.array_equal(first, again) and not np.array_equal(first, other)
    assert render(prompt, resolution=64).size == (64, 64)


def test_oracle_reads_every_attribute_of_jittered_renders():
    rng = np.random.default_rng(0)
    comps = all_compositions()
    for i in rng.choice(len(comps), 200, replace=False):
        comp = comps[i]
        reading = read_image(render(comp, rng=rng))
        assert reading.detected == {a: getattr(comp, a) for a in ATTRIBUTES}, comp.prompt
        assert all(reading.right(comp).values()) and reading.right(comp.prompt) == reading.right(comp)
        moved = dataclasses.replace(comp, position=next(p for p in grammar.POSITIONS if p != comp.position))
        assert reading.right(moved) == {a: a != "position" for a in ATTRIBUTES}, comp.prompt


def test_oracle_ranks_the_ideal_render_above_renders_of_every_other_kind_of_prompt():
    rng = np.random.default_rng(1)
    comps = all_compositions()
    for i in rng.choice(len(comps), 60, replace=False):
        comp = comps[i]
        ideal = oracle_reward(render(comp), comp)
        assert ideal > 0.9
        for j in rng.choice(len(comps), 25, replace=False):
            if comps[j] != comp:
                assert ideal > oracle_reward(render(comps[j], rng=rng), comp), (comp.prompt, comps[j].prompt)


def test_oracle_scale_and_an_empty_canvas():
    assert sum(ORACLE_WEIGHTS.values()) == pytest.approx(1.0)
    blank = np.full((32, 32, 3), grammar.COLORS["green"], dtype=np.uint8)
    reading = read_image(blank)
    assert not reading.has_foreground
    scores = score_reading(reading, "a small red circle at the left on a green background")
    assert scores["background"] == pytest.approx(1.0) and scores["color"] == scores["shape"] == 0.0
    assert oracle_reward(blank, "a small red circle at the left on a green background") == pytest.approx(0.15)


def _pairs(n, seed):
    """Pairs of one prompt's ideal render and a render of a prompt differing in one attribute."""
    rng = np.random.default_rng(seed)
    comps = all_compositions()
    out = []
    for _ in range(n):
        comp = comps[rng.integers(len(comps))]
        other = comps[rng.integers(len(comps))]
        out.append((comp, read_image(render(comp, rng=rng)), read_image(render(other, rng=rng))))
    return out


def test_annotators_vary_tie_sometimes_and_disagree_with_the_oracle_measurably():
    population = AnnotatorPopulation(size=40, seed=0)
    assert len({tuple(a.weights.values()) for a in population.annotators}) == 40
    rng = np.random.default_rng(0)
    ties = disagree = decided = 0
    for comp, r0, r1 in _pairs(400, 0):
        label = population.draw(rng).choose(r0, r1, comp, rng)
        assert label in {(1.0, 0.0), (0.0, 1.0), TIE}
        if label == TIE:
            ties += 1
            continue
        o0, o1 = (sum(ORACLE_WEIGHTS[a] * score_reading(r, comp)[a] for a in ATTRIBUTES) for r in (r0, r1))
        decided += 1
        disagree += (label[0] > label[1]) != (o0 > o1)
    assert 0 < ties < 400 * 0.5
    assert 0.01 < disagree / decided < 0.5


def test_annotator_population_is_deterministic_and_skewed_in_activity():
    a, b = AnnotatorPopulation(size=10, seed=5), AnnotatorPopulation(size=10, seed=5)
    assert a.annotators == b.annotators
    rng = np.random.default_rng(0)
    drawn = [a.draw(rng).user_id for _ in range(2000)]
    counts = np.bincount(np.asarray(drawn) - 1000, minlength=10)
    assert counts[0] > 3 * counts[-1] > 0


def test_web_captions_make_each_kind_of_mistake_at_its_rate_and_stay_in_the_grammar():
    from smpo_pipeline.world.captions import MISTAKES, web_caption, web_captions

    prompts = [c.prompt for c in all_compositions()] * 3
    rates = {"swap_colors": 0.3, "position": 0.5, "color": 0.1, "shape": 0.0, "size": 0.2}
    captions, shares = web_captions(prompts, rates, seed=0)
    assert set(shares) == set(MISTAKES)
    for kind, rate in rates.items():
        assert shares[kind] == pytest.approx(rate, abs=0.03), kind
    truth, written = [parse_prompt(p) for p in prompts], [parse_prompt(c) for c in captions]
    assert all(t.shape == w.shape for t, w in zip(truth, written, strict=True))  # shape rate 0: never changed
    moved = np.mean([t.position != w.position for t, w in zip(truth, written, strict=True)])
    assert moved == pytest.approx(0.5, abs=0.03)  # another position each time it is drawn
    assert captions == web_captions(prompts, rates, seed=0)[0] and captions != web_captions(prompts, rates, seed=1)[0]

    comp = Composition("small", "red", "circle", "left", "blue")
    swapped, made = web_caption(comp, {"swap_colors": 1.0}, np.random.default_rng(0))
    assert made == ["swap_colors"] and swapped == "a small blue circle at the left on a red background"
    with pytest.raises(ValueError, match="unknown caption mistakes"):
        web_caption(comp, {"blur": 0.1}, np.random.default_rng(0))


def test_labelled_pairs_share_image_uids_across_rows_and_count_their_captions():
    from smpo_pipeline.world.labelling import candidate_pairs, label_pairs

    rng = np.random.default_rng(0)
    pairs = candidate_pairs(3, 4, 6, rng)
    assert len(pairs) == 18 and len(set(pairs)) == 18 and all(a < b for _, a, b in pairs)
    assert len(candidate_pairs(5, 4, 2, rng)) == 10
    captions = [c.prompt for c in all_compositions()[:3]]
    renders = [[render(c, rng=np.random.default_rng(k)) for k in range(4)] for c in captions]
    readings = [[read_image(img) for img in row] for row in renders]
    images = [[img.tobytes() for img in row] for row in renders]
    generators = [[f"g{k}" for k in range(4)] for _ in captions]
    rows, summary = label_pairs(captions, readings, images, generators, pairs, AnnotatorPopulation(size=5), rng)
    assert summary.pairs == 18 and len(rows["image_0_uid"]) == 18
    uid_of = {}
    for (i, a, b), u0, u1 in zip(pairs, rows["image_0_uid"], rows["image_1_uid"], strict=True):
        assert uid_of.setdefault((i, a), u0) == u0 and uid_of.setdefault((i, b), u1) == u1
    assert len(set(uid_of.values())) == 12  # one uid per candidate image
    # A redrawn image is a new image: the caches downstream are keyed by its uid.
    redrawn = [[images[0][0], render(captions[0], rng=np.random.default_rng(9)).tobytes(), *images[0][2:]]]
    again, _ = label_pairs(captions[:1], readings[:1], redrawn, generators[:1], [(0, 0, 1)],
                           AnnotatorPopulation(size=5), rng)
    assert again["image_0_uid"] == [uid_of[0, 0]] and again["image_1_uid"] != [uid_of[0, 1]]
    assert rows["num_example_per_prompt"] == [6] * 18


def test_the_disagreement_axis_runs_from_unanimous_to_nearly_random():
    """The same pairs (an ideal render against a render with one attribute wrong) judged at each
    level: agreement with the oracle falls at every step of the axis, from nearly all to near chance."""
    import dataclasses

    from smpo_pipeline.world.disagreement import DisagreementAxis, relabel

    rng = np.random.default_rng(0)
    comps = [all_compositions()[i] for i in rng.choice(len(all_compositions()), 150, replace=False)]
    wrong = [dataclasses.replace(c, position=next(p for p in grammar.POSITIONS if p != c.position)) if k % 2
             else dataclasses.replace(c, size=next(s for s in grammar.SIZES if s != c.size)) for k, c in enumerate(comps)]
    captions = [str(c) for c in comps]
    right = [read_image(render(c, rng=np.random.default_rng(k))) for k, c in enumerate(comps)]
    other = [read_image(render(c, rng=np.random.default_rng(k))) for k, c in enumerate(wrong)]
    agreement = []
    for d in (0.0, 0.25, 0.5, 0.75, 1.0):
        population = DisagreementAxis().population(d, seed=7)
        # Half the pairs with the right image first, half second: a constant answer scores ½.
        flip = np.arange(len(comps)) % 3 == 0
        label_0, label_1, summary = relabel(captions, [o if f else r for r, o, f in zip(right, other, flip, strict=True)],
                                            [r if f else o for r, o, f in zip(right, other, flip, strict=True)],
                                            population, np.random.default_rng(1))
        assert np.all(label_0 + label_1 == 1.0) and summary.pairs == len(comps)
        agreement.append(1 - summary.disagreements / summary.decided)
    assert agreement[0] > 0.95 and 0.4 < agreement[-1] < 0.7, agreement
    assert all(a > b for a, b in itertools.pairwise(agreement)), agreement
    with pytest.raises(ValueError, match=r"lie in \[0, 1\] \(got 1.5\)"):
        DisagreementAxis().population(1.5, seed=7)
