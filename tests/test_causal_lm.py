import numpy as np
import pytest

from offline_models.causal_lm import CausalLanguageModel

MIXED_PROMPTS = [
    "the cat sat on the mat",
    "a",
    "there is a long road ahead, and the night is near; the end of the story",
    "great food and the service was fine",
]


def _cached_vs_recomputed(lm, prompts, steps, seed=0):
    """Largest |logit| difference between cached decoding and recomputation."""
    rng = np.random.default_rng(seed)
    token_lists = [lm.encode(p) for p in prompts]
    state = lm.start(token_lists, max_new_tokens=steps)
    worst = 0.0
    for _ in range(steps):
        recomputed = lm.next_token_logits(state.sequences)
        worst = max(worst, float(np.abs(recomputed - state.logits).max()))
        # Feed tokens that differ per row: a row that read another row's cache
        # would then disagree with its own recomputation.
        lm.advance(state, rng.integers(0, lm.vocabulary_size - 8, size=len(prompts)))
    return worst


def test_cached_decoding_matches_recomputation_for_mixed_prompt_lengths(tiny_lm):
    assert tiny_lm.cached
    lengths = {len(tiny_lm.encode(p)) for p in MIXED_PROMPTS}
    assert len(lengths) == len(MIXED_PROMPTS)
    assert _cached_vs_recomputed(tiny_lm, MIXED_PROMPTS, steps=6) <= 1e-3


def test_recomputation_equals_unpadded_single_row_forward(tiny_lm):
    import keras

    tokens = tiny_lm.encode(MIXED_PROMPTS[2])
    batch = tiny_lm.next_token_logits([tokens, tiny_lm.encode("a")])
    full = tiny_lm.backbone({"token_ids": np.array([tokens]),
                             "padding_mask": np.ones((1, len(tokens)), "int32")})
    direct = keras.ops.convert_to_numpy(
        tiny_lm.backbone.token_embedding(full[:, -1, :], reverse=True))[0]
    np.testing.assert_allclose(batch[0], direct, atol=1e-4)


def test_logits_depend_on_the_prompt(tiny_lm):
    a, b = tiny_lm.next_token_logits([tiny_lm.encode("the cat"), tiny_lm.encode("the dog")])
    assert np.abs(a - b).max() > 1e-2


def test_uncached_mode_gives_the_same_state_logits(tiny_lm):
    plain = CausalLanguageModel(tiny_lm.keras_model, cached=False)
    prompts = [tiny_lm.encode(p) for p in MIXED_PROMPTS[:2]]
    cached_state = tiny_lm.start(prompts, 3)
    plain_state = plain.start(prompts, 3)
    for token in (5, 77):
        np.testing.assert_allclose(cached_state.logits, plain_state.logits, atol=1e-3)
        tiny_lm.advance(cached_state, [token, token])
        plain.advance(plain_state, [token, token])
    np.testing.assert_allclose(cached_state.logits, plain_state.logits, atol=1e-3)


def test_cache_overflow_and_bad_input_are_refused(tiny_lm):
    state = tiny_lm.start([tiny_lm.encode("a")], max_new_tokens=1)
    while state.steps_left > 0:
        tiny_lm.advance(state, [1])
    with pytest.raises(ValueError, match="cache is full"):
        tiny_lm.advance(state, [1])
    with pytest.raises(ValueError, match="at least one token"):
        tiny_lm.next_token_logits([[]])
    with pytest.raises(ValueError, match="expected 1 tokens"):
        tiny_lm.advance(tiny_lm.start([[3]], 4), [1, 2])


def test_encode_decode_round_trip(tiny_lm):
    text = "the service was great"
    assert tiny_lm.decode(tiny_lm.encode(text)) == text
    assert tiny_lm.encode_batch([text, "a"]) == [tiny_lm.encode(text), tiny_lm.encode("a")]
