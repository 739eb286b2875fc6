"""Instances of a model see whether their siblings are running a batch (flock files)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

from cxr.server.backend.config import intra_op_threads
from cxr.server.backend.siblings import PREFIX, Siblings, remove_stale


def test_an_instance_sees_a_sibling_run_and_stop(tmp_path: Path) -> None:
    first = Siblings(tmp_path / "locks", "m_0_0", 2)
    with first.running() as crowded:
        assert not crowded  # the sibling has not even started
    second = Siblings(tmp_path / "locks", "m_0_1", 2)
    with first.running() as crowded:
        assert not crowded and second.busy()
        with second.running() as crowded_too:
            assert crowded_too
    assert not first.busy() and not second.busy()
    first.close()
    assert not second.busy()  # a sibling that left is not running
    second.close()
    assert not (tmp_path / "locks").exists()  # the last one out removes the folder


def test_a_sibling_killed_while_running_is_not_busy(tmp_path: Path) -> None:
    folder = tmp_path / "locks"
    code = textwrap.dedent(f"""
        import os, sys
        from pathlib import Path
        from cxr.server.backend.siblings import PREFIX, Siblings, remove_stale
        with Siblings(Path({str(folder)!r}), "m_0_1", 2).running():
            print("running", flush=True)
            sys.stdin.read()
    """)
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(root)}
    with subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env
    ) as child:
        assert child.stdout is not None and child.stdout.readline() == b"running\n"
        me = Siblings(folder, "m_0_0", 2)
        assert me.busy()
        child.kill()
    assert not me.busy()
    me.close()


def test_threads_alone_and_shared() -> None:
    cores = len(os.sched_getaffinity(0))
    assert intra_op_threads("0", 2) == (cores, max(1, cores // 2))
    assert intra_op_threads("0", 1) == (cores, cores)
    assert intra_op_threads("3", 2) == (3, 3)  # a fixed count is used both times


def test_folders_of_servers_that_died_are_removed(tmp_path: Path) -> None:
    code = "import os; print(os.getpid())"
    gone = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    stale = tmp_path / f"{PREFIX}{gone.stdout.strip()}-m-1"
    live = tmp_path / f"{PREFIX}{os.getpid()}-m-1"
    for folder in (stale, live):
        folder.mkdir()
        (folder / "m_0_0").touch()
    remove_stale(tmp_path)
    assert not stale.exists() and (live / "m_0_0").exists()
