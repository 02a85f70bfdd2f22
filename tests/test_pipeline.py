"""The whole job on tiny models: every clustering x aggregator, invariants, routing."""

import json

import pytest

from beam_pipeline import cli
from beam_pipeline.run import run
from tests.pipeline_fixtures import read_jsonl, synthetic_bytes, tiny_args, write_reviews_csv


@pytest.fixture(scope="module")
def reviews(tmp_path_factory):
    return write_reviews_csv(tmp_path_factory.mktemp("data") / "reviews.csv")


@pytest.mark.parametrize("clustering", ["uniform", "public_centers", "dp_kmeans"])
@pytest.mark.parametrize("aggregator", ["mean", "median"])
def test_end_to_end(tmp_path, reviews, clustering, aggregator):
    out = tmp_path / "out"
    summary = run(tiny_args(reviews, out, "--clustering", clustering, "--aggregator", aggregator,
                            "--label_column", "category", "--label_values",
                            "Restaurants,Shopping", "--id_column", "id"), say=lambda _: None)
    synthetic = read_jsonl(out, "synthetic")
    report = json.loads((out / "privacy_report.json").read_text())
    assert summary["records_accepted"] == 48 and summary["records_rejected"] == 0
    # One synthetic record per planned batch, empty batches included.
    assert summary["planned_batches"] >= 1
    assert len(synthetic) == summary["synthetic_records"] == summary["planned_batches"]
    assert {r["label"] for r in synthetic} <= {"Restaurants", "Shopping"}
    assert all(isinstance(r["text"], str) for r in synthetic)
    # No record is in two batches, and none appears from nowhere.
    assert summary["records_batched"] <= summary["records_embedded"] == 48
    assert summary["private_tokens"] <= 4 * summary["synthetic_records"]
    assert report["formal_epsilon"] > 0
    if aggregator == "median":
        ex_post = report["ex_post"]["generation"]
        assert ex_post["total_epsilon"]["max"] <= ex_post["data_independent_total_epsilon"] + 1e-9
    else:
        assert report["ex_post"] == {}
    assert (out / "privacy_report.md").read_text().startswith("# Privacy report")


def test_target_epsilon_is_respected_or_refused_before_reading(tmp_path, reviews, capsys):
    out = tmp_path / "ok"
    args = tiny_args(reviews, out, "--clustering", "uniform", "--aggregator", "mean",
                     "--clip", "0.5", "--histogram_noise", "8")
    report_target = 30.0
    run([*args, "--target_epsilon", str(report_target)], say=lambda _: None)
    report = json.loads((out / "privacy_report.json").read_text())
    assert report["formal_epsilon"] <= report_target
    missing_input = tmp_path / "never-read.csv"
    code = cli.main(["run", *tiny_args(missing_input, tmp_path / "no", "--clip", "10",
                                       "--target_epsilon", "1")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "more than --target_epsilon 1" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "no").exists()


def test_fixed_secret_is_reproducible_and_another_secret_differs(tmp_path, reviews):
    outputs = []
    for name, secret in (("a", "00aa" * 8), ("b", "00aa" * 8), ("c", "11bb" * 8)):
        run(tiny_args(reviews, tmp_path / name, "--clustering", "uniform", "--aggregator",
                      "mean", "--max_new_tokens", "6", secret=secret), say=lambda _: None)
        outputs.append(synthetic_bytes(tmp_path / name))
    assert outputs[0] == outputs[1]
    assert outputs[0] != outputs[2]


def test_malformed_rows_are_routed_and_counted(tmp_path):
    data = tmp_path / "mixed.jsonl"
    good = [{"text": f"the food was great number {i}", "category": "Restaurants"}
            for i in range(10)]
    lines = [json.dumps(g) for g in good] + [
        "{not json", json.dumps({"text": "   "}), json.dumps({"body": "no text column"}),
        json.dumps({"text": 42}), json.dumps(["a", "list"]),
        json.dumps({"text": "unknown label", "category": "Cars"})]
    data.write_bytes("\n".join(lines).encode() + b"\n" + b'{"text": "bad \xff byte"}\n')
    out = tmp_path / "out"
    summary = run(tiny_args(data, out, "--clustering", "uniform", "--label_column", "category",
                            "--label_values", "Restaurants,Shopping"), say=lambda _: None)
    rejected = read_jsonl(out, "rejected")
    assert summary["records_accepted"] == 10
    assert summary["records_rejected"] == len(rejected) == 7
    reasons = " | ".join(sorted(r["reason"] for r in rejected))
    for expected in ("malformed JSON", "empty text", "missing text column", "not a string",
                     "must be an object", "label not in --label_values", "invalid UTF-8"):
        assert expected in reasons


@pytest.mark.parametrize("mistake, message", [
    (["--batch_size", "1"], "--batch_size must be at least 2"),
    (["--prompt_template", "no placeholder"], "no {text} placeholder"),
    (["--delta", "0"], "--delta must be in (0, 1)"),
    (["--lm", "gpt-17"], "unknown model 'gpt-17'"),
])
def test_configuration_mistakes_are_one_line_and_exit_2(tmp_path, reviews, capsys, mistake,
                                                       message):
    code = cli.main(["run", *tiny_args(reviews, tmp_path / "out"), *mistake])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert message in err and len(err.splitlines()) == 1


def test_missing_input_is_one_line(tmp_path, capsys):
    code = cli.main(["run", *tiny_args(tmp_path / "nope.csv", tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "matches no file" in err


@pytest.mark.parametrize("clustering, runner_args", [
    ("public_centers", ["--direct_running_mode", "multi_processing", "--direct_num_workers", "2"]),
    ("dp_kmeans", ["--runner", "PortableRunner", "--job_endpoint", "embed",
                   "--environment_type", "LOOPBACK"]),
], ids=["multi_processing", "portable"])
def test_same_secret_same_output_on_other_runners(tmp_path, reviews, clustering, runner_args):
    common = ["--clustering", clustering, "--aggregator", "median", "--label_column",
              "category", "--label_values", "Restaurants,Shopping"]
    run(tiny_args(reviews, tmp_path / "in_memory", *common), say=lambda _: None)
    run(tiny_args(reviews, tmp_path / "other", *common, *runner_args), say=lambda _: None)
    assert synthetic_bytes(tmp_path / "in_memory") == synthetic_bytes(tmp_path / "other")
    reports = [json.loads((tmp_path / d / "privacy_report.json").read_text())
               for d in ("in_memory", "other")]
    assert reports[0] == reports[1]


def test_each_privacy_unit_contributes_one_record(tmp_path):
    data = tmp_path / "users.jsonl"
    rows = [{"text": f"review {i} about the food", "user": f"u{i % 16}"} for i in range(48)]
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    out = tmp_path / "out"
    summary = run(tiny_args(data, out, "--clustering", "uniform", "--privacy_unit_column", "user"),
                  say=lambda _: None)
    assert summary["records_accepted"] == 48
    assert summary["records_after_unit_bound"] == summary["records_embedded"] == 16
    report = json.loads((out / "privacy_report.json").read_text())
    assert "privacy unit (column 'user')" in report["privacy_unit"]


@pytest.mark.parametrize("fallback", ["mean", "stop"])
def test_median_ptr_runs_with_a_formal_report(tmp_path, reviews, fallback):
    out = tmp_path / "out"
    summary = run(tiny_args(reviews, out, "--clustering", "uniform", "--aggregator",
                            "median_ptr", "--ptr_fallback", fallback, "--ptr_svt_epsilon", "20",
                            "--clip", "2", "--ptr_bound", "1.5"), say=lambda _: None)
    report = json.loads((out / "privacy_report.json").read_text())
    generation = next(s for s in report["stages"] if s["stage"] == "generation")
    test, tokens = generation["mechanisms"]
    assert test["mechanism"].startswith("stability test")
    assert test["parameters"]["proposed_bound_b"] == 1.5
    assert 0 < report["delta_of_mechanisms"] <= report["delta"] / 2
    assert report["ex_post"] == {}
    counts = report["tokens"]["generation"]
    assert counts["batches"] == summary["planned_batches"] == summary["synthetic_records"]
    # A lenient bound and a costly test: some tokens pass, and every token is counted.
    assert 0 < counts["median_tokens"] <= counts["private_tokens"] == summary["tokens"]
    if fallback == "stop":
        # After a failed test nothing more is sampled: every token came from the median.
        assert counts["median_tokens"] == counts["private_tokens"]
    assert report["parameters"]["ptr_fallback"] == fallback
    assert "stability test" in (out / "privacy_report.md").read_text()


def test_median_ptr_refuses_the_public_token_gate(tmp_path, reviews, capsys):
    code = cli.main(["run", *tiny_args(reviews, tmp_path / "no", "--aggregator", "median_ptr",
                                       "--public_tokens")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "median_ptr" in err and len(err.splitlines()) == 1
