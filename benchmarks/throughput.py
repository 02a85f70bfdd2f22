"""Throughput of private generation against plain generation, and how the stages
before it grow with n.

    .venv/bin/python benchmarks/throughput.py [--lm smollm2-135m] [--batches 16]
        [--sizes 1000 4000 16000]

Prints, measured in one process run:
1. The private generation loop exactly as the pipeline's generation stage runs
   it (`generate_jointly` over PrivateTokenChooser requests, 8 DP batches of s
   seed prompts plus the public prompt per model call, median rule, top-k 50):
   synthetic tokens/s and seed-token evaluations/s (rows x steps), against the
   same LM generating the same number of sequences from one prompt each,
   batched 8 per call the same way; the ratios of both.
2. The share of the private loop's time spent in aggregation and sampling
   (the choosers) rather than in the model.
3. Read + embed + cluster (dp_kmeans) + batch on FnApiRunner at each n, with
   the tiny encoder at every n and the real encoder up to 4k records: wall
   seconds and records/s, to show how the cost grows with n.
"""

from __future__ import annotations

import argparse
import csv
import resource
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from beam_pipeline.demo import DEFAULT_INPUT, YELP_TEMPLATE  # noqa: E402
from benchmarks.compare_methods import sample_own_prompt  # noqa: E402

BATCH_SIZE, NEW_TOKENS, BATCHES_PER_CALL, MAX_CHARS = 8, 32, 8, 500


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lm", default="smollm2-135m")
    parser.add_argument("--encoder", default="minilm-l6")
    parser.add_argument("--data", default=str(DEFAULT_INPUT))
    parser.add_argument("--batches", type=int, default=16, help="DP batches generated")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 4000, 16000])
    parser.add_argument("--real_encoder_up_to", type=int, default=4000)
    args = parser.parse_args(argv)
    texts = _texts(args.data)

    print(f"== generation: {args.batches} DP batches of {BATCH_SIZE} seeds + the public prompt, "
          f"{NEW_TOKENS} new tokens, {BATCHES_PER_CALL} batches per model call, lm {args.lm}")
    _generation(args, texts)
    print(f"\n== read + embed + cluster + batch (dp_kmeans, s = {BATCH_SIZE}) on FnApiRunner")
    _stages(args, texts)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    print(f"\npeak RSS {peak:.2f} GB")
    return 0


def _texts(path) -> list[str]:
    with open(path, newline="", encoding="utf-8") as handle:
        return [row["text"] for row in csv.DictReader(handle)]


# ----------------------------------------------------------------- generation


class _TimedChooser:
    """Wraps a chooser and adds the time spent in it to a shared clock."""

    def __init__(self, chooser, clock):
        self._chooser, self._clock = chooser, clock

    def choose(self, step, logits):
        started = time.perf_counter()
        try:
            return self._chooser.choose(step, logits)
        finally:
            self._clock[0] += time.perf_counter() - started

    def __getattr__(self, name):
        return getattr(self._chooser, name)


def _generation(args, texts) -> None:
    from offline_models.joint_decoding import GenerationRequest, generate_jointly
    from offline_models.loading import load_causal_lm
    from mechanisms.generate import GenerationConfig, PrivateTokenChooser
    from transforms.generate import render_prompt

    lm = load_causal_lm(args.lm)
    label = "Business Category: Restaurants"
    config = GenerationConfig(aggregator="median", clip=6.0, temperature=1.0,
                              expected_batch_size=BATCH_SIZE, max_new_tokens=NEW_TOKENS,
                              top_k=50)
    seeds = [t[:MAX_CHARS] for t in texts[:args.batches * BATCH_SIZE]]

    def private_requests(clock):
        requests = []
        for batch in range(args.batches):
            members = seeds[batch * BATCH_SIZE:(batch + 1) * BATCH_SIZE]
            prompts = [render_prompt(YELP_TEMPLATE, m, label) for m in members]
            prompts.append(render_prompt(YELP_TEMPLATE, "", label))
            chooser = PrivateTokenChooser(config, secret="ab12", batch_id=f"b{batch}")
            requests.append(GenerationRequest(key=batch, prompts=prompts,
                                              chooser=_TimedChooser(chooser, clock),
                                              max_new_tokens=NEW_TOKENS, stop_text=None))
        return requests

    def plain_requests(clock):
        return [GenerationRequest(
            key=batch, prompts=[render_prompt(YELP_TEMPLATE, seeds[batch * BATCH_SIZE], label)],
            chooser=_TimedChooser(sample_own_prompt(str(batch), secret="plain"), clock),
            max_new_tokens=NEW_TOKENS, stop_text=None) for batch in range(args.batches)]

    def timed(make_requests):
        clock = [0.0]
        requests = make_requests(clock)
        started = time.perf_counter()
        results = []
        for start in range(0, len(requests), BATCHES_PER_CALL):
            results += generate_jointly(lm, requests[start:start + BATCHES_PER_CALL])
        elapsed = time.perf_counter() - started
        tokens = sum(len(r.token_ids) for r in results)
        rows_steps = sum(len(r.token_ids) * len(q.prompts) for r, q in zip(results, requests))
        return elapsed, tokens, rows_steps, clock[0]

    # Warm-up: compile the decode step for both row counts before timing.
    _ = timed(lambda clock: private_requests(clock)[:BATCHES_PER_CALL])
    _ = timed(lambda clock: plain_requests(clock)[:BATCHES_PER_CALL])
    private = timed(private_requests)
    plain = timed(plain_requests)
    for name, (elapsed, tokens, rows_steps, chooser_time) in (("private (median)", private),
                                                              ("plain sampling", plain)):
        print(f"{name:17s}: {elapsed:7.1f} s, {tokens} synthetic tokens = "
              f"{tokens / elapsed:6.1f} tokens/s, {rows_steps} seed-token evaluations = "
              f"{rows_steps / elapsed:7.1f} evaluations/s; choosers {chooser_time:.1f} s "
              f"({100 * chooser_time / elapsed:.1f}% of the time)")
    print(f"ratio private/plain: synthetic tokens/s {private[1] / private[0] / (plain[1] / plain[0]):.3f}, "
          f"seed-token evaluations/s {private[2] / private[0] / (plain[2] / plain[0]):.3f}")
    print(f"aggregation + sampling share of the private loop's time: "
          f"{100 * private[3] / private[0]:.1f}%")


# -------------------------------------------------------------- earlier stages


def _stages(args, texts) -> None:
    import apache_beam as beam
    from apache_beam.metrics import Metrics
    from apache_beam.metrics.metric import MetricsFilter

    from beam_pipeline.plan import make_plan
    from beam_pipeline.run import pipeline_options
    from offline_models.loading import encoder_dimension
    from transforms.assign_to_batches import AssignToBatches
    from transforms.cluster import Cluster
    from transforms.embed import EmbedRecords
    from transforms.read import ReadRecords

    batch_counter = Metrics.counter("dpsynth", "benchmark_batches")
    work = Path(tempfile.mkdtemp(prefix="dpsynth-throughput-"))
    print(f"{'encoder':10s} {'n':>7s} {'wall s':>8s} {'records/s':>10s} {'batches':>8s}")
    for encoder in dict.fromkeys(("tiny-bert", args.encoder)):
        for n in args.sizes:
            if encoder != "tiny-bert" and n > args.real_encoder_up_to:
                continue
            path = work / f"records-{n}.csv"
            if not path.exists():
                with open(path, "w", newline="", encoding="utf-8") as handle:
                    writer = csv.writer(handle)
                    writer.writerow(["text"])
                    for i in range(n):
                        writer.writerow([texts[i % len(texts)][:MAX_CHARS]])
            argv = ["--input", str(path), "--output", str(work / "out"), "--encoder", encoder,
                    "--encoder_sequence_length", "128" if encoder != "tiny-bert" else "32",
                    "--clustering", "dp_kmeans", "--batch_size", str(BATCH_SIZE),
                    "--run_secret", "ab12" * 8]
            options = pipeline_options(argv)
            plan = make_plan(options)
            started = time.perf_counter()
            pipeline = beam.Pipeline(options=options)
            read = pipeline | "Read" >> ReadRecords(plan.input, plan.schema)
            embedded = read["records"] | "Embed" >> EmbedRecords(
                plan.encoder, sequence_length=plan.encoder_sequence_length)
            clusters = embedded | "Cluster" >> Cluster(
                plan.clustering, plan.secret, dimension=encoder_dimension(plan.encoder))
            batches = clusters["clustered"] | "Batch" >> AssignToBatches(
                clusters["release"], expected_batch_size=BATCH_SIZE, secret=plan.secret)
            _ = batches | "Count" >> beam.Map(lambda batch: batch_counter.inc())
            result = pipeline.run()
            result.wait_until_finish()
            elapsed = time.perf_counter() - started
            counters = result.metrics().query(MetricsFilter().with_name("benchmark_batches"))
            counted = {"batches": sum(c.committed for c in counters["counters"])}
            print(f"{encoder:10s} {n:7d} {elapsed:8.1f} {n / elapsed:10.1f} "
                  f"{counted.get('batches', '?'):>8}", flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
