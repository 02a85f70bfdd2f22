"""The label domain is public input (METHOD.md §0, example 4): it is --label_values, never the
labels the records happen to carry."""

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.testing.test_pipeline import TestPipeline

from beam_pipeline.options import DpSynthOptions
from beam_pipeline.plan import PlanError, make_plan
from tests.pipeline_fixtures import tiny_args
from mechanisms import release_embeddings as lib
from transforms.cluster import DP_KMEANS, UNIFORM, Cluster, ClusteringConfig
from transforms.read import Record
from transforms.release_embeddings import ReleaseSyntheticEmbeddings


def test_a_label_column_without_label_values_is_refused(tmp_path):
    options = DpSynthOptions(tiny_args(tmp_path / "in.csv", tmp_path / "out",
                                       "--label_column", "category"))
    with pytest.raises(PlanError, match="--label_values") as raised:
        make_plan(options)
    assert len(str(raised.value).splitlines()) == 1


def _labelled_records():
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(6, 4))
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return [(Record(record_id=f"r{i}", text="private", label="seen in the data"), vector)
            for i, vector in enumerate(vectors)]


def _cluster(mode):
    def stage(embedded):
        config = ClusteringConfig(mode=mode, expected_batch_size=2, histogram_noise=1.0,
                                  kmeans_clusters=2, kmeans_rounds=1)
        return (embedded | Cluster(config, "secret", dimension=4))["release"]
    return stage


def _embeddings(tmp_path):
    def stage(embedded):
        centres = embedded.pipeline | "Centres" >> beam.Create([None])
        config = lib.EmbeddingReleaseConfig(count_noise=1.0, sum_noise=1.0)
        released = ({"embedded": embedded, "centres": centres}
                    | ReleaseSyntheticEmbeddings(config, "secret", str(tmp_path / "e.npz"),
                                                 dimension=4))
        return released["summary"]
    return stage


@pytest.mark.parametrize("stage", ["uniform", "dp_kmeans", "embeddings"])
def test_no_stage_takes_its_label_domain_from_the_records(tmp_path, stage):
    """Given no domain, a stage releases the one cell of unlabelled records: a record with a
    label is an error, never a new cell of the release."""
    make = {"uniform": _cluster(UNIFORM), "dp_kmeans": _cluster(DP_KMEANS),
            "embeddings": _embeddings(tmp_path)}[stage]
    with pytest.raises(Exception, match="label domain"):
        with TestPipeline(runner="FnApiRunner") as pipeline:
            make(pipeline | beam.Create(_labelled_records()))
