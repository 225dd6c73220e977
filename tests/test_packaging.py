"""Packaging stays reproducible: environment.yml, pyproject.toml and constraints.txt agree."""
import tomllib
from pathlib import Path

import yaml
from packaging.requirements import Requirement

ROOT = Path(__file__).parent.parent


def _pyproject_requirements() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    return set(project["dependencies"]) | {r for name in ("dev", "live", "dist", "bench") for r in extras[name]}


def test_environment_yml_when_compared_to_pyproject_then_same_requirements():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert "python=3.11" in env["dependencies"]
    assert set(pip) == _pyproject_requirements()


def test_constraints_when_checked_against_pyproject_then_every_pin_satisfies_its_requirement():
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            name, version = line.split("==")
            pins[name.lower().replace("_", "-")] = version.strip()
    for spec in _pyproject_requirements():
        req = Requirement(spec)
        name = req.name.lower().replace("_", "-")
        assert name in pins, f"{name} has no pin in constraints.txt"
        assert req.specifier.contains(pins[name], prereleases=True), f"{name}=={pins[name]} breaks {spec}"


def test_sample_data_when_packaged_then_ships_parquet_and_its_readme():
    sample = ROOT / "bifrost" / "sample"
    assert (sample / "README.md").exists()
    assert len(list(sample.glob("*/*.parquet"))) >= 50
