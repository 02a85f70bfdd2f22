"""deploy/: the flex template's metadata cannot drift from the options; launcher, image,
schedules and the portable (Flink) runner path."""

import argparse
import ast
import importlib.util
import json
import re
import shlex
import subprocess
from pathlib import Path

import pytest

from beam_pipeline import options
from beam_pipeline.options import DpSynthOptions
from beam_pipeline.run import run
from tests.pipeline_fixtures import read_jsonl, tiny_args, write_reviews_csv

ROOT = Path(__file__).resolve().parents[1]
DATAFLOW = ROOT / "deploy" / "dataflow"
SCHEDULE = ROOT / "deploy" / "schedule"


def load(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def option_actions() -> dict:
    return {action.dest: action for _, action in options.option_actions()}


def committed_metadata() -> dict:
    return json.loads((DATAFLOW / "metadata.json").read_text(encoding="utf-8"))


# ------------------------------------------------------------- metadata.json


def test_committed_metadata_is_what_the_options_generate():
    make_metadata = load(DATAFLOW / "make_metadata.py", "make_metadata")
    assert (DATAFLOW / "metadata.json").read_text(encoding="utf-8") == make_metadata.render(), \
        "deploy/dataflow/metadata.json is stale: run PYTHONPATH=. python " \
        "deploy/dataflow/make_metadata.py"
    assert make_metadata.main(["--check"]) == 0


def test_every_option_is_declared_with_its_type_and_help():
    """Checked against argparse directly, not through the generator."""
    actions = option_actions()
    params = {p["name"]: p for p in committed_metadata()["parameters"]}
    assert set(params) == set(actions)
    for name, action in actions.items():
        param = params[name]
        assert param["helpText"] == action.help, name
        assert param["isOptional"] == (name not in ("input", "output")), name
        if isinstance(action, argparse._StoreTrueAction):
            assert param["paramType"] == "BOOLEAN", name
        elif action.choices:
            assert param["paramType"] == "ENUM", name
            assert [o["value"] for o in param["enumOptions"]] == list(action.choices)
        elif action.type in (int, float):
            assert param["paramType"] == "NUMBER", name
            for value in ("3", "-1") if action.type is int else ("0.5", "1e-6", "10"):
                assert any(re.match(rx, value) for rx in param["regexes"]), (name, value)
            if action.type is int:
                assert not any(re.match(rx, "0.5") for rx in param["regexes"]), name
        else:
            assert param["paramType"] == "TEXT", name
        if action.default not in (None, False):
            assert param["defaultValue"] == str(action.default), name


def test_a_new_option_makes_the_committed_metadata_stale(monkeypatch):
    make_metadata = load(DATAFLOW / "make_metadata.py", "make_metadata_probe")
    original = DpSynthOptions._add_argparse_args.__func__

    def with_extra(cls, parser):
        original(cls, parser)
        parser.add_argument("--brand_new", type=int, default=3, help="added later")

    monkeypatch.setattr(DpSynthOptions, "_add_argparse_args", classmethod(with_extra))
    assert make_metadata.main(["--check"]) == 1


# ------------------------------------------------------------- the launcher


def test_launcher_turns_template_flags_back_into_dpsynth_flags():
    main = load(DATAFLOW / "main.py", "flex_main")
    flags = main.flag_names()
    assert "public_tokens" in flags
    args = ["--input=gs://b/x", "--public_tokens=true", "--public_tokens=false",
            "--label_values=a,b", "--public_tokens=False"]
    assert main.normalise_flags(args, flags) == ["--input=gs://b/x", "--public_tokens",
                                                 "--label_values=a,b"]
    with pytest.raises(SystemExit, match="takes true or false"):
        main.normalise_flags(["--public_tokens=maybe"], flags)


def test_launcher_runs_a_job_from_template_style_arguments(tmp_path, capsys):
    main = load(DATAFLOW / "main.py", "flex_main_run")
    data = write_reviews_csv(tmp_path / "reviews.csv", n=24)
    args = [f"{a}={b}" for a, b in zip(*[iter(tiny_args(data, tmp_path / "out"))] * 2)]
    assert main.main([*args, "--clustering=uniform", "--public_tokens=true"]) == 0
    assert read_jsonl(tmp_path / "out", "synthetic")
    report = json.loads((tmp_path / "out" / "privacy_report.json").read_text())
    assert report["parameters"]["public_tokens"] is True
    assert main.main(["--input=" + str(tmp_path / "none.csv"), "--output=" + str(tmp_path)]) == 2
    assert "matches no file" in capsys.readouterr().err
    # A misspelt parameter is refused before anything runs or is spent.
    assert main.main([*args, "--target_epsilom=1"]) == 2
    assert "--target_epsilom" in capsys.readouterr().err


# ------------------------------------------------------------- the image


def test_dockerfile_copies_what_exists_and_bakes_in_the_models():
    text = (DATAFLOW / "Dockerfile").read_text(encoding="utf-8")
    for line in text.splitlines():
        if line.startswith("COPY") and "--from=" not in line:
            for source in shlex.split(line)[1:-1]:
                assert (ROOT / source).exists(), source
    assert re.search(r"DPSYNTH_CACHE=/opt/dpsynth/cache", text)
    assert re.search(r"^RUN dpsynth models prepare", text, re.M)
    launcher = re.search(r"FLEX_TEMPLATE_PYTHON_PY_FILE=/opt/dpsynth/src/(\S+)", text).group(1)
    assert (ROOT / launcher).is_file()
    assert 'ENTRYPOINT ["/opt/apache/beam/boot"]' in text
    requirements = (ROOT / "requirements.txt").read_text()
    beam = re.search(r"^apache-beam(?:\[gcp\])?==(\S+)$", requirements, re.M).group(1)
    assert f"ARG BEAM_VERSION={beam}" in text  # the worker SDK matches the launcher's Beam
    tensorflow = re.search(r"^tensorflow==(\S+)$", requirements, re.M).group(1)
    assert f'"tensorflow[and-cuda]=={tensorflow}"' in text


# ------------------------------------------------------------- schedules


def dag_parameters() -> dict:
    tree = ast.parse((SCHEDULE / "airflow_dag.py").read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == \
                "DPSYNTH_PARAMETERS":
            return {k.value: v for k, v in zip(node.value.keys, node.value.values)}
    raise AssertionError("no DPSYNTH_PARAMETERS in the DAG")


def scheduler_parameters() -> dict:
    script = (SCHEDULE / "cloud_scheduler.sh").read_text(encoding="utf-8")
    body = script.split("<<JSON\n", 1)[1].split("\nJSON\n", 1)[0]
    for name in ("BUCKET", "TEMPLATE", "JOB", "IMAGE", "LIFETIME_EPSILON", "DOMAIN"):
        body = body.replace(f"${name}", "x")
    return json.loads(body)["launchParameter"]["parameters"]


@pytest.mark.parametrize("source", [dag_parameters, scheduler_parameters],
                         ids=["airflow", "cloud_scheduler"])
def test_scheduled_launches_pass_only_known_options(source):
    declared = {p["name"] for p in committed_metadata()["parameters"]}
    parameters = source()
    assert set(parameters) <= declared, set(parameters) - declared
    for required in ("input", "output", "run_date", "budget_ledger", "lifetime_epsilon",
                     "privacy_unit_domain"):
        assert required in parameters


def test_scheduler_script_is_valid_bash():
    subprocess.run(["bash", "-n", str(SCHEDULE / "cloud_scheduler.sh")], check=True)


def test_airflow_dag_is_valid_python():
    compile((SCHEDULE / "airflow_dag.py").read_text(encoding="utf-8"), "airflow_dag.py", "exec")


# ------------------------------------------------------------- the portable (Flink) path


def test_portable_runner_path(gcs_bucket, tmp_path):
    """The runner path FlinkRunner takes, with Beam's embedded job server instead of
    Flink's, on gs:// input and output (Cloud Storage emulator) and tiny models."""
    from beam_pipeline import storage

    for shard in range(2):
        local = write_reviews_csv(tmp_path / f"part-{shard}.csv", n=24, seed=shard)
        storage.gcs_client().bucket(gcs_bucket).blob(
            f"exports/2026-11-20/part-{shard:05d}.csv").upload_from_filename(str(local))
    summary = run(tiny_args(f"gs://{gcs_bucket}/exports/{{date}}/part-*.csv",
                            f"gs://{gcs_bucket}/synthetic/{{date}}", "--run_date", "2026-11-20",
                            "--clustering", "public_centers", "--label_column", "category",
                            "--label_values", "Restaurants,Shopping",
                            "--runner", "PortableRunner", "--job_endpoint", "embed",
                            "--environment_type", "LOOPBACK", "--parallelism", "2"),
                  say=lambda _: None)
    assert summary["records_accepted"] == 48
    names = sorted(b.name for b in storage.gcs_client().list_blobs(gcs_bucket,
                                                                   prefix="synthetic/"))
    assert "synthetic/2026-11-20/synthetic-00000-of-00001.jsonl" in names
    assert not any(".staging-" in name for name in names)
