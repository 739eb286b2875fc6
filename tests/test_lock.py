"""The lock (``requirements/lock.txt``, made by ``make lock``) is what the environment holds, and it
satisfies every requirement that ``pyproject.toml`` declares."""

from __future__ import annotations

import re
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
LOCKS = {"full": ROOT / "requirements" / "lock.txt", "client": ROOT / "requirements" / "client.txt"}
#: Extras that the full lock covers (``tensorrt`` comes from NVIDIA's index, not locked here).
LOCKED_EXTRAS = ("train", "convert", "serve", "loadtest", "gateway", "certs", "fast", "dev")
#: Installed beside the locked packages: the project itself and the venv's own installer.
NOT_LOCKED = {"cxr-triage", "pip"}
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)", re.MULTILINE)


def pins(path: Path) -> dict[str, str]:
    """``{canonical name: version}`` of a pip-compile output."""
    return {canonicalize_name(name): version for name, version in PIN.findall(path.read_text())}


def declared() -> dict[str, list[Requirement]]:
    """The base requirements and those of each locked extra, from ``pyproject.toml``."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    found = {"base": [Requirement(r) for r in project["dependencies"]]}
    found |= {extra: [Requirement(r) for r in extras[extra]] for extra in LOCKED_EXTRAS}
    return found


def test_every_lock_line_is_pinned_with_hashes() -> None:
    for path in LOCKS.values():
        text = path.read_text()
        requirements = [line for line in text.splitlines() if line and line[0].isalnum()]
        assert requirements, path
        assert all(PIN.match(line) for line in requirements), path
        assert text.count("--hash=sha256:") >= len(requirements), path


@pytest.mark.parametrize("group", ["base", *LOCKED_EXTRAS])
def test_lock_satisfies_pyproject(group: str) -> None:
    locked = pins(LOCKS["full"])
    for requirement in declared()[group]:
        name = canonicalize_name(requirement.name)
        assert name in locked, f"{requirement} ({group}) is not in the lock: run `make lock`"
        assert requirement.specifier.contains(locked[name], prereleases=True), (
            f"{requirement} ({group}) does not admit the locked {name}=={locked[name]}"
        )


def test_client_lock_is_the_base_install_at_the_same_versions() -> None:
    full, client = pins(LOCKS["full"]), pins(LOCKS["client"])
    assert {canonicalize_name(r.name) for r in declared()["base"]} <= client.keys()
    assert {name: full.get(name) for name in client} == client
    assert "torch" not in client and "onnx" not in client


def test_environment_matches_the_lock() -> None:
    installed = {
        canonicalize_name(dist.metadata["Name"]): dist.version for dist in metadata.distributions()
    }
    locked = pins(LOCKS["full"])
    differ = {
        name: (installed.get(name), locked.get(name))
        for name in (installed.keys() | locked.keys()) - NOT_LOCKED
        if installed.get(name) != locked.get(name)
    }
    assert not differ, f"installed vs locked (run `make install` after `make lock`): {differ}"
