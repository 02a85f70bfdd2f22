"""Text features from a causal LM: its last hidden state, mean-pooled over the text's tokens.

A second feature space for MAUVE that no generation method uses. Private Evolution votes
with the sentence encoder, so MAUVE in that encoder's space scores PE where it optimises;
MAUVE's authors embed with a causal LM (GPT-2), and the offline LMs here play that part.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

# Texts per forward pass: larger calls are no faster on CPU and multiply the activations.
TEXTS_PER_CALL = 16


class LanguageModelFeatures:
    """`embed(texts)` -> (n, hidden) float32 unit vectors, like a `SentenceEncoder`.

    `lm` is a `causal_lm.CausalLanguageModel` (its tokenizer adds the start token the model
    was trained with). Texts are cut to `sequence_length` tokens; padding takes no part in
    the mean. Vectors are L2-normalised so that MAUVE's k-means sees directions, as with the
    sentence encoder, rather than the norm, which grows with the text's length.
    """

    def __init__(self, lm, *, sequence_length: int = 128):
        import tensorflow as tf

        if sequence_length < 1:
            raise ValueError(f"sequence_length must be >= 1, got {sequence_length}")
        self.lm = lm
        self.sequence_length = int(sequence_length)
        self.dimension = int(lm.backbone.hidden_dim)
        self._pooled = tf.function(self._pooled_eager, reduce_retracing=True)

    def _pooled_eager(self, token_ids, padding_mask):
        import tensorflow as tf

        hidden = self.lm.backbone({"token_ids": token_ids, "padding_mask": padding_mask})
        weights = tf.cast(padding_mask, hidden.dtype)[:, :, None]
        return tf.reduce_sum(hidden * weights, axis=1) / tf.reduce_sum(weights, axis=1)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        chunks = []
        for start in range(0, len(texts), TEXTS_PER_CALL):
            rows = [ids[:self.sequence_length] or ids[:1] for ids in
                    self.lm.encode_batch([t or " " for t in texts[start:start + TEXTS_PER_CALL]])]
            width = max(len(r) for r in rows)
            token_ids = np.zeros((len(rows), width), dtype="int32")
            padding_mask = np.zeros((len(rows), width), dtype="int32")
            for i, row in enumerate(rows):
                token_ids[i, :len(row)] = row
                padding_mask[i, :len(row)] = 1
            chunks.append(np.asarray(self._pooled(token_ids, padding_mask), dtype="float32"))
        if not chunks:
            return np.zeros((0, self.dimension), dtype="float32")
        vectors = np.concatenate(chunks)
        return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
