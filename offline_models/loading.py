"""Loads the models a run names: a known name, a local preset folder, or a tiny test model.

Model references stay strings until a worker loads them, so that Beam model
handlers carry only picklable configuration and import Keras late (Keras fixes
its backend at first import).
"""

from __future__ import annotations

import functools
import json
import threading
from pathlib import Path

TINY_LM = "tiny-llama3"
TINY_ENCODER = "tiny-bert"


def use_tensorflow_backend():
    """Keras reads its backend once, at first import; ours is TensorFlow."""
    from offline_models.quiet_tensorflow import import_tensorflow

    import_tensorflow()


def load_keras_causal_lm(reference: str):
    """The keras-hub CausalLM behind a reference (see `registry.resolve_lm`)."""
    use_tensorflow_backend()
    if reference == TINY_LM:
        from offline_models.tiny import tiny_llama3_causal_lm

        return tiny_llama3_causal_lm()
    from offline_models import registry

    return load_keras_causal_lm_folder(registry.resolve_lm(reference))


def load_keras_causal_lm_folder(folder: Path):
    """Loads a converted (Hugging Face layout) or native keras-hub preset folder.

    keras-hub's generic `CausalLM.from_preset` picks the task class from the
    folder's config in both layouts. Its preprocessors add a start token by
    default; a folder whose tokenizer config says the model was trained
    without one (SmolLM2) gets `add_start_token = False`.
    """
    use_tensorflow_backend()
    import keras_hub

    causal_lm = keras_hub.models.CausalLM.from_preset(str(folder), dtype="float32")
    add_bos = folder_adds_start_token(folder)
    if add_bos is not None and causal_lm.preprocessor is not None:
        causal_lm.preprocessor.add_start_token = add_bos
    return causal_lm


def folder_adds_start_token(folder) -> bool | None:
    """`add_bos_token` from the folder's tokenizer_config.json; None when it does not say."""
    path = Path(folder) / "tokenizer_config.json"
    if not path.is_file():
        return None
    value = json.loads(path.read_text(encoding="utf-8")).get("add_bos_token")
    return None if value is None else bool(value)


_LOAD_LOCK = threading.Lock()


def _shared_per_process(load):
    """One copy of each model per process, however many pipeline stages use it.

    A job runs several RunInference stages over the same LM or encoder (the
    public corpus, the private records); each would otherwise hold its own
    copy of the weights and of the compiled steps.
    """
    cached_load = functools.lru_cache(maxsize=None)(load)

    @functools.wraps(load)
    def wrapper(*args, **kwargs):
        with _LOAD_LOCK:
            return cached_load(*args, **kwargs)

    wrapper.cache_clear = cached_load.cache_clear
    return wrapper


@_shared_per_process
def load_causal_lm(reference: str, *, cached: bool | None = None):
    """A `CausalLanguageModel` serving next-token logits for `reference`."""
    from offline_models.causal_lm import CausalLanguageModel

    return CausalLanguageModel(load_keras_causal_lm(reference), cached=cached)


def encoder_dimension(reference: str) -> int:
    """The output dimension of the encoder behind `reference`, read from its preset's config
    without loading the weights.

    It is public: releases sized by it (DP k-means centres, synthetic embeddings) have the
    same shape whatever the records, an empty input included. `SentenceEncoder.dimension`
    is the same figure, the backbone's hidden size (the embedder mean-pools, no projection).
    """
    from offline_models import registry

    if reference == TINY_ENCODER:
        from offline_models.tiny import TINY_ENCODER_DIMENSION

        return TINY_ENCODER_DIMENSION
    folder = registry.resolve_encoder(reference)
    path = folder / "config.json"
    config = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    # Hugging Face layout: hidden_size at the top; keras-hub layout: the backbone's config.
    dimension = config.get("hidden_size") or config.get("config", {}).get("hidden_dim")
    if not isinstance(dimension, int) or dimension < 1:
        raise registry.UnknownModelError(
            f"cannot tell the output dimension of the encoder in {folder}: its config.json "
            "has neither hidden_size nor config.hidden_dim")
    return dimension


@_shared_per_process
def load_sentence_encoder(reference: str, *, sequence_length: int = 128):
    """A `SentenceEncoder` for `reference` (a known encoder name, a folder, or the tiny one)."""
    use_tensorflow_backend()
    from offline_models.encoder import SentenceEncoder

    if reference == TINY_ENCODER:
        from offline_models.tiny import tiny_bert_text_embedder

        return SentenceEncoder(tiny_bert_text_embedder(sequence_length=sequence_length))
    from offline_models import registry

    folder = registry.resolve_encoder(reference)
    import keras_hub

    preprocessor = keras_hub.models.TextEmbedderPreprocessor.from_preset(
        str(folder), sequence_length=sequence_length)
    embedder = keras_hub.models.TextEmbedder.from_preset(str(folder), preprocessor=preprocessor)
    return SentenceEncoder(embedder)



def feature_encoder_names() -> list[str]:
    """What `--feature_encoder` accepts: every known LM (mean-pooled last hidden state) and
    every known sentence encoder."""
    from offline_models import registry

    return [*registry.KNOWN_LMS, *registry.KNOWN_ENCODERS]


def load_feature_encoder(reference: str, *, sequence_length: int = 128):
    """Something with `embed(texts)` and `dimension` for MAUVE's second feature space: an LM
    name (known or the tiny one) gives `LanguageModelFeatures`, anything else is loaded as a
    sentence encoder."""
    from offline_models import registry

    if reference in registry.KNOWN_LMS or reference == TINY_LM:
        from offline_models.lm_features import LanguageModelFeatures

        return LanguageModelFeatures(load_causal_lm(reference), sequence_length=sequence_length)
    return load_sentence_encoder(reference, sequence_length=sequence_length)
