"""dpsynth: differentially private synthetic text from private LM inference, on Apache Beam."""

from pathlib import Path

from setuptools import find_packages, setup


def _requirements():
    lines = Path(__file__).with_name("requirements.in").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


setup(
    name="dpsynth",
    version="0.1.0",
    description=__doc__,
    python_requires=">=3.11,<3.12",
    packages=find_packages(
        include=["beam_pipeline*", "mechanisms*", "transforms*", "offline_models*", "evaluation*"]),
    install_requires=_requirements(),
    entry_points={"console_scripts": ["dpsynth=beam_pipeline.cli:main"]},
)
