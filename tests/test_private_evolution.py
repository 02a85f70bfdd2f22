"""Private Evolution: the vote histogram's sensitivity, its noise, the redraw, the accounting,
and the loop end to end on tiny models."""

import itertools
import json
import math

import numpy as np
import pytest

from beam_pipeline.options import DpSynthOptions
from beam_pipeline.plan import PlanError, make_plan, plan_ledger
from beam_pipeline.run import run
from tests.pipeline_fixtures import read_jsonl, tiny_args, write_reviews_csv
from mechanisms import accounting
from mechanisms import evolve as pe
from transforms.evolve import VoteCountsCombineFn, _PopulationIndex
from transforms.prompt_sampling import Member


def _unit(rows):
    rows = np.asarray(rows, dtype="float64")
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def _histogram(records, index: _PopulationIndex, population: int) -> np.ndarray:
    """The exact votes, as the pipeline counts them: nearest member, then the CombineFn."""
    combine = VoteCountsCombineFn()
    accumulator = combine.create_accumulator()
    for label, vector in records:
        accumulator = combine.add_input(accumulator, index.nearest(label, vector))
    counts = combine.extract_output(accumulator)
    return pe.vote_histogram({i: c for i, c in counts.items() if i is not None}, population)


def _population(rng, labels=("a", "b"), size=5, dimension=3):
    members = [Member(i, labels[i % len(labels)], f"t{i}") for i in range(size)]
    vectors = _unit(rng.normal(size=(size, dimension)))
    return _PopulationIndex.of(list(zip(members, vectors)))


def test_nearest_member_is_the_closest_of_the_records_label_by_brute_force():
    rng = np.random.default_rng(0)
    members = [Member(i, "ab"[i % 2], "") for i in range(7)]
    vectors = _unit(rng.normal(size=(7, 4)))
    index = _PopulationIndex.of(list(zip(members, vectors)))
    for _ in range(200):
        label = "ab"[int(rng.integers(2))]
        x = _unit(rng.normal(size=(1, 4)))[0]
        same = [i for i in range(7) if members[i].label == label]
        expected = min(same, key=lambda i: (np.sum((vectors[i] - x) ** 2), i))
        assert index.nearest(label, x) == expected
    assert index.nearest("no such label", vectors[0]) is None


def test_one_record_moves_the_vote_histogram_by_exactly_one_in_l2_exhaustively():
    # Every dataset of up to 4 records drawn from 6 candidate points in two labels, every
    # removal and every addition of a candidate: the histogram moves by exactly 1 in L2.
    rng = np.random.default_rng(1)
    index = _population(rng)
    candidates = [("ab"[j % 2], v) for j, v in enumerate(_unit(rng.normal(size=(6, 3))))]
    checked = 0
    for size in range(0, 5):
        for dataset in itertools.combinations_with_replacement(range(6), size):
            records = [candidates[j] for j in dataset]
            base = _histogram(records, index, 5)
            assert base.sum() == len(records)  # every record votes once
            for drop in range(len(records)):
                other = _histogram(records[:drop] + records[drop + 1:], index, 5)
                assert np.linalg.norm(base - other) == pytest.approx(1.0)
                checked += 1
            for add in range(6):
                other = _histogram(records + [candidates[add]], index, 5)
                assert np.linalg.norm(base - other) == pytest.approx(1.0)
                checked += 1
    assert checked > 1000


def test_every_member_gets_gaussian_noise_of_the_configured_scale():
    rng = np.random.default_rng(2)
    histogram = np.array([0.0, 3.0, 0.0, 10.0])
    draws = np.array([pe.noisy_votes(histogram, 2.5, rng) for _ in range(20000)])
    noise = draws - histogram
    # Standard error of a standard deviation from n draws: sigma / sqrt(2 n) ~ 0.0125.
    np.testing.assert_allclose(noise.std(axis=0), 2.5, atol=0.05)
    np.testing.assert_allclose(noise.mean(axis=0), 0.0, atol=0.06)
    assert np.all(draws[:, 0] != 0.0)  # members without votes are noised too


def test_selection_weights_count_votes_above_the_threshold_and_fall_back_to_uniform():
    weights = pe.selection_weights(np.array([5.0, 1.0, -3.0, 3.0]), threshold=2.0)
    np.testing.assert_allclose(weights, [3 / 4, 0.0, 0.0, 1 / 4])
    np.testing.assert_allclose(pe.selection_weights(np.array([1.0, -1.0]), threshold=2.0),
                               [0.5, 0.5])


def test_redraw_frequencies_follow_the_weights():
    rng = np.random.default_rng(3)
    weights = np.array([0.5, 0.3, 0.2, 0.0])
    drawn = np.concatenate([pe.redraw(weights, 50, rng) for _ in range(2000)])
    frequencies = np.bincount(drawn, minlength=4) / len(drawn)
    # 100,000 draws: the standard error of each share is below 0.002.
    np.testing.assert_allclose(frequencies, weights, atol=0.01)
    assert np.all(np.diff(pe.redraw(weights, 50, rng)) >= 0)


def test_initial_labels_cycle_through_the_domain():
    assert pe.initial_labels(["x", "y", "z"], 7) == ["x", "y", "z", "x", "y", "z", "x"]
    with pytest.raises(ValueError):
        pe.EvolutionConfig(rounds=0, population=4, vote_noise=1.0, vote_threshold=0.0)


def _plan(tmp_path, *extra):
    return make_plan(DpSynthOptions(tiny_args(tmp_path / "in.csv", tmp_path / "out",
                                              "--method", "private_evolution", *extra)))


def test_formal_epsilon_equals_a_hand_computation(tmp_path):
    # T rounds of the Gaussian mechanism with sensitivity 1 and noise sigma: Renyi DP
    # T * alpha / (2 sigma^2) at every order alpha, converted to (epsilon, delta) with
    # epsilon = min over alpha of rdp + log((alpha - 1) / alpha) - (log delta + log alpha)
    # / (alpha - 1) (Canonne, Kamath and Steinke 2020), the conversion dp_accounting uses.
    rounds, sigma, delta = 4, 7.5, 1e-5
    plan = _plan(tmp_path, "--pe_rounds", str(rounds), "--pe_vote_noise", str(sigma),
                 "--delta", str(delta))
    ledger = plan_ledger(plan)
    orders = np.array(accounting.rdp_accountant()._orders, dtype="float64")
    orders = orders[orders > 1]
    rdp = rounds * orders / (2 * sigma ** 2)
    by_hand = np.min(rdp + np.log((orders - 1) / orders)
                     - (math.log(delta) + np.log(orders)) / (orders - 1))
    assert ledger.epsilon() == pytest.approx(by_hand, rel=1e-9)
    assert [e.stage for e in ledger.entries] == [pe.STAGE]


@pytest.mark.parametrize("extra, message", [
    (("--pe_rounds", "0"), "--pe_rounds"),
    (("--pe_population", "0"), "--pe_population"),
    (("--pe_vote_noise", "0"), "--pe_vote_noise"),
    (("--pe_vote_threshold", "-1"), "--pe_vote_threshold"),
    (("--pe_variation_template", "no placeholder"), "--pe_variation_template"),
])
def test_bad_options_are_one_line_errors(tmp_path, extra, message):
    with pytest.raises(PlanError, match=message):
        _plan(tmp_path, *extra)


def test_private_evolution_end_to_end_on_tiny_models(tmp_path):
    write_reviews_csv(tmp_path / "in.csv", n=40)
    arguments = ["--method", "private_evolution", "--label_column", "category",
                 "--label_values", "Restaurants,Shopping", "--pe_population", "6",
                 "--pe_rounds", "2", "--pe_vote_noise", "0.01", "--pe_vote_threshold", "0.5"]
    summary = run(tiny_args(tmp_path / "in.csv", tmp_path / "out", *arguments),
                  say=lambda line: None)
    synthetic = read_jsonl(tmp_path / "out", "synthetic")
    assert len(synthetic) == summary["synthetic_records"] == 6
    assert {r["label"] for r in synthetic} <= {"Restaurants", "Shopping"}
    report = json.loads((tmp_path / "out" / "privacy_report.json").read_text())
    assert [s["stage"] for s in report["stages"]] == [pe.STAGE]
    expected = plan_ledger(make_plan(DpSynthOptions(
        tiny_args(tmp_path / "in.csv", tmp_path / "out", *arguments)))).epsilon()
    assert report["formal_epsilon"] == pytest.approx(expected)
    rounds = report["private_evolution_rounds"]
    assert [r["round"] for r in rounds] == [1, 2]
    for summary_of_round in rounds:
        # With noise 0.01 the noisy total is the exact one: each of the 40 records voted once.
        assert summary_of_round["noisy_votes_total"] == pytest.approx(40, abs=0.2)
        # Only voted members clear the threshold, and only they are redrawn.
        assert 1 <= summary_of_round["distinct_members_drawn"] \
            <= summary_of_round["members_above_threshold"] <= 6
    assert "Private Evolution rounds" in (tmp_path / "out" / "privacy_report.md").read_text()

    again = tmp_path / "again"
    run(tiny_args(tmp_path / "in.csv", again, *arguments), say=lambda line: None)
    assert read_jsonl(again, "synthetic") == synthetic  # same secret, same release


def test_label_quotas_keep_every_label_and_share_the_rest_by_votes_exhaustively():
    # Every weight vector over 4 members in 2 or 3 labels, weights in {0, 1, 3}, populations
    # 3..7: one member per label at least, the total is the population, and each label's
    # extra members are its share of the spare places rounded by largest remainders.
    checked = 0
    for member_labels in (("a", "a", "b", "b"), ("a", "b", "c", "a")):
        labels = list(dict.fromkeys(member_labels))
        for weights in itertools.product((0.0, 1.0, 3.0), repeat=4):
            for population in range(len(labels), 8):
                quotas = pe.label_quotas(member_labels, np.array(weights), population)
                assert list(quotas) == labels and sum(quotas.values()) == population
                totals = np.array([sum(w for l, w in zip(member_labels, weights) if l == x)
                                   for x in labels])
                shares = (totals / totals.sum() if totals.sum() else
                          np.full(len(labels), 1 / len(labels)))
                spare = population - len(labels)
                for label, share in zip(labels, shares):
                    assert abs(quotas[label] - 1 - share * spare) < 1
                checked += 1
    assert checked == 81 * 6 + 81 * 5
    with pytest.raises(ValueError):
        pe.label_quotas(("a", "b", "c"), np.ones(3), 2)


def test_redraw_by_label_draws_each_quota_among_the_labels_own_members():
    rng = np.random.default_rng(4)
    member_labels = ["a", "a", "a", "b", "b"]
    noisy = np.array([10.0, 5.0, -2.0, -1.0, -3.0])   # label b has no vote above 0
    counts = np.zeros(5)
    for _ in range(4000):
        drawn = pe.redraw_by_label(member_labels, noisy, 0.0, 10, rng)
        assert len(drawn) == 10 and np.all(np.diff(drawn) >= 0)
        # b keeps one member although it got no vote; a takes the 9 others.
        assert np.sum(drawn >= 3) == 1
        counts += np.bincount(drawn, minlength=5)
    # Within a: 10 : 5 : 0; within b: uniform (no member clears the threshold).
    np.testing.assert_allclose(counts[:3] / counts[:3].sum(), [2 / 3, 1 / 3, 0.0], atol=0.01)
    np.testing.assert_allclose(counts[3:] / counts[3:].sum(), [0.5, 0.5], atol=0.03)
    # Fewer places than labels: one redraw over all members.
    assert len(pe.redraw_by_label(["a", "b", "c"], np.ones(3), 0.0, 2, rng)) == 2
