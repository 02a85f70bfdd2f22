"""The privacy audit's measurements, Beam-free: canaries, their exposure in a synthetic
output, a membership-inference attack, and the empirical epsilon lower bound it implies.

Canaries. A canary is a phrase of `CANARY_WORDS` words drawn at random (with a seed) from
`CANARY_VOCABULARY`, a list of concrete, uncommon words, so that a synthetic text repeats a
canary's words only by copying them. Control canaries are drawn the same way and never
inserted: their exposure is the chance level to read the inserted ones against.

Exposure of a canary in the synthetic texts (words as in `memorisation.words`):
- verbatim: the longest run of consecutive canary words that some synthetic text repeats
  (`memorisation.CopyIndex`); exposed when it is at least `COPY_NGRAM` (8) words;
- near-verbatim: the longest common subsequence, in words, of the canary and the closest
  synthetic text, over the canary's length (1.0: every word, in order, possibly with other
  words between them); exposed at `NEAR_VERBATIM_RATIO` or more.

Membership inference. score(x) = the largest cosine similarity between the embedding of x
and the embedding of any synthetic text. A record scoring higher is guessed to be a member.
The AUC is the Mann-Whitney statistic (ties count one half): the probability that a random
member outscores a random non-member; 0.5 is chance.

Empirical epsilon (Jagielski et al. 2020, Nasr et al. 2021). An (epsilon, delta)-DP
mechanism bounds every membership test: TPR <= e^eps FPR + delta and
1 - FPR <= e^eps (1 - TPR) + delta. With Clopper-Pearson intervals on TPR and FPR at the
given confidence, a threshold t ("score >= t => member") gives a lower bound on epsilon,

    max( log((TPR_lo - delta) / FPR_hi),  log((1 - FPR_hi - delta) / (1 - TPR_lo)) ),

the conservative end of each interval, i.e. the smallest epsilon consistent with both.
The intervals hold for a threshold fixed before the scores are seen, not for the best of
many thresholds picked on the very scores they are measured on: on null scores (members
and non-members alike, 120 of each) that best bound came out positive in about 4% of runs
at 95% confidence and in about 30% at 80%, above the nominal 20%. So the members and the
non-members are each split in two by a seeded permutation of their positions, drawn
without looking at the scores (`split_halves`). The threshold is the one with the
largest bound on the selection half; the reported bound is that threshold's on the other,
measurement half alone, or 0 when it is not positive (or when no threshold gives a
positive bound on the selection half).

The price is sample size: the bound can never exceed what a perfect attack would show on
the measurement half (`ceiling`), about log(c / (1 - c)) with c = ((1 - confidence) / 2)
** (1 / m) for m members and m non-members measured. At 95% that is 2.76 for 120 + 120
scores (m = 60) and 3.28 for 200 + 200 (m = 100), where the whole sample would allow 3.47
and 3.98; 8 + 8 canaries (m = 4) allow no positive bound at all. It is a lower bound from
one run of one attack: a figure far below the claimed epsilon is the expected outcome, not
a contradiction.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from evaluation.memorisation import COPY_NGRAM, CopyIndex, words
from mechanisms.cluster import normalise_rows

CANARY_WORDS = 12
NEAR_VERBATIM_RATIO = 0.5
CONFIDENCE = 0.95

CANARY_VOCABULARY = tuple("""
abacus accordion acorn adder albatross alchemy almanac amber amethyst anchovy anvil
apricot aqueduct archipelago armadillo artichoke asteroid avalanche axolotl azalea
badger bagpipe balsa bamboo banjo barnacle basalt bassoon beetroot bellows bison
blizzard bobsled boomerang bramble brigantine bronze buffalo bugle burrow cactus
caldera camel canoe capybara caravan cardamom carousel cartographer cascade catapult
cauldron cedar chameleon chandelier chestnut chinchilla cinnamon citadel clarinet
cobalt cobblestone comet condor copper coral cormorant corridor cougar coyote crater
cricket crocus crossbow cuckoo cutlass cypress dagger dahlia dandelion delta dingo
dirigible dolphin dormouse dragonfly driftwood dromedary dulcimer dune eclipse eel
elderberry elk ember emerald emu escarpment falcon fennel ferret fjord flamingo flint
foghorn fossil foxglove gazelle geyser gherkin glacier goblet gondola gooseberry gorge
granite griffin gyroscope hammock harpoon harpsichord hawthorn hedgehog heron hibiscus
hickory hornet hourglass hyacinth ibis iceberg iguana indigo isthmus jackal jasmine
javelin jellyfish juniper kayak kelp kestrel kettledrum kiwi koala labyrinth ladle
lagoon lantern larch lava lemur lichen lighthouse limestone lobster locust loom lotus
lute lynx magnolia magpie mahogany malachite mammoth mandolin mangrove marmot marsh
meadow meteor mink minnow moat mongoose monsoon moose mosaic moth mulberry musket
narwhal nebula nectarine nightingale nutmeg oboe obsidian ocelot octopus okapi opal
orchid oriole osprey otter oyster paddle pagoda pangolin panther papyrus parchment
parsnip peacock pelican pendulum peninsula periscope persimmon pewter pheasant piccolo
pickaxe pigeon pinecone piranha plateau platypus plover plum porcupine prism puffin
pumice quail quartz quill quince raccoon rapier raven reef rhubarb rhinoceros saffron
salamander sandstone sapphire sardine satchel scarab scorpion sextant shale sherbet
shipwreck silo skylark sleigh sloth snorkel sorrel sparrow sphinx sponge squid
stalactite starling sturgeon sundial swallow sycamore tadpole tamarind tambourine
tangerine tapir telescope thimble thistle thunderbolt toad tortoise toucan trombone
trowel truffle tuba tulip tundra turbine turquoise turnip umbrella urchin vanilla
viaduct violin volcano vulture walnut walrus weasel whirlpool wicker willow windmill
wolverine wombat woodpecker xylophone yak yarrow zebra zeppelin zinnia
""".split())


# ----------------------------------------------------------------------------- canaries

def make_canaries(count: int, *, seed: int, avoid_texts: Sequence[str] = (),
                  length: int = CANARY_WORDS) -> list[str]:
    """`count` distinct phrases of `length` random words from CANARY_VOCABULARY.

    No two of them share a run of COPY_NGRAM words, and none shares one with `avoid_texts`
    (the real records), so any such run found later in a synthetic text came from a canary.
    """
    if count < 0 or length < 1:
        raise ValueError("count must be >= 0 and length >= 1")
    rng = np.random.default_rng([seed, 0xCA7A])
    n = min(COPY_NGRAM, length)
    chosen: list[str] = []
    seen_ngrams: set = set()
    avoid = list(avoid_texts)
    for _ in range(100):
        if len(chosen) == count:
            return chosen
        candidates = [" ".join(rng.choice(CANARY_VOCABULARY, size=length))
                      for _ in range(count - len(chosen))]
        # Candidates that share a run of n words with the real records are drawn again.
        clashing = set()
        if avoid:
            index = CopyIndex(candidates, avoid)
            clashing = {int(index.synthetic.doc_of[start]) for start, _ in index.shared(n)}
        for index, phrase in enumerate(candidates):
            tokens = words(phrase)
            grams = {tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)}
            if index in clashing or grams & seen_ngrams or len(grams) < len(tokens) - n + 1:
                continue
            seen_ngrams |= grams
            chosen.append(phrase)
    raise RuntimeError("could not draw distinct canaries")  # not reachable in practice


# ----------------------------------------------------------------------------- exposure

def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence of two word lists."""
    if not a or not b:
        return 0
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b, start=1):
            current.append(previous[j - 1] + 1 if x == y else max(previous[j], current[j - 1]))
        previous = current
    return previous[-1]


def canary_exposure(canaries: Sequence[str], synthetic_texts: Sequence[str], *,
                    copy_ngram: int = COPY_NGRAM,
                    near_verbatim_ratio: float = NEAR_VERBATIM_RATIO) -> list[dict]:
    """Per canary: the longest run of its words some synthetic text repeats, the best
    word-LCS ratio over synthetic texts (with that text's index), and both verdicts."""
    synthetic_words = [words(text) for text in synthetic_texts]
    synthetic_sets = [set(w) for w in synthetic_words]
    results = []
    for canary in canaries:
        canary_words = words(canary)
        longest = CopyIndex(list(synthetic_texts), [canary]).longest_shared()
        best, best_index = 0, None
        for index, (text_words, text_set) in enumerate(zip(synthetic_words, synthetic_sets)):
            # The LCS is at most the number of canary words the text contains at all.
            if sum(w in text_set for w in canary_words) <= best:
                continue
            length = lcs_length(canary_words, text_words)
            if length > best:
                best, best_index = length, index
        ratio = best / len(canary_words) if canary_words else 0.0
        results.append({
            "canary": canary,
            "longest_shared_run": longest["length"],
            "longest_run_synthetic_index": longest.get("synthetic_index"),
            "verbatim": longest["length"] >= copy_ngram,
            "lcs_words": best,
            "lcs_ratio": ratio,
            "lcs_synthetic_index": best_index,
            "near_verbatim": ratio >= near_verbatim_ratio,
        })
    return results


def exposure_summary(inserted: list[dict], control: list[dict], *, copy_ngram: int = COPY_NGRAM,
                     near_verbatim_ratio: float = NEAR_VERBATIM_RATIO) -> dict:
    def figures(rows):
        return {"count": len(rows),
                "verbatim": sum(r["verbatim"] for r in rows),
                "near_verbatim": sum(r["near_verbatim"] for r in rows),
                "longest_shared_run_max": max((r["longest_shared_run"] for r in rows), default=0),
                "lcs_ratio_max": max((r["lcs_ratio"] for r in rows), default=0.0),
                "lcs_ratio_mean": float(np.mean([r["lcs_ratio"] for r in rows])) if rows else 0.0}

    return {"verbatim_rule": f"a run of >= {copy_ngram} consecutive canary words in one "
                             "synthetic text",
            "near_verbatim_rule": f"the canary's words, in order, make up >= "
                                  f"{near_verbatim_ratio:.0%} of it in one synthetic text "
                                  "(longest common word subsequence)",
            "inserted": figures(inserted), "control": figures(control)}


# ----------------------------------------------------------------- membership inference

def similarity_scores(queries: np.ndarray, synthetic: np.ndarray, *, chunk: int = 1024
                      ) -> np.ndarray:
    """score(x) = max cosine similarity of x to any synthetic embedding (-1 without any)."""
    queries = _unit(np.asarray(queries, dtype=np.float64))
    synthetic = _unit(np.asarray(synthetic, dtype=np.float64))
    if not len(synthetic):
        return np.full(len(queries), -1.0)
    scores = [np.max(queries[start:start + chunk] @ synthetic.T, axis=1)
              for start in range(0, len(queries), chunk)]
    return np.concatenate(scores) if scores else np.zeros(0)


def _unit(vectors: np.ndarray) -> np.ndarray:
    if vectors.ndim != 2:
        vectors = vectors.reshape(len(vectors), -1)
    return normalise_rows(vectors)


def auc(member_scores: Sequence[float], non_member_scores: Sequence[float]) -> float | None:
    """P(member score > non-member score) + P(tie) / 2 (Mann-Whitney U over n_m n_n)."""
    from scipy.stats import rankdata

    members = np.asarray(member_scores, dtype=np.float64)
    others = np.asarray(non_member_scores, dtype=np.float64)
    if not len(members) or not len(others):
        return None
    ranks = rankdata(np.concatenate([members, others]))
    u = ranks[:len(members)].sum() - len(members) * (len(members) + 1) / 2
    return float(u / (len(members) * len(others)))


def clopper_pearson(successes, trials, confidence: float = CONFIDENCE):
    """The two-sided Clopper-Pearson interval (lower, upper) of a binomial proportion.
    Vectorised over `successes`."""
    from scipy.stats import beta

    x = np.asarray(successes, dtype=np.float64)
    n = float(trials)
    if n <= 0:
        raise ValueError("trials must be >= 1")
    alpha = 1.0 - confidence
    with np.errstate(invalid="ignore"):
        lower = np.where(x > 0, beta.ppf(alpha / 2, x, n - x + 1), 0.0)
        upper = np.where(x < n, beta.ppf(1 - alpha / 2, x + 1, n - x), 1.0)
    if lower.ndim == 0:
        return float(lower), float(upper)
    return lower, upper


def epsilon_bound(tpr_lower, fpr_upper, delta: float):
    """The epsilon lower bound of one threshold from its interval ends (see the module
    docstring); -inf where neither form applies. Vectorised."""
    tpr_lower = np.asarray(tpr_lower, dtype=np.float64)
    fpr_upper = np.asarray(fpr_upper, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        direct = np.where((tpr_lower - delta > 0) & (fpr_upper > 0),
                          np.log((tpr_lower - delta) / fpr_upper), -np.inf)
        mirror = np.where((1 - fpr_upper - delta > 0) & (1 - tpr_lower > 0),
                          np.log((1 - fpr_upper - delta) / (1 - tpr_lower)), -np.inf)
    return np.maximum(direct, mirror)


def split_halves(members: int, non_members: int, *, seed: int = 0) -> dict:
    """Positions of the selection and measurement halves of the members and of the
    non-members: a seeded permutation of positions, so the split never depends on the
    scores. Measurement takes the larger half of an odd count, as it sets the ceiling."""
    rng = np.random.default_rng([seed, 0x5E1EC7])
    halves = {}
    for group, count in (("members", members), ("non_members", non_members)):
        order = rng.permutation(count)
        halves[group] = {"selection": np.sort(order[:count // 2]),
                         "measurement": np.sort(order[count // 2:])}
    return halves


def _threshold_counts(member_scores: np.ndarray, other_scores: np.ndarray,
                      thresholds: np.ndarray):
    """How many members and non-members score >= each threshold."""
    true_positives = len(member_scores) - np.searchsorted(np.sort(member_scores), thresholds,
                                                          side="left")
    false_positives = len(other_scores) - np.searchsorted(np.sort(other_scores), thresholds,
                                                          side="left")
    return true_positives, false_positives


def empirical_epsilon(member_scores: Sequence[float], non_member_scores: Sequence[float], *,
                      delta: float, confidence: float = CONFIDENCE, seed: int = 0) -> dict:
    """The epsilon lower bound of the test "score >= t => member", with t chosen on the
    selection half of the scores and the bound measured on the disjoint measurement half
    (`split_halves`; the module docstring says why)."""
    members = np.asarray(member_scores, dtype=np.float64)
    others = np.asarray(non_member_scores, dtype=np.float64)
    n_m, n_n = len(members), len(others)
    result = {"members": n_m, "non_members": n_n, "confidence": confidence, "delta": delta,
              "epsilon_lower_bound": 0.0, "threshold": None}
    if n_m < 2 or n_n < 2:
        result["reason"] = "needs at least two members and two non-members"
        return result
    halves = split_halves(n_m, n_n, seed=seed)
    select_members = members[halves["members"]["selection"]]
    select_others = others[halves["non_members"]["selection"]]
    measure_members = members[halves["members"]["measurement"]]
    measure_others = others[halves["non_members"]["measurement"]]
    m_m, m_n = len(measure_members), len(measure_others)
    result["selection"] = {"members": len(select_members), "non_members": len(select_others)}
    result["measurement"] = {"members": m_m, "non_members": m_n}
    # The bound a perfect attack would give: every measured member above, every measured
    # non-member below.
    perfect_tpr_lower, _ = clopper_pearson(m_m, m_m, confidence)
    _, perfect_fpr_upper = clopper_pearson(0, m_n, confidence)
    result["ceiling"] = max(0.0, float(epsilon_bound(perfect_tpr_lower, perfect_fpr_upper,
                                                     delta)))

    thresholds = np.unique(np.concatenate([select_members, select_others]))
    true_positives, false_positives = _threshold_counts(select_members, select_others,
                                                        thresholds)
    tpr_lower, _ = clopper_pearson(true_positives, len(select_members), confidence)
    _, fpr_upper = clopper_pearson(false_positives, len(select_others), confidence)
    selection_bounds = epsilon_bound(tpr_lower, fpr_upper, delta)
    best = int(np.argmax(selection_bounds))
    if not selection_bounds[best] > 0:
        result["reason"] = "no threshold gives a positive bound on the selection half"
        return result

    threshold = thresholds[best:best + 1]
    true_positives, false_positives = (int(count[0]) for count in _threshold_counts(
        measure_members, measure_others, threshold))
    tpr_lower, tpr_upper = clopper_pearson(true_positives, m_m, confidence)
    fpr_lower, fpr_upper = clopper_pearson(false_positives, m_n, confidence)
    bound = float(epsilon_bound(tpr_lower, fpr_upper, delta))
    result.update(
        epsilon_lower_bound=max(0.0, bound), threshold=float(threshold[0]),
        true_positives=true_positives, false_positives=false_positives,
        tpr=true_positives / m_m, fpr=false_positives / m_n,
        tpr_interval=[tpr_lower, tpr_upper], fpr_interval=[fpr_lower, fpr_upper])
    return result


def attack_figures(member_scores, non_member_scores, *, delta: float,
                   confidence: float = CONFIDENCE, seed: int = 0) -> dict:
    """AUC, score statistics and the empirical epsilon of one members/non-members pair."""
    members = np.asarray(member_scores, dtype=np.float64)
    others = np.asarray(non_member_scores, dtype=np.float64)

    def stats(values):
        if not len(values):
            return None
        return {"mean": float(values.mean()), "median": float(np.median(values)),
                "max": float(values.max())}

    return {"auc": auc(members, others), "member_scores": stats(members),
            "non_member_scores": stats(others),
            "empirical_epsilon": empirical_epsilon(members, others, delta=delta,
                                                   confidence=confidence, seed=seed)}


# --------------------------------------------------------------------------- splitting

def holdout_split(groups: Sequence, fraction: float, seed: int) -> np.ndarray:
    """A boolean mask, True for held-out items. Items of one group (a privacy unit) are held
    out together; round(fraction * #groups) groups are held out, at least one and at least
    one kept when there are two groups or more."""
    if not 0 < fraction < 1:
        raise ValueError("the held-out fraction must lie strictly between 0 and 1")
    distinct = list(dict.fromkeys(groups))
    held = int(round(fraction * len(distinct)))
    if len(distinct) >= 2:
        held = min(max(held, 1), len(distinct) - 1)
    order = np.random.default_rng([seed, 0x401D]).permutation(len(distinct))
    held_groups = {distinct[i] for i in order[:held]}
    return np.array([g in held_groups for g in groups], dtype=bool)


def finite(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else value
