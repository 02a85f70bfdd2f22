import os

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


def test_cached_decoding_matches_recomputation_across_prefill_chunks(tiny_lm):
    # More rows than one prefill chunk: each chunk's layers write their keys and values
    # straight into their own rows of the cache, at their own chunk length.
    from offline_models.causal_lm import PREFILL_ROWS

    prompts = MIXED_PROMPTS * 3
    assert len(prompts) > PREFILL_ROWS
    assert _cached_vs_recomputed(tiny_lm, prompts, steps=4) <= 1e-3


def test_a_smaller_call_after_a_larger_one_gives_the_logits_of_a_fresh_model(tiny_lm):
    fresh = CausalLanguageModel(tiny_lm.keras_model)
    small = [tiny_lm.encode(p) for p in MIXED_PROMPTS[:2]]
    tiny_lm.start([tiny_lm.encode(p) for p in MIXED_PROMPTS * 3], max_new_tokens=9)
    after_large, from_fresh = tiny_lm.start(small, 3), fresh.start(small, 3)
    np.testing.assert_array_equal(after_large.logits, from_fresh.logits)
    for token in (5, 77):
        np.testing.assert_array_equal(tiny_lm.advance(after_large, [token, token]),
                                      fresh.advance(from_fresh, [token, token]))


def test_freed_heap_blocks_are_handed_back_to_the_system():
    import platform

    from offline_models.causal_lm import release_freed_memory

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        pytest.skip("malloc_trim is glibc's")

    def resident_bytes():
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    # Blocks under malloc's mmap threshold live in its heap; one kept above them
    # stops free() from shrinking the heap by itself, as a live tensor does in a run.
    blocks = [bytearray(64 * 1024) for _ in range(1024)]
    above = bytearray(64 * 1024)
    del blocks
    before = resident_bytes()
    assert release_freed_memory()
    assert before - resident_bytes() > 32 * 2**20
    del above


TINY_GEMMA3_WINDOW = 4


@pytest.fixture(scope="module")
def tiny_gemma3_lm():
    """A random 6-layer Gemma 3 (5 sliding-window layers, then a global one) whose
    window is shorter than every prompt here, so both kinds of layer matter."""
    import io

    import keras
    import keras_hub
    import sentencepiece

    keras.utils.set_random_seed(0)
    proto = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(MIXED_PROMPTS * 20), model_writer=proto, vocab_size=60,
        model_type="bpe", hard_vocab_limit=False, minloglevel=2,
        pad_id=0, eos_id=1, bos_id=2, unk_id=3,
        pad_piece="<pad>", eos_piece="<eos>", bos_piece="<bos>", unk_piece="<unk>")
    tokenizer = keras_hub.models.Gemma3Tokenizer(proto=proto.getvalue(), has_vision_tokens=False)
    backbone = keras_hub.models.Gemma3Backbone(
        vocabulary_size=tokenizer.vocabulary_size(), image_size=896, num_layers=6,
        num_query_heads=4, num_key_value_heads=2, hidden_dim=32, intermediate_dim=64,
        head_dim=16, query_head_dim_normalize=True, use_query_key_norm=True,
        use_post_ffw_norm=True, use_post_attention_norm=True, attention_logit_soft_cap=None,
        final_logit_soft_cap=None, use_sliding_window_attention=True,
        sliding_window_size=TINY_GEMMA3_WINDOW, vision_encoder=None, dtype="float32")
    embeddings = backbone.token_embedding.embeddings
    embeddings.assign(np.random.default_rng(0).normal(0, 1, embeddings.shape).astype("float32"))
    preprocessor = keras_hub.models.Gemma3CausalLMPreprocessor(tokenizer=tokenizer,
                                                              sequence_length=64)
    return CausalLanguageModel(keras_hub.models.Gemma3CausalLM(backbone=backbone,
                                                               preprocessor=preprocessor))


def test_gemma3_cached_decoding_matches_recomputation_across_sliding_windows(tiny_gemma3_lm):
    lm = tiny_gemma3_lm
    assert lm.cached
    sliding = [layer.attention.use_sliding_window_attention
               for layer in lm.backbone.transformer_layers]
    assert sliding == [True] * 5 + [False]
    lengths = [len(lm.encode(p)) for p in MIXED_PROMPTS]
    assert len(set(lengths)) == len(lengths) and min(lengths) <= TINY_GEMMA3_WINDOW < max(lengths)
    # More rows than one prefill chunk, so chunks of different lengths meet in one cache.
    prompts = MIXED_PROMPTS * 3
    assert _cached_vs_recomputed(lm, prompts, steps=6) <= 1e-3


def test_gemma3_window_changes_the_logits(tiny_gemma3_lm):
    """The window bites in this tiny model, so the test above would see it misapplied."""
    lm = tiny_gemma3_lm
    tokens = np.array([lm.encode(MIXED_PROMPTS[2])])
    inputs = {"token_ids": tokens, "padding_mask": np.ones_like(tokens)}
    attentions = [layer.attention for layer in lm.backbone.transformer_layers]
    narrow = np.asarray(lm.backbone(inputs))[0, -1]
    for attention in attentions:
        attention.sliding_window_size = 10_000
    try:
        wide = np.asarray(lm.backbone(inputs))[0, -1]
    finally:
        for attention in attentions:
            attention.sliding_window_size = TINY_GEMMA3_WINDOW
    assert np.abs(wide - narrow).max() > 1e-2


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


@pytest.mark.parametrize("model", ["tiny_lm", "tiny_gemma3_lm"])
def test_a_finished_decoding_frees_its_cache(model, request):
    # The compiled decoding step once kept the cache variables of the call that traced it
    # alive for good: one whole cache (about 1 GB at 72 rows for SmolLM2) per traced shape.
    import gc
    import weakref

    lm = request.getfixturevalue(model)
    for length in (5, 9, 5):   # a new traced shape, then a shape seen before
        state = lm.start([list(range(1, length + 1)), [3, 4]], max_new_tokens=3)
        lm.advance(state, [1, 2])
        cache = weakref.ref(state.caches[0])
        del state
        gc.collect()
        assert cache() is None, f"the cache of a call with a {length}-token prompt lives on"


@pytest.mark.parametrize("model", ["tiny_lm", "tiny_gemma3_lm"])
def test_rows_outside_full_rows_give_their_logits_on_the_columns_asked(model, request):
    """A decoding step computes the whole-vocabulary head for `full_rows` only; every other
    row's logits come from its hidden state on the columns a chooser asks for, and match
    the logits of the whole head, read any way a chooser reads them."""
    from offline_models.causal_lm import RowLogits

    lm = request.getfixturevalue(model)
    prompts = [lm.encode(p) for p in MIXED_PROMPTS + MIXED_PROMPTS[:1]]
    whole, partial = lm.start(prompts, 4), lm.start(prompts, 4, full_rows=[4, 2])
    columns = np.array([lm.vocabulary_size - 1, 0, 7, 3])
    for step, tokens in enumerate(([5, 9, 11, 2, 6], [1, 1, 30, 4, 8], [7, 3, 3, 3, 9])):
        expected, got = lm.advance(whole, tokens), lm.advance(partial, tokens)
        assert isinstance(got, RowLogits) and got.shape == expected.shape
        # The head ran on the two full rows only (padded to a multiple of 8 rows).
        assert got._full_logits.shape[0] == 2
        np.testing.assert_allclose(got[:, columns], expected[:, columns], atol=1e-4)
        np.testing.assert_allclose(got[1:4][:, columns], expected[1:4, columns], atol=1e-4)
        for row in (-1, 0, 2, 4):
            np.testing.assert_allclose(got[row], expected[row], atol=1e-4)
        view = got[:3]
        np.testing.assert_allclose(view[-1], expected[2], atol=1e-4)
        np.testing.assert_allclose(np.asarray(view), expected[:3], atol=1e-4)
        # Full rows are the step's own head output, bit for bit.
        np.testing.assert_array_equal(got[2], got._full_logits[0])
    with pytest.raises(TypeError, match="does not take"):
        got[0, 1]
    with pytest.raises(ValueError, match="full_rows must index the 5 prompts"):
        lm.start(prompts, 4, full_rows=[5])
