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


@pytest.fixture(scope="session")
def gcs_emulator():
    """A Cloud Storage API emulator (fake-gcs-server) on a free loopback port.

    STORAGE_EMULATOR_HOST points google-cloud-storage, and so Beam's gcsio, at
    it; both then connect anonymously. Beam first looks for application-default
    credentials with retries (about 25 s when there are none): it is told that
    there are none, which is what it would conclude.
    """
    from apache_beam.internal.gcp import auth

    from tests.gcs_emulator import GcsEmulator
    from beam_pipeline import storage

    server = GcsEmulator()
    server.start()
    previous_host = os.environ.get("STORAGE_EMULATOR_HOST")
    os.environ["STORAGE_EMULATOR_HOST"] = server.url
    saved = (auth._Credentials._credentials_init, auth._Credentials._credentials)
    auth._Credentials._credentials_init, auth._Credentials._credentials = True, None
    storage.gcs_client.cache_clear()
    try:
        yield server
    finally:
        auth._Credentials._credentials_init, auth._Credentials._credentials = saved
        storage.gcs_client.cache_clear()
        if previous_host is None:
            os.environ.pop("STORAGE_EMULATOR_HOST", None)
        else:
            os.environ["STORAGE_EMULATOR_HOST"] = previous_host
        server.stop()


@pytest.fixture
def gcs_bucket(gcs_emulator, request):
    """A fresh, empty bucket on the emulator; yields its name."""
    import re

    from beam_pipeline import storage

    name = re.sub(r"[^a-z0-9-]", "-", request.node.name.lower())[:50].strip("-") + "-b"
    storage.gcs_client().create_bucket(name)
    return name
