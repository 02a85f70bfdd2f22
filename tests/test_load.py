"""Memory stays flat as the input grows: read, validate, embed (tiny encoder), cluster and
batch on the multi-processing runner, at 2k and at 8k records (benchmarks/load.py runs the
same at 25k and 100k)."""

from benchmarks import load

PEAKS = ("launcher_peak_rss_mb", "largest_worker_peak_rss_mb", "workers_peak_rss_sum_mb",
         "launcher_and_workers_peak_rss_mb")


def _check_counts(row):
    counts, bad = row["counts"], row["bad_rows"]
    assert bad == row["n"] // load.BAD_ROW_EVERY
    assert counts["records_read"] == row["n"] - bad
    assert counts["records_rejected"] == bad
    assert counts["records_embedded"] == counts["records_clustered"] == counts["records_read"]
    # Every accepted record is batched once (or counted as in a cluster without a batch).
    assert counts["records_batched"] + counts["records_unbatched"] == counts["records_read"]
    assert counts["batch_members"] == counts["records_batched"] > 0
    assert counts["records_in_several_batches"] == 0
    assert counts["batches"] >= counts["records_batched"] // (2 * load.BATCH_SIZE)


def test_peak_rss_is_flat_from_2k_to_8k_records(tmp_path):
    small = load.measure(2000, workers=2, check_unique=True, work=tmp_path / "small")
    large = load.measure(8000, workers=2, check_unique=True, work=tmp_path / "large")
    for row in (small, large):
        _check_counts(row)
        assert row["worker_processes"] >= 2          # the workers were measured, not only us
        assert row["largest_worker_peak_rss_mb"] > 100   # a worker holds TF and the encoder
    for key in PEAKS:
        assert large[key] <= 1.5 * small[key], (key, small[key], large[key])


def test_the_peak_rss_poller_sees_a_child_process():
    import subprocess
    import sys
    import time

    with load.PeakRss(interval=0.05) as rss:
        child = subprocess.Popen([sys.executable, "-c",
                                  "b = bytearray(200 * 1024 * 1024); import time; "
                                  "time.sleep(1.5)"])
        child.wait()
        time.sleep(0.1)
    assert rss.peak_worker >= 200 * 1024 * 1024
    assert rss.peak_total >= rss.peak_workers_sum >= rss.peak_worker
