"""What `dpsynth` says on the console, and when it refuses to start.

Misspelt options, folders holding an earlier run's outputs and Ctrl-C each end
with one line; a run's console holds its phases and a last line with the
output folder and the formal epsilon, and none of TensorFlow's native lines.
"""

import glob
import logging
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from beam_pipeline import cli
from tests.pipeline_fixtures import tiny_args, write_reviews_csv

ROOT = Path(__file__).resolve().parents[1]
NATIVE_LINES = re.compile(r"absl|cuda|oneDNN|cpu_feature_guard|^[IWEF]\d{4} ",
                          re.IGNORECASE | re.MULTILINE)


@pytest.fixture
def reviews(tmp_path):
    return write_reviews_csv(tmp_path / "reviews.csv", n=16)


def _one_line_error(capsys, code) -> str:
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1, err
    assert err.startswith("dpsynth: error: ") and "Traceback" not in captured.out + err
    return err


@pytest.mark.parametrize("command, mistake, meant", [
    ("run", ["--target_epsilion", "10"], "--target_epsilon"),
    ("run", ["--max_new_token", "16"], "--max_new_tokens"),
    ("run", ["--runnr", "FnApiRunner"], "--runner"),
    ("audit", ["--target_epsilion", "10"], "--target_epsilon"),
    ("audit", ["--canarys", "3"], "--canaries"),
    ("audit", ["--max_new_token=16"], "--max_new_tokens"),
], ids=["run-epsilon", "run-tokens", "run-runner", "audit-epsilon", "audit-canaries",
        "audit-tokens-equals"])
def test_a_misspelt_option_stops_the_job_naming_the_closest(tmp_path, reviews, capsys,
                                                            command, mistake, meant):
    code = cli.main([command, *tiny_args(reviews, tmp_path / "out"), *mistake])
    err = _one_line_error(capsys, code)
    assert f"unknown option {mistake[0].split('=')[0]}: did you mean {meant}?" in err
    assert not (tmp_path / "out").exists()


def test_a_misspelt_evaluate_option_stops_naming_the_closest(tmp_path, capsys):
    code = cli.main(["evaluate", "--real", str(tmp_path / "real.csv"), "--synthetic",
                     str(tmp_path / "synthetic.jsonl"), "--encoder_sequence_lenght", "64"])
    err = _one_line_error(capsys, code)
    assert "unknown option --encoder_sequence_lenght: did you mean --encoder_sequence_length?" \
        in err


def test_a_stray_argument_stops_the_job(tmp_path, reviews, capsys):
    code = cli.main(["run", *tiny_args(reviews, tmp_path / "out"), "stray"])
    assert "unexpected argument 'stray'" in _one_line_error(capsys, code)


def test_runner_options_pass():
    cli._refuse_unknown_options([
        "--runner", "DataflowRunner", "--project", "p", "--region", "europe-west1",
        "--temp_location", "gs://b/tmp", "--direct_running_mode", "multi_processing",
        "--direct_num_workers=2", "--max_num_workers", "4", "--save_main_session",
        "--target_epsilon", "10", "--input", "x.csv"])


def test_progress_lines_are_logged_at_most_every_interval(monkeypatch, caplog):
    from beam_pipeline import progress

    tick = progress.counter("embedding", "texts embedded")
    with caplog.at_level(logging.INFO, logger="dpsynth.progress"):
        tick(5)
        assert not caplog.records  # a phase shorter than the interval says nothing
        monkeypatch.setattr(progress, "PROGRESS_EVERY_SECONDS", 0.0)
        tick(3)
    assert [r.getMessage().split(",")[0] for r in caplog.records] == [
        "embedding: 8 texts embedded so far"]


def test_a_stage_with_a_planned_total_says_its_last_line_and_its_own_rate(caplog):
    from beam_pipeline import progress

    tick = progress.counter("generation", "batches", rate_unit="synthetic tokens")
    with caplog.at_level(logging.INFO, logger="dpsynth.progress"):
        tick(0)
        tick(1, total=2, rate_count=30)
        assert not caplog.records   # within the interval, and not the last batch
        tick(1, total=2, rate_count=10)
    [line] = [r.getMessage() for r in caplog.records]
    assert line.startswith("generation: 2/2 batches done, ")
    assert line.endswith(" synthetic tokens/s")
    rate = float(line.split(", ")[1].split()[0])
    assert rate >= 40   # 40 tokens in under a second: the rate counts tokens, not batches


def _dpsynth(*args):
    """`dpsynth` as a user starts it from a terminal: in a process group of its own (a
    terminal's Ctrl-C goes to the whole group), and without the TensorFlow log level
    that conftest.py sets for the tests' own process."""
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL",)}
    # With Ctrl-C's default action, as from a terminal: a test run started in the
    # background of a script ignores SIGINT, and a child would inherit that.
    return subprocess.Popen([sys.executable, "-m", "beam_pipeline.cli", *args], cwd=ROOT,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def test_the_console_shows_phases_and_the_outcome_and_no_native_lines(tmp_path, reviews):
    out = tmp_path / "out"
    process = _dpsynth("run", *tiny_args(reviews, out, "--clustering", "dp_kmeans",
                                         "--kmeans_rounds", "2"),
                       "--runner", "FnApiRunner", "--direct_running_mode", "in_memory",
                       "--project", "unused", "--temp_location", str(tmp_path))
    stdout, stderr = process.communicate(timeout=600)
    assert process.returncode == 0, stderr
    assert not NATIVE_LINES.search(stderr + stdout), stderr
    for phase in ("reading: 16 records accepted", "embedding: 16 records embedded",
                  "clustering: DP k-means round 1/2", "clustering: DP k-means round 2/2",
                  "generation: ", "writing: "):
        assert phase in stderr, (phase, stderr)
    last = stdout.strip().splitlines()[-1]
    assert re.fullmatch(rf"dpsynth: outputs in {re.escape(str(out))}; formal epsilon "
                        r"[0-9.e+]+ at delta 1e-06", last), last


def test_an_output_folder_with_outputs_is_refused_unless_overwrite(tmp_path, reviews, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "synthetic-00000-of-00001.jsonl").write_text('{"text": "earlier"}\n')
    (out / "notes.txt").write_text("not an output")
    ledger = tmp_path / "ledger.json"
    args = tiny_args(reviews, out, "--clustering", "uniform", "--budget_ledger", str(ledger),
                     "--lifetime_epsilon", "100000", "--privacy_unit_domain", "d")
    code = cli.main(["run", *args])
    err = _one_line_error(capsys, code)
    assert "already holds the outputs of a run" in err and "--overwrite" in err
    assert not ledger.exists()  # refused before anything was reserved
    assert (out / "synthetic-00000-of-00001.jsonl").read_text() == '{"text": "earlier"}\n'
    assert not glob.glob(str(out / ".staging-*"))

    code = cli.main(["audit", *args])
    assert "already holds the outputs" in _one_line_error(capsys, code)

    assert cli.main(["run", *args, "--overwrite"]) == 0
    assert "earlier" not in (out / "synthetic-00000-of-00001.jsonl").read_text()
    assert (out / "notes.txt").exists()


@pytest.mark.parametrize("mode", ["in_memory", "multi_processing"])
def test_ctrl_c_prints_one_line_removes_the_staging_folder_and_exits_130(tmp_path, reviews,
                                                                         mode):
    out = tmp_path / "out"
    process = _dpsynth("run", *tiny_args(reviews, out, "--clustering", "uniform"),
                       "--direct_running_mode", mode,
                       *(["--direct_num_workers", "2"] if mode == "multi_processing" else []))
    deadline = time.time() + 300
    while not glob.glob(str(out / ".staging-*" / "*")) and process.poll() is None:
        assert time.time() < deadline, "the job staged nothing"
        time.sleep(0.02)
    assert process.poll() is None, "the job ended before it could be interrupted"
    os.killpg(process.pid, signal.SIGINT)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    *progress_lines, last = stderr.strip().splitlines()
    assert last == "dpsynth: interrupted: nothing was published", stderr
    assert all(re.match(r"\d\d:\d\d:\d\d [a-z ]+: ", line) for line in progress_lines), stderr
    assert not glob.glob(str(out / ".staging-*")), list(out.iterdir())
    assert not list(out.glob("synthetic-*"))


def test_the_public_corpus_and_writing_say_when_they_are_done(tmp_path, reviews, caplog):
    from beam_pipeline.run import run

    out = tmp_path / "out"
    with caplog.at_level(logging.INFO, logger="dpsynth.progress"):
        run(tiny_args(reviews, out, "--clustering", "public_centers"), say=lambda _: None)
    lines = [r.getMessage() for r in caplog.records if r.name == "dpsynth.progress"]
    assert any(re.fullmatch(r"public corpus: 6 texts, [1-3] centres fitted", line)
               for line in lines), lines
    assert f"writing: 5 files published to {out}" in lines, lines


def test_an_interrupted_stage_logs_nothing_on_the_console():
    from beam_pipeline.run import _DropBeamNoise

    def record(message, exc_info=None):
        return logging.LogRecord("apache_beam", logging.ERROR, __file__, 1, message, None,
                                 exc_info)

    keep = _DropBeamNoise().filter
    assert not keep(record("KeyboardInterrupt [while running 'Cluster/ClusterCounts']\nTrace"))
    try:
        raise KeyboardInterrupt
    except KeyboardInterrupt:
        import sys
        assert not keep(record("bundle failed", sys.exc_info()))
    assert keep(record("ValueError [while running 'Read']"))


def test_ctrl_c_that_beam_rewraps_as_runtime_error_is_still_an_interruption(tmp_path, reviews,
                                                                             monkeypatch):
    """Beam re-raises a KeyboardInterrupt stopped inside a DoFn as RuntimeError
    ("KeyboardInterrupt [while running ...]"); the run must still clean up and say so."""
    import apache_beam as beam

    from beam_pipeline import run as run_module

    def interrupted_run(self, *args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)  # the watch notes it and raises KeyboardInterrupt
        raise AssertionError("SIGINT did not interrupt")

    def rewrapped(self, *args, **kwargs):
        try:
            interrupted_run(self)
        except KeyboardInterrupt:
            raise RuntimeError("KeyboardInterrupt [while running 'Generate']") from None

    out = tmp_path / "out"
    monkeypatch.setattr(beam.Pipeline, "run", rewrapped)
    # Python's own handler, as in a fresh `dpsynth` process, whatever earlier tests left.
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            run_module.run(tiny_args(reviews, out, "--clustering", "uniform"),
                           say=lambda _: None)
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, before)
    assert not glob.glob(str(out / ".staging-*"))
