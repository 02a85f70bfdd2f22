"""`--runner dask` on a real Dask cluster: a scheduler and two worker processes on loopback.

The outputs must be byte-identical to the FnApiRunner's with the same --run_secret,
also when a worker is killed mid-run, and the work must reach both workers.
"""

import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import threading
import time

import apache_beam as beam
import pytest

from beam_pipeline.dask_runner import DaskRunnerError
from beam_pipeline.run import run
from tests.pipeline_fixtures import tiny_args, write_reviews_csv

ROOT = pathlib.Path(__file__).resolve().parents[1]
LABELLED = ["--label_column", "category", "--label_values", "Restaurants,Shopping"]
CONFIGURATIONS = {
    "uniform_mean": ["--clustering", "uniform", "--aggregator", "mean", *LABELLED],
    "dp_kmeans_median": ["--clustering", "dp_kmeans", "--aggregator", "median", *LABELLED],
    "private_evolution": ["--method", "private_evolution", "--pe_rounds", "2",
                          "--pe_population", "8", *LABELLED],
}
OUTPUTS = ("synthetic-00000-of-00001.jsonl", "rejected-00000-of-00001.jsonl",
           "run_summary.json", "privacy_report.json")


def _free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Cluster:
    """`dask scheduler` and `dask worker` processes, stopped by the fixture."""

    def __init__(self, workers=2):
        # The scheduler unpickles the task graph and the workers run it: both import
        # this checkout, whichever copy of the project the virtualenv has installed.
        self._env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1",
}
        self.address = f"tcp://127.0.0.1:{_free_port()}"
        self._processes = []
        self._start("scheduler", "--host", "127.0.0.1", "--port", self.address.rsplit(":", 1)[1],
                    "--no-dashboard")
        for index in range(workers):
            self._start("worker", self.address, "--host", "127.0.0.1", "--nthreads", "1",
                        "--name", f"worker-{index}", "--no-dashboard")
        from dask.distributed import Client

        self.client = Client(self.address, timeout=60)
        self.client.wait_for_workers(workers, timeout=120)

    def _start(self, *args):
        self._processes.append(subprocess.Popen(
            [sys.executable, "-m", "dask", *args], env=self._env, cwd=ROOT,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True))

    def executed(self):
        """Tasks each worker (by name) has run so far."""
        names = {address: info["name"]
                 for address, info in self.client.scheduler_info()["workers"].items()}
        return {names[address]: count for address, count in self.client.run(
            lambda dask_worker: dask_worker.state.executed_count).items()}

    def stop(self):
        self.client.close()
        for process in reversed(self._processes):
            # Each process leads its own session; the group holds a nanny's worker too.
            try:
                os.killpg(process.pid, signal.SIGTERM)
            except ProcessLookupError:
                continue
        for process in self._processes:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


@pytest.fixture(scope="module")
def cluster():
    started = Cluster()
    yield started
    started.stop()


@pytest.fixture(scope="module")
def reviews(tmp_path_factory):
    return write_reviews_csv(tmp_path_factory.mktemp("data") / "reviews.csv")


@pytest.fixture(scope="module")
def reference(tmp_path_factory, reviews):
    """FnApiRunner outputs per configuration, made once for the module."""
    made = {}

    def outputs(name):
        if name not in made:
            out = tmp_path_factory.mktemp(f"fnapi-{name}")
            run(tiny_args(reviews, out, *CONFIGURATIONS[name]), say=lambda _: None)
            made[name] = _read_outputs(out)
        return made[name]
    return outputs


def _read_outputs(directory):
    return {name: (directory / name).read_bytes() for name in OUTPUTS}


def _assert_identical(expected, actual, outputs=OUTPUTS):
    for name in outputs:
        assert actual[name] == expected[name], f"{name} differs from the FnApiRunner's"


def test_in_process_cluster_is_byte_identical(tmp_path, reference, reviews):
    """No --dask_address: a one-thread cluster in this process; every output identical."""
    run(tiny_args(reviews, tmp_path, *CONFIGURATIONS["dp_kmeans_median"], "--runner", "dask"),
        say=lambda _: None)
    _assert_identical(reference("dp_kmeans_median"), _read_outputs(tmp_path))


@pytest.mark.parametrize("name", CONFIGURATIONS)
def test_outputs_match_fnapi_runner(tmp_path, cluster, reference, reviews, name):
    before = cluster.executed()
    run(tiny_args(reviews, tmp_path, *CONFIGURATIONS[name], "--runner", "dask",
                  "--dask_address", cluster.address), say=lambda _: None)
    _assert_identical(reference(name), _read_outputs(tmp_path))
    after = cluster.executed()
    ran = {worker: after[worker] - before.get(worker, 0) for worker in after}
    assert len(ran) == 2 and all(count > 0 for count in ran.values()), ran


def test_a_worker_killed_mid_run_is_replaced_and_the_outputs_stay_identical(
        tmp_path, cluster, reference, reviews):
    name = "uniform_mean"
    expected = reference(name)
    victim = next(iter(cluster.client.run(os.getpid).items()))
    killed = threading.Event()

    def kill_when_busy():
        # Mid-run: once the victim has run tasks of this job and holds one now.
        start = cluster.client.run(lambda dask_worker: dask_worker.state.executed_count,
                                   workers=[victim[0]])[victim[0]]
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                done = cluster.client.run(
                    lambda dask_worker: dask_worker.state.executed_count,
                    workers=[victim[0]])[victim[0]]
            except Exception:  # noqa: BLE001 - the run may be over; then nothing is killed
                return
            if done - start >= 20:
                os.kill(victim[1], signal.SIGKILL)
                killed.set()
                return
            time.sleep(0.05)

    killer = threading.Thread(target=kill_when_busy, daemon=True)
    killer.start()
    run(tiny_args(reviews, tmp_path, *CONFIGURATIONS[name], "--runner", "dask",
                  "--dask_address", cluster.address), say=lambda _: None)
    killer.join()
    assert killed.is_set(), "the job ended before the worker could be killed"
    _assert_identical(expected, _read_outputs(tmp_path))
    cluster.client.wait_for_workers(2, timeout=120)
    assert victim[1] not in cluster.client.run(os.getpid).values()


def test_state_is_refused_before_anything_runs():
    from apache_beam.transforms.userstate import CombiningValueStateSpec

    class Stateful(beam.DoFn):
        total = CombiningValueStateSpec("total", sum)

        def process(self, element, total=beam.DoFn.StateParam(total)):
            total.add(element[1])
            yield total.read()

    pipeline = beam.Pipeline(runner="beam_pipeline.dask_runner.DaskRunner")
    _ = pipeline | beam.Create([("k", 1)]) | beam.ParDo(Stateful())
    with pytest.raises(DaskRunnerError, match="state or timers"):
        pipeline.run()


def test_metrics_say_where_the_counts_are(tmp_path, reviews):
    """No --dask_address: a one-thread cluster inside this process."""
    pipeline = beam.Pipeline(runner="beam_pipeline.dask_runner.DaskRunner")
    _ = pipeline | beam.Create([1, 2, 3]) | beam.Map(lambda x: x)
    result = pipeline.run()
    result.wait_until_finish()
    with pytest.raises(DaskRunnerError, match="run_summary.json"):
        result.metrics()


def test_runner_semantics_beam_dask_gets_wrong(tmp_path):
    """Tagged outputs, finish_bundle outputs, every sink, one value per side input."""
    import random

    class EmitAtFinish(beam.DoFn):
        def start_bundle(self):
            self.seen = 0

        def process(self, element):
            self.seen += 1

        def finish_bundle(self):
            yield beam.utils.windowed_value.WindowedValue(
                self.seen, 0, [beam.transforms.window.GlobalWindow()])

    def write(name):
        def to_file(values):
            (tmp_path / name).write_text(json.dumps(sorted(values)))
        return to_file

    pipeline = beam.Pipeline(runner="beam_pipeline.dask_runner.DaskRunner")
    numbers = pipeline | "Numbers" >> beam.Create(range(10))
    split = numbers | beam.FlatMap(
        lambda x: [x] if x % 2 else [beam.pvalue.TaggedOutput("even", x)]
    ).with_outputs("even", main="odd")
    noise = beam.pvalue.AsSingleton(pipeline | "Once" >> beam.Create([None])
                                    | beam.Map(lambda _: random.random()))
    _ = split.odd | "Odd" >> beam.combiners.ToList() | "WriteOdd" >> beam.Map(write("odd"))
    _ = split.even | "Even" >> beam.combiners.ToList() | "WriteEven" >> beam.Map(write("even"))
    _ = (numbers | beam.ParDo(EmitAtFinish()) | "Seen" >> beam.CombineGlobally(sum)
         | "WriteSeen" >> beam.Map(lambda n: write("seen")([n])))
    _ = (numbers | "WithNoise" >> beam.Map(lambda x, n: n, noise) | "Distinct" >> beam.Distinct()
         | "Noises" >> beam.combiners.ToList() | "WriteNoises" >> beam.Map(write("noises")))
    pipeline.run().wait_until_finish()
    assert json.loads((tmp_path / "odd").read_text()) == [1, 3, 5, 7, 9]
    assert json.loads((tmp_path / "even").read_text()) == [0, 2, 4, 6, 8]
    assert json.loads((tmp_path / "seen").read_text()) == [10]
    assert len(json.loads((tmp_path / "noises").read_text())) == 1


def test_tiny_lm_writes_text_that_differs_across_batches(reference):
    """Byte-identity above proves something only if the text is not the same every time."""
    lines = reference("uniform_mean")["synthetic-00000-of-00001.jsonl"].decode().splitlines()
    texts = [json.loads(line)["text"] for line in lines]
    assert len(texts) >= 4 and len(set(texts)) >= len(texts) // 2, texts
    assert all(text.strip() for text in texts), texts
