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
