"""The layout tells math from pipeline: mechanisms/ never imports Beam or Keras, and
every module of transforms/ is a Beam stage."""

import ast
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
FRAMEWORKS = ("apache_beam", "keras", "keras_hub", "tensorflow", "tensorflow_text", "torch")


def _modules(package: str) -> list[str]:
    return sorted(f"{package}.{path.stem}" for path in (ROOT / package).glob("*.py")
                  if path.stem != "__init__")


def test_no_mechanism_imports_beam_or_keras_even_indirectly():
    """Each mechanisms module is imported alone in a fresh interpreter, and none of the
    frameworks may be among the modules loaded afterwards."""
    script = ("import importlib, sys\n"
              "importlib.import_module(sys.argv[1])\n"
              f"print(','.join(sorted({{m.split('.')[0] for m in sys.modules}} & set({FRAMEWORKS!r}))))")
    modules = _modules("mechanisms")
    assert len(modules) >= 10
    for module in modules:
        loaded = subprocess.run([sys.executable, "-c", script, module], cwd=ROOT, check=True,
                                capture_output=True, text=True).stdout.strip()
        assert loaded == "", f"{module} loads {loaded}"


def test_every_transforms_module_is_a_beam_stage():
    """A Beam-free module in transforms/ belongs in mechanisms/ (or with its user)."""
    for path in sorted((ROOT / "transforms").glob("*.py")):
        if path.stem == "__init__":
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        imported = {alias.name.split(".")[0] for node in ast.walk(tree)
                    if isinstance(node, ast.Import) for alias in node.names}
        imported |= {node.module.split(".")[0] for node in ast.walk(tree)
                     if isinstance(node, ast.ImportFrom) and node.module and node.level == 0}
        assert "apache_beam" in imported, f"{path.name} runs without Beam"


def test_a_stage_and_its_mechanism_share_a_name():
    stages = {path.stem for path in (ROOT / "transforms").glob("*.py")}
    paired = {"cluster", "evolve", "release_embeddings", "assign_to_batches", "generate",
              "record_cap"}
    for name in paired:
        assert name in stages and (ROOT / "mechanisms" / f"{name}.py").exists(), name
