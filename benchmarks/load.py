"""Peak memory of the stages before generation as the input grows.

    .venv/bin/python benchmarks/load.py [--sizes 25000 100000] [--workers 2]

For each size n, a synthetic input of n records (random words, four labels, and
one bad row in every 500, which validation must reject) runs through read and
validate, embed (the tiny encoder), cluster (dp_kmeans) and batch on the
multi-processing runner (`--direct_running_mode multi_processing`, FnApiRunner
with `--workers` worker processes), in a fresh process per size. It prints:

- the peak RSS of the launching process (getrusage), of the largest worker, and
  of all workers together (their RSS summed at each sample of /proc, every
  0.1 s), and the launcher plus workers together;
- the counts: records read, rejected, embedded, batched, unbatched (clusters
  whose noisy count planned no batch), batches, and the members of all
  batches; every accepted record is either batched once or unbatched.

The pipeline is built the way benchmarks/throughput.py builds it (ReadRecords,
EmbedRecords, Cluster, AssignToBatches), without the LM.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

LABELS = ("alpha", "beta", "gamma", "delta")
BATCH_SIZE = 8
BAD_ROW_EVERY = 500
_WORDS = ("the food was great and the service friendly we will come back soon prices fair "
          "staff kind noodles pizza shoes shirts sale cheap store mall hotel room clean "
          "quiet loud slow fast rude warm cold fresh stale bread coffee tea cake park "
          "garden doctor nurse dentist salon haircut nails spa music show ticket").split()


def write_input(path: Path, n: int, seed: int = 0) -> dict:
    """n rows of random words with a label; every BAD_ROW_EVERY-th row has empty text."""
    import numpy as np

    rng = np.random.default_rng(seed)
    bad = 0
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        for i in range(n):
            if i % BAD_ROW_EVERY == BAD_ROW_EVERY - 1:
                writer.writerow(["   ", LABELS[i % len(LABELS)]])
                bad += 1
                continue
            words = rng.choice(_WORDS, size=int(rng.integers(8, 25)))
            writer.writerow([" ".join(words), LABELS[i % len(LABELS)]])
    return {"rows": n, "bad_rows": bad}


class PeakRss:
    """Polls /proc for this process and its descendants: peak RSS of each and of their sum."""

    def __init__(self, interval: float = 0.1):
        self._interval = interval
        self._stop = threading.Event()
        self.peak_workers_sum = 0
        self.peak_worker = 0
        self.peak_total = 0
        self.workers_seen = set()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def _poll(self):
        me = os.getpid()
        while not self._stop.is_set():
            children = _descendants(me)
            sizes = {pid: _rss_bytes(pid) for pid in children}
            own = _rss_bytes(me)
            workers = sum(sizes.values())
            self.workers_seen.update(pid for pid, size in sizes.items() if size)
            self.peak_workers_sum = max(self.peak_workers_sum, workers)
            self.peak_worker = max([self.peak_worker, *sizes.values()])
            self.peak_total = max(self.peak_total, own + workers)
            self._stop.wait(self._interval)


def _descendants(root: int) -> list[int]:
    parents = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="utf-8") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
            parents[int(entry)] = int(fields[1])
        except (OSError, IndexError, ValueError):
            continue
    found, frontier = [], [root]
    while frontier:
        parent = frontier.pop()
        children = [pid for pid, ppid in parents.items() if ppid == parent]
        found += children
        frontier += children
    return found


def _rss_bytes(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


STAGES = ("read", "embed", "cluster", "batch")


def run_stages(input_path: Path, work: Path, *, workers: int, check_unique: bool,
               last_stage: str = "batch") -> dict:
    """Read, validate, embed, cluster and batch `input_path` on the multi-processing runner
    (or only the stages up to `last_stage`, to find which one memory grows in)."""
    import apache_beam as beam
    from apache_beam.metrics import Metrics
    from apache_beam.metrics.metric import MetricsFilter

    from beam_pipeline.plan import make_plan
    from beam_pipeline.run import pipeline_options
    from transforms.assign_to_batches import AssignToBatches
    from transforms.cluster import Cluster
    from transforms.embed import EmbedRecords
    from offline_models.loading import encoder_dimension
    from transforms.read import REJECTED_TAG, ReadRecords

    argv = ["--input", str(input_path), "--output", str(work / "out"),
            "--label_column", "label", "--label_values", ",".join(LABELS),
            "--encoder", "tiny-bert", "--encoder_sequence_length", "32",
            "--clustering", "dp_kmeans", "--kmeans_clusters", "4", "--kmeans_rounds", "2",
            "--batch_size", str(BATCH_SIZE), "--run_secret", "10ad" * 8,
            "--direct_running_mode", "multi_processing", "--direct_num_workers", str(workers)]
    options = pipeline_options(argv)
    plan = make_plan(options)
    batches_counter = Metrics.counter("dpsynth_load", "batches")
    members_counter = Metrics.counter("dpsynth_load", "batch_members")
    repeated_counter = Metrics.counter("dpsynth_load", "records_in_several_batches")

    def count_batch(batch):
        batches_counter.inc()
        members_counter.inc(len(batch.members))
        return [member.record_id for member in batch.members] if check_unique else []

    def count_repeats(id_and_count):
        if id_and_count[1] > 1:
            repeated_counter.inc()

    pipeline = beam.Pipeline(options=options)
    read = pipeline | "ReadRecords" >> ReadRecords(plan.input, plan.schema,
                                                   label_values=plan.labels)
    _ = read[REJECTED_TAG] | "Rejected" >> beam.Map(lambda _: None)
    last = STAGES.index(last_stage)
    if last >= 1:
        embedded = read["records"] | "EmbedRecords" >> EmbedRecords(
            plan.encoder, sequence_length=plan.encoder_sequence_length)
    if last >= 2:
        clusters = embedded | "Cluster" >> Cluster(plan.clustering, plan.secret,
                                                   dimension=encoder_dimension(plan.encoder))
    if last >= 3:
        batches = clusters["clustered"] | "AssignToBatches" >> AssignToBatches(
            clusters["release"], expected_batch_size=BATCH_SIZE, secret=plan.secret)
        member_ids = batches | "CountBatches" >> beam.FlatMap(count_batch)
        if check_unique:
            _ = (member_ids | "CountPerRecord" >> beam.combiners.Count.PerElement()
                 | "Repeated" >> beam.Map(count_repeats))

    started = time.perf_counter()
    with PeakRss() as rss:
        result = pipeline.run()
        result.wait_until_finish()
    elapsed = time.perf_counter() - started
    counters = {}
    for counter in result.metrics().query(MetricsFilter())["counters"]:
        name = counter.key.metric.name
        counters[name] = counters.get(name, 0) + counter.committed
    mb = 1024 * 1024
    return {
        "wall_seconds": round(elapsed, 1),
        "launcher_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "largest_worker_peak_rss_mb": round(rss.peak_worker / mb),
        "workers_peak_rss_sum_mb": round(rss.peak_workers_sum / mb),
        "launcher_and_workers_peak_rss_mb": round(rss.peak_total / mb),
        "worker_processes": len(rss.workers_seen),
        "counts": {name: counters.get(name, 0) for name in (
            "records_read", "records_rejected", "records_embedded", "records_clustered",
            "records_batched", "records_unbatched", "batches", "batch_members",
            "records_in_several_batches")},
    }


def measure(n: int, *, workers: int = 2, check_unique: bool = False, work: Path | None = None,
            last_stage: str = "batch") -> dict:
    """One size in a fresh Python process, so that each peak RSS belongs to that size only."""
    work = Path(work or tempfile.mkdtemp(prefix="dpsynth-load-"))
    command = [sys.executable, "-m", "benchmarks.load", "--one", str(n), "--workers",
               str(workers), "--work", str(work), "--last_stage", last_stage] + (
                   ["--check_unique"] if check_unique else [])
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"the load run at n={n} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _one(n: int, workers: int, work: Path, check_unique: bool, last_stage: str) -> None:
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    work.mkdir(parents=True, exist_ok=True)
    path = work / f"records-{n}.csv"
    written = write_input(path, n)
    figures = run_stages(path, work, workers=workers, check_unique=check_unique,
                         last_stage=last_stage)
    print(json.dumps({"n": n, **written, **figures}), flush=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[25000, 100000])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--check_unique", action="store_true",
                        help="also count, per record id, the batches it is in (a shuffle more)")
    parser.add_argument("--last_stage", choices=STAGES, default="batch",
                        help="run the stages up to this one only (where does memory grow?)")
    parser.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--work", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one is not None:
        _one(args.one, args.workers, Path(args.work), args.check_unique, args.last_stage)
        return 0
    print(f"stages read ... {args.last_stage} (read + validate, embed with tiny-bert, cluster "
          f"with dp_kmeans, batch), multi_processing with {args.workers} workers")
    print(f"{'n':>8} {'wall s':>7} {'launcher MB':>12} {'max worker MB':>14} "
          f"{'workers sum MB':>15} {'all MB':>7}  counts")
    rows = []
    for n in args.sizes:
        row = measure(n, workers=args.workers, check_unique=args.check_unique,
                      last_stage=args.last_stage)
        rows.append(row)
        c = row["counts"]
        print(f"{n:8d} {row['wall_seconds']:7.1f} {row['launcher_peak_rss_mb']:12d} "
              f"{row['largest_worker_peak_rss_mb']:14d} {row['workers_peak_rss_sum_mb']:15d} "
              f"{row['launcher_and_workers_peak_rss_mb']:7d}  read {c['records_read']}, "
              f"rejected {c['records_rejected']}, batched {c['records_batched']}, unbatched "
              f"{c['records_unbatched']}, {c['batches']} batches with {c['batch_members']} "
              "members", flush=True)
    if len(rows) > 1:
        first, last = rows[0], rows[-1]
        for key in ("launcher_peak_rss_mb", "largest_worker_peak_rss_mb",
                    "workers_peak_rss_sum_mb", "launcher_and_workers_peak_rss_mb"):
            print(f"{key}: x{last[key] / max(first[key], 1):.2f} from n={first['n']} to "
                  f"n={last['n']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
