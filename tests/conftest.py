import os

# Keras reads its backend once, at first import.
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny_lm():
    from offline_models.loading import TINY_LM, load_causal_lm

    return load_causal_lm(TINY_LM)


@pytest.fixture(scope="session")
def tiny_encoder():
    from offline_models.loading import TINY_ENCODER, load_sentence_encoder

    return load_sentence_encoder(TINY_ENCODER, sequence_length=32)


@pytest.fixture(scope="session")
def real_lm():
    """The default LM, converted by `dpsynth models prepare` (make test runs it first)."""
    from offline_models import registry
    from offline_models.loading import load_causal_lm

    if not registry.is_prepared(registry.DEFAULT_LM):
        pytest.fail(f"{registry.DEFAULT_LM} is not prepared: run `dpsynth models prepare`")
    return load_causal_lm(registry.DEFAULT_LM)


@pytest.fixture(scope="session")
def real_encoder():
    from offline_models import registry
    from offline_models.loading import load_sentence_encoder

    return load_sentence_encoder(registry.DEFAULT_ENCODER, sequence_length=64)
