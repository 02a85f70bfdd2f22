"""gs:// input, output and budget ledger against a Cloud Storage emulator on loopback."""

import json
import threading

import pytest

from beam_pipeline import budget_ledger as bl
from beam_pipeline import cli
from beam_pipeline.run import run
from tests.pipeline_fixtures import tiny_args, write_reviews_csv
from tests.test_budget_ledger import RACE_LIFETIME, race_cost, race_in_threads, reserve
from beam_pipeline import storage
from mechanisms.randomness import new_run_secret


def upload(bucket, name, path):
    storage.gcs_client().bucket(bucket).blob(name).upload_from_filename(str(path))


def object_names(bucket, prefix=""):
    return sorted(b.name for b in storage.gcs_client().list_blobs(bucket, prefix=prefix))


def read_object(bucket, name):
    return storage.gcs_client().bucket(bucket).blob(name).download_as_bytes().decode("utf-8")


@pytest.fixture
def sharded_input(gcs_bucket, tmp_path):
    """Three CSV shards of one export in gs://<bucket>/exports/2026-11-20/, 60 rows in all."""
    for shard in range(3):
        local = write_reviews_csv(tmp_path / f"part-{shard}.csv", n=20, seed=shard)
        upload(gcs_bucket, f"exports/2026-11-20/part-{shard:05d}.csv", local)
    upload(gcs_bucket, "exports/2026-11-20/_SUCCESS", tmp_path / "part-0.csv")  # not matched
    return gcs_bucket


def test_sharded_gs_input_to_gs_output(sharded_input, tmp_path):
    bucket = sharded_input
    summary = run(tiny_args(f"gs://{bucket}/exports/{{date}}/part-*.csv",
                            f"gs://{bucket}/synthetic/{{date}}", "--clustering", "uniform",
                            "--label_column", "category", "--label_values",
                            "Restaurants,Shopping", "--run_date", "2026-11-20"),
                  say=lambda _: None)
    assert summary["records_accepted"] == 60 and summary["records_rejected"] == 0
    names = object_names(bucket, "synthetic/")
    assert names == [f"synthetic/2026-11-20/{n}" for n in (
        "privacy_report.json", "privacy_report.md", "rejected-00000-of-00001.jsonl",
        "run_summary.json", "synthetic-00000-of-00001.jsonl")]
    synthetic = [json.loads(line) for line in
                 read_object(bucket, "synthetic/2026-11-20/synthetic-00000-of-00001.jsonl")
                 .splitlines()]
    assert len(synthetic) == summary["synthetic_records"] >= 1
    report = json.loads(read_object(bucket, "synthetic/2026-11-20/privacy_report.json"))
    assert report["formal_epsilon"] > 0


def test_same_bytes_on_gs_and_locally(sharded_input, tmp_path):
    bucket = sharded_input
    args = ["--clustering", "uniform", "--aggregator", "mean"]
    run(tiny_args(f"gs://{bucket}/exports/2026-11-20/part-*.csv", f"gs://{bucket}/out", *args),
        say=lambda _: None)
    local_input = tmp_path / "local"
    local_input.mkdir()
    for shard in range(3):
        (local_input / f"part-{shard:05d}.csv").write_text(
            read_object(bucket, f"exports/2026-11-20/part-{shard:05d}.csv"))
    run(tiny_args(local_input / "part-*.csv", tmp_path / "out", *args), say=lambda _: None)
    # Sources are named by path, so compare the texts.
    remote = [json.loads(x)["text"] for x in
              read_object(bucket, "out/synthetic-00000-of-00001.jsonl").splitlines()]
    local = [json.loads(x)["text"] for x in
             (tmp_path / "out" / "synthetic-00000-of-00001.jsonl").read_text().splitlines()]
    assert remote == local


def test_a_failed_job_publishes_nothing(sharded_input, monkeypatch):
    """A job that fails after writing some outputs leaves the output folder empty."""
    bucket = sharded_input
    from transforms import report

    def broken(*args, **kwargs):
        raise RuntimeError("the report step broke")

    monkeypatch.setattr(report, "privacy_report", broken)
    with pytest.raises(Exception, match="the report step broke"):
        run(tiny_args(f"gs://{bucket}/exports/2026-11-20/part-*.csv", f"gs://{bucket}/out",
                      "--clustering", "uniform"), say=lambda _: None)
    names = object_names(bucket, "out/")
    assert names and all(name.startswith("out/.staging-") for name in names), names
    assert any(name.endswith("synthetic-00000-of-00001.jsonl") for name in names)


@pytest.mark.parametrize("where, message", [
    ("input", "the bucket gs://no-such-bucket of --input"),
    ("input_object", "matches no file"),
    ("output", "the bucket gs://no-such-bucket of --output"),
    ("ledger", "the bucket gs://no-such-bucket of --budget_ledger"),
])
def test_missing_bucket_or_object_is_one_line(sharded_input, tmp_path, capsys, where, message):
    bucket = sharded_input
    source = f"gs://{bucket}/exports/2026-11-20/part-*.csv"
    output = f"gs://{bucket}/out"
    extra = []
    if where == "input":
        source = "gs://no-such-bucket/exports/*.csv"
    elif where == "input_object":
        source = f"gs://{bucket}/exports/2026-11-21/part-*.csv"
    elif where == "output":
        output = "gs://no-such-bucket/out"
    else:
        extra = ["--budget_ledger", "gs://no-such-bucket/ledger.json", "--lifetime_epsilon",
                 "100", "--privacy_unit_domain", "d"]
    code = cli.main(["run", *tiny_args(source, output, *extra)])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert message in err and len(err.splitlines()) == 1
    assert object_names(bucket, "out/") == []


# ------------------------------------------------------------- the ledger on Cloud Storage


def test_gcs_ledger_accumulates_and_refuses(gcs_bucket):
    path = f"gs://{gcs_bucket}/budget/ledger.json"
    cost = race_cost()
    first = reserve(path, domain="d", lifetime_epsilon=RACE_LIFETIME, cost=cost)
    assert first.cumulative_epsilon == pytest.approx(cost.epsilon)
    with pytest.raises(bl.BudgetExhausted):
        reserve(path, domain="d", lifetime_epsilon=RACE_LIFETIME, cost=cost)
    bl.set_status(path, "d", first.run_id, "completed")
    runs = bl.read_ledger(path)["domains"]["d"]["runs"]
    assert [r["status"] for r in runs] == ["completed"]


def test_two_racing_runs_on_gcs_exactly_one_reserves(gcs_bucket, monkeypatch):
    """Both runs read the same generation before either writes: the generation-matched
    write lets one through, the other gets 412, re-reads, and is refused."""
    path = f"gs://{gcs_bucket}/budget/ledger.json"
    both_read = threading.Barrier(2)
    store_read = bl.GcsLedgerStore.read
    first_reads = set()
    generations = []

    def read_then_wait(self):
        state, generation = store_read(self)
        generations.append(generation)
        if threading.get_ident() not in first_reads:
            first_reads.add(threading.get_ident())
            both_read.wait(timeout=20)
        return state, generation

    monkeypatch.setattr(bl.GcsLedgerStore, "read", read_then_wait)
    assert race_in_threads(path, timeout=60) == ["ok", "refused"]
    # Both first read "no ledger yet"; the loser read again and saw the winner's write.
    assert generations[:2] == [0, 0] and len(generations) == 3 and generations[2] > 0
    monkeypatch.undo()
    assert len(bl.read_ledger(path)["domains"]["d"]["runs"]) == 1


def test_racing_runs_on_gcs_with_room_for_both_both_reserve(gcs_bucket):
    """A precondition failure is retried, not lost: with budget for two, two racing runs
    both end in the ledger."""
    path = f"gs://{gcs_bucket}/budget/ledger.json"
    assert race_in_threads(path, threads=4, lifetime=100, timeout=60) == ["ok"] * 4
    assert len(bl.read_ledger(path)["domains"]["d"]["runs"]) == 4


def test_recurring_runs_with_a_gcs_ledger(sharded_input, capsys):
    bucket = sharded_input
    ledger = ["--budget_ledger", f"gs://{bucket}/budget/ledger.json", "--lifetime_epsilon", "1.5",
              "--privacy_unit_domain", "customers-eu", "--clustering", "uniform",
              "--aggregator", "mean", "--clip", "0.5", "--histogram_noise", "8"]
    source = f"gs://{bucket}/exports/2026-11-20/part-*.csv"
    run(tiny_args(source, f"gs://{bucket}/day1", *ledger), say=lambda _: None)
    report = json.loads(read_object(bucket, "day1/privacy_report.json"))
    assert report["lifetime_budget"]["cumulative_epsilon"] == pytest.approx(
        report["formal_epsilon"])
    code = cli.main(["run", *tiny_args(source, f"gs://{bucket}/day2", *ledger,
                                       secret=new_run_secret())])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "exhausted" in err and len(err.splitlines()) == 1
    assert object_names(bucket, "day2/") == []


@pytest.mark.parametrize("where", ["local", "gs"])
def test_publish_moves_everything_and_can_be_repeated(where, tmp_path, request):
    """A retried publish step, after a partial move, completes the move."""
    from apache_beam.io.filesystems import FileSystems

    from transforms.write import publish, staging_dir, write_text_file

    if where == "gs":
        bucket = request.getfixturevalue("gcs_bucket")
        output = f"gs://{bucket}/out"
    else:
        output = str(tmp_path / "out")
    staging = staging_dir(output, "run1")
    for name in ("a.jsonl", "b.json", "c.md"):
        write_text_file(storage.join(staging, name), name)
    storage.move(storage.join(staging, "a.jsonl"), storage.join(output, "a.jsonl"))  # partial
    assert publish(staging, output) == [storage.join(output, n) for n in ("b.json", "c.md")]
    assert publish(staging, output) == []
    assert storage.list_files(output) == [storage.join(output, n)
                                          for n in ("a.jsonl", "b.json", "c.md")]
    assert storage.list_files(staging) == []
    with FileSystems.open(storage.join(output, "c.md")) as handle:
        assert handle.read() == b"c.md"
