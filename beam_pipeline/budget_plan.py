"""Meeting a stated epsilon: the parameters the user left unset are calibrated to it.

Beam-free: it reads option values and calls the calibration helpers of the accounting
module. The target is split between the stages by shares of epsilon: every stage but
the last is calibrated alone to its share of the target; the last stage (generation,
Private Evolution's votes, or the embeddings release when nothing else runs) is then
calibrated with everything before it composed, so it takes what is left and the total
meets the target exactly. Renyi composition is sub-additive, so the last stage gets at
least (1 - the other shares) of the target.
"""

from __future__ import annotations

import dataclasses

from mechanisms import accounting

# Without --target_epsilon a run still gets a formal guarantee worth signing: the
# parameters left unset are calibrated to this epsilon. Settings the user gave that cost
# more are honoured, and the plan says loudly that the run costs more.
DEFAULT_TARGET_EPSILON = 10.0
# The median rule's clip when nothing calibrates it: its formal worst case (LS = 2c) is
# vacuous at any clip that leaves the text readable, so it is chosen for the text, and
# the plan shows the formal figure beside it.
UNCALIBRATED_MEDIAN_CLIP = 10.0

RECORD_CAP, KMEANS, CLUSTERING, EMBEDDINGS = "record_cap", "kmeans", "clustering", "embeddings"
GENERATION, VOTES = "generation", "votes"
# Shares of the target for every stage that is not the last one. The clustering
# histogram is one release and is cheap; DP k-means is 2T releases; the embeddings'
# three statistics get a fifth, as their noise is added to d-dimensional sums.
DEFAULT_SPLIT = {RECORD_CAP: 0.02, KMEANS: 0.2, CLUSTERING: 0.1, EMBEDDINGS: 0.2}
SPLIT_STAGES = tuple(DEFAULT_SPLIT)
# Values of the options a run does not charge (e.g. the histogram noise of Private
# Evolution), which its configuration objects still carry.
UNUSED_DEFAULTS = {"max_records_noise": 10.0, "histogram_noise": 2.0, "kmeans_sum_noise": 4.0,
                   "kmeans_count_noise": 4.0, "pe_vote_noise": 10.0,
                   "embeddings_count_noise": 4.0, "embeddings_sum_noise": 4.0, "clip": 10.0}

LOGIT_AGGREGATION, PRIVATE_EVOLUTION = "logit_aggregation", "private_evolution"


class BudgetPlanError(ValueError):
    """A target or split that cannot be met; one line that says what to change."""


class UnreachableTarget(BudgetPlanError):
    """No calibration meets the target with what the user set."""


@dataclasses.dataclass(frozen=True)
class BudgetChoice:
    """What the plan chose, and why, for printing before any data is read."""

    target: float
    target_stated: bool
    last_stage: str
    shares: dict                 # stage -> share of the target, for the calibrated stages
    chosen: dict                 # option name -> calibrated value
    given: dict                  # option name -> value the user set (budget-relevant ones)
    values: dict = dataclasses.field(repr=False, default_factory=dict)  # every value used
    # Why nothing was calibrated to the default target: it cannot be met with what was set.
    unmet: str | None = None

    def value(self, option: str):
        return self.values[option]


def parse_split(spec: str | None) -> dict:
    """'clustering=0.1,record_cap=0.05' over the default shares."""
    split = dict(DEFAULT_SPLIT)
    if not spec:
        return split
    for part in spec.split(","):
        name, equals, share = (item.strip() for item in part.partition("="))
        if not part.strip():
            continue
        if not equals or name not in DEFAULT_SPLIT:
            raise BudgetPlanError(
                f"--budget_split takes stage=share pairs with the stages "
                f"{', '.join(SPLIT_STAGES)} (the last stage gets what is left), got {part!r}")
        try:
            value = float(share)
        except ValueError:
            raise BudgetPlanError(f"--budget_split: the share of {name} is not a number: "
                                  f"{share!r}") from None
        if not 0 < value < 1:
            raise BudgetPlanError(f"--budget_split: the share of {name} must lie in (0, 1), "
                                  f"got {value:g}")
        split[name] = value
    return split


def choose(o) -> BudgetChoice:
    """Every budget-relevant value of the run, calibrated where the user set none.

    `o` is the DpSynthOptions view; None means "not set". A stated target that cannot be
    met is an error; the default one is not, since the user asked for no budget: the run
    then keeps the uncalibrated defaults and the plan says why, with its epsilon."""
    try:
        return _choose(o)
    except UnreachableTarget as error:
        if o.target_epsilon is not None:
            raise
        values = {option: getattr(o, option) if getattr(o, option) is not None else default
                  for option, default in UNUSED_DEFAULTS.items()}
        given = {option: getattr(o, option) for option in UNUSED_DEFAULTS
                 if getattr(o, option) is not None}
        return BudgetChoice(target=DEFAULT_TARGET_EPSILON, target_stated=False,
                            last_stage=_stages(o)[-1][0], shares={}, chosen={}, given=given,
                            values=values, unmet=str(error))


def _choose(o) -> BudgetChoice:
    target = o.target_epsilon if o.target_epsilon is not None else DEFAULT_TARGET_EPSILON
    split = parse_split(o.budget_split)
    stages = _stages(o)
    last = stages[-1][0]
    shares = {name: split[name] for name, _ in stages[:-1]}
    if sum(shares.values()) >= 1:
        raise BudgetPlanError(
            f"--budget_split gives {', '.join(f'{k} {v:g}' for k, v in shares.items())}: "
            f"together at least 1, leaving nothing for {last}")
    values, chosen, given = {}, {}, {}
    for name, options in stages:
        for option, _ in options:
            value = getattr(o, option)
            if value is not None:
                values[option] = given[option] = value
    for name, options in stages[:-1]:
        unset = [(option, releases) for option, releases in options if option not in values]
        if not unset:
            shares.pop(name)
            continue
        fixed = _multipliers([(values[option], releases) for option, releases in options
                              if option in values])
        sigma = _noise(target * shares[name], o.delta, unset, fixed,
                       f"the noise you set for {name} already costs its share of the target, "
                       f"epsilon {target * shares[name]:.3g}: raise that noise or its "
                       f"--budget_split share")
        for option, _ in unset:
            values[option] = chosen[option] = sigma
    earlier = _multipliers([(values[option], releases) for _, options in stages[:-1]
                            for option, releases in options])
    _choose_last(o, last, stages[-1][1], target, earlier, values, chosen)
    for option, default in UNUSED_DEFAULTS.items():
        if option not in values:
            values[option] = getattr(o, option) if getattr(o, option) is not None else default
    return BudgetChoice(target=target, target_stated=o.target_epsilon is not None,
                        last_stage=last, shares=shares, chosen=chosen, given=given,
                        values=values)


def _stages(o) -> list:
    """(stage, [(noise option, releases of sensitivity 1)]) in the order they are charged,
    the last one being the stage that takes what is left. Mirrors plan.plan_ledger."""
    stages = []
    if o.max_records is not None:
        stages.append((RECORD_CAP, [("max_records_noise", 1)]))
    kmeans = [("kmeans_sum_noise", o.kmeans_rounds), ("kmeans_count_noise", o.kmeans_rounds)]
    embeddings = [("embeddings_count_noise", 1), ("embeddings_sum_noise", 2)]
    if o.method == LOGIT_AGGREGATION:
        if o.clustering == "dp_kmeans":
            stages.append((KMEANS, kmeans))
        stages.append((CLUSTERING, [("histogram_noise", 1)]))
        if o.output_embeddings:
            stages.append((EMBEDDINGS, embeddings))
        stages.append((GENERATION, [("clip", 0)]))
        return stages
    if o.output_embeddings and o.clustering == "dp_kmeans":
        stages.append((KMEANS, kmeans))
    if o.method == PRIVATE_EVOLUTION:
        if o.output_embeddings:
            stages.append((EMBEDDINGS, embeddings))
        stages.append((VOTES, [("pe_vote_noise", o.pe_rounds)]))
    else:
        stages.append((EMBEDDINGS, embeddings))
    return stages


def _choose_last(o, last, options, target, earlier, values, chosen) -> None:
    if last == GENERATION:
        if values.get("clip") is None:
            clip = _calibrated_clip(o, target, earlier)
            values["clip"] = clip
            if clip is not None:
                chosen["clip"] = clip
            else:
                values["clip"] = UNCALIBRATED_MEDIAN_CLIP
        return
    unset = [(option, releases) for option, releases in options if option not in values]
    if unset:
        fixed = earlier + _multipliers([(values[option], releases)
                                        for option, releases in options if option in values])
        sigma = _noise(target, o.delta, unset, fixed,
                       f"the stages before {last} already cost epsilon {target:g} or more: "
                       f"raise the noise you set, or the target")
        for option, _ in unset:
            values[option] = chosen[option] = sigma


def _calibrated_clip(o, target, earlier) -> float | None:
    """The clip that meets the target; None for the median without a stated target."""
    s, tau = o.batch_size, o.temperature
    cap = o.max_new_tokens
    if o.public_tokens and o.max_private_tokens:
        cap = min(o.max_private_tokens, o.max_new_tokens)
    try:
        if o.aggregator == "mean":
            return accounting.calibrate_mean_clip(
                target_epsilon=target, delta=o.delta, expected_batch_size=s, temperature=tau,
                max_private_tokens=cap,
                gate_noise_scale=o.gate_noise if o.public_tokens else None,
                gaussian_noise_multipliers=earlier)
        if o.aggregator == "median_ptr":
            if o.ptr_bound is not None:
                raise UnreachableTarget("--ptr_bound without --clip: set --clip too, or drop "
                                      "--ptr_bound so that both are calibrated (b = 2c/s)")
            return accounting.calibrate_median_ptr_clip(
                target_epsilon=target, delta=o.delta, expected_batch_size=s, temperature=tau,
                max_private_tokens=cap, bound_ratio=2.0, svt_epsilon=o.ptr_svt_epsilon,
                fallback=o.ptr_fallback, gaussian_noise_multipliers=earlier)
    except accounting.PrivacyBudgetError:
        gate = ", the public-token gate (raise --gate_noise)" if o.public_tokens else ""
        test = (", the stability test (lower --ptr_svt_epsilon)"
                if o.aggregator == "median_ptr" else "")
        raise UnreachableTarget(
            f"epsilon {target:g} cannot be met at any clip: what does not depend on it "
            f"already costs that much: the noisy releases before generation (raise their "
            f"noise or lower their --budget_split share){gate}{test}") from None
    if o.target_epsilon is None:
        return None
    # The median is charged LS = 2c per token, i.e. the mean's cost with s = 1/2.
    median_clip = accounting.calibrate_mean_clip(
        target_epsilon=target, delta=o.delta, expected_batch_size=0.5, temperature=tau,
        max_private_tokens=cap, gate_noise_scale=o.gate_noise if o.public_tokens else None,
        gaussian_noise_multipliers=earlier)
    mean_clip = accounting.calibrate_mean_clip(
        target_epsilon=target, delta=o.delta, expected_batch_size=s, temperature=tau,
        max_private_tokens=cap, gate_noise_scale=o.gate_noise if o.public_tokens else None,
        gaussian_noise_multipliers=earlier)
    raise BudgetPlanError(
        f"the median rule is charged its worst case (LS = 2c) per token, so --target_epsilon "
        f"{target:g} leaves it --clip {median_clip:.3g}, which samples almost uniformly: use "
        f"--aggregator mean (--clip {mean_clip:.3g} at this target) or median_ptr, or set "
        f"--clip to accept the median's formal cost")


def _noise(target: float, delta: float, unset, fixed, unreachable: str) -> float:
    releases = sum(count for _, count in unset)
    try:
        return accounting.calibrate_gaussian_noise(
            target_epsilon=target, delta=delta, releases=releases,
            gaussian_noise_multipliers=fixed)
    except accounting.PrivacyBudgetError:
        raise UnreachableTarget(unreachable) from None


def _multipliers(noises) -> list:
    """One Gaussian noise multiplier per release (every release has L2 sensitivity 1)."""
    return [float(sigma) for sigma, count in noises for _ in range(count)]
