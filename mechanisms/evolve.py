"""Private Evolution's math, Beam-free: nearest-sample votes, their noisy histogram, resampling.

Private Evolution (Lin et al. 2023; Aug-PE for text, Xie et al. 2024) never
shows a private record to the LM. It evolves a population of synthetic texts
that starts from public prompts: each round, every private record votes for
the population member nearest to it in embedding space, the vote histogram is
released with Gaussian noise, and the population is redrawn in proportion to
the noisy votes; the LM then writes a variation of every member drawn.

With L candidates (Aug-PE's several variations per sample), the population that
votes has M * L texts: L variations of each of the M members drawn (M * L texts
from the public prompt at the start), and the redraw picks M of them. The last
round's M members get one variation each: the output has M texts, as with L = 1.

Privacy: a record casts exactly one vote per round, so adding or removing it
moves the histogram (over every member of the population, all labels
together) by 1 in L2. Each round is one Gaussian release of sensitivity 1;
everything else (resampling, variations, the initial population) is
post-processing of those releases or public.

With labels, a record votes only among members of its own label. The redraw
first shares the population among the labels in proportion to their noisy
votes, each label keeping at least one member (so a label never dies out and
its records always have someone to vote for), then draws each label's members
among its own.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from mechanisms import cluster as clustering

STAGE = "private evolution"


@dataclasses.dataclass(frozen=True)
class EvolutionConfig:
    rounds: int            # T: vote-and-vary rounds, each one Gaussian release
    population: int        # M: synthetic texts in the population, all labels together
    vote_noise: float      # sigma of the Gaussian noise on every vote count
    vote_threshold: float  # H: noisy votes are counted above H only (Aug-PE's filter)
    candidates: int = 1    # L: variations of every member drawn; M * L texts vote

    @property
    def voting_population(self) -> int:
        """M * L: the texts the records vote among, every round."""
        return self.population * self.candidates

    def __post_init__(self):
        if self.rounds < 1:
            raise ValueError(f"Private Evolution needs at least one round, got {self.rounds}")
        if self.population < 1:
            raise ValueError(f"the population needs at least one text, got {self.population}")
        if self.candidates < 1:
            raise ValueError(f"candidates must be >= 1, got {self.candidates}")
        if not self.vote_noise > 0:
            raise ValueError(f"the vote noise must be > 0, got {self.vote_noise}")
        if self.vote_threshold < 0:
            raise ValueError(f"the vote threshold must be >= 0, got {self.vote_threshold}")


def initial_labels(labels, population: int) -> list:
    """The label of each initial member: the public label domain, round robin."""
    labels = list(labels)
    if not labels:
        raise ValueError("the label domain is empty")
    return [labels[index % len(labels)] for index in range(population)]


def nearest_member(embedding: np.ndarray, member_vectors: np.ndarray,
                   member_indices: np.ndarray) -> int | None:
    """The population index of the member nearest to `embedding` (None: no member)."""
    if len(member_indices) == 0:
        return None
    position = int(clustering.nearest_centre(np.asarray(embedding)[None, :], member_vectors)[0])
    return int(member_indices[position])


def vote_histogram(votes, population: int) -> np.ndarray:
    """Exact votes per population index from {index: count} (indices outside are an error)."""
    histogram = np.zeros(population, dtype="float64")
    for index, count in votes.items():
        if not 0 <= index < population:
            raise ValueError(f"vote for member {index} of a population of {population}")
        histogram[index] += count
    return histogram


def noisy_votes(histogram: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """The Gaussian mechanism on the whole histogram: every member gets noise, voted or not."""
    histogram = np.asarray(histogram, dtype="float64")
    return histogram + rng.normal(0.0, sigma, size=histogram.shape)


def selection_weights(noisy: np.ndarray, threshold: float) -> np.ndarray:
    """Probabilities of the redraw: noisy votes above the threshold, normalised.

    When no member clears the threshold the redraw is uniform: the noisy votes
    carry no usable signal, and keeping the population is as private.
    """
    weights = np.maximum(np.asarray(noisy, dtype="float64") - threshold, 0.0)
    total = weights.sum()
    if total <= 0:
        return np.full(len(weights), 1.0 / len(weights))
    return weights / total


def redraw(weights: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """`size` population indices drawn with replacement, sorted (their order is irrelevant)."""
    return np.sort(rng.choice(len(weights), size=size, replace=True, p=weights))


def label_quotas(member_labels, weights: np.ndarray, population: int) -> dict:
    """How many members each label gets: one each, the rest shared in proportion to the
    labels' total weight by largest remainders (ties to the earlier label). Equal shares
    when no label has weight. Needs population >= the number of labels."""
    labels = list(dict.fromkeys(member_labels))
    if population < len(labels):
        raise ValueError(f"a population of {population} cannot keep {len(labels)} labels")
    totals = np.array([sum(w for l, w in zip(member_labels, weights) if l == label)
                       for label in labels], dtype="float64")
    shares = totals / totals.sum() if totals.sum() > 0 else np.full(len(labels), 1 / len(labels))
    spare = population - len(labels)
    exact = shares * spare
    quotas = np.floor(exact).astype(int)
    remainders = exact - quotas
    for position in sorted(range(len(labels)), key=lambda i: (-remainders[i], i))[
            :spare - int(quotas.sum())]:
        quotas[position] += 1
    return {label: 1 + int(quota) for label, quota in zip(labels, quotas)}


def redraw_by_label(member_labels, noisy: np.ndarray, threshold: float, population: int,
                    rng: np.random.Generator) -> np.ndarray:
    """`population` indices: each label's quota (`label_quotas` of the votes above the
    threshold) drawn with replacement among that label's members by `selection_weights`.
    With more labels than members, one redraw over all members instead."""
    member_labels = list(member_labels)
    above = np.maximum(np.asarray(noisy, dtype="float64") - threshold, 0.0)
    if population < len(set(member_labels)):
        return redraw(selection_weights(noisy, threshold), population, rng)
    drawn = []
    for label, quota in label_quotas(member_labels, above, population).items():
        members = np.array([i for i, l in enumerate(member_labels) if l == label])
        weights = selection_weights(np.asarray(noisy)[members], threshold)
        drawn.append(members[rng.choice(len(members), size=quota, replace=True, p=weights)])
    return np.sort(np.concatenate(drawn))
