"""Tiny models with random weights, built in code, with the real interfaces.

Fast tests use these: they have the same keras-hub classes as the converted
SmolLM2 and MiniLM models, so every code path that touches a model (cached
decoding, handlers, the pipeline) runs for real, in milliseconds.
"""

from __future__ import annotations

import string

LLAMA3_SPECIAL_TOKENS = (
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
)

# Public like any encoder's: what DP k-means and the embeddings release are sized by.
TINY_ENCODER_DIMENSION = 32

# A handful of merges so that tokenisation is not purely byte-level and token
# counts differ from character counts, as with a real BPE vocabulary.
_TINY_MERGES = ("Ġ t", "Ġ a", "h e", "i n", "Ġt he", "e r", "o n", "r e")


def _byte_level_alphabet():
    from keras_hub.src.tokenizers.byte_pair_tokenizer import bytes_to_unicode

    _, unicode_chars = bytes_to_unicode()
    return unicode_chars


def tiny_llama3_causal_lm(*, seed=0, num_layers=2, hidden_dim=32,
                          num_query_heads=4, num_key_value_heads=2):
    """A Llama3CausalLM with a byte-level BPE vocabulary of ~270 tokens."""
    import keras
    import keras_hub

    keras.utils.set_random_seed(seed)
    vocabulary = {}
    for token in list(_byte_level_alphabet()) + [
            "".join(m.split()) for m in _TINY_MERGES] + list(LLAMA3_SPECIAL_TOKENS):
        vocabulary.setdefault(token, len(vocabulary))
    tokenizer = keras_hub.models.Llama3Tokenizer(
        vocabulary=vocabulary, merges=list(_TINY_MERGES))
    preprocessor = keras_hub.models.Llama3CausalLMPreprocessor(
        tokenizer=tokenizer, sequence_length=128, add_start_token=False)
    backbone = keras_hub.models.Llama3Backbone(
        vocabulary_size=len(vocabulary),
        num_layers=num_layers,
        num_query_heads=num_query_heads,
        num_key_value_heads=num_key_value_heads,
        hidden_dim=hidden_dim,
        intermediate_dim=2 * hidden_dim,
        rope_max_wavelength=10000,
        # Tied, the residual stream makes every token predict itself with probability
        # ~1, so the model only repeats its prompt's last token ("\n\n\n\n" after a
        # prompt ending in a newline): outputs that prove little when compared.
        tie_word_embeddings=False,
        dtype="float32",
    )
    _spread_embeddings(backbone, seed)
    return keras_hub.models.Llama3CausalLM(backbone=backbone, preprocessor=preprocessor)


# Standard deviation of the output head's weights: with a unit-RMS final hidden state
# of TINY width 32 it gives logits of standard deviation ~2, peaked enough to test
# masking and position, spread enough that samples vary from context to context.
_OUTPUT_HEAD_SCALE = 0.4


def _spread_embeddings(backbone, seed=0):
    """Seeded input embeddings and output head, so that logits are neither ~0 nor degenerate.

    Initialisers meant for large models give a tiny model near-uniform
    next-token distributions, which would make decoding tests blind to
    position or masking errors. numpy's generator, unlike Keras' initialisers,
    gives the same weights in every process.
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    layer = backbone.token_embedding
    layer.embeddings.assign(rng.normal(0.0, 1.0, layer.embeddings.shape).astype("float32"))
    head = layer.reverse_embeddings
    head.assign(rng.normal(0.0, _OUTPUT_HEAD_SCALE, head.shape).astype("float32"))
    # keras-hub initialises a Llama's kernels with standard deviation 0.02: at width 32 the
    # attention and feed-forward blocks then add almost nothing to the residual stream, and
    # the next token depends on the last token alone (two prompts that differ earlier gave
    # logits 0.005 apart). Fan-in scaling makes the context count.
    for weight in backbone.weights:
        if weight.path.endswith("/kernel"):
            fan_in = _fan_in(weight.path, tuple(weight.shape))
            weight.assign(rng.normal(0.0, fan_in ** -0.5, weight.shape).astype("float32"))


def _fan_in(path: str, shape: tuple) -> int:
    """Inputs summed into each output of a kernel: the leading axis, except for the attention
    output projection (heads, head dim, hidden), which sums over heads and head dim."""
    if "attention_output" in path:
        return shape[0] * shape[1]
    return shape[0]


def tiny_bert_text_embedder(*, seed=0, hidden_dim=TINY_ENCODER_DIMENSION, num_layers=2,
                            sequence_length=32):
    """A BertTextEmbedder (mean pooling, unit-norm output) with a small WordPiece vocabulary."""
    import keras
    import keras_hub

    keras.utils.set_random_seed(seed)
    vocabulary = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocabulary += list(string.ascii_lowercase + string.digits + string.punctuation)
    vocabulary += ["##" + ch for ch in string.ascii_lowercase + string.digits]
    vocabulary += ["the", "food", "good", "bad", "service", "great", "place"]
    tokenizer = keras_hub.models.BertTokenizer(vocabulary=vocabulary, lowercase=True)
    preprocessor = keras_hub.models.BertTextEmbedderPreprocessor(
        tokenizer=tokenizer, sequence_length=sequence_length)
    backbone = keras_hub.models.BertBackbone(
        vocabulary_size=len(vocabulary),
        num_layers=num_layers,
        num_heads=2,
        hidden_dim=hidden_dim,
        intermediate_dim=2 * hidden_dim,
        max_sequence_length=sequence_length,
    )
    return keras_hub.models.BertTextEmbedder(backbone=backbone, preprocessor=preprocessor)
