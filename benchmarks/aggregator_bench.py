"""How far each token rule's distribution lies from the non-private one, without generating.

    .venv/bin/python benchmarks/aggregator_bench.py            # SmolLM2, the documented run
    .venv/bin/python benchmarks/aggregator_bench.py --quick    # minutes, for a first look

Recording (the only part that runs the LM). Yelp records are grouped by category into
groups of --group_size seeds (the largest s). For each group, one continuation of --steps
tokens is drawn from softmax(unclipped mean of the group's logits / tau): the non-private
continuation. Every seed prompt and the group's public prompt (the template with empty
text) are then fed that same continuation (teacher forcing), and at every step the bench
keeps each member's logits on the public prompt's 50 most likely tokens. That is all a rule
ever reads: the top-k mask keeps the public top-k, and k <= 50.

The reference at each step is the NON-PRIVATE DISTRIBUTION of the batch: softmax of the
UNCLIPPED mean of its members' logits over the WHOLE vocabulary (not the members'
mixture), computed at recording time while the full logits are at hand. A group splits
into group_size / s batches of s members for each s.

Scoring. For each rule, formal epsilon, s and public top-k, with the clip calibrated to the
epsilon by mechanisms/accounting.py for --max_private_tokens private tokens per sequence:
- mean: softmax(mean of clipped logits / tau) over the kept tokens;
- median: the same on the coordinate-wise lower median, with the clip that meets the
  epsilon at the formal worst case 2c;
- median_ptr: the median while the stability test passes and the mean after it fails
  (b = 2c/s unless --ptr_bound_ratio says otherwise, the test at a quarter of the
  epsilon); its pass rate is the share of tokens drawn from the median;
- gate: the mean behind the public-token gate, whose noise is set so that the gate alone
  spends a quarter of the epsilon; its private share is the share of tokens that are not
  free public tokens.
A rule's token distribution is its marginal over the mechanism's own randomness (the
stability test, the gate) given the batch: a mixture of its branches, with the branch
probabilities estimated from --simulations runs of the sparse vector along the sequence.
The figures are KL(rule || reference) and the total variation distance, averaged over
every step of every batch. Two brackets with no epsilon: "public" (the public prompt's
own distribution on the kept tokens, what epsilon 0 gives) and "top-k only" (the
reference cut to the kept tokens, the best any rule can do under the mask).

Writes <output>/aggregator_bench.json, <output>/aggregator_bench.png and
<output>/recording.npz (rescore it with --from_recording), and prints the table and, for
each epsilon and k, the smallest s from which median_ptr's KL is below the mean's.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from beam_pipeline.demo import DEFAULT_INPUT, YELP_TEMPLATE  # noqa: E402

RULES = ("mean", "median", "median_ptr", "gate")
BRACKETS = ("public", "top-k only")
RECORDED_TOP = 50          # the largest public top-k the bench scores
PTR_BOUND_RATIO = 2.0      # b = 2 c / s, as compare_methods (--ptr_bound_ratio)
PTR_SVT_SHARE = 0.25       # the stability test's epsilon, a share of the target
GATE_SHARE = 0.25          # the gate's own epsilon, a share of the target
GATE_THRESHOLD = 0.5       # the pipeline's default --gate_threshold
# median_ptr beats the mean only by more than this much KL: both reach the top-k floor at
# large s and differ there by rounding.
CROSSOVER_MARGIN = 1e-3
LABEL_COLUMN = "label1"


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    if args.quick:
        args.groups, args.group_size, args.steps = 2, 16, 4
        args.sizes, args.simulations = "4,8,16", 50
    sizes = [int(s) for s in args.sizes.split(",")]
    if any(args.group_size % s for s in sizes):
        raise SystemExit(f"every s of --sizes must divide --group_size {args.group_size}")
    if args.steps > args.max_private_tokens:
        raise SystemExit("--steps cannot exceed --max_private_tokens: the accounting covers "
                         "at most that many private tokens per sequence")
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    started = time.time()
    if args.from_recording:
        recording = dict(np.load(args.from_recording))
    else:
        recording = record(args, sizes)
        np.savez_compressed(output / "recording.npz", **recording)
    recorded_seconds = time.time() - started
    epsilons = [float(e) for e in args.epsilons.split(",")]
    top_ks = [int(k) for k in args.top_ks.split(",")]
    rows = score(recording, sizes=sizes, epsilons=epsilons, top_ks=top_ks,
                 rules=args.rules.split(","), temperature=args.temperature,
                 delta=args.delta, max_private_tokens=args.max_private_tokens,
                 simulations=args.simulations, seed=args.seed,
                 ptr_bound_ratio=args.ptr_bound_ratio)
    crossover = crossovers(rows, epsilons, top_ks)
    wall = time.time() - started
    summary = {"settings": {**vars(args), "sizes": sizes, "epsilons": epsilons,
                            "top_ks": top_ks,
                            "seeds": int(recording["member_logits"].shape[0]
                                         * recording["member_logits"].shape[2]),
                            "reference": "softmax of the unclipped batch mean of logits over "
                                         "the whole vocabulary",
                            "distance": "KL(rule || reference) and total variation, mean "
                                        "over steps and batches"},
               "rows": rows, "crossover": crossover,
               "wall_seconds": {"recording": recorded_seconds, "total": wall}}
    (output / "aggregator_bench.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(table(rows, sizes))
    print(crossover_lines(crossover))
    plot(rows, sizes, epsilons, top_ks, output / "aggregator_bench.png")
    print(f"{summary['settings']['seeds']} seeds in {recording['member_logits'].shape[0]} "
          f"groups, {recording['member_logits'].shape[1]} steps; recording "
          f"{recorded_seconds:.0f} s, total {wall:.0f} s; {output / 'aggregator_bench.json'}")
    return 0


def _parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lm", default="smollm2-135m")
    parser.add_argument("--data", default=str(DEFAULT_INPUT))
    parser.add_argument("--groups", type=int, default=12,
                        help="groups of --group_size seeds, one continuation each")
    parser.add_argument("--group_size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=16, help="continuation tokens recorded")
    parser.add_argument("--sizes", default="4,8,16,32,64,128", help="batch sizes s")
    parser.add_argument("--epsilons", default="1,3,10")
    parser.add_argument("--top_ks", default="5,20,50")
    parser.add_argument("--rules", default=",".join(RULES))
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--max_private_tokens", type=int, default=32,
                        help="private tokens per sequence the clip is calibrated for "
                             "(compare_methods' --max_new_tokens)")
    parser.add_argument("--delta", type=float, default=1e-5)
    parser.add_argument("--ptr_bound_ratio", type=float, default=PTR_BOUND_RATIO,
                        help="median_ptr's proposed bound b = ratio * c / s (default 2)")
    parser.add_argument("--max_chars", type=int, default=500, help="seed text kept")
    parser.add_argument("--simulations", type=int, default=400,
                        help="runs of the sparse vector per batch for the branch shares")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true",
                        help="2 groups of 16 seeds, 4 steps, s in {4, 8, 16}")
    parser.add_argument("--from_recording", default=None,
                        help="rescore a recording.npz instead of running the LM")
    parser.add_argument("--output", default=str(REPO / "output" / "aggregator_bench"))
    return parser


# ------------------------------------------------------------------ recording


def _groups(path, *, groups, group_size, max_chars, seed):
    """[(label, [seed texts])]: each group one category, the most frequent first, in turn."""
    with open(path, newline="", encoding="utf-8") as handle:
        rows = [r for r in csv.DictReader(handle) if r["text"].strip()]
    by_label = {}
    for row in rows:
        by_label.setdefault(row[LABEL_COLUMN], []).append(row["text"][:max_chars])
    rng = np.random.default_rng(seed)
    chunks = {}
    for label, texts in sorted(by_label.items(), key=lambda item: -len(item[1])):
        order = rng.permutation(len(texts))
        chunks[label] = [[texts[i] for i in order[start:start + group_size]]
                         for start in range(0, len(texts) - group_size + 1, group_size)]
    chosen = []
    while len(chosen) < groups and any(chunks.values()):
        for label in list(chunks):
            if chunks[label] and len(chosen) < groups:
                chosen.append((label, chunks[label].pop(0)))
    if len(chosen) < groups:
        raise SystemExit(f"{path} holds only {len(chosen)} groups of {group_size} seeds of "
                         "one category")
    return chosen


def record(args, sizes) -> dict:
    """Teacher-forced logits of every group: {"member_logits" (G, T, group_size, 50),
    "public_logits" (G, T, 50), "reference_logp_s{s}" (G, T, group_size / s, 50)}; the 50
    columns are the public prompt's top tokens at that step, most likely first."""
    from offline_models.loading import load_causal_lm
    from transforms.generate import render_prompt

    lm = load_causal_lm(args.lm)
    rng = np.random.default_rng([args.seed, 1])
    members, public, references = [], [], {s: [] for s in sizes}
    for number, (label, texts) in enumerate(_groups(
            args.data, groups=args.groups, group_size=args.group_size,
            max_chars=args.max_chars, seed=args.seed)):
        began = time.time()
        prompts = [lm.encode(render_prompt(YELP_TEMPLATE, t, label)) for t in texts]
        prompts.append(lm.encode(render_prompt(YELP_TEMPLATE, "", label)))
        state = lm.start(prompts, args.steps)
        group_members, group_public, group_references = [], [], {s: [] for s in sizes}
        for step in range(args.steps):
            logits = np.asarray(state.logits, dtype=np.float64)
            seeds, public_row = logits[:-1], logits[-1]
            columns = np.argsort(-public_row)[:RECORDED_TOP]
            group_members.append(seeds[:, columns])
            group_public.append(public_row[columns])
            for s in sizes:
                batch_means = seeds.reshape(-1, s, seeds.shape[1]).mean(axis=1)
                group_references[s].append(
                    _log_softmax(batch_means / args.temperature)[:, columns])
            whole = _log_softmax(seeds.mean(axis=0) / args.temperature)
            token = int(rng.choice(whole.size, p=np.exp(whole - whole.max()) /
                                   np.exp(whole - whole.max()).sum()))
            if step + 1 < args.steps:
                lm.advance(state, [token] * len(prompts))
        members.append(group_members)
        public.append(group_public)
        for s in sizes:
            references[s].append(group_references[s])
        print(f"group {number + 1}/{args.groups} ({label}): {len(texts)} seeds, "
              f"{args.steps} steps, {time.time() - began:.0f} s", flush=True)
    recording = {"member_logits": np.asarray(members, dtype=np.float32),
                 "public_logits": np.asarray(public, dtype=np.float32)}
    for s in sizes:
        recording[f"reference_logp_s{s}"] = np.asarray(references[s], dtype=np.float32)
    return recording


def _log_softmax(values):
    values = np.asarray(values, dtype=np.float64)
    top = values.max(axis=-1, keepdims=True)
    return values - top - np.log(np.exp(values - top).sum(axis=-1, keepdims=True))


# -------------------------------------------------------------------- scoring


def calibrated_settings(rule, *, epsilon, s, temperature, delta, max_private_tokens,
                        ptr_bound_ratio=PTR_BOUND_RATIO):
    """{"clip", ...the rule's other settings}; None when the epsilon cannot be met."""
    from mechanisms import accounting, median_ptr

    tokens = max_private_tokens
    try:
        if rule == "mean":
            return {"clip": accounting.calibrate_mean_clip(
                target_epsilon=epsilon, delta=delta, expected_batch_size=s,
                temperature=temperature, max_private_tokens=tokens)}
        if rule == "median":
            return {"clip": accounting.calibrate_median_clip(
                target_epsilon=epsilon, delta=delta, temperature=temperature,
                max_private_tokens=tokens)}
        if rule == "median_ptr":
            svt_epsilon = PTR_SVT_SHARE * epsilon
            clip = accounting.calibrate_median_ptr_clip(
                target_epsilon=epsilon, delta=delta, expected_batch_size=s,
                temperature=temperature, max_private_tokens=tokens,
                bound_ratio=ptr_bound_ratio, svt_epsilon=svt_epsilon)
            ptr = median_ptr.PtrSettings.for_run(
                bound=ptr_bound_ratio * clip / s, svt_epsilon=svt_epsilon, fallback="mean",
                max_tokens=tokens, delta=delta * median_ptr.TEST_DELTA_SHARE)
            return {"clip": clip, "bound": ptr.bound, "noise_scale": ptr.noise_scale,
                    "threshold": ptr.threshold}
        if rule == "gate":
            noise = gate_noise_for(GATE_SHARE * epsilon, s=s, delta=delta,
                                   max_private_tokens=tokens)
            return {"clip": accounting.calibrate_mean_clip(
                target_epsilon=epsilon, delta=delta, expected_batch_size=s,
                temperature=temperature, max_private_tokens=tokens,
                gate_noise_scale=noise), "noise_scale": noise}
    except accounting.PrivacyBudgetError:
        return None
    raise ValueError(f"unknown rule {rule!r}")


def gate_noise_for(epsilon, *, s, delta, max_private_tokens):
    """The smallest gate noise sigma whose rounds alone cost at most `epsilon` at delta."""
    from mechanisms import accounting

    def cost(sigma):
        entry = accounting.gate_entry("gate", noise_scale=sigma, expected_batch_size=s,
                                      max_private_tokens=max_private_tokens)
        return accounting.events_epsilon([entry.event], delta)

    low, high = 1e-4, 1.0
    while cost(high) > epsilon:
        high *= 2.0
    for _ in range(40):
        middle = math.sqrt(low * high)
        low, high = (middle, high) if cost(middle) > epsilon else (low, middle)
    return high


def _softmax(values, temperature):
    x = values / temperature
    x = np.exp(x - x.max(axis=-1, keepdims=True))
    return x / x.sum(axis=-1, keepdims=True)


def _clip(logits, c):
    return np.maximum(-c, logits - logits.max(axis=-1, keepdims=True) + c)


def _distances(q, reference_logp):
    """(KL(q || p), TV(q, p)) per row; q lives on the kept columns, p on the vocabulary."""
    p = np.exp(reference_logp)
    with np.errstate(divide="ignore", invalid="ignore"):
        kl = np.where(q > 0, q * (np.log(q) - reference_logp), 0.0).sum(axis=-1)
    tv = 0.5 * (np.abs(q - p).sum(axis=-1) + np.clip(1.0 - p.sum(axis=-1), 0.0, None))
    return kl, tv


def _ptr_pass_shares(members, c, settings, rng, simulations):
    """((B, T) probability that the stability test is still passing at each step,
    (B, T) gamma)."""
    from mechanisms import median_ptr

    batches, steps = members.shape[0], members.shape[1]
    gamma = np.full((batches, steps), np.inf)
    # With b >= 2c no batch's median moves by more than b: the test has nothing to reject
    # (gamma is infinite) and the tokens are charged at b, the worst case.
    testable = settings["bound"] < 2 * c
    for b in range(batches if testable else 0):
        for t in range(steps):
            gamma[b, t] = median_ptr.distance_to_instability(
                _clip(members[b, t], c), c, settings["bound"])
    sigma = settings["noise_scale"]
    threshold = settings["threshold"] + rng.laplace(0.0, sigma, (simulations, batches))
    query = gamma[None] + rng.laplace(0.0, 2 * sigma, (simulations, batches, steps))
    alive = np.cumprod(query > threshold[..., None], axis=2)
    return alive.mean(axis=0), gamma


def _gate_private_shares(members, public, s, sigma, rng, simulations):
    """(B, T) probability that the gate spends a private token at each step."""
    # mechanisms.gate.gate_distance on every batch and step at once: (B, T).
    members_p = _softmax(members, 1.0).sum(axis=2) / s
    distance = np.abs(members_p - _softmax(public, 1.0)).sum(axis=-1)
    batches, steps = distance.shape
    threshold = GATE_THRESHOLD + rng.laplace(0.0, sigma, (simulations, batches))
    private = np.zeros((simulations, batches, steps))
    for t in range(steps):
        spend = distance[None, :, t] + rng.laplace(0.0, 2 * sigma,
                                                   (simulations, batches)) >= threshold
        private[:, :, t] = spend
        threshold = np.where(spend, GATE_THRESHOLD + rng.laplace(0.0, sigma, threshold.shape),
                             threshold)
    return private.mean(axis=0)


def score(recording, *, sizes, epsilons, top_ks, rules, temperature, delta,
          max_private_tokens, simulations, seed,
          ptr_bound_ratio=PTR_BOUND_RATIO) -> list[dict]:
    """One row per (rule, epsilon, k, s) and per (bracket, k, s)."""
    all_members = recording["member_logits"].astype(np.float64)    # (G, T, N, 50)
    all_public = recording["public_logits"].astype(np.float64)     # (G, T, 50)
    groups, steps, group_size, _ = all_members.shape
    rows = []
    for s in sizes:
        # (B, T, s, 50): batch b is members [j*s, (j+1)*s) of group g, b = g * (N/s) + j.
        members = all_members.reshape(groups, steps, group_size // s, s, -1)
        members = members.transpose(0, 2, 1, 3, 4).reshape(-1, steps, s, RECORDED_TOP)
        public = np.repeat(all_public, group_size // s, axis=0)
        reference = recording[f"reference_logp_s{s}"].astype(np.float64)
        reference = reference.transpose(0, 2, 1, 3).reshape(-1, steps, RECORDED_TOP)
        for k in top_ks:
            kept, kept_public, kept_reference = members[..., :k], public[..., :k], \
                reference[..., :k]
            brackets = {"public": _softmax(kept_public, temperature),
                        "top-k only": _softmax(kept_reference, 1.0)}
            for name, q in brackets.items():
                kl, tv = _distances(q, kept_reference)
                rows.append({"rule": name, "epsilon": None, "top_k": k, "s": s,
                             "kl": float(kl.mean()), "tv": float(tv.mean())})
            for epsilon in epsilons:
                for rule in rules:
                    rows.append(_score_rule(rule, epsilon, s, k, kept, kept_public,
                                            kept_reference, temperature=temperature,
                                            delta=delta, max_private_tokens=max_private_tokens,
                                            simulations=simulations, seed=seed,
                                            ptr_bound_ratio=ptr_bound_ratio))
    return rows


def _score_rule(rule, epsilon, s, k, members, public, reference, *, temperature, delta,
                max_private_tokens, simulations, seed, ptr_bound_ratio):
    row = {"rule": rule, "epsilon": epsilon, "top_k": k, "s": s}
    settings = calibrated_settings(rule, epsilon=epsilon, s=s, temperature=temperature,
                                   delta=delta, max_private_tokens=max_private_tokens,
                                   ptr_bound_ratio=ptr_bound_ratio)
    if settings is None:
        return dict(row, kl=None, tv=None, reason="the epsilon cannot be met")
    row.update(settings)
    c = settings["clip"]
    clipped = _clip(members, c)
    mean_q = _softmax(clipped.sum(axis=2) / s, temperature)
    rng = np.random.default_rng([seed, s, k, int(epsilon * 1000), RULES.index(rule)])
    if rule in ("median", "median_ptr"):
        median = np.sort(clipped, axis=2)[:, :, (s - 1) // 2]
        median_q = _softmax(median, temperature)
    if rule == "mean":
        q = mean_q
    elif rule == "median":
        q = median_q
    elif rule == "median_ptr":
        passing, gamma = _ptr_pass_shares(members, c, settings, rng, simulations)
        q = passing[..., None] * median_q + (1 - passing[..., None]) * mean_q
        # gamma against the threshold says why the test passes or not; None when b >= 2c
        # leaves nothing to test.
        finite = np.isfinite(gamma).all()
        row.update(pass_rate=float(passing.mean()),
                   gamma_median=float(np.median(gamma)) if finite else None,
                   gamma_p90=float(np.quantile(gamma, 0.9)) if finite else None)
    else:
        private = _gate_private_shares(members, public, s, settings["noise_scale"], rng,
                                       simulations)
        public_q = _softmax(public, 1.0)
        q = private[..., None] * mean_q + (1 - private[..., None]) * public_q
        row["private_share"] = float(private.mean())
    kl, tv = _distances(q, reference)
    row.update(kl=float(kl.mean()), tv=float(tv.mean()))
    return row


# --------------------------------------------------------------------- output


def _label(row):
    return row["rule"] + ("" if row["epsilon"] is None else f" @{row['epsilon']:g}")


def table(rows, sizes) -> str:
    """Per top-k: one line per rule and epsilon, KL / TV for each s; median_ptr's pass rate
    and the gate's private share in brackets."""
    lines = []
    for k in sorted({r["top_k"] for r in rows}):
        lines.append(f"\ntop-k {k}: KL(rule || non-private) / TV, by batch size s")
        lines.append(f"{'rule':18}" + "".join(f"{'s=' + str(s):>22}" for s in sizes))
        labels = list(dict.fromkeys(_label(r) for r in rows if r["top_k"] == k))
        for label in labels:
            cells = []
            for s in sizes:
                row = next(r for r in rows if r["top_k"] == k and r["s"] == s
                           and _label(r) == label)
                if row["kl"] is None:
                    cells.append("n/a")
                    continue
                extra = row.get("pass_rate", row.get("private_share"))
                cells.append(f"{row['kl']:.3f}/{row['tv']:.3f}"
                             + (f" ({extra:.2f})" if extra is not None else ""))
            lines.append(f"{label:18}" + "".join(f"{cell:>22}" for cell in cells))
    return "\n".join(lines)


def crossovers(rows, epsilons, top_ks) -> list[dict]:
    """For each epsilon and k: the smallest s from which median_ptr's KL stays below the
    mean's by more than CROSSOVER_MARGIN at every larger s (None when it never does)."""
    found = []
    for epsilon in epsilons:
        for k in top_ks:
            def kl(rule):
                return {r["s"]: r["kl"] for r in rows if r["rule"] == rule
                        and r["epsilon"] == epsilon and r["top_k"] == k}
            mean, ptr = kl("mean"), kl("median_ptr")
            sizes = sorted(s for s in mean if mean[s] is not None and ptr.get(s) is not None)
            beats = [ptr[s] < mean[s] - CROSSOVER_MARGIN for s in sizes]
            start = None
            for index in range(len(sizes)):
                if all(beats[index:]):
                    start = sizes[index]
                    break
            found.append({"epsilon": epsilon, "top_k": k, "median_ptr_beats_mean_from_s": start})
    return found


def crossover_lines(found) -> str:
    return "\n".join(
        ["\ncrossover: the smallest s from which median_ptr's KL stays below the mean's "
         f"(by more than {CROSSOVER_MARGIN:g})"]
        + [f"  epsilon {f['epsilon']:g}, top-k {f['top_k']}: "
           + (f"s >= {f['median_ptr_beats_mean_from_s']}"
              if f["median_ptr_beats_mean_from_s"] is not None else "never in this range")
           for f in found])


def plot(rows, sizes, epsilons, top_ks, path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(len(epsilons), len(top_ks), sharex=True, sharey=True,
                                figsize=(4 * len(top_ks), 3 * len(epsilons)), squeeze=False)
    for i, epsilon in enumerate(epsilons):
        for j, k in enumerate(top_ks):
            axis = axes[i][j]
            for rule in (*RULES, *BRACKETS):
                points = [(r["s"], r["kl"]) for r in rows
                          if r["rule"] == rule and r["top_k"] == k and r["kl"] is not None
                          and r["epsilon"] in (epsilon, None)]
                if points:
                    xs, ys = zip(*sorted(points))
                    axis.plot(xs, np.maximum(ys, 1e-4), marker="o", label=rule,
                              linestyle="--" if rule in BRACKETS else "-")
            axis.set_xscale("log", base=2)
            axis.set_yscale("log")
            axis.set_title(f"epsilon {epsilon:g}, top-k {k}", fontsize=9)
            if j == 0:
                axis.set_ylabel("KL(rule || non-private)")
            if i == len(epsilons) - 1:
                axis.set_xlabel("batch size s")
    axes[0][0].legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


if __name__ == "__main__":
    sys.exit(main())
