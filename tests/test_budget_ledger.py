"""The lifetime budget ledger: composition, refusal, locking, and two runs racing for it."""

import dataclasses
import json
import multiprocessing
import threading

import dp_accounting
import pytest

from beam_pipeline import budget_ledger as bl
from beam_pipeline import cli
from beam_pipeline.run import run
from tests.pipeline_fixtures import FIXED_SECRET, tiny_args, write_reviews_csv
from mechanisms.randomness import new_run_secret

DELTA = 1e-6


def reserve(path, **kwargs):
    """bl.reserve with a fresh run secret, as a run without --run_secret has."""
    return bl.reserve(path, **{"secret": new_run_secret(), **kwargs})


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
            reservations.append(reserve(path, domain="customers-eu",
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
    other = reserve(path, domain="customers-us", lifetime_epsilon=lifetime, cost=cost)
    assert other.runs_before == 0 and other.cumulative_epsilon == pytest.approx(cost.epsilon)


def test_a_run_that_alone_exceeds_the_lifetime_is_refused(tmp_path):
    path = str(tmp_path / "ledger.json")
    with pytest.raises(bl.BudgetExhausted):
        reserve(path, domain="d", lifetime_epsilon=0.5, cost=gaussian_cost(1.0))
    assert not (tmp_path / "ledger.json").exists()


def test_lifetime_of_a_domain_cannot_change_silently(tmp_path):
    path = str(tmp_path / "ledger.json")
    reserve(path, domain="d", lifetime_epsilon=10, cost=gaussian_cost(3.0))
    with pytest.raises(bl.BudgetLedgerError, match="pass --lifetime_epsilon 10"):
        reserve(path, domain="d", lifetime_epsilon=20, cost=gaussian_cost(3.0))


def test_status_is_recorded_and_spend_stays(tmp_path):
    path = str(tmp_path / "ledger.json")
    first = reserve(path, domain="d", lifetime_epsilon=10, cost=gaussian_cost(3.0))
    bl.set_status(path, "d", first.run_id, "failed")
    second = reserve(path, domain="d", lifetime_epsilon=10, cost=gaussian_cost(3.0))
    runs = bl.read_ledger(path)["domains"]["d"]["runs"]
    assert [r["status"] for r in runs] == ["failed", "reserved"]
    assert second.cumulative_epsilon_before == pytest.approx(first.run_epsilon)


@pytest.mark.parametrize("text, message", [
    ("{not json", "not valid JSON"), (json.dumps({"runs": []}), "not a dpsynth budget ledger")])
def test_corrupt_ledger_is_one_line(tmp_path, text, message):
    path = tmp_path / "ledger.json"
    path.write_text(text)
    with pytest.raises(bl.BudgetLedgerError, match=message):
        reserve(str(path), domain="d", lifetime_epsilon=10, cost=gaussian_cost(3.0))


# Two runs that each fit the budget but not together: exactly one may reserve.
RACE_LIFETIME = 2.0


def race_cost() -> bl.RunCost:
    cost = gaussian_cost(3.0)
    assert cost.epsilon < RACE_LIFETIME < bl.composed_epsilon([cost.event] * 2, DELTA)
    return cost


def race_in_threads(path, *, threads=2, lifetime=RACE_LIFETIME, timeout=30.0,
                    secret=None) -> list:
    """Reserves race_cost() from several threads at once; "ok" or "refused" per thread.

    Each thread has a fresh secret unless `secret` gives them all the same one."""
    outcomes = []

    def attempt():
        try:
            reserve(path, domain="d", lifetime_epsilon=lifetime, cost=race_cost(),
                    secret=secret or new_run_secret())
            outcomes.append("ok")
        except (bl.BudgetExhausted, bl.SecretReused):
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
        reserve(path, domain="d", lifetime_epsilon=RACE_LIFETIME, cost=race_cost())
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


def slow_reads(monkeypatch):
    """Both threads read the ledger at the same moment unless the lock serialises them."""
    store_read = bl.LocalLedgerStore.read

    def slow_read(self):
        state = store_read(self)
        threading.Event().wait(0.3)  # give the other thread time to barge in
        return state

    monkeypatch.setattr(bl.LocalLedgerStore, "read", slow_read)


def test_the_lock_holds_a_racing_thread_until_the_first_has_written(tmp_path, monkeypatch):
    path = str(tmp_path / "ledger.json")
    slow_reads(monkeypatch)
    assert race_in_threads(path) == ["ok", "refused"]
    assert len(bl.read_ledger(path)["domains"]["d"]["runs"]) == 1


# ------------------------------------------------------------- one delta per domain


def test_a_domain_composes_every_run_at_the_delta_of_its_first(tmp_path):
    """Runs at delta 1e-6 fill the budget; at delta 0.2 the same spend looks small enough
    for more runs, whose total at 1e-6 would pass the lifetime. The domain refuses them."""
    path = str(tmp_path / "ledger.json")
    cost, lifetime = gaussian_cost(3.0), 3.0
    reservations = []
    with pytest.raises(bl.BudgetExhausted):
        for _ in range(10):
            reservations.append(reserve(path, domain="d", lifetime_epsilon=lifetime, cost=cost))
    events = [cost.event] * len(reservations)
    loose = bl.RunCost(event=cost.event, epsilon=bl.composed_epsilon([cost.event], 0.2),
                       delta=0.2)
    assert bl.composed_epsilon([*events, loose.event], 0.2) <= lifetime
    assert bl.composed_epsilon([*events, loose.event], DELTA) > lifetime
    ledger_bytes = (tmp_path / "ledger.json").read_bytes()
    with pytest.raises(bl.BudgetLedgerError,
                       match=r"composes domain 'd' at delta 1e-06; pass --delta 1e-06 \("):
        reserve(path, domain="d", lifetime_epsilon=lifetime, cost=loose)
    assert (tmp_path / "ledger.json").read_bytes() == ledger_bytes  # nothing recorded
    assert bl.read_ledger(path)["domains"]["d"]["delta"] == DELTA
    last = reservations[-1]
    assert last.delta == DELTA and last.to_report()["delta"] == DELTA
    assert last.cumulative_epsilon == pytest.approx(bl.composed_epsilon(events, DELTA))


def test_a_ledger_without_domain_deltas_takes_the_first_runs(tmp_path):
    path = tmp_path / "ledger.json"
    reserve(str(path), domain="d", lifetime_epsilon=100, cost=gaussian_cost(3.0))
    state = json.loads(path.read_text())
    del state["domains"]["d"]["delta"]       # as written before domains kept their delta
    path.write_text(json.dumps(state))
    looser = dataclasses.replace(gaussian_cost(3.0), delta=1e-5)
    with pytest.raises(bl.BudgetLedgerError, match=r"at delta 1e-06; pass --delta 1e-06"):
        reserve(str(path), domain="d", lifetime_epsilon=100, cost=looser)
    second = reserve(str(path), domain="d", lifetime_epsilon=100, cost=gaussian_cost(3.0))
    assert second.delta == DELTA
    assert json.loads(path.read_text())["domains"]["d"]["delta"] == DELTA


# ------------------------------------------------------------- run secrets


def test_a_ledger_refuses_a_run_secret_it_has_seen_and_never_stores_one(tmp_path):
    path = tmp_path / "ledger.json"
    secret = new_run_secret()
    first = reserve(str(path), domain="d", lifetime_epsilon=100, cost=gaussian_cost(3.0),
                    secret=secret)
    ledger_bytes = path.read_bytes()
    with pytest.raises(bl.SecretReused, match=f"run {first.run_id} of domain 'd' already "
                                              "used this --run_secret"):
        reserve(str(path), domain="d", lifetime_epsilon=100, cost=gaussian_cost(3.0),
                secret=secret)
    assert path.read_bytes() == ledger_bytes  # nothing recorded
    # Same noise over two domains is as bad: their releases' difference is noise-free.
    with pytest.raises(bl.SecretReused, match="of domain 'd' already used"):
        reserve(str(path), domain="other", lifetime_epsilon=100, cost=gaussian_cost(3.0),
                secret=secret)
    other_secret = new_run_secret()
    reserve(str(path), domain="d", lifetime_epsilon=100, cost=gaussian_cost(3.0),
            secret=other_secret)
    reserve(str(path), domain="other", lifetime_epsilon=100, cost=gaussian_cost(3.0))
    text = path.read_text()
    for used in (secret, other_secret):
        assert used not in text and used.upper() not in text
    runs = [run for domain in json.loads(text)["domains"].values() for run in domain["runs"]]
    digests = [run["secret_digest"] for run in runs]
    assert len(runs) == 3 and len(set(digests)) == 3
    # The digest is keyed by the domain: one secret leaves unrelated digests in two domains.
    assert bl.secret_digest(secret, "d") != bl.secret_digest(secret, "other")


def test_two_racing_runs_with_one_secret_cannot_both_reserve(tmp_path, monkeypatch):
    path = str(tmp_path / "ledger.json")
    slow_reads(monkeypatch)
    assert race_in_threads(path, lifetime=100, secret=new_run_secret()) == ["ok", "refused"]
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
    assert FIXED_SECRET not in ledger.read_text()
    assert state["domains"]["customers-eu"]["runs"][0]["secret_digest"] == bl.secret_digest(
        FIXED_SECRET, "customers-eu")

    code = cli.main(["run", *tiny_args(reviews, tmp_path / "day2", *ledger_args(ledger, lifetime),
                                       secret=new_run_secret())])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "budget of domain 'customers-eu' exhausted" in err
    assert not (tmp_path / "day2" / "synthetic-00000-of-00001.jsonl").exists()
    assert len(json.loads(ledger.read_text())["domains"]["customers-eu"]["runs"]) == 1


def test_a_bigger_lifetime_shows_the_second_run_cumulative(tmp_path, reviews):
    ledger = tmp_path / "ledger.json"
    for day in ("day1", "day2"):
        run(tiny_args(reviews, tmp_path / day, *ledger_args(ledger, 100), secret=new_run_secret()),
            say=lambda _: None)
    first, second = (json.loads((tmp_path / d / "privacy_report.json").read_text())
                     for d in ("day1", "day2"))
    assert second["lifetime_budget"]["earlier_runs"] == 1
    assert second["lifetime_budget"]["cumulative_epsilon_before_this_run"] == pytest.approx(
        first["lifetime_budget"]["cumulative_epsilon"])
    # Two runs compose to less than the sum of their costs, more than either.
    total = second["lifetime_budget"]["cumulative_epsilon"]
    assert second["formal_epsilon"] < total < 2 * second["formal_epsilon"]


def refused_run(tmp_path, reviews, capsys, *args, secret=FIXED_SECRET) -> str:
    """Runs `dpsynth run` expecting a refusal before the job; its one line of stderr."""
    code = cli.main(["run", *tiny_args(reviews, tmp_path / "out", *args, secret=secret)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert not (tmp_path / "out" / "synthetic-00000-of-00001.jsonl").exists()
    return err


def test_dpsynth_run_at_another_delta_than_its_domains_is_refused(tmp_path, reviews, capsys):
    ledger = tmp_path / "ledger.json"
    tighter = dataclasses.replace(gaussian_cost(3.0), delta=1e-7)
    reserve(str(ledger), domain="customers-eu", lifetime_epsilon=100, cost=tighter)
    ledger_bytes = ledger.read_bytes()
    err = refused_run(tmp_path, reviews, capsys, *ledger_args(ledger, 100))  # --delta 1e-6
    assert "composes domain 'customers-eu' at delta 1e-07; pass --delta 1e-07" in err
    assert ledger.read_bytes() == ledger_bytes


def test_dpsynth_run_with_a_run_secret_the_ledger_has_seen_is_refused(tmp_path, reviews,
                                                                       capsys):
    ledger = tmp_path / "ledger.json"
    earlier = reserve(str(ledger), domain="customers-eu", lifetime_epsilon=100,
                      cost=gaussian_cost(3.0), secret=FIXED_SECRET)
    ledger_bytes = ledger.read_bytes()
    err = refused_run(tmp_path, reviews, capsys, *ledger_args(ledger, 100))
    assert f"run {earlier.run_id} of domain 'customers-eu' already used this --run_secret" in err
    assert FIXED_SECRET not in err
    assert ledger.read_bytes() == ledger_bytes


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
        reserve(str(tmp_path / "nope" / "ledger.json"), domain="d", lifetime_epsilon=10,
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
         *tiny_args(reviews, tmp_path / name, *ledger_args(ledger, 1.5),
                    secret=new_run_secret())],
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
    from mechanisms import accounting
    from mechanisms import median_ptr

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
    first = reserve(path, domain="d", lifetime_epsilon=100.0, cost=cost)
    second = reserve(path, domain="d", lifetime_epsilon=100.0, cost=cost)
    assert first.cumulative_epsilon == pytest.approx(ledger.epsilon())
    accountant = accounting.rdp_accountant()
    accountant.compose(event, 2)
    assert second.cumulative_epsilon == pytest.approx(
        accountant.get_epsilon(DELTA - 2 * ledger.mechanism_delta))
    # Two tests of delta/2 each use the whole delta: a third run cannot be converted.
    with pytest.raises(bl.BudgetExhausted, match="stability tests already spend delta"):
        reserve(path, domain="d", lifetime_epsilon=100.0, cost=cost)
