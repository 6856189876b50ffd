"""requirements.lock, the image's dependencies pinned with hashes, agrees with pyproject.toml."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
LOCK = REPO / "requirements.lock"


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _locked() -> dict[str, tuple[str, int]]:
    """Package → (version, number of hashes) in requirements.lock."""
    text = LOCK.read_text()
    entries: dict[str, tuple[str, int]] = {}
    for block in re.split(r"\n(?=[A-Za-z0-9])", text):
        match = re.match(r"([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)", block)
        if match:
            entries[_normalise(match.group(1))] = (match.group(2), block.count("--hash=sha256:"))
    return entries


def test_lock_pins_every_dependency_of_pyproject_with_hashes() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    locked = _locked()
    for requirement in project["project"]["dependencies"]:
        name, version = requirement.split("==")
        assert _normalise(name) in locked, f"{name} is not in requirements.lock: run hack/lock-deps.sh"
        assert locked[_normalise(name)][0] == version, f"{name}: lock has {locked[_normalise(name)][0]}"
    assert "setuptools" in locked, "the build backend must be locked too (hack/lock-deps.sh)"
    unhashed = [name for name, (_, hashes) in locked.items() if hashes == 0]
    assert not unhashed, f"entries without a hash: {unhashed}"
