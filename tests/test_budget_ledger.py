"""The lifetime budget ledger: composition, refusal, locking, and two runs racing for it."""

import json
import multiprocessing
import threading

import dp_accounting
import pytest

from beam_pipeline import budget_ledger as bl
from beam_pipeline import cli
from beam_pipeline.run import run
from tests.pipeline_fixtures import tiny_args, write_reviews_csv

DELTA = 1e-6


def gaussian_cost(multiplier: float, count: int = 1) -> bl.RunCost:
    event = dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(multiplier), count)
    return bl.RunCost(event=event, epsilon=bl.composed_epsilon([event], DELTA), delta=DELTA)


def test_events_survive_json_and_compose_like_the_accountant():
    event = dp_accounting.ComposedDpEvent([
        dp_accounting.GaussianDpEvent(2.0),
        dp_accounting.SelfComposedDpEvent(dp_accounting.ZCDpEvent(0.01), 48)])
    restored = bl.event_from_json(json.loads(json.dumps(bl.event_to_json(event))))
    assert restored == event
    accountant = dp_accounting.rdp.RdpAccountant()
    accountant.compose(event, 3)
    assert bl.composed_epsilon([event, restored, event], DELTA) == pytest.approx(
        accountant.get_epsilon(DELTA))


def test_unknown_event_type_is_refused():
    with pytest.raises(bl.BudgetLedgerError, match="unknown DP event"):
        bl.event_from_json({"type": "os"})


def test_runs_accumulate_until_the_lifetime_budget_refuses(tmp_path):
    path = str(tmp_path / "ledger.json")
    cost = gaussian_cost(3.0)  # about epsilon 1.56 alone at delta 1e-6
    lifetime = 3.0
    reservations = []
    with pytest.raises(bl.BudgetExhausted, match="budget of domain 'customers-eu' exhausted"):
        for _ in range(10):
            reservations.append(bl.reserve(path, domain="customers-eu",
                                           lifetime_epsilon=lifetime, cost=cost))
    # Composition is sub-additive: k runs cost less than k times one run.
    cumulative = [r.cumulative_epsilon for r in reservations]
    assert len(reservations) >= 2 and cumulative[-1] <= lifetime
    assert cumulative == sorted(cumulative)
    assert cumulative[-1] < len(reservations) * cost.epsilon
    ledger = bl.read_ledger(path)
    runs = ledger["domains"]["customers-eu"]["runs"]
    assert len(runs) == len(reservations)  # the refused run left no trace
    # Recomposing what the ledger holds gives the last cumulative figure.
    events = [bl.event_from_json(run["dp_event"]) for run in runs]
    assert bl.composed_epsilon(events, DELTA) == pytest.approx(cumulative[-1])
    # Another domain has its own budget.
    other = bl.reserve(path, domain="customers-us", lifetime_epsilon=lifetime, cost=cost)
    assert other.runs_before == 0 and other.cumulative_epsilon == pytest.approx(cost.epsilon)


def test_a_run_that_alone_exceeds_the_lifetime_is_refused(tmp_path):
    path = str(tmp_path / "ledger.json")
    with pytest.raises(bl.BudgetExhausted):
        bl.reserve(path, domain="d", lifetime_epsilon=0.5, cost=gaussian_cost(1.0))
    assert not (tmp_path / "ledger.json").exists()


def test_lifetime_of_a_domain_cannot_change_silently(tmp_path):
    path = str(tmp_path / "ledger.json")
    bl.reserve(path, domain="d", lifetime_epsilon=10, cost=gaussian_cost(3.0))
    with pytest.raises(bl.BudgetLedgerError, match="pass --lifetime_epsilon 10"):
        bl.reserve(path, domain="d", lifetime_epsilon=20, cost=gaussian_cost(3.0))


def test_status_is_recorded_and_spend_stays(tmp_path):
    path = str(tmp_path / "ledger.json")
    first = bl.reserve(path, domain="d", lifetime_epsilon=10, cost=gaussian_cost(3.0))
    bl.set_status(path, "d", first.run_id, "failed")
    second = bl.reserve(path, domain="d", lifetime_epsilon=10, cost=gaussian_cost(3.0))
    runs = bl.read_ledger(path)["domains"]["d"]["runs"]
    assert [r["status"] for r in runs] == ["failed", "reserved"]
    assert second.cumulative_epsilon_before == pytest.approx(first.run_epsilon)


@pytest.mark.parametrize("text, message", [
    ("{not json", "not valid JSON"), (json.dumps({"runs": []}), "not a dpsynth budget ledger")])
def test_corrupt_ledger_is_one_line(tmp_path, text, message):
    path = tmp_path / "ledger.json"
    path.write_text(text)
    with pytest.raises(bl.BudgetLedgerError, match=message):
        bl.reserve(str(path), domain="d", lifetime_epsilon=10, cost=gaussian_cost(3.0))


# Two runs that each fit the budget but not together: exactly one may reserve.
RACE_LIFETIME = 2.0


def race_cost() -> bl.RunCost:
    cost = gaussian_cost(3.0)
    assert cost.epsilon < RACE_LIFETIME < bl.composed_epsilon([cost.event] * 2, DELTA)
    return cost


def race_in_threads(path, *, threads=2, lifetime=RACE_LIFETIME, timeout=30.0) -> list:
    """Reserves race_cost() from several threads at once; "ok" or "refused" per thread."""
    outcomes = []

    def attempt():
        try:
            bl.reserve(path, domain="d", lifetime_epsilon=lifetime, cost=race_cost())
            outcomes.append("ok")
        except bl.BudgetExhausted:
            outcomes.append("refused")

    workers = [threading.Thread(target=attempt) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout)
    return sorted(outcomes)


def _reserve_in_process(path, barrier, results):
    barrier.wait()
    try:
        bl.reserve(path, domain="d", lifetime_epsilon=RACE_LIFETIME, cost=race_cost())
        results.put("ok")
    except bl.BudgetExhausted:
        results.put("refused")


def test_two_racing_processes_cannot_both_spend_the_last_budget(tmp_path):
    path = str(tmp_path / "ledger.json")
    context = multiprocessing.get_context("fork")
    barrier, results = context.Barrier(2), context.Queue()
    workers = [context.Process(target=_reserve_in_process, args=(path, barrier, results))
               for _ in range(2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
        assert worker.exitcode == 0
    outcomes = sorted(results.get(timeout=5) for _ in workers)
    assert outcomes == ["ok", "refused"]
    assert len(bl.read_ledger(path)["domains"]["d"]["runs"]) == 1


def test_the_lock_holds_a_racing_thread_until_the_first_has_written(tmp_path, monkeypatch):
    """Both threads read the ledger at the same moment unless the lock serialises them."""
    path = str(tmp_path / "ledger.json")
    store_read = bl.LocalLedgerStore.read

    def slow_read(self):
        state = store_read(self)
        threading.Event().wait(0.3)  # give the other thread time to barge in
        return state

    monkeypatch.setattr(bl.LocalLedgerStore, "read", slow_read)
    assert race_in_threads(path) == ["ok", "refused"]
    assert len(bl.read_ledger(path)["domains"]["d"]["runs"]) == 1


# ------------------------------------------------------------- through `dpsynth run`


@pytest.fixture(scope="module")
def reviews(tmp_path_factory):
    return write_reviews_csv(tmp_path_factory.mktemp("data") / "reviews.csv")


def ledger_args(ledger, lifetime):
    return ["--clustering", "uniform", "--aggregator", "mean", "--clip", "0.5",
            "--histogram_noise", "8", "--budget_ledger", str(ledger),
            "--lifetime_epsilon", str(lifetime), "--privacy_unit_domain", "customers-eu"]


def test_recurring_runs_report_cumulative_cost_and_the_last_is_refused(tmp_path, reviews,
                                                                       capsys):
    ledger = tmp_path / "ledger.json"
    lifetime = 1.5  # this configuration costs epsilon 1.29; two such runs compose to more
    first = run(tiny_args(reviews, tmp_path / "day1", *ledger_args(ledger, lifetime)),
                say=lambda _: None)
    report = json.loads((tmp_path / "day1" / "privacy_report.json").read_text())
    budget = report["lifetime_budget"]
    assert budget["this_run_epsilon"] == pytest.approx(report["formal_epsilon"])
    assert budget["cumulative_epsilon"] == pytest.approx(report["formal_epsilon"])
    assert budget["earlier_runs"] == 0 and first["cumulative_epsilon"] == budget["cumulative_epsilon"]
    assert "Lifetime budget of domain customers-eu" in \
        (tmp_path / "day1" / "privacy_report.md").read_text()
    run_epsilon = report["formal_epsilon"]
    assert lifetime > run_epsilon
    state = json.loads(ledger.read_text())
    assert [r["status"] for r in state["domains"]["customers-eu"]["runs"]] == ["completed"]

    code = cli.main(["run", *tiny_args(reviews, tmp_path / "day2", *ledger_args(ledger, lifetime))])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "budget of domain 'customers-eu' exhausted" in err
    assert not (tmp_path / "day2" / "synthetic-00000-of-00001.jsonl").exists()
    assert len(json.loads(ledger.read_text())["domains"]["customers-eu"]["runs"]) == 1


def test_a_bigger_lifetime_shows_the_second_run_cumulative(tmp_path, reviews):
    ledger = tmp_path / "ledger.json"
    for day in ("day1", "day2"):
        run(tiny_args(reviews, tmp_path / day, *ledger_args(ledger, 100)), say=lambda _: None)
    first, second = (json.loads((tmp_path / d / "privacy_report.json").read_text())
                     for d in ("day1", "day2"))
    assert second["lifetime_budget"]["earlier_runs"] == 1
    assert second["lifetime_budget"]["cumulative_epsilon_before_this_run"] == pytest.approx(
        first["lifetime_budget"]["cumulative_epsilon"])
    # Two runs compose to less than the sum of their costs, more than either.
    total = second["lifetime_budget"]["cumulative_epsilon"]
    assert second["formal_epsilon"] < total < 2 * second["formal_epsilon"]


@pytest.mark.parametrize("extra, message", [
    (["--budget_ledger", "x.json"], "go together"),
    (["--budget_ledger", "x.json", "--lifetime_epsilon", "0", "--privacy_unit_domain", "d"],
     "--lifetime_epsilon must be > 0"),
    (["--budget_ledger", "x.json", "--lifetime_epsilon", "5", "--privacy_unit_domain", "a b"],
     "--privacy_unit_domain 'a b'"),
])
def test_ledger_option_mistakes_are_one_line(tmp_path, reviews, capsys, extra, message):
    code = cli.main(["run", *tiny_args(reviews, tmp_path / "out"), *extra])
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err and len(err.splitlines()) == 1


def test_date_placeholder_in_input_and_output(tmp_path):
    (tmp_path / "exports" / "2026-11-20").mkdir(parents=True)
    write_reviews_csv(tmp_path / "exports" / "2026-11-20" / "part-0.csv", n=24)
    run(tiny_args(tmp_path / "exports" / "{date}" / "*.csv", tmp_path / "out" / "{date}",
                  "--clustering", "uniform", "--run_date", "2026-11-20"), say=lambda _: None)
    assert (tmp_path / "out" / "2026-11-20" / "privacy_report.json").exists()
    assert not list((tmp_path / "out" / "2026-11-20").glob(".staging-*"))


def test_ledger_in_a_missing_folder_is_one_line(tmp_path):
    with pytest.raises(bl.BudgetLedgerError, match="folder of --budget_ledger .* does not exist"):
        bl.reserve(str(tmp_path / "nope" / "ledger.json"), domain="d", lifetime_epsilon=10,
                   cost=gaussian_cost(3.0))


def test_two_racing_dpsynth_runs_exactly_one_runs(tmp_path, reviews):
    """Two `dpsynth run` processes started together over one domain whose lifetime budget
    fits one run: one writes its outputs, the other exits 2 with one line and writes none."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    ledger = tmp_path / "ledger.json"
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root)}
    processes = [subprocess.Popen(
        [sys.executable, "-m", "beam_pipeline.cli", "run",
         *tiny_args(reviews, tmp_path / name, *ledger_args(ledger, 1.5))],
        cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for name in ("a", "b")]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in processes]
    for process in processes:
        process.stdout.close()
        process.stderr.close()
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], results
    loser_err = next(err for code, err in results if code == 2).strip().splitlines()
    assert loser_err == [loser_err[-1]], loser_err
    assert loser_err[-1].startswith("dpsynth: error: privacy budget of domain 'customers-eu'")
    finished = [name for name in ("a", "b")
                if (tmp_path / name / "synthetic-00000-of-00001.jsonl").exists()]
    assert len(finished) == 1
    runs = json.loads(ledger.read_text())["domains"]["customers-eu"]["runs"]
    assert [r["status"] for r in runs] == ["completed"]


def test_median_ptr_runs_compose_their_tests_and_sum_their_deltas(tmp_path):
    """A median_ptr run records a randomized-response event for its stability test and
    the delta the test spends; the domain's total converts at delta minus all of them."""
    from transforms import accounting, median_ptr

    ptr = median_ptr.PtrSettings.for_run(bound=0.5, svt_epsilon=2.0, fallback="mean",
                                         max_tokens=16, delta=DELTA / 2)
    ledger = accounting.PrivacyLedger(delta=DELTA)
    ledger.record_gaussian("clustering", noise_stddev=4.0)
    ledger.record_generation("generation", rule="median_ptr", clip=2.0, temperature=1.0,
                             max_private_tokens=16, expected_batch_size=8, ptr=ptr)
    event = dp_accounting.ComposedDpEvent([e.event for e in ledger.entries])
    cost = bl.RunCost(event=event, epsilon=ledger.epsilon(), delta=DELTA,
                      mechanism_delta=ledger.mechanism_delta)
    path = str(tmp_path / "ledger.json")
    first = bl.reserve(path, domain="d", lifetime_epsilon=100.0, cost=cost)
    second = bl.reserve(path, domain="d", lifetime_epsilon=100.0, cost=cost)
    assert first.cumulative_epsilon == pytest.approx(ledger.epsilon())
    accountant = accounting.rdp_accountant()
    accountant.compose(event, 2)
    assert second.cumulative_epsilon == pytest.approx(
        accountant.get_epsilon(DELTA - 2 * ledger.mechanism_delta))
    # Two tests of delta/2 each use the whole delta: a third run cannot be converted.
    with pytest.raises(bl.BudgetExhausted, match="stability tests already spend delta"):
        bl.reserve(path, domain="d", lifetime_epsilon=100.0, cost=cost)
