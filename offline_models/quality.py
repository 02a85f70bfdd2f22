"""A quick check that a causal LM's weights are right: its loss on plain English.

A converter that scrambles weights (a missed permutation, an unshifted norm, a
transposed matrix) still yields a model that runs and emits fluent-looking
shapes; what it cannot do is predict ordinary text. The mean next-token loss
on a short factual paragraph separates the two by several nats.

Keras is imported inside the functions: it fixes its backend at first import.
"""

from __future__ import annotations

import numpy as np

REFERENCE_PARAGRAPH = (
    "The Moon is the only natural satellite of the Earth. It is about one quarter "
    "as wide as the Earth, and its gravity is about one sixth as strong. The same "
    "side of the Moon always faces the Earth, because the Moon turns once on its "
    "axis in the time it takes to go around the planet. Light from the Moon is "
    "sunlight reflected from its surface. The first people to walk on the Moon "
    "landed there in the summer of 1969, and they brought back rocks and dust "
    "for scientists to study."
)

# Measured on REFERENCE_PARAGRAPH (float32, keras-hub 0.32, TensorFlow):
# - correct conversions: SmolLM2-135M-Instruct from Q4_1 2.51 nats/token,
#   Gemma 3 270M from Q4_K_M 2.39;
# - SmolLM2 with q and k both left in llama.cpp's rotary layout: 4.14, and
#   " Paris" still wins after "The capital of France is" (p = 0.72), so
#   neither a loose bound nor that prompt catches this mistake;
# - SmolLM2 with only one of q/k restored, or k with the wrong head count:
#   7.5 to 8.3;
# - Gemma 3 with its (1 + w) norms left unshifted: 17.5;
# - a model that knows nothing: log(vocab), 10.8 for 49,152 tokens and 12.5
#   for 262,144.
# 3.3 leaves 0.8 nats of headroom over both correct models and rejects every
# broken variant above.
MAX_REFERENCE_LOSS = 3.3
MAX_REFERENCE_LOSS_BY_FAMILY = {"llama": 3.3, "gemma3": 3.3}

# Positions scored per logits call: a 262k vocabulary costs 1 MiB of float32
# per position, so the full sequence is never materialised at once.
_LOGIT_CHUNK = 32


def mean_next_token_loss(causal_lm, text: str) -> float:
    """Mean cross-entropy (nats) of each token of `text` given the tokens before it.

    The text is tokenised as the model's preprocessor would for generation:
    with the start token when `preprocessor.add_start_token` is set, in which
    case the first text token is scored too; without it, the first token has
    no prefix and is not scored.
    """
    token_ids = _prompt_ids(causal_lm, text)
    if len(token_ids) < 2:
        raise ValueError("the text must tokenize to at least two tokens to score a next token")
    hidden = _hidden_states(causal_lm, token_ids)
    targets = np.asarray(token_ids[1:])
    total = 0.0
    for start in range(0, len(targets), _LOGIT_CHUNK):
        stop = min(start + _LOGIT_CHUNK, len(targets))
        logits = _logits(causal_lm, hidden[:, start:stop])[0].astype(np.float64)
        top = logits.max(axis=-1)
        log_norm = top + np.log(np.exp(logits - top[:, None]).sum(axis=-1))
        total += float(np.sum(log_norm - logits[np.arange(stop - start), targets[start:stop]]))
    return total / len(targets)


def next_token_logits(causal_lm, prompt: str) -> np.ndarray:
    """Float32 logits (vocabulary,) for the token after `prompt`; only the last position."""
    hidden = _hidden_states(causal_lm, _prompt_ids(causal_lm, prompt))
    return _logits(causal_lm, hidden[:, -1:])[0, 0]


def top_next_token(causal_lm, prompt: str) -> tuple[str, float]:
    """The greedy next token after `prompt` as text, and its probability."""
    logits = next_token_logits(causal_lm, prompt).astype(np.float64)
    best = int(np.argmax(logits))
    probability = 1.0 / float(np.exp(logits - logits[best]).sum())
    text = causal_lm.preprocessor.tokenizer.detokenize([best])
    if hasattr(text, "numpy"):
        text = text.numpy()
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    return str(text), probability


def _prompt_ids(causal_lm, text: str) -> list[int]:
    preprocessor = causal_lm.preprocessor
    tokenizer = preprocessor.tokenizer
    ids = tokenizer(text)
    ids = [int(i) for i in np.asarray(ids.numpy() if hasattr(ids, "numpy") else ids).ravel()]
    if getattr(preprocessor, "add_start_token", False):
        ids = [int(tokenizer.start_token_id)] + ids
    return ids


def _hidden_states(causal_lm, token_ids: list[int]):
    """Final (normalised) hidden states, shape (1, length, hidden)."""
    from keras import ops

    token_array = np.asarray([token_ids], dtype="int32")
    inputs = {"token_ids": token_array, "padding_mask": np.ones_like(token_array)}
    return ops.convert_to_numpy(causal_lm.backbone(inputs))


def _logits(causal_lm, hidden: np.ndarray) -> np.ndarray:
    # The reversed embedding is the LM head for tied and untied models alike,
    # and applies any final logit soft-capping the backbone defines.
    from keras import ops

    return ops.convert_to_numpy(
        causal_lm.backbone.token_embedding(hidden, reverse=True)).astype(np.float32)
