"""`dpsynth audit`: canaries, their exposure, the membership-inference attack, the empirical
epsilon bound, and one run of the command on the tiny models."""

import csv
import json
import math

import numpy as np
import pytest

from beam_pipeline import cli
from beam_pipeline.audit import CANARY_PREFIX, strip_options
from evaluation import audit
from evaluation.memorisation import words
from tests.pipeline_fixtures import FIXED_SECRET, tiny_args, write_reviews_csv

# ----------------------------------------------------------------------------- canaries


def test_canaries_are_distinct_random_phrases_of_the_vocabulary():
    canaries = audit.make_canaries(50, seed=3)
    assert len(canaries) == len(set(canaries)) == 50
    for canary in canaries:
        tokens = words(canary)
        assert len(tokens) == audit.CANARY_WORDS
        assert set(tokens) <= set(audit.CANARY_VOCABULARY)
    assert audit.make_canaries(50, seed=3) == canaries
    assert audit.make_canaries(50, seed=4) != canaries


def test_canaries_share_no_eight_words_with_the_records_or_each_other():
    first = audit.make_canaries(5, seed=1)
    # The records already hold the phrases this seed would draw: it must draw others.
    again = audit.make_canaries(5, seed=1, avoid_texts=[f"x {c} y" for c in first])
    assert not set(again) & set(first)
    for i, a in enumerate(again):
        for b in again[i + 1:]:
            assert audit.canary_exposure([a], [b])[0]["longest_shared_run"] < 8


# ----------------------------------------------------------------------------- exposure


CANARY = "walrus lantern cobalt tapir sextant quince harpoon lichen marmot oboe fjord yarrow"


def test_lcs_length_by_hand():
    assert audit.lcs_length("a b c d".split(), "x a y c z d".split()) == 3
    assert audit.lcs_length("a b c".split(), "c b a".split()) == 1
    assert audit.lcs_length([], ["a"]) == 0


def test_exposure_fires_on_a_copied_canary():
    synthetic = ["the food was great", f"We went there. {CANARY.title()}! Then home."]
    row, = audit.canary_exposure([CANARY], synthetic)
    assert row["verbatim"] and row["longest_shared_run"] == 12
    assert row["longest_run_synthetic_index"] == 1
    assert row["near_verbatim"] and row["lcs_ratio"] == 1.0 and row["lcs_synthetic_index"] == 1


def test_exposure_counts_eight_consecutive_words_as_verbatim_and_seven_as_near():
    tokens = CANARY.split()
    eight = audit.canary_exposure([CANARY], ["so " + " ".join(tokens[2:10]) + " ok"])[0]
    assert eight["verbatim"] and eight["longest_shared_run"] == 8
    seven = audit.canary_exposure([CANARY], [" ".join(tokens[:7])])[0]
    assert not seven["verbatim"] and seven["longest_shared_run"] == 7
    assert seven["near_verbatim"] and seven["lcs_words"] == 7


def test_exposure_finds_the_words_in_order_with_others_between_them():
    spread = " and ".join(CANARY.split()[::2])       # 6 of 12 words, in order
    row, = audit.canary_exposure([CANARY], ["nothing here", spread])
    assert not row["verbatim"] and row["longest_shared_run"] == 1
    assert row["lcs_words"] == 6 and row["lcs_ratio"] == 0.5 and row["near_verbatim"]
    assert row["lcs_synthetic_index"] == 1


def test_no_exposure_in_unrelated_texts():
    row, = audit.canary_exposure([CANARY], ["the food was great", "we will come back soon"])
    assert not row["verbatim"] and not row["near_verbatim"]
    assert row["longest_shared_run"] == 0 and row["lcs_words"] == 0
    summary = audit.exposure_summary([row], [row])
    assert summary["inserted"]["verbatim"] == 0 and summary["control"]["count"] == 1


# ----------------------------------------------------------------- membership inference


def test_auc_is_one_when_the_members_are_the_synthetic_texts(tiny_encoder):
    rng = np.random.default_rng(0)
    vocabulary = "food service pizza shoes hotel room coffee park music nurse".split()
    texts = [" ".join(rng.choice(vocabulary, size=8)) for _ in range(60)]
    members, non_members = texts[:30], texts[30:]
    synthetic = tiny_encoder.embed(members)          # members are literally the output
    member_scores = audit.similarity_scores(tiny_encoder.embed(members), synthetic)
    non_member_scores = audit.similarity_scores(tiny_encoder.embed(non_members), synthetic)
    assert np.allclose(member_scores, 1.0, atol=1e-5)
    assert audit.auc(member_scores, non_member_scores) == 1.0


def test_auc_is_about_one_half_for_unrelated_sets():
    rng = np.random.default_rng(7)
    synthetic = rng.normal(size=(200, 32))
    members, non_members = rng.normal(size=(500, 32)), rng.normal(size=(500, 32))
    value = audit.auc(audit.similarity_scores(members, synthetic),
                      audit.similarity_scores(non_members, synthetic))
    assert abs(value - 0.5) < 0.05


def test_auc_is_the_rank_statistic_with_ties_as_halves():
    assert audit.auc([0.9, 0.8], [0.1, 0.2]) == 1.0
    assert audit.auc([0.1], [0.9]) == 0.0
    assert audit.auc([0.5, 0.5], [0.5]) == 0.5
    assert audit.auc([0.3, 0.7], [0.5]) == 0.5
    rng = np.random.default_rng(1)
    a, b = rng.normal(0.3, 1, 300), rng.normal(0, 1, 300)
    from sklearn.metrics import roc_auc_score

    expected = roc_auc_score([1] * 300 + [0] * 300, np.concatenate([a, b]))
    assert audit.auc(a, b) == pytest.approx(expected, abs=1e-12)


def test_scores_without_synthetic_texts_carry_no_information():
    scores = audit.similarity_scores(np.ones((3, 4)), np.zeros((0, 4)))
    assert list(scores) == [-1.0] * 3
    assert audit.auc(scores, scores) == 0.5


# ----------------------------------------------------------------- the epsilon bound


def test_clopper_pearson_against_hand_computed_values():
    # Two-sided 95%: x = 0 and x = n have closed forms, (alpha/2)**(1/n).
    assert audit.clopper_pearson(0, 10) == pytest.approx((0.0, 1 - 0.025 ** 0.1), abs=1e-9)
    assert audit.clopper_pearson(10, 10) == pytest.approx((0.025 ** 0.1, 1.0), abs=1e-9)
    # Textbook values: 5/10 -> (0.1871, 0.8129), 8/10 -> (0.4439, 0.9748).
    assert audit.clopper_pearson(5, 10) == pytest.approx((0.187086, 0.812914), abs=1e-6)
    assert audit.clopper_pearson(8, 10) == pytest.approx((0.443905, 0.974789), abs=1e-6)
    lower, upper = audit.clopper_pearson(np.array([0, 5, 10]), 10)
    assert lower == pytest.approx([0.0, 0.187086, 0.691503], abs=1e-6)
    assert upper == pytest.approx([0.308497, 0.812914, 1.0], abs=1e-6)


def test_a_perfect_attack_measured_on_ten_and_ten_bounds_epsilon_by_hand():
    # 20 + 20 scores: 10 + 10 choose the threshold, the other 10 + 10 measure it.
    # TPR_lo = 0.025**0.1 = 0.691503, FPR_hi = 1 - 0.025**0.1 = 0.308497.
    result = audit.empirical_epsilon([0.9] * 20, [0.1] * 20, delta=0.0)
    assert result["measurement"] == {"members": 10, "non_members": 10}
    assert result["epsilon_lower_bound"] == pytest.approx(math.log(0.691503 / 0.308497),
                                                          abs=1e-5)
    assert result["epsilon_lower_bound"] == pytest.approx(0.807155, abs=1e-5)
    assert result["ceiling"] == pytest.approx(0.807155, abs=1e-5)
    assert (result["tpr"], result["fpr"], result["threshold"]) == (1.0, 0.0, 0.9)
    with_delta = audit.empirical_epsilon([0.9] * 20, [0.1] * 20, delta=1e-6)
    assert with_delta["epsilon_lower_bound"] == pytest.approx(
        math.log((0.6915029 - 1e-6) / 0.3084971), abs=1e-5)
    # Ten and ten leave five and five to measure: not enough for any bound at 95%.
    assert audit.empirical_epsilon([0.9] * 10, [0.1] * 10, delta=0.0)["ceiling"] == 0.0


def test_the_bound_takes_the_best_threshold_and_form():
    # In each half, 8 of 10 members score 0.9, the rest and all non-members 0.1. Threshold
    # 0.9 on the measured half: TP 8 of 10, FP 0 of 10. Direct form
    # log(0.443905 / 0.308497) = 0.363897 beats the mirrored
    # log((1 - 0.308497) / (1 - 0.443905)) = 0.217927; threshold 0.1 (everything a member)
    # gives nothing.
    halves = audit.split_halves(20, 20)["members"]
    members = np.full(20, 0.1)
    for half in ("selection", "measurement"):
        members[halves[half][:8]] = 0.9
    result = audit.empirical_epsilon(members, [0.1] * 20, delta=0.0)
    assert result["epsilon_lower_bound"] == pytest.approx(0.363897, abs=1e-5)
    assert result["threshold"] == 0.9 and result["true_positives"] == 8
    assert result["tpr_interval"] == pytest.approx([0.443905, 0.974789], abs=1e-6)
    assert audit.epsilon_bound(0.443905, 0.308497, 0.0) == pytest.approx(0.363897, abs=1e-5)
    # The mirrored form alone: non-members all below, few members above.
    assert float(audit.epsilon_bound(0.0, 0.308497, 0.0)) == pytest.approx(
        math.log(1 - 0.308497), abs=1e-6)


def test_no_positive_bound_reports_zero():
    result = audit.empirical_epsilon([0.5] * 20, [0.5] * 20, delta=1e-6)
    assert result["epsilon_lower_bound"] == 0.0 and result["threshold"] is None
    rng = np.random.default_rng(2)
    same = audit.empirical_epsilon(rng.normal(size=200), rng.normal(size=200), delta=1e-6)
    assert 0.0 <= same["epsilon_lower_bound"] < same["ceiling"]


def test_null_scores_give_a_positive_bound_no_more_often_than_the_confidence_allows():
    # Members and non-members from one distribution: a positive bound is a false alarm,
    # which the confidence level caps at 1 - confidence. Picking the threshold on the
    # scores it is measured on broke that cap (about 30% of runs at 80%).
    runs, size = 400, 120
    fractions = {}
    for confidence in (0.95, 0.8):
        positive = 0
        for seed in range(runs):
            rng = np.random.default_rng([seed, 0x0])
            result = audit.empirical_epsilon(rng.normal(size=size), rng.normal(size=size),
                                             delta=1e-6, confidence=confidence)
            positive += result["epsilon_lower_bound"] > 0
        fractions[confidence] = positive / runs
    print(f"null runs with a positive bound, by confidence: {fractions}")
    for confidence, fraction in fractions.items():
        assert fraction <= 1 - confidence, (
            f"{fraction:.1%} of {runs} null runs gave a positive bound at {confidence:.0%} "
            f"confidence (all levels: {fractions})")


def test_a_real_signal_gives_a_clearly_positive_bound_from_the_measured_half():
    rng = np.random.default_rng(11)
    members, others = rng.normal(2.0, 1.0, size=200), rng.normal(0.0, 1.0, size=200)
    result = audit.empirical_epsilon(members, others, delta=1e-6)
    assert result["epsilon_lower_bound"] > 1.0
    assert result["measurement"] == result["selection"] == {"members": 100,
                                                            "non_members": 100}
    assert result["ceiling"] == pytest.approx(3.2813, abs=1e-3)
    assert result["epsilon_lower_bound"] <= result["ceiling"]
    # The reported figures are the measured half's at the chosen threshold, nothing else.
    halves = audit.split_halves(200, 200)
    measured_members = members[halves["members"]["measurement"]]
    measured_others = others[halves["non_members"]["measurement"]]
    true_positives = int((measured_members >= result["threshold"]).sum())
    false_positives = int((measured_others >= result["threshold"]).sum())
    assert (result["true_positives"], result["false_positives"]) == (true_positives,
                                                                      false_positives)
    tpr_lower, _ = audit.clopper_pearson(true_positives, 100)
    _, fpr_upper = audit.clopper_pearson(false_positives, 100)
    assert result["epsilon_lower_bound"] == pytest.approx(
        float(audit.epsilon_bound(tpr_lower, fpr_upper, 1e-6)))


def test_selection_and_measurement_halves_are_disjoint_and_ignore_the_scores():
    halves = audit.split_halves(121, 120, seed=3)
    for group, size in (("members", 121), ("non_members", 120)):
        selection, measurement = halves[group]["selection"], halves[group]["measurement"]
        assert not set(selection) & set(measurement)
        assert sorted([*selection, *measurement]) == list(range(size))
        assert (len(selection), len(measurement)) == (size // 2, size - size // 2)
    again = audit.split_halves(121, 120, seed=3)
    other_seed = audit.split_halves(121, 120, seed=4)
    for group in ("members", "non_members"):
        assert (again[group]["measurement"] == halves[group]["measurement"]).all()
        assert (other_seed[group]["measurement"] != halves[group]["measurement"]).any()

    # Whatever the score values, and however they are shuffled within a group, the bound
    # is counted on the same positions.
    rng = np.random.default_rng(5)
    members, others = rng.normal(1.0, 1.0, size=121), rng.normal(size=120)
    for shuffle in range(3):
        shuffled_members, shuffled_others = rng.permutation(members), rng.permutation(others)
        result = audit.empirical_epsilon(shuffled_members, shuffled_others, delta=1e-6, seed=3)
        assert result["threshold"] is not None
        measured_members = shuffled_members[halves["members"]["measurement"]]
        measured_others = shuffled_others[halves["non_members"]["measurement"]]
        assert result["true_positives"] == (measured_members >= result["threshold"]).sum()
        assert result["false_positives"] == (measured_others >= result["threshold"]).sum()

    # Members that stand out only in the selection half show nothing once measured.
    split = audit.split_halves(40, 40)["members"]
    members = np.full(40, 0.1)
    members[split["selection"]] = 0.9
    result = audit.empirical_epsilon(members, [0.5] * 40, delta=1e-6)
    assert result["threshold"] == 0.9 and result["true_positives"] == 0
    assert result["epsilon_lower_bound"] == 0.0


# --------------------------------------------------------------------------- splitting


def test_holdout_split_is_seeded_and_keeps_units_together():
    groups = [f"u{i // 3}" for i in range(30)]           # 10 units of 3 records
    mask = audit.holdout_split(groups, 0.3, seed=5)
    assert mask.sum() == 9
    for unit in set(groups):
        assert len({bool(m) for m, g in zip(mask, groups) if g == unit}) == 1
    assert (audit.holdout_split(groups, 0.3, seed=5) == mask).all()
    assert audit.holdout_split(["a", "b"], 0.01, seed=0).sum() == 1
    with pytest.raises(ValueError):
        audit.holdout_split(groups, 1.0, seed=0)


def test_strip_options_removes_both_spellings():
    argv = ["--input", "a.csv", "--output", "o", "--max_records=5", "--input_format", "csv",
            "--lm", "x"]
    assert strip_options(argv, ("--input", "--input_format", "--max_records")) == [
        "--output", "o", "--lm", "x"]


# ---------------------------------------------------------------------------- the command


def test_audit_command_on_tiny_models(tmp_path, capsys):
    source = write_reviews_csv(tmp_path / "reviews.csv", n=48)
    with open(source, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    report, work = tmp_path / "report", tmp_path / "work"
    code = cli.main(["audit", *tiny_args(source, tmp_path / "out", "--label_column", "category",
                                         "--label_values", "Restaurants,Shopping",
                                         "--id_column", "id", "--max_records", "40",
                                         "--aggregator", "median", "--clip", "4"),
                     "--canaries", "3", "--canary_repeats", "2", "--holdout_fraction", "0.5",
                     "--seed", "1", "--report", str(report), "--work_dir", str(work)])
    assert code == 0
    result = json.loads((report / "audit.json").read_text())
    assert (report / "audit.md").read_text().startswith("# Privacy audit")

    # --max_records took 40 records drawn with the seed; half of them went to the job, with
    # 3 x 2 canary records, and the job accepted exactly those.
    info = result["input"]
    assert info["usable_records"] == 40 and info["rows_unusable_by_reason"] == {
        "over --max_records": 8}
    assert info["records_given_to_job"] == 20 and info["records_held_out"] == 20
    assert info["canary_records"] == 6
    assert info["job_records_accepted"] == 20 + 6 and info["job_records_rejected"] == 0
    assert info["synthetic_records"] >= 1

    job_rows = [json.loads(line) for line in (work / "audit_input.jsonl").read_text().splitlines()]
    canary_rows = [r for r in job_rows if r["id"].startswith(CANARY_PREFIX)]
    real_rows = [r for r in job_rows if not r["id"].startswith(CANARY_PREFIX)]
    inserted = [c["canary"] for c in result["canaries"]]
    assert len(set(inserted)) == 3
    assert sorted(r["text"] for r in canary_rows) == sorted(inserted * 2)
    assert len({r["id"] for r in canary_rows}) == 6
    assert all(r["category"] in ("Restaurants", "Shopping") for r in canary_rows)
    # The job saw 20 of the input's records; the sample is not where they sit in the file.
    all_ids = {r["id"] for r in rows}
    assert len(real_rows) == 20 and {r["id"] for r in real_rows} <= all_ids
    assert {r["id"] for r in real_rows} - {r["id"] for r in rows[:40]}

    assert not set(inserted) & {c["canary"] for c in result["control_canaries"]}
    assert result["claimed"]["delta"] == 1e-6 and result["claimed"]["formal_epsilon"] > 0
    privacy = json.loads((tmp_path / "out" / "privacy_report.json").read_text())
    assert result["claimed"]["formal_epsilon"] == privacy["formal_epsilon"]
    ex_post = result["claimed"]["ex_post_epsilon"]["generation"]   # the median rule's
    assert ex_post["max"] == privacy["ex_post"]["generation"]["total_epsilon"]["max"]
    for name in ("records", "canaries"):
        figures = result["membership_inference"][name]
        assert 0.0 <= figures["auc"] <= 1.0
        bound = figures["empirical_epsilon"]
        assert 0.0 <= bound["epsilon_lower_bound"] <= bound["ceiling"]
    assert result["membership_inference"]["records"]["empirical_epsilon"]["members"] == 20
    assert set(result["canary_exposure"]) >= {"inserted", "control", "verbatim_rule"}
    assert {"longest_shared_run", "lcs_ratio", "attack_score", "verbatim",
            "near_verbatim", "label"} <= set(result["canaries"][0])
    assert set(result["memorisation"]) == {"members", "held_out"}
    assert FIXED_SECRET not in json.dumps(result)        # the run secret is not reported
    dumped = json.dumps(result)
    assert not [r["text"] for r in rows if r["text"] in dumped]   # no private record quoted

    printed = capsys.readouterr().out
    assert "empirical epsilon lower bound" in printed and "membership inference" in printed


@pytest.mark.parametrize("extra, expected", [
    (["--canaries", "0"], "--canaries"),
    (["--holdout_fraction", "1.5"], "--holdout_fraction"),
    (["--canary_repeats", "x"], "--canary_repeats"),
    (["--seed", "-1"], "--seed"),
    (["--batch_size", "1"], "--batch_size"),
    (["--method", "none", "--output_embeddings"], "--method none"),
])
def test_audit_mistakes_are_one_line_and_exit_2(tmp_path, capsys, extra, expected):
    source = write_reviews_csv(tmp_path / "reviews.csv", n=8)
    code = cli.main(["audit", *tiny_args(source, tmp_path / "out"), *extra])
    assert code == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and expected in error
    assert not (tmp_path / "out" / "audit").exists()


def test_audit_needs_an_input_and_a_writable_report(tmp_path, capsys):
    assert cli.main(["audit", "--output", str(tmp_path / "out")]) == 2
    assert "--input is required" in capsys.readouterr().err
    source = write_reviews_csv(tmp_path / "reviews.csv", n=8)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert cli.main(["audit", *tiny_args(source, tmp_path / "out"),
                     "--report", str(blocker / "report")]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "cannot write to --report" in error
