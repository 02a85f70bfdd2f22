"""Unit-norm sentence embeddings from a keras-hub text embedder."""

from __future__ import annotations

from typing import Sequence

import numpy as np

# Larger calls do not run faster on CPU and multiply peak memory.
MAX_TEXTS_PER_CALL = 64


class SentenceEncoder:
    """Embeds texts as L2-normalised float32 vectors, at most 64 texts per model call."""

    def __init__(self, keras_text_embedder, *, max_texts_per_call: int = MAX_TEXTS_PER_CALL):
        if not 1 <= max_texts_per_call <= MAX_TEXTS_PER_CALL:
            raise ValueError(f"max_texts_per_call must be in [1, {MAX_TEXTS_PER_CALL}]")
        self.keras_model = keras_text_embedder
        self.max_texts_per_call = max_texts_per_call
        self.dimension = int(keras_text_embedder.backbone.hidden_dim)
        self.model_calls = 0

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        chunks = []
        for start in range(0, len(texts), self.max_texts_per_call):
            chunk = list(texts[start:start + self.max_texts_per_call])
            vectors = np.asarray(self.keras_model.predict_on_batch(chunk), dtype="float32")
            self.model_calls += 1
            chunks.append(vectors)
        if not chunks:
            return np.zeros((0, self.dimension), dtype="float32")
        vectors = np.concatenate(chunks)
        # The embedder normalises already; renormalising guards against a
        # preset saved with normalize=False, since clustering assumes norm 1.
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        return vectors / np.maximum(norms, 1e-12)
