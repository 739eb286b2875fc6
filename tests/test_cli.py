"""The ``cxr`` command: help for every sub-command and clear errors on bad usage."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from cxr.cli import SUBCOMMANDS


def cxr(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run ``cxr`` in a subprocess."""
    return subprocess.run(
        [sys.executable, "-m", "cxr", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        check=False,
        timeout=120,
    )


def test_root_help_lists_every_subcommand() -> None:
    done = cxr("--help")
    assert done.returncode == 0
    for name in SUBCOMMANDS:
        assert name in done.stdout


@pytest.mark.parametrize("name", sorted(SUBCOMMANDS))
def test_each_subcommand_has_help(name: str) -> None:
    done = cxr(name, "--help")
    assert done.returncode == 0, done.stderr
    assert "Usage" in done.stdout


def test_unknown_subcommand_fails_with_usage_error() -> None:
    done = cxr("frobnicate")
    assert done.returncode == 2
    assert "No such command" in done.stderr


def test_train_names_a_missing_dataset(tmp_path: Path) -> None:
    done = cxr("train", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "run"))
    assert done.returncode == 2
    assert "dataset not found" in done.stderr and "nope" in done.stderr


def test_serve_refuses_a_missing_repository(tmp_path: Path) -> None:
    done = cxr("serve", "--repo", str(tmp_path / "missing"))
    assert done.returncode == 2
    assert "model repository not found" in done.stderr


def test_client_predict_unreachable_server_is_a_connection_error(tmp_path: Path) -> None:
    image = tmp_path / "x.png"
    image.write_bytes(b"\x89PNG\r\n\x1a\n")
    done = cxr("client", "predict", str(image), "--url", "127.0.0.1:1", "--timeout", "2")
    assert done.returncode == 2
    assert "cannot use 127.0.0.1:1" in done.stderr


def test_client_predict_rejects_bad_options(tmp_path: Path) -> None:
    assert "--format" in cxr("client", "predict", "x", "--format", "xml").stderr
    assert "--priority" in cxr("client", "predict", "x", "--priority", "asap").stderr
    assert "--resume needs --out" in cxr("client", "predict", "x", "--resume").stderr
