"""Privacy accounting: a ledger of the DP events one record takes part in.

The ledger lists, stage by stage, the mechanisms that can touch ONE record:
every clustering release, and the generation of the one batch that holds the
record (batches are disjoint, so generation composes in parallel across them).
Everything formal is composed by dp_accounting's RdpAccountant, which, unlike
the PLD accountant, takes zCDP events. The median rule's realised, data-
dependent cost is kept apart and reported as ex-post only (METHOD.md §4-§5,
docs/privacy.md).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Iterable, Mapping, Sequence

import dp_accounting
import numpy as np

from mechanisms import gate, median, median_ptr, token_rules

ADJACENCY = "adding or removing one privacy unit"
EX_POST_LABEL = ("ex-post (data-dependent, Ligett et al. 2017): the realised "
                 "cost of this run's data, NOT a formal (epsilon, delta) guarantee")


class PrivacyBudgetError(ValueError):
    """The configuration costs more than the target epsilon."""


def zcdp_epsilon_closed_form(rho: float, delta: float) -> float:
    """rho-zCDP => (rho + 2 sqrt(rho ln(1/delta)), delta)-DP (Bun and Steinke 2016).

    Kept for comparison: the RDP conversion the ledger uses is never looser.
    """
    if rho < 0 or not 0 < delta < 1:
        raise ValueError(f"Need rho >= 0 and 0 < delta < 1, got {rho}, {delta}.")
    return rho + 2.0 * math.sqrt(rho * math.log(1.0 / delta))


def _repeated(event: dp_accounting.DpEvent, count: int) -> dp_accounting.DpEvent:
    if count < 1:
        raise ValueError(f"A mechanism runs at least once, got count={count}.")
    return event if count == 1 else dp_accounting.SelfComposedDpEvent(event, count)


def pure_dp_event(epsilon: float) -> dp_accounting.DpEvent:
    """Any epsilon-DP mechanism, as binary randomized response at that epsilon.

    Every epsilon-DP pair of output distributions is a post-processing of binary
    randomized response's pair (Kairouz, Oh and Viswanath 2015), so that pair's
    Renyi curve bounds the mechanism at every order. It is capped at epsilon,
    where the zCDP view (epsilon^2/2 at every order) grows without bound.
    """
    if not epsilon > 0:
        raise ValueError(f"epsilon must be > 0, got {epsilon}.")
    return dp_accounting.RandomizedResponseDpEvent(
        noise_parameter=2.0 / (1.0 + math.exp(epsilon)), num_buckets=2)


def rdp_accountant() -> dp_accounting.rdp.RdpAccountant:
    # Adjacency is add-or-remove-one. The Gaussian and zCDP curves the ledger uses
    # do not depend on the accountant's relation; REPLACE_ONE only selects, for
    # `pure_dp_event`, the curve between binary randomized response's two output
    # distributions, which is the bound that event stands for under any adjacency.
    return dp_accounting.rdp.RdpAccountant(
        neighboring_relation=dp_accounting.NeighboringRelation.REPLACE_ONE)


def events_epsilon(events: Iterable[dp_accounting.DpEvent], delta: float) -> float:
    """Epsilon at `delta` of `events` composed by the ledger's Renyi accountant."""
    accountant = rdp_accountant()
    for event in events:
        accountant.compose(event)
    return float(accountant.get_epsilon(delta))


@dataclasses.dataclass(frozen=True)
class LedgerEntry:
    """One mechanism of one stage, as seen by a single record.

    `ex_post_replaceable` marks the median rule's data-independent worst case:
    the one entry whose realised, per-batch value the ex-post figure uses
    instead.
    """
    stage: str
    mechanism: str
    event: dp_accounting.DpEvent
    parameters: Mapping[str, Any]
    explanation: str
    ex_post_replaceable: bool = False
    delta: float = 0.0     # probability the entry's bound fails, added to the ledger's delta


@dataclasses.dataclass
class _BatchRecord:
    tokens: int
    private_tokens: int
    token_rhos: tuple[float, ...]
    median_tokens: int | None = None   # median_ptr: tokens sampled while the test passed
    test_failed: bool = False


def token_entry(stage: str, *, rule: str, clip: float, temperature: float,
                max_private_tokens: int,
                expected_batch_size: float | None = None) -> LedgerEntry:
    """The private tokens of one batch's sequence: at most r_max of them."""
    tokens = int(max_private_tokens)
    if rule == "mean":
        if expected_batch_size is None:
            raise ValueError("The mean rule needs the expected batch size s.")
        rho = token_rules.token_rho_mean(clip, expected_batch_size, temperature)
        return LedgerEntry(
            stage, "exponential mechanism on the clipped mean",
            _repeated(dp_accounting.ZCDpEvent(rho), tokens),
            {"clip_c": clip, "expected_batch_size_s": expected_batch_size,
             "temperature_tau": temperature, "max_private_tokens": tokens,
             "rho_per_token": rho},
            f"Each private token is sampled from softmax(a/tau), a = (1/s) sum of "
            f"logits clipped to [-c, c]. One record moves every score by at most "
            f"c/s = {clip / expected_batch_size:.4g}, so a token is "
            f"c^2/(2 s^2 tau^2) = {rho:.4g}-zCDP; a record is in one batch, whose "
            f"sequence has at most {tokens} private tokens.")
    if rule == "median":
        worst = median.median_worst_case_sensitivity(clip)
        rho = median.token_rho_median(worst, temperature)
        return LedgerEntry(
            stage, "exponential mechanism on the clipped median (worst case)",
            _repeated(dp_accounting.ZCDpEvent(rho), tokens),
            {"clip_c": clip, "temperature_tau": temperature,
             "max_private_tokens": tokens, "worst_case_sensitivity": worst,
             "rho_per_token": rho},
            f"Each private token is sampled from softmax(a/tau), a = the coordinate-"
            f"wise lower median of clipped logits. Without looking at the data, one "
            f"record can move a median from c to -c (LS = 2c), so a token is "
            f"2c^2/tau^2 = {rho:.4g}-zCDP; at most {tokens} private tokens per batch.",
            ex_post_replaceable=True)
    if rule == "median_ptr":
        raise ValueError("median_ptr has a test and a token entry: use median_ptr_entries.")
    raise ValueError(f"Unknown aggregation rule {rule!r}; use one of {token_rules.RULES}.")


def median_ptr_entries(stage: str, *, clip: float, temperature: float,
                       expected_batch_size: float, max_private_tokens: int,
                       ptr: median_ptr.PtrSettings) -> list[LedgerEntry]:
    """The median with propose-test-release: one sparse-vector test per sequence,
    tokens charged at the proposed bound b (or at the mean's cost after a failed
    test, whichever is larger), and the test's chance of passing at gamma = 0
    as delta (docs/privacy.md)."""
    tokens = int(max_private_tokens)
    svt_epsilon = ptr.svt_epsilon
    ptr_delta = ptr.delta(tokens)
    test = LedgerEntry(
        stage, "stability test (sparse vector, AboveThreshold)",
        pure_dp_event(svt_epsilon),
        {"proposed_bound_b": ptr.bound, "noise_scale_sigma": ptr.noise_scale,
         "threshold_T": ptr.threshold, "svt_epsilon": svt_epsilon,
         "max_private_tokens": tokens, "delta": ptr_delta},
        f"Before each token the distance gamma (edits until the median's local "
        f"sensitivity exceeds b = {ptr.bound:.4g}; it moves by at most 1) plus "
        f"Lap(2 sigma) is compared with T + Lap(sigma), T = {ptr.threshold:.4g}, "
        f"sigma = {ptr.noise_scale:.4g}; the first failure ends the test, so the whole "
        f"sequence costs one AboveThreshold, {svt_epsilon:.4g}-DP (accounted with the "
        f"Renyi curve of binary randomized response, which bounds every "
        f"{svt_epsilon:.4g}-DP mechanism). Passing while gamma = 0 has probability "
        f"{ptr_delta / tokens:.3g} per step, {ptr_delta:.3g} over {tokens} steps: "
        f"that is added to delta.",
        delta=ptr_delta)
    rho_bound = median.token_rho_median(ptr.bound, temperature)
    rho_mean = (token_rules.token_rho_mean(clip, expected_batch_size, temperature)
                if ptr.fallback == "mean" else 0.0)
    rho = max(rho_bound, rho_mean)
    after = ("the clipped mean (c/s = "
             f"{clip / expected_batch_size:.4g}, {rho_mean:.4g}-zCDP a token)"
             if ptr.fallback == "mean" else "nothing (the sequence stops)")
    sampled = LedgerEntry(
        stage, "exponential mechanism on the clipped median, sensitivity tested",
        _repeated(dp_accounting.ZCDpEvent(rho), tokens),
        {"clip_c": clip, "temperature_tau": temperature, "proposed_bound_b": ptr.bound,
         "fallback": ptr.fallback, "expected_batch_size_s": expected_batch_size,
         "max_private_tokens": tokens, "rho_per_token": rho},
        f"While the test passes, a token is sampled from softmax(median/tau) and one "
        f"record moves every score by at most b, so it is b^2/(2 tau^2) = "
        f"{rho_bound:.4g}-zCDP; after a failure the sequence uses {after}. Whatever step "
        f"the failure comes at, each of the at most {tokens} tokens costs at most "
        f"{rho:.4g}-zCDP.")
    return [test, sampled]


def gate_entry(stage: str, *, noise_scale: float, expected_batch_size: float,
               max_private_tokens: int) -> LedgerEntry:
    """The public-token gate of one batch's sequence: one round per private token."""
    tokens = int(max_private_tokens)
    rho = gate.gate_rho_per_private_token(noise_scale, expected_batch_size)
    return LedgerEntry(
        stage, "sparse vector gate (AboveThreshold)",
        _repeated(dp_accounting.ZCDpEvent(rho), tokens),
        {"noise_scale_sigma": noise_scale,
         "expected_batch_size_s": expected_batch_size,
         "max_private_tokens": tokens, "rho_per_private_token": rho},
        f"Before each token a noisy distance d + Lap(2 sigma) is compared with a "
        f"threshold + Lap(sigma); d moves by at most 1/s, so each private token "
        f"closes a (2/(s sigma))-DP round: 2/(s sigma)^2 = {rho:.4g}-zCDP. Public "
        f"tokens cost nothing.")


class PrivacyLedger:
    """Named stages, their DP events, and the report they add up to."""

    def __init__(self, *, delta: float, privacy_unit: str = "one input record"):
        if not 0 < delta < 1:
            raise ValueError(f"delta must lie in (0, 1), got {delta}.")
        self.delta = float(delta)
        self.privacy_unit = privacy_unit
        self._entries: list[LedgerEntry] = []
        self._batches: dict[str, dict[Any, _BatchRecord]] = {}

    @property
    def mechanism_delta(self) -> float:
        """The part of delta the entries' own failure events take (median_ptr's test)."""
        return math.fsum(e.delta for e in self._entries)

    @property
    def accountant_delta(self) -> float:
        """What is left of delta for converting the composed RDP curve to epsilon."""
        left = self.delta - self.mechanism_delta
        if left <= 0:
            raise ValueError(
                f"The mechanisms' failure probability {self.mechanism_delta:.3g} uses up "
                f"delta = {self.delta:g}.")
        return left

    @property
    def entries(self) -> tuple[LedgerEntry, ...]:
        return tuple(self._entries)

    @property
    def stages(self) -> list[str]:
        return list(dict.fromkeys(e.stage for e in self._entries))

    # ---------------------------------------------------------------- record

    def record_gaussian(self, stage: str, *, noise_stddev: float,
                        l2_sensitivity: float = 1.0, count: int = 1,
                        released: str = "noisy count or sum") -> LedgerEntry:
        """Gaussian noise N(0, sigma^2) on `count` releases of L2 sensitivity Delta."""
        multiplier = float(noise_stddev) / float(l2_sensitivity)
        if not multiplier > 0:
            raise ValueError("Gaussian noise needs positive sigma and sensitivity.")
        entry = LedgerEntry(
            stage, "Gaussian mechanism",
            _repeated(dp_accounting.GaussianDpEvent(multiplier), count),
            {"noise_stddev": noise_stddev, "l2_sensitivity": l2_sensitivity,
             "noise_multiplier": multiplier, "releases": count},
            f"{count} x {released}, each with Gaussian noise of standard deviation "
            f"{noise_stddev:.4g} on a quantity one record moves by at most "
            f"{l2_sensitivity:.4g} in L2 (noise multiplier {multiplier:.4g}).")
        self._entries.append(entry)
        return entry

    def record_generation(self, stage: str, *, rule: str, clip: float,
                          temperature: float, max_private_tokens: int,
                          expected_batch_size: float | None = None,
                          gate_noise_scale: float | None = None,
                          ptr: median_ptr.PtrSettings | None = None) -> list[LedgerEntry]:
        """Formal cost of one batch's sequence, which is all a record takes part in.

        Record it once per run: the batches of every cluster and label are
        disjoint, so they compose in parallel.

        The median is charged its data-independent worst case here; the
        realised costs come in through `record_batch`.
        """
        if stage in self._batches or any(e.stage == stage for e in self._entries):
            raise ValueError(f"Stage {stage!r} is already in the ledger.")
        if rule == "median_ptr":
            if ptr is None or expected_batch_size is None:
                raise ValueError("median_ptr needs its PtrSettings and the expected batch "
                                 "size s.")
            if gate_noise_scale is not None:
                raise ValueError("median_ptr does not combine with the public-token gate.")
            entries = median_ptr_entries(stage, clip=clip, temperature=temperature,
                                         expected_batch_size=expected_batch_size,
                                         max_private_tokens=max_private_tokens, ptr=ptr)
        else:
            entries = [token_entry(stage, rule=rule, clip=clip, temperature=temperature,
                                   max_private_tokens=max_private_tokens,
                                   expected_batch_size=expected_batch_size)]
        if gate_noise_scale is not None:
            if expected_batch_size is None:
                raise ValueError("The public-token gate needs the expected batch size s.")
            entries.append(gate_entry(stage, noise_scale=gate_noise_scale,
                                      expected_batch_size=expected_batch_size,
                                      max_private_tokens=max_private_tokens))
        self._entries.extend(entries)
        self._batches[stage] = {}
        return entries

    def record_batch(self, stage: str, batch_id: Any, *, tokens: int,
                     private_tokens: int, token_rhos: Sequence[float] = (),
                     median_tokens: int | None = None, test_failed: bool = False) -> None:
        """What one batch's generation did: token counts and, for the median,
        the ex-post rho of each private token; for median_ptr, the tokens sampled
        from the median while the stability test passed and whether it failed."""
        if stage not in self._batches:
            raise KeyError(f"Record the generation stage {stage!r} first.")
        entries = [e for e in self._entries if e.stage == stage]
        cap = entries[0].parameters["max_private_tokens"]
        if not 0 <= private_tokens <= min(tokens, cap):
            raise ValueError(f"Batch {batch_id!r} used {private_tokens} private "
                             f"tokens of {tokens}; the cap is {cap}.")
        median = any(e.ex_post_replaceable for e in entries)
        if median and len(token_rhos) != private_tokens:
            raise ValueError("The median rule needs one ex-post rho per private token.")
        if not median and len(token_rhos):
            raise ValueError("Only the median rule has ex-post per-token costs.")
        tested = any(e.delta > 0 for e in entries)
        if tested != (median_tokens is not None):
            raise ValueError("median_tokens is given for, and only for, median_ptr stages.")
        if tested and not 0 <= median_tokens <= private_tokens:
            raise ValueError(f"Batch {batch_id!r}: {median_tokens} median tokens of "
                             f"{private_tokens} private ones.")
        self._batches[stage][batch_id] = _BatchRecord(
            int(tokens), int(private_tokens), tuple(float(r) for r in token_rhos),
            None if median_tokens is None else int(median_tokens), bool(test_failed))

    # ----------------------------------------------------------- formal cost

    def epsilon(self, stage: str | None = None) -> float:
        """Formal epsilon at the ledger's delta, of one stage or of all of them."""
        events = [e.event for e in self._entries if stage in (None, e.stage)]
        if stage is not None and not events:
            raise KeyError(f"No stage {stage!r} in the ledger.")
        return events_epsilon(events, self.accountant_delta)

    def require(self, target_epsilon: float) -> None:
        """Fails before any data is read if the formal cost exceeds the target."""
        spent = self.epsilon()
        if spent > target_epsilon:
            raise PrivacyBudgetError(
                f"This configuration costs epsilon = {spent:.4g} at delta = "
                f"{self.delta:g}, more than the target {target_epsilon:g}: lower the "
                f"clip or the private-token cap, or raise the temperature or the "
                f"noise.")

    # ------------------------------------------------------ ex-post (median)

    def ex_post(self) -> dict[str, Any]:
        """Per-stage distribution of the realised (ex-post) epsilon over batches.

        Each batch's figure composes every formal entry except the median's
        worst case, which is replaced by the batch's realised sum of token rhos.
        Never used by `epsilon`.
        """
        report: dict[str, Any] = {}
        for stage, batches in self._batches.items():
            if not any(e.ex_post_replaceable
                       for e in self._entries if e.stage == stage) or not batches:
                continue
            stage_events = [e.event for e in self._entries
                            if e.stage == stage and not e.ex_post_replaceable]
            other_events = [e.event for e in self._entries if e.stage != stage]
            per_stage, per_total = [], []
            for record in batches.values():
                realised = dp_accounting.ZCDpEvent(math.fsum(record.token_rhos))
                per_stage.append(events_epsilon(stage_events + [realised], self.accountant_delta))
                per_total.append(events_epsilon(other_events + stage_events + [realised],
                                          self.accountant_delta))
            report[stage] = {
                "label": EX_POST_LABEL,
                "batches": len(batches),
                "stage_epsilon": _distribution(per_stage),
                "total_epsilon": _distribution(per_total),
                "data_independent_stage_epsilon": self.epsilon(stage),
                "data_independent_total_epsilon": self.epsilon(),
            }
        return report

    # ---------------------------------------------------------------- report

    def tokens(self) -> dict[str, dict[str, int]]:
        result = {}
        for stage, batches in self._batches.items():
            total = sum(b.tokens for b in batches.values())
            private = sum(b.private_tokens for b in batches.values())
            result[stage] = {"batches": len(batches), "tokens": total,
                             "private_tokens": private, "public_tokens": total - private}
            if any(b.median_tokens is not None for b in batches.values()):
                result[stage]["median_tokens"] = sum(b.median_tokens
                                                     for b in batches.values())
                result[stage]["batches_whose_test_failed"] = sum(
                    b.test_failed for b in batches.values())
        return result

    def to_dict(self) -> dict[str, Any]:
        """The report as plain JSON-able data."""
        stages = []
        for stage in self.stages:
            stages.append({
                "stage": stage,
                "epsilon": self.epsilon(stage),
                "mechanisms": [{
                    "mechanism": e.mechanism,
                    "parameters": dict(e.parameters),
                    "epsilon_alone": events_epsilon([e.event], self.accountant_delta),
                    "delta": e.delta,
                    "dp_event": repr(e.event),
                    "explanation": e.explanation,
                } for e in self._entries if e.stage == stage],
            })
        return {
            "privacy_unit": self.privacy_unit,
            "adjacency": ADJACENCY,
            "delta": self.delta,
            "delta_of_mechanisms": self.mechanism_delta,
            "delta_of_accountant": self.accountant_delta if self._entries else self.delta,
            "accountant": "Renyi DP (dp_accounting.rdp.RdpAccountant)",
            "formal_epsilon": self.epsilon() if self._entries else 0.0,
            "stages": stages,
            "ex_post": self.ex_post(),
            "tokens": self.tokens(),
        }

    def to_markdown(self) -> str:
        """The same report in plain words."""
        report = self.to_dict()
        lines = [
            "# Privacy report", "",
            f"- Privacy unit: {self.privacy_unit}. Adjacent datasets differ by "
            f"{ADJACENCY}.",
            f"- Formal guarantee: ({report['formal_epsilon']:.4g}, {self.delta:g})-DP "
            f"for every unit, composing all stages below with the {report['accountant']}."]
        if self._batches:
            lines.append("- Generation is counted once: each unit is in exactly one batch, "
                         "and batches see disjoint records.")
        lines.append("- Stage epsilons compose to less than their sum, so they do not add "
                     "up to the total.")
        if report["delta_of_mechanisms"] > 0:
            lines.append(
                f"- delta = {self.delta:g} is split: {report['delta_of_mechanisms']:.3g} "
                f"for the chance that the median's stability test passes where it should "
                f"not, {report['delta_of_accountant']:.3g} for converting the composed "
                f"Renyi curve to epsilon.")
        lines.append("")
        for number, stage in enumerate(report["stages"], start=1):
            lines.append(f"{number}. **{stage['stage']}**: epsilon = "
                         f"{stage['epsilon']:.4g}.")
            for mechanism in stage["mechanisms"]:
                lines.append(f"   - {mechanism['mechanism']} (epsilon alone "
                             f"{mechanism['epsilon_alone']:.4g}): "
                             f"{mechanism['explanation']}")
        for stage, figures in report["ex_post"].items():
            total = figures["total_epsilon"]
            lines += ["", f"## {stage}: ex-post cost (not a formal guarantee)", "",
                      f"- {figures['label']}.",
                      f"- Over {figures['batches']} batch(es) the realised total epsilon "
                      f"is at most {total['max']:.4g} (median {total['p50']:.4g}, "
                      f"90th percentile {total['p90']:.4g}).",
                      f"- The data-independent bound, which is the formal one, is "
                      f"{figures['data_independent_total_epsilon']:.4g}."]
        for stage, counts in report["tokens"].items():
            lines += ["", f"## {stage}: tokens", "",
                      f"- {counts['tokens']} tokens over {counts['batches']} batch(es): "
                      f"{counts['private_tokens']} private, "
                      f"{counts['public_tokens']} public."]
            if "median_tokens" in counts:
                lines.append(
                    f"- {counts['median_tokens']} sampled from the median while the "
                    f"stability test passed; the test failed in "
                    f"{counts['batches_whose_test_failed']} batch(es).")
        return "\n".join(lines) + "\n"


def _distribution(values: Sequence[float]) -> dict[str, float]:
    array = np.asarray(values, dtype=np.float64)
    return {"min": float(array.min()), "p50": float(np.median(array)),
            "p90": float(np.quantile(array, 0.9)), "mean": float(array.mean()),
            "max": float(array.max())}


def calibrate_mean_clip(*, target_epsilon: float, delta: float,
                        expected_batch_size: float, temperature: float,
                        max_private_tokens: int, gate_noise_scale: float | None = None,
                        gaussian_noise_multipliers: Sequence[float] = (),
                        tol: float = 1e-6) -> float:
    """Largest clip c of the mean rule whose total formal epsilon is <= target.

    The Gaussian clustering releases (one noise multiplier each) and the gate,
    if any, do not depend on c and are charged first.
    """
    fixed = [dp_accounting.GaussianDpEvent(m) for m in gaussian_noise_multipliers]
    if gate_noise_scale is not None:
        fixed.append(gate_entry("gate", noise_scale=gate_noise_scale,
                                expected_batch_size=expected_batch_size,
                                max_private_tokens=max_private_tokens).event)

    def events(clip: float) -> dp_accounting.DpEvent:
        tokens = token_entry("generation", rule="mean", clip=clip,
                             temperature=temperature,
                             max_private_tokens=max_private_tokens,
                             expected_batch_size=expected_batch_size)
        return dp_accounting.ComposedDpEvent(fixed + [tokens.event])

    return _largest_clip(events, target_epsilon, delta, tol,
                         f"The stages that do not depend on the clip already cost epsilon >= "
                         f"{target_epsilon:g} at delta = {delta:g}: add noise to them.")


def _largest_clip(events, target_epsilon: float, delta: float, tol: float,
                  unreachable: str) -> float:
    """The largest clip whose composed `events(clip)` meet the target at delta."""
    if events_epsilon([events(tol)], delta) >= target_epsilon:
        raise PrivacyBudgetError(unreachable)
    return float(dp_accounting.calibrate_dp_mechanism(
        rdp_accountant, events, target_epsilon, delta,
        bracket_interval=dp_accounting.LowerEndpointAndGuess(tol, 1.0), tol=tol))


def calibrate_median_ptr_clip(*, target_epsilon: float, delta: float,
                              expected_batch_size: float, temperature: float,
                              max_private_tokens: int, bound_ratio: float,
                              svt_epsilon: float, fallback: str = "mean",
                              gaussian_noise_multipliers: Sequence[float] = (),
                              tol: float = 1e-6) -> float:
    """Largest clip c of median_ptr, with b = bound_ratio * c / s, whose total
    formal epsilon is <= target. The test takes its share of delta
    (median_ptr.TEST_DELTA_SHARE); epsilon is met at the rest."""
    s = float(expected_batch_size)
    fixed = [dp_accounting.GaussianDpEvent(m) for m in gaussian_noise_multipliers]
    test_delta = delta * median_ptr.TEST_DELTA_SHARE

    def events(clip: float) -> dp_accounting.DpEvent:
        ptr = median_ptr.PtrSettings.for_run(
            bound=bound_ratio * clip / s, svt_epsilon=svt_epsilon, fallback=fallback,
            max_tokens=max_private_tokens, delta=test_delta)
        entries = median_ptr_entries("generation", clip=clip, temperature=temperature,
                                     expected_batch_size=s,
                                     max_private_tokens=max_private_tokens, ptr=ptr)
        return dp_accounting.ComposedDpEvent(fixed + [e.event for e in entries])

    return _largest_clip(events, target_epsilon, delta - test_delta, tol,
                         f"The clustering and the stability test alone already cost epsilon "
                         f">= {target_epsilon:g}: add noise to the clustering or lower "
                         f"--ptr_svt_epsilon.")


def calibrate_gaussian_noise(*, target_epsilon: float, delta: float, releases: int,
                             gaussian_noise_multipliers: Sequence[float] = (),
                             tol: float = 1e-6) -> float:
    """Smallest noise multiplier sigma / Delta such that `releases` Gaussian releases with it,
    composed with the fixed ones, cost at most `target_epsilon` at delta.

    For methods that are Gaussian releases only: Private Evolution's vote rounds, the
    synthetic embeddings' statistics."""
    if releases < 1:
        raise ValueError(f"releases must be >= 1, got {releases}")
    fixed = [dp_accounting.GaussianDpEvent(m) for m in gaussian_noise_multipliers]

    def events(multiplier: float) -> dp_accounting.DpEvent:
        return dp_accounting.ComposedDpEvent(
            fixed + [_repeated(dp_accounting.GaussianDpEvent(multiplier), releases)])

    if fixed and events_epsilon(fixed, delta) >= target_epsilon:
        raise PrivacyBudgetError(f"The fixed releases already cost epsilon >= {target_epsilon:g} "
                                 f"at delta = {delta:g}.")
    return float(dp_accounting.calibrate_dp_mechanism(
        rdp_accountant, events, target_epsilon, delta,
        bracket_interval=dp_accounting.LowerEndpointAndGuess(tol, 1.0), tol=tol))


def calibrate_median_clip(*, target_epsilon: float, delta: float, temperature: float,
                          max_private_tokens: int,
                          gaussian_noise_multipliers: Sequence[float] = (),
                          tol: float = 1e-6) -> float:
    """Largest clip c of the plain median rule whose FORMAL epsilon is <= target.

    The formal charge takes the worst-case sensitivity 2c (the ex-post one is smaller and
    data-dependent), so the clip that meets a target is about 2s times smaller than the
    mean's at the same s: what the median costs when it must carry a guarantee without a
    stability test."""
    fixed = [dp_accounting.GaussianDpEvent(m) for m in gaussian_noise_multipliers]

    def events(clip: float) -> dp_accounting.DpEvent:
        tokens = token_entry("generation", rule="median", clip=clip, temperature=temperature,
                             max_private_tokens=max_private_tokens)
        return dp_accounting.ComposedDpEvent(fixed + [tokens.event])

    return _largest_clip(events, target_epsilon, delta, tol,
                         f"The stages that do not depend on the clip already cost epsilon >= "
                         f"{target_epsilon:g} at delta = {delta:g}: add noise to them.")
