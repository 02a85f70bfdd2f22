"""--run_secret is a key: a hex string of at least 128 bits, checked before anything runs."""

import re

import pytest

from beam_pipeline import cli
from beam_pipeline.plan import PlanError, make_plan
from beam_pipeline.run import pipeline_options
from tests.pipeline_fixtures import FIXED_SECRET, tiny_args
from mechanisms.randomness import check_run_secret, new_run_secret

SHORTEST = "f" * 32


def plan_with(tmp_path, secret):
    return make_plan(pipeline_options(tiny_args(tmp_path / "in.csv", tmp_path / "out",
                                                secret=secret)))


@pytest.mark.parametrize("secret", [SHORTEST, SHORTEST + "0", FIXED_SECRET.upper(),
                                    new_run_secret()])
def test_hex_secrets_of_128_bits_or_more_are_kept_as_given(tmp_path, secret):
    plan = plan_with(tmp_path, secret)
    assert plan.secret == secret and plan.secret_is_fixed


@pytest.mark.parametrize("secret, message", [
    ("ab12", "--run_secret has 4 hex digits (16 bits); it needs at least 32 hex digits "
             "(128 bits)"),
    (SHORTEST[:-1], "has 31 hex digits (124 bits)"),
    ("plain", "--run_secret must be hexadecimal (0-9, a-f), at least 32 hex digits"),
    ("0x" + SHORTEST, "must be hexadecimal"),
    (SHORTEST + " ", "must be hexadecimal"),
    ("g" * 64, "must be hexadecimal"),
])
def test_short_or_non_hex_secrets_are_refused_by_make_plan(tmp_path, secret, message):
    with pytest.raises(PlanError, match=re.escape(message)):
        plan_with(tmp_path, secret)
    with pytest.raises(ValueError, match="--run_secret"):
        check_run_secret(secret)


def test_a_short_secret_stops_dpsynth_run_before_anything_runs(tmp_path, capsys):
    """The input does not even exist: the secret is refused before any file is looked at."""
    code = cli.main(["run", *tiny_args(tmp_path / "missing.csv", tmp_path / "out",
                                       secret="5eed")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert "--run_secret has 4 hex digits" in err and "5eed" not in err
    assert not (tmp_path / "out").exists()


def test_no_run_secret_draws_a_fresh_one(tmp_path):
    args = tiny_args(tmp_path / "in.csv", tmp_path / "out")
    at = args.index("--run_secret")
    del args[at:at + 2]
    plans = [make_plan(pipeline_options(args)) for _ in range(2)]
    assert plans[0].secret != plans[1].secret and not plans[0].secret_is_fixed
    assert check_run_secret(plans[0].secret) == plans[0].secret
