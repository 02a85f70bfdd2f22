"""`dpsynth evaluate` and the evaluation package: metrics, memorisation, report, command."""

import csv
import html
import html.parser
import itertools
import json
import os
import re
import time

import matplotlib.image
import numpy as np
import pytest

from beam_pipeline import cli
from beam_pipeline.demo import DEFAULT_INPUT as YELP_CSV
from evaluation import memorisation, metrics, report
from evaluation.evaluate import evaluate
from evaluation.report import write_report

FRUIT = "apple banana cherry grape melon peach pear plum lemon lime".split()
NOISE = "zebra xylophone quartz jazz fizz buzz vex wax oxygen kiwi".split()


def sentences(vocabulary, count, seed, length=8):
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(vocabulary, size=length)) for _ in range(count)]


# ---------------------------------------------------------------------------- MAUVE

def test_mauve_is_near_one_for_the_same_distribution_and_low_for_a_different_one(tiny_encoder):
    fruit_a = tiny_encoder.embed(sentences(FRUIT, 40, seed=1))
    fruit_b = tiny_encoder.embed(sentences(FRUIT, 40, seed=2))
    noise = tiny_encoder.embed(sentences(NOISE, 40, seed=3))

    itself = metrics.mauve_score(fruit_a, fruit_a, seed=0)
    same_source = metrics.mauve_score(fruit_a, fruit_b, seed=0)
    different = metrics.mauve_score(fruit_a, noise, seed=0)

    assert itself["score"] == 1.0
    assert same_source["score"] > 0.8
    assert different["score"] < 0.3
    assert same_source["score"] - different["score"] > 0.5
    assert same_source["sample_size"] == 40 and same_source["num_buckets"] == 5


def test_mauve_subsamples_the_larger_side_with_the_seed(tiny_encoder):
    many = tiny_encoder.embed(sentences(FRUIT, 90, seed=4))
    few = tiny_encoder.embed(sentences(FRUIT, 30, seed=5))

    first = metrics.mauve_score(many, few, seed=7)
    again = metrics.mauve_score(many, few, seed=7)

    assert (first["p_size"], first["q_size"], first["sample_size"]) == (90, 30, 30)
    assert first["num_buckets"] == metrics.mauve_buckets(30) == 5
    assert first["score"] == again["score"]
    p_rows, q_rows = metrics.equal_size_indices(90, 30, seed=7)
    assert len(set(p_rows.tolist())) == 30 and q_rows.tolist() == list(range(30))


def test_mauve_buckets_are_one_per_ten_texts_with_a_floor_for_small_samples():
    sizes = (10, 14, 19, 20, 32, 50, 60, 256, 1000)
    assert [metrics.mauve_buckets(n) for n in sizes] == [2, 3, 4, 5, 5, 5, 6, 26, 100]


def test_mauve_is_not_computed_on_too_few_texts():
    features = np.eye(12, dtype=np.float32)
    result = metrics.mauve_score(features[:9], features, seed=0)
    assert result["score"] is None
    assert result["sample_size"] == 9 and "at least 10" in result["reason"]


@pytest.fixture(scope="module")
def tiny_lm_features():
    from offline_models.loading import TINY_LM, load_feature_encoder

    return load_feature_encoder(TINY_LM, sequence_length=32)


def test_lm_features_are_unit_vectors_that_ignore_padding(tiny_lm_features):
    texts = ["apple banana", "apple banana cherry grape melon peach pear plum lemon lime"]
    together = tiny_lm_features.embed(texts)
    alone = np.concatenate([tiny_lm_features.embed([t]) for t in texts])
    assert together.shape == (2, tiny_lm_features.dimension)
    np.testing.assert_allclose(np.linalg.norm(together, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(together, alone, atol=1e-5)   # padding takes no part


def test_second_feature_space_mauve_sits_beside_the_encoders(tiny_encoder, tiny_lm_features):
    """The evaluator's own sanity check of the second space: real against real is near 1,
    text of another kind clearly lower, and the run's encoder figure is unchanged."""
    real = _labelled(sentences(FRUIT, 80, seed=80), "fruit")
    like_real = [{"text": t, "label": "fruit"} for t in sentences(FRUIT, 40, seed=81)]
    unlike = [{"text": t, "label": "fruit"} for t in sentences(NOISE, 40, seed=82)]
    common = dict(label_columns=["category"], encoder=tiny_encoder, seed=0,
                  feature_encoder=tiny_lm_features, feature_encoder_name="tiny-llama3")

    good = evaluate(like_real, real, **common)
    bad = evaluate(unlike, real, **common)
    plain = evaluate(like_real, real, label_columns=["category"], encoder=tiny_encoder, seed=0)

    second = good["mauve_feature_encoder"]
    assert second["encoder"] == "tiny-llama3" and second["sample_size"] == 40
    assert second["features"].startswith("tiny-llama3, 32 dimensions")
    assert second["real_vs_real"]["score"] > 0.8
    assert second["score"] > 0.8
    assert bad["mauve_feature_encoder"]["score"] < second["score"] - 0.4
    assert good["mauve"] == plain["mauve"] and "mauve_feature_encoder" not in plain
    console = dict((name, value) for name, value, _ in report.summary_rows(good))
    assert console["MAUVE, tiny-llama3 features"] == f"{second['score']:.3f} [rough: only 40 " \
        "texts a side, under 50]"
    assert "MAUVE, real vs real, tiny-llama3 features" in console and "MAUVE" in console


# ---------------------------------------------------------------------------- accuracy

def test_downstream_accuracy_beats_chance_on_separable_data(tiny_encoder):
    train_texts = sentences(FRUIT, 30, seed=10) + sentences(NOISE, 30, seed=11)
    test_texts = sentences(FRUIT, 20, seed=12) + sentences(NOISE, 20, seed=13)
    result = metrics.downstream_accuracy(
        tiny_encoder.embed(train_texts), ["fruit"] * 30 + ["noise"] * 30,
        tiny_encoder.embed(test_texts), ["fruit"] * 20 + ["noise"] * 20, seed=0)
    assert result["accuracy"] > 0.8       # chance is 0.5
    assert (result["train_size"], result["test_size"], result["train_classes"]) == (60, 40, 2)


def test_downstream_accuracy_reports_degenerate_labels_instead_of_failing():
    x = np.random.default_rng(0).normal(size=(6, 4))
    single = metrics.downstream_accuracy(x[:3], ["a", "a", "a"], x[3:], ["a", "b", "c"])
    assert single["accuracy"] is None and "one class" in single["reason"]
    assert single["test_classes_missing_from_training"] == ["b", "c"]

    empty = metrics.downstream_accuracy(x[:0], [], x[3:], ["a", "b", "c"])
    assert empty["accuracy"] is None and "no training records" in empty["reason"]

    missing = metrics.downstream_accuracy(
        np.vstack([x[:2], x[:2] + 5]), ["a", "a", "b", "b"], x[3:], ["a", "b", "c"])
    assert missing["accuracy"] is not None
    assert missing["accuracy"] <= 2 / 3                   # the "c" row cannot be right
    assert missing["test_classes_missing_from_training"] == ["c"]
    assert missing["test_share_of_missing_classes"] == pytest.approx(1 / 3)


def test_balanced_accuracy_averages_the_recall_of_each_true_class():
    truth = ["a"] * 8 + ["b"] * 2
    assert metrics.balanced_accuracy(["a"] * 10, truth) == pytest.approx(0.5)
    assert metrics.balanced_accuracy(["a"] * 7 + ["b"] * 3, truth) == pytest.approx(
        (7 / 8 + 2 / 2) / 2)
    assert metrics.balanced_accuracy([], []) is None
    assert metrics.majority_balanced_accuracy(["a", "a", "b", "c"]) == pytest.approx(1 / 3)
    assert metrics.majority_balanced_accuracy([]) is None


def test_balanced_accuracy_tells_label_shares_from_reading_the_texts(tiny_encoder):
    """Trained on labels drawn at random with the real shares, a classifier's accuracy can
    reach the majority share on a skewed test set; its balanced accuracy stays near 1 / classes,
    while a classifier that reads the texts scores near 1 on both."""
    real = (_labelled(sentences(FRUIT, 80, seed=70), "fruit")
            + _labelled(sentences(NOISE, 20, seed=71), "noise"))
    texts = sentences(FRUIT, 40, seed=72) + sentences(NOISE, 40, seed=73)
    reading = [{"text": t, "label": "fruit" if i < 40 else "noise"} for i, t in enumerate(texts)]
    shuffled_labels = np.random.default_rng(0).permutation(["fruit"] * 64 + ["noise"] * 16)
    guessing = [{"text": t, "label": label} for t, label in zip(texts, shuffled_labels)]

    good = evaluate(reading, real, label_columns=["category"], encoder=tiny_encoder, seed=0)
    bad = evaluate(guessing, real, label_columns=["category"], encoder=tiny_encoder, seed=0)

    for result in (good, bad):
        downstream = result["downstream"]["category"]
        assert downstream["majority_class_balanced_accuracy"] == 0.5
        assert downstream["trained_on_real"]["balanced_accuracy"] is not None
    good_part = good["downstream"]["category"]["trained_on_synthetic"]
    bad_part = bad["downstream"]["category"]["trained_on_synthetic"]
    assert good_part["balanced_accuracy"] > 0.8
    assert bad_part["balanced_accuracy"] < 0.65
    assert bad_part["balanced_accuracy"] < bad_part["accuracy"] - 0.1
    console = dict((name, value) for name, value, _ in report.summary_rows(bad))
    assert console["Balanced accuracy category, majority class"] == "0.500"
    assert console["Balanced accuracy category, trained on synthetic"] == \
        f"{bad_part['balanced_accuracy']:.3f}"


# ---------------------------------------------------------------------------- shapes

def test_length_stats_match_hand_computed_values():
    texts = ["a bb ccc", "dddd", "ee ff", "g h i j"]     # chars 8, 4, 5, 7; words 3, 1, 2, 4
    stats = metrics.length_stats(texts)
    assert stats["chars"] == {"count": 4, "mean": 6.0, "median": 6.0, "p10": 4.3, "p90": 7.7,
                              "min": 4, "max": 8}
    assert stats["words"]["mean"] == 2.5 and stats["words"]["median"] == 2.5
    assert (stats["words"]["min"], stats["words"]["max"]) == (1, 4)
    assert metrics.length_stats([])["chars"]["mean"] is None


def test_label_distribution_and_total_variation_match_hand_computed_values():
    real = metrics.label_distribution(["b", "a", "b", None, "b", "c"])
    assert real["counts"] == {"b": 3, "a": 1, "c": 1}
    assert list(real["counts"]) == ["b", "a", "c"]                  # by count, then name
    assert real["shares"] == {"b": 0.6, "a": 0.2, "c": 0.2}
    assert (real["labelled"], real["unlabelled"]) == (5, 1)
    synthetic = metrics.label_distribution(["a", "a", "b", "d"])
    # |0.6-0.25| + |0.2-0.5| + |0.2-0| + |0-0.25| = 1.1, halved
    assert metrics.total_variation(synthetic["shares"], real["shares"]) == pytest.approx(0.55)


# ---------------------------------------------------------------------------- memorisation

PRIVATE = [
    "Our waiter Marco remembered my order from last spring and the tiramisu was divine as usual.",
    "Parking was a nightmare on Saturday, but the bakery's croissants made up for it.",
    "I booked the spa package for my sister's birthday; the masseuse was late by an hour.",
]


def test_words_are_lower_cased_and_split_on_punctuation():
    assert memorisation.words("Don't STOP -- the_food, 3.5 stars!  Joe\u2019s") == [
        "don't", "stop", "the", "food", "3", "5", "stars", "joe's"]


def test_a_copied_twelve_word_span_is_found():
    # Words 3..14 of the first private record, with other case and punctuation around them.
    copied = "Honestly: REMEMBERED my order from last spring, and the tiramisu was divine as!! wow"
    synthetic = ["A quiet place with good coffee and friendly staff.", copied,
                 "Nothing here repeats the private reviews at all."]
    result = memorisation.memorisation(synthetic, PRIVATE)
    longest = result["longest_shared_ngram"]
    assert longest["length"] == 12
    assert longest["ngram"] == "remembered my order from last spring and the tiramisu was divine as"
    assert (longest["synthetic_index"], longest["private_index"]) == (1, 0)
    assert result["copied_texts"] == 1 and result["copied_indices"] == [1]
    assert result["copied_fraction"] == pytest.approx(1 / 3)
    assert memorisation.longest_shared_ngram(synthetic, PRIVATE)["length"] == 12
    assert memorisation.copied_ngram_fraction(synthetic, PRIVATE) == pytest.approx(1 / 3)


def test_disjoint_texts_share_nothing():
    synthetic = ["Zebras graze quietly near xylophones.", "Quartz fizz buzz vex wax oxygen."]
    result = memorisation.memorisation(synthetic, PRIVATE)
    assert result["longest_shared_ngram"] == {"length": 0}
    assert result["copied_texts"] == 0 and result["copied_fraction"] == 0.0


def _brute_force_longest(synthetic, private):
    best = 0
    for a in map(memorisation.words, synthetic):
        for b in map(memorisation.words, private):
            previous = [0] * (len(b) + 1)
            for i in range(len(a)):
                current = [0] * (len(b) + 1)
                for j in range(len(b)):
                    if a[i] == b[j]:
                        current[j + 1] = previous[j] + 1
                        best = max(best, current[j + 1])
                previous = current
    return best


@pytest.mark.parametrize("seed", range(5))
def test_longest_shared_ngram_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    vocabulary = "a b c d e".split()             # small: many accidental matches
    private = [" ".join(rng.choice(vocabulary, size=int(rng.integers(0, 30)))) for _ in range(6)]
    synthetic = [" ".join(rng.choice(vocabulary, size=int(rng.integers(0, 30)))) for _ in range(6)]
    assert (memorisation.longest_shared_ngram(synthetic, private)["length"]
            == _brute_force_longest(synthetic, private))
    for n in (1, 3, 8):
        expected = sum(
            any(tuple(w[i:i + n]) in {tuple(p[k:k + n]) for p in map(memorisation.words, private)
                                      for k in range(len(p) - n + 1)}
                for i in range(len(w) - n + 1))
            for w in map(memorisation.words, synthetic))
        assert memorisation.CopyIndex(synthetic, private).copied_fraction(n)["copied"] == expected


def test_memorisation_check_is_fast_on_ten_thousand_private_records():
    rng = np.random.default_rng(0)
    vocabulary = [f"w{i}" for i in range(5000)]
    private = [" ".join(rng.choice(vocabulary, size=120)) for _ in range(10_000)]
    synthetic = [" ".join(rng.choice(vocabulary, size=60)) for _ in range(500)]
    synthetic[7] = "start " + " ".join(private[4321].split()[50:70]) + " end"
    started = time.perf_counter()
    result = memorisation.memorisation(synthetic, private)
    assert time.perf_counter() - started < 30     # about 1 s on a 2-core machine
    assert result["longest_shared_ngram"]["length"] == 20
    assert result["copied_indices"] == [7]


# ---------------------------------------------------------------------------- evaluate()

def _labelled(texts, label):
    return [{"text": t, "category": label} for t in texts]


def test_evaluate_trains_on_synthetic_and_on_a_disjoint_real_split(tiny_encoder):
    synthetic = [{"text": t, "label": "fruit"} for t in sentences(FRUIT, 20, seed=20)] + [
        {"text": t, "label": "noise"} for t in sentences(NOISE, 20, seed=21)]
    real = (_labelled(sentences(FRUIT, 50, seed=22), "fruit")
            + _labelled(sentences(NOISE, 50, seed=23), "noise"))
    lines = []
    result = evaluate(synthetic, real, label_columns=["category"], encoder=tiny_encoder, seed=0,
                      say=lines.append)

    assert result["sizes"] == {"synthetic": 40, "real": 100, "private": None, "test": 60,
                               "baseline_pool": 40}
    downstream = result["downstream"]["category"]
    assert downstream["trained_on_synthetic"]["accuracy"] > 0.8
    assert downstream["trained_on_real"]["accuracy"] > 0.8
    assert downstream["trained_on_real"]["train_size"] == 40
    assert downstream["trained_on_synthetic"]["test_size"] == downstream["test_size"] == 60
    assert result["labels"]["category"]["synthetic"]["counts"] == {"fruit": 20, "noise": 20}
    assert result["labels"]["category"]["real"]["counts"] == {"fruit": 50, "noise": 50}
    assert result["mauve"]["sample_size"] == 40 and result["mauve"]["score"] > 0.5
    reference = result["mauve"]["real_vs_real"]       # two disjoint halves of the 100 real
    assert reference["sample_size"] == 40 and reference["num_buckets"] == 5
    assert 0.5 < reference["score"] <= 1.0
    assert result["memorisation"] == {"computed": False, "reason": "no private records given"}
    assert any(line.startswith("embedding real texts") for line in lines)


def test_evaluate_with_private_records_and_two_label_columns(tiny_encoder):
    # The synthetic "label" field holds the stars; the category is not in the synthetic file.
    synthetic = [{"text": t, "label": "5"} for t in sentences(FRUIT, 12, seed=30)]
    synthetic[3]["text"] = "we loved it " + " ".join(sentences(NOISE, 1, seed=31, length=12)) + " !"
    private_texts = sentences(NOISE, 1, seed=31, length=12) + sentences(FRUIT, 19, seed=32)
    private = [{"text": t, "category": "fruit", "stars": s}
               for t, s in zip(private_texts, itertools.cycle(["5", "1"]))]
    real = [{"text": t, "category": c, "stars": s}
            for t, c, s in zip(sentences(FRUIT, 30, seed=33), itertools.cycle(["fruit", "veg"]),
                               itertools.cycle(["5", "1", "3"]))]
    result = evaluate(synthetic, real, label_columns=["category", "stars"], encoder=tiny_encoder,
                      synthetic_label_column="stars", private_records=private, seed=1)

    category, stars = result["downstream"]["category"], result["downstream"]["stars"]
    assert category["trained_on_synthetic"]["accuracy"] is None
    assert "carry no 'category' label" in category["trained_on_synthetic"]["reason"]
    assert category["trained_on_real"]["accuracy"] is None       # private: one category only
    assert stars["trained_on_synthetic"]["accuracy"] is None     # all synthetic rows say "5"
    assert stars["trained_on_synthetic"]["test_classes_missing_from_training"] == ["1", "3"]
    assert stars["trained_on_real"]["accuracy"] is not None
    assert stars["trained_on_real"]["train_size"] == 12 and stars["test_size"] == 30
    assert stars["trained_on_real"]["trained_on"] == "private"
    assert result["sizes"]["test"] == 30 and result["sizes"]["baseline_pool"] == 12
    copying = result["memorisation"]
    assert copying["longest_shared_ngram"]["length"] == 12
    assert copying["copied_indices"] == [3] and copying["copied_fraction"] == pytest.approx(1 / 12)


def test_report_embeds_every_plot_in_one_html(tmp_path, tiny_encoder):
    synthetic = _labelled(sentences(FRUIT, 12, seed=40), "fruit") + _labelled(
        sentences(NOISE, 12, seed=41), "noise")
    real = _labelled(sentences(FRUIT, 20, seed=42), "fruit") + _labelled(
        sentences(NOISE, 20, seed=43), "noise")
    result = evaluate(synthetic, real, label_columns=["category"], encoder=tiny_encoder)
    paths = write_report(result, str(tmp_path), synthetic_texts=[r["text"] for r in synthetic],
                         real_texts=[r["text"] for r in real])
    page = (tmp_path / "evaluation.html").read_text(encoding="utf-8")
    assert sorted(p.name for p in tmp_path.glob("*.png")) == [
        "accuracy.png", "labels_category.png", "lengths.png"]
    assert page.count("src='data:image/png;base64,iVBORw0KGgo") == 3
    assert "<img" in page and "src='lengths.png'" not in page
    saved = json.loads((tmp_path / "evaluation.json").read_text())
    assert saved["downstream"] == json.loads(json.dumps(result["downstream"]))
    assert set(saved["plots"].values()) == {"accuracy.png", "labels_category.png", "lengths.png"}
    assert paths["html"].endswith("evaluation.html")


# ---------------------------------------------------------------------------- the command

def _write_csv(path, rows, fields=("text", "category", "stars")):
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(fields))
        writer.writeheader()
        writer.writerows(rows)
    return path


def _command_inputs(tmp_path):
    real = [{"text": t, "category": c, "stars": s} for t, c, s in zip(
        sentences(FRUIT, 20, seed=50) + sentences(NOISE, 20, seed=51),
        ["fruit"] * 20 + ["noise"] * 20, itertools.cycle(["1", "5"]))]
    real.append({"text": "   ", "category": "fruit", "stars": "1"})        # rejected: empty text
    synthetic = tmp_path / "synthetic-00000-of-00001.jsonl"
    synthetic.write_text("".join(
        json.dumps({"text": t, "label": label, "cluster": 0}) + "\n"
        for t, label in zip(sentences(FRUIT, 10, seed=52) + sentences(NOISE, 10, seed=53),
                            ["fruit"] * 10 + ["noise"] * 10)), encoding="utf-8")
    return _write_csv(tmp_path / "real.csv", real), synthetic


def test_command_writes_json_and_self_contained_html(tmp_path, capsys):
    real, synthetic = _command_inputs(tmp_path)
    private = _write_csv(tmp_path / "private.csv", [
        {"text": "one two three four five six seven eight nine", "category": "fruit",
         "stars": "5"}])
    output = tmp_path / "report"
    code = cli.main(["evaluate", "--synthetic", str(tmp_path / "synthetic-*.jsonl"),
                     "--real", str(real), "--private", str(private),
                     "--label_column", "category", "--label_column", "stars",
                     "--encoder", "tiny-bert", "--encoder_sequence_length", "32",
                     "--output", str(output)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    saved = json.loads((output / "evaluation.json").read_text())
    assert saved["inputs"]["real"]["records"] == 40 and saved["inputs"]["real"]["rejected"] == 1
    assert saved["inputs"]["real"]["rejected_reasons"] == {"empty text": 1}
    assert saved["inputs"]["synthetic"]["records"] == 20
    assert saved["downstream"]["category"]["trained_on_synthetic"]["accuracy"] > 0.8
    assert saved["downstream"]["stars"]["trained_on_synthetic"]["accuracy"] is None
    assert saved["memorisation"]["longest_shared_ngram"] == {"length": 0}
    assert saved["settings"]["encoder"] == "tiny-bert"
    page = (output / "evaluation.html").read_text(encoding="utf-8")
    assert "data:image/png;base64," in page
    assert "MAUVE" in captured.out and "evaluation.html" in captured.out
    assert "embedding synthetic texts: 20/20" in captured.err


def test_command_feature_encoder_adds_a_second_mauve_to_json_and_console(tmp_path, capsys):
    real, synthetic = _command_inputs(tmp_path)
    output = tmp_path / "report"
    code = cli.main(["evaluate", "--synthetic", str(synthetic), "--real", str(real),
                     "--label_column", "category", "--encoder", "tiny-bert",
                     "--encoder_sequence_length", "32", "--feature_encoder", "tiny-llama3",
                     "--output", str(output)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    saved = json.loads((output / "evaluation.json").read_text())
    assert saved["settings"]["feature_encoder"] == "tiny-llama3"
    second = saved["mauve_feature_encoder"]
    assert second["encoder"] == "tiny-llama3" and second["sample_size"] == 20
    assert 0.0 <= second["score"] <= 1.0
    assert "MAUVE, tiny-llama3 features:" in captured.out
    assert "MAUVE, tiny-llama3 features" in (output / "evaluation.html").read_text()


@pytest.mark.parametrize("feature_encoder, expected", [
    ("gpt-9", "unknown --feature_encoder 'gpt-9': use one of"),
    ("tiny-bert", "is the --encoder"),
])
def test_command_feature_encoder_mistakes_are_one_line(tmp_path, capsys, feature_encoder,
                                                       expected):
    real, synthetic = _command_inputs(tmp_path)
    code = cli.main(["evaluate", "--synthetic", str(synthetic), "--real", str(real),
                     "--encoder", "tiny-bert", "--feature_encoder", feature_encoder,
                     "--output", str(tmp_path / "report")])
    error = capsys.readouterr().err
    assert code == 2 and expected in error and "Traceback" not in error


@pytest.mark.parametrize("problem, expected", [
    ("missing", "does not exist"),
    ("empty", "has no usable records"),
    ("column", "has no column 'rating'"),
    ("text_column", "has no column 'body'"),
    ("output", "cannot create the report directory"),
])
def test_command_user_mistakes_are_one_line_and_exit_2(tmp_path, capsys, problem, expected):
    real, synthetic = _command_inputs(tmp_path)
    args = ["evaluate", "--synthetic", str(synthetic), "--real", str(real),
            "--encoder", "tiny-bert", "--output", str(tmp_path / "out")]
    if problem == "missing":
        args[2] = str(tmp_path / "nowhere.jsonl")
    elif problem == "empty":
        (tmp_path / "empty.csv").write_text("text,category\n", encoding="utf-8")
        args[4] = str(tmp_path / "empty.csv")
    elif problem == "column":
        args += ["--label_column", "rating"]
    elif problem == "text_column":
        args += ["--text_column", "body"]
    else:
        (tmp_path / "a_file").write_text("", encoding="utf-8")
        args += ["--output", str(tmp_path / "a_file" / "report")]
    code = cli.main(args)
    error = capsys.readouterr().err
    assert code == 2
    assert "Traceback" not in error
    last = error.splitlines()[-1]
    assert [line for line in error.splitlines() if line.startswith("dpsynth:")] == [last]
    assert last.startswith("dpsynth: error: ") and expected in last
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------- real encoder

@pytest.mark.slow
def test_evaluate_with_the_real_encoder_on_yelp_reviews(real_encoder, tmp_path):
    with open(YELP_CSV, newline="", encoding="utf-8") as handle:
        rows = list(itertools.islice(csv.DictReader(handle), 180))
    real = [{"text": r["text"], "category": r["label1"], "stars": r["label2"]} for r in rows[:60]]
    synthetic = [{"text": r["text"], "label": r["label2"]} for r in rows[60:120]]
    private = [{"text": r["text"], "category": r["label1"], "stars": r["label2"]}
               for r in rows[60:180]]          # holds every "synthetic" text verbatim
    result = evaluate(synthetic, real, label_columns=["category", "stars"], encoder=real_encoder,
                      synthetic_label_column="stars", private_records=private, seed=0)
    repeated = evaluate([{"text": "Great food, great service. Five stars!", "label": "5"}] * 30
                        + [{"text": "Terrible. Never again.", "label": "1"}] * 30, real,
                        label_columns=["stars"], encoder=real_encoder)

    # Reviews against reviews from the same source: close; one repeated sentence: far.
    assert 0.5 < result["mauve"]["score"] <= 1.0
    assert repeated["mauve"]["score"] < 0.5 * result["mauve"]["score"]
    assert result["mauve"]["real_vs_real"]["sample_size"] == 30    # half of the 60 real
    assert 0.5 < result["mauve"]["real_vs_real"]["score"] <= 1.0
    assert result["mauve"]["sample_size"] == 60 and result["mauve"]["num_buckets"] == 6
    stars = result["downstream"]["stars"]
    for side in ("trained_on_synthetic", "trained_on_real"):
        assert 0.0 <= stars[side]["accuracy"] <= 1.0
        assert stars[side]["train_size"] == 60 and stars[side]["test_size"] == 60
    assert result["downstream"]["category"]["trained_on_synthetic"]["accuracy"] is None
    assert result["downstream"]["category"]["trained_on_real"]["accuracy"] is not None
    copying = result["memorisation"]
    assert copying["copied_fraction"] == 1.0
    assert copying["longest_shared_ngram"]["length"] == max(
        len(memorisation.words(r["text"])) for r in synthetic)
    lengths = result["lengths"]["real"]["words"]
    assert 20 < lengths["mean"] < 400 and lengths["count"] == 60
    paths = write_report(result, str(tmp_path), synthetic_texts=[r["text"] for r in synthetic],
                         real_texts=[r["text"] for r in real])
    assert "data:image/png;base64," in open(paths["html"], encoding="utf-8").read()


# ---------------------------------------------------------------------------- synthetic embeddings

class WordEncoder:
    """A stand-in sentence encoder whose space separates the two vocabularies: each word
    adds its own fixed random direction, fruit words around one axis and noise words around
    another, and the sum is normalised to unit norm (as a sentence encoder's output)."""

    dimension = 16

    def __init__(self):
        rng = np.random.default_rng(99)
        self._vectors = {}
        for axis, vocabulary in ((0, FRUIT), (1, NOISE)):
            for word in vocabulary:
                vector = 0.5 * rng.normal(size=self.dimension)
                vector[axis] += 2.0
                self._vectors[word] = vector

    def embed(self, texts):
        rows = np.array([sum(self._vectors[w] for w in t.split()) for t in texts])
        return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


def _dp_synthetic_embeddings(encoder, samples=60, sum_noise=0.5):
    """Embeddings drawn from the DP release of labelled private fruit and noise sentences."""
    from mechanisms import release_embeddings as release

    texts = sentences(FRUIT, 40, seed=60) + sentences(NOISE, 40, seed=61)
    cells = [("fruit", 0)] * 40 + [("noise", 0)] * 40
    config = release.EmbeddingReleaseConfig(count_noise=1.0, sum_noise=sum_noise,
                                            samples=samples)
    statistics = release.cluster_statistics(cells, encoder.embed(texts))
    rng = np.random.default_rng(62)
    noisy = release.release_statistics(statistics, [("fruit", 0), ("noise", 0)],
                                       encoder.dimension, config, rng)
    vectors, labels, _ = release.sample_mixture(release.mixture_from_release(noisy, config),
                                                samples, rng)
    return vectors, labels


def _imbalanced_real():
    return (_labelled(sentences(FRUIT, 60, seed=63), "fruit")
            + _labelled(sentences(NOISE, 40, seed=64), "noise"))


def test_embeddings_beat_the_majority_class_on_separable_data():
    from evaluation.embeddings import evaluate_embeddings

    encoder = WordEncoder()
    vectors, labels = _dp_synthetic_embeddings(encoder)
    real = _imbalanced_real()
    result = evaluate_embeddings(vectors, labels, real, label_columns=["category"],
                                 encoder=encoder, seed=0)
    downstream = result["downstream"]["category"]
    assert downstream["majority_class"] == "fruit"
    majority = downstream["majority_class_accuracy"]
    assert 0.5 < majority < 0.75
    assert downstream["trained_on_synthetic"]["accuracy"] > max(0.8, majority + 0.1)
    assert downstream["trained_on_synthetic"]["train_size"] == 60
    # The same split as `evaluate` on 60 synthetic records: 50 real train the baseline.
    assert result["sizes"] == {"synthetic": 60, "real": 100, "private": None, "test": 50,
                               "baseline_pool": 50}
    assert downstream["trained_on_real"]["train_size"] == 50
    assert downstream["trained_on_real"]["accuracy"] > 0.8
    assert result["mauve"]["features"].startswith("feature-level")
    assert result["mauve"]["sample_size"] == 60 and result["mauve"]["score"] is not None
    assert result["labels"]["category"]["real"]["counts"] == {"fruit": 60, "noise": 40}
    assert sum(result["labels"]["category"]["synthetic"]["counts"].values()) == 60
    assert result["memorisation"]["computed"] is False

    # Labels that do not match the real ones cannot be learned: the accuracy says so.
    shuffled = list(np.random.default_rng(0).permutation(labels))
    chance = evaluate_embeddings(vectors, shuffled, real, label_columns=["category"],
                                 encoder=encoder, seed=0)["downstream"]["category"]
    assert chance["trained_on_synthetic"]["accuracy"] < \
        downstream["trained_on_synthetic"]["accuracy"] - 0.2


def test_embeddings_with_private_records_train_the_baseline_on_them():
    from evaluation.embeddings import evaluate_embeddings

    encoder = WordEncoder()
    vectors, labels = _dp_synthetic_embeddings(encoder, samples=30)
    private = (_labelled(sentences(FRUIT, 20, seed=65), "fruit")
               + _labelled(sentences(NOISE, 20, seed=66), "noise"))
    result = evaluate_embeddings(vectors, labels, _imbalanced_real(), label_columns=["category"],
                                 encoder=encoder, seed=1, private_records=private)
    downstream = result["downstream"]["category"]
    assert result["sizes"]["test"] == 100 and result["sizes"]["baseline_pool"] == 30
    assert downstream["trained_on_real"]["trained_on"] == "private"
    assert downstream["trained_on_synthetic"]["accuracy"] > 0.8


def test_embeddings_of_another_dimension_are_refused(tiny_encoder):
    from evaluation.embeddings import evaluate_embeddings

    with pytest.raises(ValueError, match="evaluate with the encoder the run used"):
        evaluate_embeddings(np.ones((20, tiny_encoder.dimension + 1)), ["fruit"] * 20,
                            _imbalanced_real(), label_columns=["category"], encoder=tiny_encoder)


@pytest.mark.parametrize("extension", ["npz", "parquet"])
def test_command_evaluates_an_embeddings_file(tmp_path, capsys, tiny_encoder, extension):
    from transforms import release_embeddings as synthetic_embeddings

    # The tiny encoder's random weights hardly separate the two vocabularies, so this checks
    # the plumbing: the accuracy figures of the embedding-space classifier are computed.
    vectors, labels = _dp_synthetic_embeddings(tiny_encoder, samples=40, sum_noise=0.1)
    path = synthetic_embeddings.write_embeddings(
        str(tmp_path / f"synthetic_embeddings.{extension}"), vectors, labels, [0] * len(labels))
    real = _write_csv(tmp_path / "real.csv", [dict(r, stars="1") for r in _imbalanced_real()])
    output = tmp_path / "report"
    code = cli.main(["evaluate", "--synthetic_embeddings", path, "--real", str(real),
                     "--label_column", "category", "--encoder", "tiny-bert",
                     "--encoder_sequence_length", "32", "--output", str(output)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    saved = json.loads((output / "evaluation.json").read_text())
    assert saved["synthetic_kind"] == "embeddings"
    assert saved["inputs"]["synthetic"]["records"] == 40
    downstream = saved["downstream"]["category"]
    assert downstream["trained_on_synthetic"]["train_size"] == 40
    assert 0.0 <= downstream["trained_on_synthetic"]["accuracy"] <= 1.0
    assert downstream["trained_on_real"]["accuracy"] is not None
    page = (output / "evaluation.html").read_text(encoding="utf-8")
    assert "feature-level" in page and "Lengths" not in page
    assert "MAUVE" in captured.out


@pytest.mark.parametrize("problem, expected", [
    ("missing", "does not exist"),
    ("extension", "cannot tell the format of the embeddings file"),
    ("corrupt", "is not a readable npz file"),
    ("empty", "holds no embeddings"),
    ("dimension", "pass the --encoder the run used"),
])
def test_command_embeddings_mistakes_are_one_line_and_exit_2(tmp_path, capsys, problem,
                                                            expected):
    from transforms import release_embeddings as synthetic_embeddings

    real, _ = _command_inputs(tmp_path)
    path = tmp_path / "synthetic_embeddings.npz"
    if problem == "extension":
        path = tmp_path / "synthetic_embeddings.jsonl"
        path.write_text("{}\n")
    elif problem == "corrupt":
        path.write_bytes(b"PK not really a zip")
    elif problem == "empty":
        synthetic_embeddings.write_embeddings(str(path), np.zeros((0, 4)), [], [])
    elif problem == "dimension":
        synthetic_embeddings.write_embeddings(str(path), np.ones((12, 3)), ["fruit"] * 12,
                                              [0] * 12)
    code = cli.main(["evaluate", "--synthetic_embeddings", str(path), "--real", str(real),
                     "--label_column", "category", "--encoder", "tiny-bert",
                     "--output", str(tmp_path / "out")])
    error = capsys.readouterr().err
    assert code == 2
    assert "Traceback" not in error
    last = error.splitlines()[-1]
    assert [line for line in error.splitlines() if line.startswith("dpsynth:")] == [last]
    assert last.startswith("dpsynth: error: ") and expected in last


def test_command_needs_exactly_one_synthetic_input(tmp_path, capsys):
    real, synthetic = _command_inputs(tmp_path)
    for extra in ([], ["--synthetic", str(synthetic), "--synthetic_embeddings", "x.npz"]):
        assert cli.main(["evaluate", "--real", str(real), *extra]) == 2
        error = capsys.readouterr().err
        assert "--synthetic" in error and len(error.strip().splitlines()) == 1


# ---------------------------------------------------------------------------- the report page

class _Page(html.parser.HTMLParser):
    """The page's elements in order, as (tag, class), and the text inside each class."""

    def __init__(self, page):
        super().__init__()
        self.elements, self.text, self._open = [], {}, []
        self.feed(page)

    def handle_starttag(self, tag, attrs):
        cls = dict(attrs).get("class")
        self.elements.append((tag, cls))
        if tag not in ("br", "img", "meta"):
            self._open.append(cls)

    def handle_endtag(self, tag):
        if tag not in ("br", "img", "meta") and self._open:
            self._open.pop()

    def handle_data(self, data):
        for cls in set(filter(None, self._open)):
            self.text[cls] = self.text.get(cls, "") + data


def _table_rows(page, table_class):
    """The words of each cell of each body row of the table of that class."""
    start = page.index(f"<table class='{table_class}'>")
    table = page[start:page.index("</table>", start)]
    body = table[table.index("<tbody>"):]
    return [[html.unescape(re.sub(r"<[^>]+>", " ", cell)).split()
             for cell in re.findall(r"<td[^>]*>(.*?)</td>", row)]
            for row in re.findall(r"<tr>(.*?)</tr>", body)]


def _accuracy(accuracy, train, test):
    return {"accuracy": accuracy, "train_size": train, "test_size": test,
            "test_classes_missing_from_training": []}


def _result(*, mauve=0.9, reference=0.92, a_side=200, synthetic=0.8, real=0.82, majority=0.5,
            train=200, test=300, copied=0, private=None):
    """An evaluation result as `evaluate` returns it, with the figures chosen."""
    copying = ({"computed": False, "reason": "no private records given"} if private is None
               else {"copy_ngram": 8, "copied_texts": copied, "synthetic_texts": train,
                     "copied_fraction": copied / train, "tokenisation": "words",
                     "longest_shared_ngram": {"length": 12 if copied else 3,
                                              "ngram": "x " * 12 if copied else "a b c",
                                              "synthetic_source": "s:1",
                                              "private_source": "p:1"}})
    return {
        "sizes": {"synthetic": train, "real": test, "private": private, "test": test,
                  "baseline_pool": train},
        "settings": {"seed": 0}, "split": "a split",
        "mauve": {"score": mauve, "sample_size": a_side, "num_buckets": 20,
                  "real_vs_real": {"score": reference, "sample_size": a_side, "num_buckets": 20}},
        "downstream": {"category": {
            "trained_on_synthetic": _accuracy(synthetic, train, test),
            "trained_on_real": _accuracy(real, train, test),
            "majority_class": "Restaurants", "majority_class_accuracy": majority,
            "test_size": test}},
        "labels": {}, "memorisation": copying,
    }


def test_the_verdict_says_in_plain_words_what_the_figures_mean():
    good = report.verdict(_result(private=80))
    assert good["headline"] == (
        "The synthetic data is close to the real data, is as useful as real data for "
        "predicting 'category' and repeats no 8 consecutive words of a private record.")
    assert not good["rough"]
    assert "MAUVE 0.90, where two samples of real data score 0.92" in good["findings"][0]

    poor = report.verdict(_result(mauve=0.2, synthetic=0.5, copied=3, private=80))
    assert poor["headline"] == (
        "The synthetic data is unlike the real data, is no more useful than a constant answer "
        "for predicting 'category' and has 3 texts that repeat 8 words of a private record.")
    assert "always answering 'Restaurants', which gets 0.50" in poor["findings"][1]
    assert "read them before sharing" in poor["findings"][2]

    middling = report.verdict(_result(mauve=0.5, synthetic=0.65))
    assert middling["headline"] == (
        "The synthetic data is partly like the real data, beats a constant answer but not real "
        "data at predicting 'category' and was not checked for copying.")
    assert "pass --private" in middling["findings"][-1]

    page = _Page(report.render_html(_result(private=80), {}))
    tags = [tag for tag, _ in page.elements]
    assert tags.index("h1") < page.elements.index(("section", "verdict")) < tags.index("table")
    assert page.text["headline"] == good["headline"]


def test_a_figure_on_fewer_than_50_records_a_side_is_marked_next_to_its_value():
    few = _result(a_side=30, train=40, test=300)
    rows = {" ".join(cells[0]): " ".join(cells[1]) for cells in
            _table_rows(report.render_html(few, {}), "figures")}
    assert rows["MAUVE"] == "0.900 rough: only 30 texts a side, under 50"
    assert rows["Accuracy category, trained on synthetic"] == (
        "0.800 rough: only 40 training records, under 50")
    assert rows["Accuracy category, majority class"] == "0.500"           # 300 test records
    assert report.verdict(few)["headline"].startswith("Rough verdict, from few records: the ")
    console = dict((name, value) for name, value, _ in report.summary_rows(few))
    assert console["MAUVE"] == "0.900 [rough: only 30 texts a side, under 50]"

    enough = _result(a_side=50, train=50, test=50)
    page = report.render_html(enough, {})
    assert "rough:" not in page and "class='few'" not in page
    assert not report.verdict(enough)["rough"]


def test_the_report_quotes_five_synthetic_texts_drawn_with_the_seed(tmp_path, tiny_encoder):
    synthetic = [{"text": f"<b>text {i}</b> " + t, "label": "fruit"}
                 for i, t in enumerate(sentences(FRUIT, 30, seed=60))]
    real = _labelled(sentences(FRUIT, 30, seed=61), "fruit")
    result = evaluate(synthetic, real, label_columns=["category"], encoder=tiny_encoder, seed=3)
    again = evaluate(synthetic, real, label_columns=["category"], encoder=tiny_encoder, seed=3)
    samples = result["samples"]
    assert len(samples) == 5 and samples == again["samples"]
    texts = [r["text"] for r in synthetic]
    rows = [texts.index(s["text"]) for s in samples]
    assert rows == sorted(rows) and rows != list(range(5))        # drawn, in file order
    assert {s["label"] for s in samples} == {"fruit"}
    assert [s["source"] for s in samples] == [f"#{row}" for row in rows]

    write_report(result, str(tmp_path))
    page = (tmp_path / "evaluation.html").read_text(encoding="utf-8")
    assert page.count("<li><div class='caption'>") == 5
    for sample in samples:
        assert html.escape(sample["text"]) in page
    assert "<b>text" not in page
    assert json.loads((tmp_path / "evaluation.json").read_text())["samples"] == samples


def test_a_private_banner_heads_the_page_only_with_private_records():
    private = _Page(report.render_html(_result(private=80), {}))
    body = private.elements[[tag for tag, _ in private.elements].index("body") + 1:]
    assert body[0] == ("div", "private")                          # before the title
    assert "must not leave with the synthetic data" in private.text["private"]
    assert "class='private'" not in report.render_html(_result(), {})


def test_command_report_gives_the_runs_formal_epsilon_from_the_privacy_report_beside_it(
        tmp_path, capsys):
    real, synthetic = _command_inputs(tmp_path)
    args = ["evaluate", "--synthetic", str(tmp_path / "synthetic-*.jsonl"), "--real", str(real),
            "--label_column", "category", "--encoder", "tiny-bert",
            "--encoder_sequence_length", "32"]
    assert cli.main([*args, "--output", str(tmp_path / "without")]) == 0
    without = (tmp_path / "without" / "evaluation.html").read_text(encoding="utf-8")
    assert "No <code>privacy_report.json</code> beside the synthetic file" in without
    assert ("Formal epsilon of the run: n/a (no readable privacy_report.json beside the "
            "synthetic file)") in capsys.readouterr().out

    (tmp_path / "privacy_report.json").write_text(json.dumps(
        {"formal_epsilon": 9.625, "delta": 1e-6, "privacy_unit": "one customer",
         "stages": []}), encoding="utf-8")
    assert cli.main([*args, "--output", str(tmp_path / "with")]) == 0
    out = capsys.readouterr().out
    saved = json.loads((tmp_path / "with" / "evaluation.json").read_text())
    assert saved["privacy"]["runs"] == [{"report": str(tmp_path / "privacy_report.json"),
                                         "formal_epsilon": 9.625, "delta": 1e-6,
                                         "privacy_unit": "one customer"}]
    page = _Page((tmp_path / "with" / "evaluation.html").read_text(encoding="utf-8"))
    assert page.text["epsilon"] == "epsilon 9.625"
    assert "delta 1e-06, per one customer" in page.text["privacy"]
    assert "Formal epsilon of the run: 9.625" in out
    assert saved["verdict"]["headline"] in out and saved["quotes_private_data"] is False


def test_an_unreadable_privacy_report_is_said_and_does_not_stop_the_report(tmp_path):
    from evaluation.evaluate import run_privacy

    (tmp_path / "privacy_report.json").write_text("{not json", encoding="utf-8")
    privacy = run_privacy([str(tmp_path / "synthetic-00000-of-00001.jsonl")])
    assert privacy["runs"] == [] and len(privacy["unreadable"]) == 1
    assert "could not be read" in privacy["unreadable"][0]
    page = report.render_html(dict(_result(), privacy=privacy), {})
    assert "could not be read" in page and "No <code>privacy_report.json</code>" not in page
    console = dict((name, value) for name, value, _ in report.summary_rows(
        dict(_result(), privacy=privacy)))
    assert console["Formal epsilon of the run"] == "n/a"


@pytest.mark.browser
def test_the_page_renders_in_chromium_with_the_banner_and_the_verdict_on_top(tmp_path):
    """A real browser draws the page: the red private-data banner across the top, then the
    verdict's blue box (benchmarks/report_screenshot.py; CI installs Debian's chromium)."""
    from benchmarks import report_screenshot

    if report_screenshot.chromium_binary() is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed: CI must `apt-get install -y chromium`")
        pytest.skip("chromium is not installed (apt-get install -y chromium)")
    page = report_screenshot.sample_report(tmp_path)
    png = report_screenshot.screenshot(page, tmp_path / "page.png")
    image = (matplotlib.image.imread(png)[..., :3] * 255).round().astype(int)
    assert image.shape == (1600, 1200, 3)

    def rows_of(colour):
        near = (np.abs(image - colour).sum(axis=2) <= 12).sum(axis=1) > 600
        return np.flatnonzero(near)

    banner, verdict_box = rows_of((0xb0, 0x00, 0x20)), rows_of((0xee, 0xf4, 0xfb))
    assert len(banner) > 20 and banner.max() < 200                # across the top
    assert len(verdict_box) > 40 and banner.max() < verdict_box.min() < 400
    assert (image.sum(axis=2) < 200).sum() > 20000                # text was drawn


# ---------------------------------------------------------------------------- LM feature space

@pytest.mark.slow
@pytest.mark.parametrize("lm", ["smollm2-135m",
                                pytest.param("gemma3-270m", marks=pytest.mark.gemma)])
def test_lm_feature_space_tells_real_reviews_from_shuffled_ones(lm):
    """The second feature space's own sanity check on 200 against 200 held-out Yelp reviews:
    real against other real reviews scores near 1; the same reviews with their words shuffled
    (same vocabulary, same lengths, no sentences) clearly lower."""
    from evaluation.evaluate import second_space_mauve
    from offline_models import registry
    from offline_models.loading import load_feature_encoder

    if not registry.is_prepared(lm):
        pytest.fail(f"{lm} is not prepared: run `dpsynth models prepare --lm {lm}`")
    with open(YELP_CSV, newline="", encoding="utf-8") as handle:
        texts = [r["text"] for r in csv.DictReader(handle) if r["text"].strip()]
    rng = np.random.default_rng(19)
    chosen = [texts[i] for i in rng.choice(len(texts), 400, replace=False)]
    real, held_out = chosen[:200], chosen[200:]
    shuffled = [" ".join(rng.permutation(t.split())) for t in held_out]
    features = load_feature_encoder(lm, sequence_length=64)

    same = second_space_mauve(features, lm, held_out, real, seed=0)
    scrambled = second_space_mauve(features, lm, shuffled, real, seed=0)

    assert same["sample_size"] == 200 and same["num_buckets"] == 20
    assert same["score"] > 0.8 and same["real_vs_real"]["score"] > 0.7
    assert scrambled["score"] < same["score"] - 0.3


def test_the_downstream_classifier_learns_minority_classes_from_unbalanced_embeddings():
    # Unit-norm embeddings of three classes, 80% of the training rows in one: a plain
    # logistic regression leans on the majority class (balanced accuracy 0.52 here); the
    # standardised, class-weighted one separates the classes (0.80).
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    from evaluation import metrics

    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3, 64))

    def sample(counts):
        labels = [c for c, n in enumerate(counts) for _ in range(n)]
        x = 0.3 * centres[labels] + rng.normal(size=(len(labels), 64))
        return x / np.linalg.norm(x, axis=1, keepdims=True), [f"class {c}" for c in labels]

    train_x, train_y = sample((160, 20, 20))
    test_x, test_y = sample((100, 100, 100))
    result = metrics.downstream_accuracy(train_x, train_y, test_x, test_y, seed=0)
    assert result["balanced_accuracy"] > 0.7
    plain = LogisticRegression(max_iter=2000, random_state=0).fit(train_x, train_y)
    before = metrics.balanced_accuracy(plain.predict(test_x), test_y)   # the old classifier
    assert result["balanced_accuracy"] > before + 0.2


def test_first_words_keeps_whole_words_and_their_spacing_exhaustively():
    from evaluation.evaluate import first_words

    for text in ("", "one", "  one  two\tthree\n four ", "a b", "x\n\ny z"):
        words = text.split()
        for count in range(1, len(words) + 2):
            cut = first_words(text, count)
            assert cut.split() == words[:count]
            assert text.startswith(cut)
            if count >= len(words):
                assert cut == text


def test_long_real_texts_are_flagged_and_real_max_words_cuts_them(tmp_path, capsys):
    """Synthetic texts of a few words against real ones many times longer: the verdict says
    the figures partly measure length; --real_max_words cuts the real side."""
    real, synthetic = _command_inputs(tmp_path)
    rows = list(csv.DictReader(open(real, encoding="utf-8")))
    for row in rows:
        row["text"] = " ".join([row["text"]] * 6)
    long_real = _write_csv(tmp_path / "long.csv", rows)

    def evaluated(name, *extra):
        output = tmp_path / name
        assert cli.main(["evaluate", "--synthetic", str(synthetic), "--real", str(long_real),
                         "--label_column", "category", "--encoder", "tiny-bert",
                         "--encoder_sequence_length", "32", "--output", str(output),
                         *extra]) == 0, capsys.readouterr().err
        return json.loads((output / "evaluation.json").read_text())

    whole = evaluated("whole")
    words = whole["lengths"]["synthetic"]["words"]["median"]
    assert any("times longer than the synthetic ones" in f and "--real_max_words" in f
               for f in whole["verdict"]["findings"]), whole["verdict"]
    cut = evaluated("cut", "--real_max_words", str(int(words)))
    assert cut["lengths"]["real"]["words"]["max"] <= int(words)
    assert cut["settings"]["real_max_words"] == int(words)
    assert not any("times longer" in f for f in cut["verdict"]["findings"])
    assert cli.main(["evaluate", "--synthetic", str(synthetic), "--real", str(long_real),
                     "--real_max_words", "0", "--output", str(tmp_path / "x")]) == 2
