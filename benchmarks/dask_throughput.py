"""Wall time of one tiny-model job on FnApiRunner and on a Dask cluster of 1 and 2 workers.

    .venv/bin/python benchmarks/dask_throughput.py [--records 2000] [--rounds 2]

The job is the test suite's uniform + mean configuration with the tiny LM and encoder on
synthetic reviews, so it measures the engines' own overhead and parallelism rather than
model speed. The Dask scheduler and workers are real processes on 127.0.0.1 (one thread
each), started before the clock runs; the engines take turns in every round, so load from
elsewhere on the machine falls on all of them alike. Prints each round's seconds, records/s
and the ratio to FnApiRunner of the same round.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.pipeline_fixtures import tiny_args, write_reviews_csv  # noqa: E402
from tests.test_dask_runner import CONFIGURATIONS, Cluster  # noqa: E402

ENGINES = (("FnApiRunner", 0), ("Dask, 1 worker", 1), ("Dask, 2 workers", 2))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--max_new_tokens", type=int, default=8)
    args = parser.parse_args(argv)

    from beam_pipeline.run import run

    work = Path(tempfile.mkdtemp(prefix="dask-throughput-"))
    reviews = write_reviews_csv(work / "reviews.csv", n=args.records)
    clusters = {workers: Cluster(workers=workers) for _, workers in ENGINES if workers}
    seconds = {name: [] for name, _ in ENGINES}
    try:
        for round_index in range(args.rounds):
            for name, workers in ENGINES:
                out = work / f"out-{round_index}-{workers}"
                extra = (["--runner", "dask", "--dask_address", clusters[workers].address]
                         if workers else [])
                started = time.perf_counter()
                run(tiny_args(reviews, out, *CONFIGURATIONS["uniform_mean"], "--max_new_tokens",
                              str(args.max_new_tokens), *extra), say=lambda _: None)
                seconds[name].append(time.perf_counter() - started)
                print(f"round {round_index + 1}: {name}: {seconds[name][-1]:.1f} s", flush=True)
    finally:
        for cluster in clusters.values():
            cluster.stop()

    print(f"\n{args.records} records, tiny models, uniform + mean, "
          f"{args.max_new_tokens} new tokens; {args.rounds} rounds, engines in turn")
    print(f"{'engine':<16} | {'wall s per round':<22} | {'records/s (median)':<18} | "
          f"FnApiRunner s / this s")
    reference = seconds["FnApiRunner"]
    for name, _ in ENGINES:
        walls = seconds[name]
        ratios = [r / w for r, w in zip(reference, walls)]
        print(f"{name:<16} | {', '.join(f'{w:.1f}' for w in walls):<22} | "
              f"{args.records / statistics.median(walls):<18.1f} | "
              f"{', '.join(f'{r:.2f}' for r in ratios)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
