"""The tested set of versions: constraints.txt pins every package exactly, pyproject.toml's ranges end at the
tested releases, and the README's commands and CI install under the constraints."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]


def _pins() -> dict[str, Version]:
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            assert version, f"constraints.txt: {line!r} is not an exact pin"
            pins[re.sub(r"[-_.]+", "-", name).lower()] = Version(version)
    return pins


def _requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return [Requirement(r) for r in project["dependencies"] + project["optional-dependencies"]["test"]]


def test_every_dependency_is_pinned_within_its_range_and_the_range_has_a_tested_upper_bound():
    pins = _pins()
    assert "instantcharacter-studio" not in pins  # the project itself is installed from the tree
    assert str(pins["torch"]) == "2.13.0"  # by version only: the +cpu and +cuXXX builds both satisfy it
    for requirement in _requirements():
        name = re.sub(r"[-_.]+", "-", requirement.name).lower()
        assert name in pins, f"{name} is not in constraints.txt"
        assert requirement.specifier.contains(pins[name]), f"{name}=={pins[name]} is outside {requirement.specifier}"
        assert any(s.operator in ("<", "<=", "==") for s in requirement.specifier), f"{name} has no upper bound"


def test_the_readme_commands_and_ci_install_under_the_constraints():
    readme = (ROOT / "README.md").read_text()
    setup = readme.split("## Set-up", 1)[1].split("\n## ", 1)[0]
    commands = re.findall(r"```bash\n(.*?)\n```", setup, re.S)
    assert len(commands) == 2  # install and launch; install and test
    launch, test = commands
    assert launch == "pip install -e . -c constraints.txt && instantcharacter-studio"  # one line for a CUDA user
    assert "\n" not in test and '-e ".[test]" -c constraints.txt' in test
    assert test.startswith("pip install torch==2.13.0 --index-url ") and test.split()[4].endswith("/whl/cpu")
    assert "-c constraints.txt" in (ROOT / ".ci" / "run").read_text()
