"""--output_embeddings wired into runs: which centres, what the ledger charges, the files."""

import json
import math

import numpy as np
import pytest

from beam_pipeline.options import DpSynthOptions
from beam_pipeline.plan import EMBEDDINGS_STAGE, PlanError, make_plan, plan_ledger
from beam_pipeline.run import run
from tests.pipeline_fixtures import read_jsonl, tiny_args, write_reviews_csv
from mechanisms import accounting
from transforms.release_embeddings import read_embeddings

LABELS = ("--label_column", "category", "--label_values", "Restaurants,Shopping")


def _by_hand(gaussians, delta):
    """Composed Renyi DP of Gaussian mechanisms (count x alpha / (2 sigma^2) each), converted
    with the conversion dp_accounting uses (Canonne, Kamath and Steinke 2020)."""
    orders = np.array(accounting.rdp_accountant()._orders, dtype="float64")
    orders = orders[orders > 1]
    rdp = sum(count * orders / (2 * sigma ** 2) for sigma, count in gaussians)
    return float(np.min(rdp + np.log((orders - 1) / orders)
                        - (math.log(delta) + np.log(orders)) / (orders - 1)))


def _run(tmp_path, name, *extra):
    write_reviews_csv(tmp_path / "in.csv", n=40)
    arguments = tiny_args(tmp_path / "in.csv", tmp_path / name, *LABELS, *extra)
    return run(arguments, say=lambda line: None), arguments


def test_embeddings_only_with_dp_kmeans_centres(tmp_path):
    summary, arguments = _run(
        tmp_path, "out", "--method", "none", "--output_embeddings", "--clustering", "dp_kmeans",
        "--kmeans_sum_noise", "3", "--kmeans_count_noise", "5", "--embeddings_count_noise", "2",
        "--embeddings_sum_noise", "6", "--delta", "1e-5")
    out = tmp_path / "out"
    vectors, labels = read_embeddings(str(out / "synthetic_embeddings.npz"))
    assert len(vectors) == summary["synthetic_embeddings"] > 0
    assert set(labels) <= {"Restaurants", "Shopping"}
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert not list(out.glob("synthetic-*.jsonl")) and summary["synthetic_records"] == 0
    report = json.loads((out / "privacy_report.json").read_text())
    assert [s["stage"] for s in report["stages"]] == [EMBEDDINGS_STAGE]
    # tiny_args: 2 rounds of DP k-means (a sum and a count each), then three releases.
    expected = _by_hand([(3.0, 2), (5.0, 2), (2.0, 1), (6.0, 1), (6.0, 1)], 1e-5)
    assert report["formal_epsilon"] == pytest.approx(expected, rel=1e-9)


def test_logit_aggregation_shares_its_dp_kmeans_centres_with_the_embeddings(tmp_path):
    summary, arguments = _run(
        tmp_path, "out", "--clustering", "dp_kmeans", "--aggregator", "mean",
        "--output_embeddings", "--embeddings_format", "parquet", "--embeddings_samples", "17")
    ledger = plan_ledger(make_plan(DpSynthOptions(arguments)))
    stages = [e.stage for e in ledger.entries]
    # The k-means rounds are charged once, to the clustering.
    assert stages == ["clustering"] * 3 + ["generation"] + [EMBEDDINGS_STAGE] * 3
    vectors, labels = read_embeddings(str(tmp_path / "out" / "synthetic_embeddings.parquet"))
    assert len(vectors) == summary["synthetic_embeddings"] == 17
    assert summary["synthetic_records"] >= 1 and read_jsonl(tmp_path / "out", "synthetic")


def test_private_evolution_with_one_cell_per_label(tmp_path):
    summary, _ = _run(tmp_path, "out", "--method", "private_evolution", "--pe_population", "4",
                      "--pe_rounds", "1", "--output_embeddings", "--clustering", "uniform")
    report = json.loads((tmp_path / "out" / "privacy_report.json").read_text())
    assert [s["stage"] for s in report["stages"]] == ["private evolution", EMBEDDINGS_STAGE]
    vectors, labels = read_embeddings(str(tmp_path / "out" / "synthetic_embeddings.npz"))
    assert len(vectors) == summary["synthetic_embeddings"] and summary["synthetic_records"] == 4


@pytest.mark.parametrize("extra, message", [
    (("--method", "none"), "--output_embeddings"),
    (("--output_embeddings", "--embeddings_sum_noise", "0"), "--embeddings_sum_noise"),
    (("--output_embeddings", "--embeddings_samples", "0"), "--embeddings_samples"),
])
def test_embedding_option_mistakes_are_plan_errors(tmp_path, extra, message):
    with pytest.raises(PlanError, match=message):
        make_plan(DpSynthOptions(tiny_args(tmp_path / "in.csv", tmp_path / "out", *extra)))


TINY_ENCODER_DIMENSION = 32  # offline_models/tiny.py: the tiny BERT's hidden size


@pytest.mark.parametrize("clustering", ["uniform", "dp_kmeans"])
def test_empty_and_one_record_inputs_release_the_same_shapes(tmp_path, clustering):
    """The released vectors have the encoder's dimension whatever the input: an empty input
    must not shrink them (or stop the run), nor one record set their width."""
    header = "id,text,category\n"
    (tmp_path / "empty.csv").write_text(header, encoding="utf-8")
    (tmp_path / "one.csv").write_text(header + "r0,the noodles were great,Shopping\n",
                                      encoding="utf-8")
    shapes = {}
    for name in ("empty", "one"):
        summary = run(tiny_args(tmp_path / f"{name}.csv", tmp_path / name, *LABELS,
                                "--method", "none", "--output_embeddings",
                                "--clustering", clustering, "--embeddings_samples", "3"),
                      say=lambda line: None)
        assert summary["records_accepted"] == (name == "one")
        vectors, _ = read_embeddings(str(tmp_path / name / "synthetic_embeddings.npz"))
        shapes[name] = vectors.shape[1:]
    assert shapes["empty"] == shapes["one"] == (TINY_ENCODER_DIMENSION,)
