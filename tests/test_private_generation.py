"""PrivateTokenChooser with a public top-k mask: the rules run on the kept tokens only."""

import numpy as np
import pytest

from mechanisms import median, token_rules
from mechanisms.generate import GenerationConfig, PrivateTokenChooser


def full_vocabulary_probabilities(logits, config):
    """The chooser's token distribution computed the long way: mask the whole
    vocabulary to -inf, clip, aggregate, mask again, softmax."""
    members, public = logits[:-1], logits[-1]
    mask = token_rules.top_k_mask(public, config.top_k)
    clipped = token_rules.clip_logits(token_rules.apply_mask(members, mask), config.clip)
    if config.aggregator == "mean":
        aggregate = token_rules.mean_aggregate(clipped, config.expected_batch_size)
    else:
        aggregate = median.median_aggregate(clipped)
    return token_rules.softmax(token_rules.apply_mask(aggregate, mask), config.temperature)


@pytest.mark.parametrize("aggregator", ["mean", "median"])
def test_kept_columns_give_the_full_vocabulary_distribution(aggregator):
    """Sampling many batch ids, the chooser's token frequencies match the distribution
    computed over the whole masked vocabulary, and no token outside the top k occurs."""
    rng = np.random.default_rng(1)
    vocabulary, k = 40, 5
    logits = rng.normal(scale=2.0, size=(6, vocabulary))   # 5 members + the public row
    config = GenerationConfig(aggregator=aggregator, clip=3.0, temperature=1.0,
                              expected_batch_size=5, max_new_tokens=1, top_k=k)
    expected = full_vocabulary_probabilities(logits, config)
    trials = 8000
    counts = np.zeros(vocabulary)
    for trial in range(trials):
        chooser = PrivateTokenChooser(config, secret="ab12", batch_id=f"b{trial}")
        counts[chooser.choose(0, logits)] += 1
    kept = token_rules.top_k_mask(logits[-1], k)
    assert counts[~kept].sum() == 0
    assert np.abs(counts / trials - expected).max() < 0.02


def test_local_sensitivity_ignores_tokens_outside_the_mask():
    """One member: masked tokens cannot move, so LS is over the kept tokens only."""
    logits = np.array([[0.0, 5.0, -1.0, 2.0], [0.0, 1.0, 0.0, 3.0]])
    config = GenerationConfig(aggregator="median", clip=2.0, temperature=1.0,
                              expected_batch_size=2, max_new_tokens=1, top_k=2)
    chooser = PrivateTokenChooser(config, secret="ab12", batch_id="b")
    assert chooser.choose(0, logits) in (1, 3)
    # Kept tokens 1 and 3; clipped member values 2.0 and -1.0 (= 2 - 5 + 2).
    kept_values = np.array([2.0, -1.0])
    assert chooser.local_sensitivities == [float(np.max(np.maximum(kept_values + 2.0,
                                                                   np.abs(kept_values))))]
