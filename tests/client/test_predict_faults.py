"""Faults in the middle of ``cxr client predict`` over 500 images: the server is SIGKILLed (and
restarted), or the command itself is SIGKILLed; ``--resume`` then ends with exactly one row per
input, every one a success."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from cxr.client.results import read_rows, row_ok

TRANSIENT = {"unavailable", "server_busy", "deadline_exceeded"}


def wait_for_rows(out: Path, fmt: str, count: int, process: subprocess.Popen) -> int:
    """Wait until ``out`` holds ``count`` rows (the command must still be running)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()
        rows = len(read_rows(out, fmt))
        if rows >= count:
            return rows
        time.sleep(0.01)
    raise AssertionError(f"fewer than {count} rows after 60 s")


def children(pid: int) -> list[int]:
    """The processes ``pid`` started (its decoding workers)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # ended meanwhile
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def running(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie, ended but not yet reaped, is not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def names(inputs: list[Path], out: Path) -> list[str]:
    """The sources of ``inputs`` in the rows of ``out``: paths relative to its folder."""
    return [os.path.relpath(path, out.parent) for path in inputs]


def assert_complete(out: Path, fmt: str, inputs: list[Path]) -> list[dict]:
    """Exactly one row per input, every one a success."""
    rows = read_rows(out, fmt)
    sources = [row["source"] for row in rows]
    assert len(sources) == len(set(sources)), "duplicate rows"
    assert set(sources) == set(names(inputs, out)), "inputs lost"
    assert all(row_ok(row) for row in rows), [r for r in rows if not row_ok(r)][:3]
    return rows


def test_server_killed_mid_run_then_restarted(
    model_repo: Path, many_pngs: list[Path], tmp_path: Path, start_server, run_cli, cli_command
) -> None:
    from cxr.server.triton import free_ports

    ports = dict(zip(("grpc_port", "http_port", "metrics_port"), free_ports(3), strict=True))
    server = start_server(model_repo, **ports)
    out = tmp_path / "rows.jsonl"
    args = ["predict", str(many_pngs[0].parent), "--url", server.grpc_url, "--format", "jsonl"]
    args += ["--out", str(out), "--timeout", "3", "--concurrency", "2"]
    started = time.monotonic()
    process = subprocess.Popen(
        cli_command(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    wait_for_rows(out, "jsonl", 50, process)
    os.killpg(server.process.pid, signal.SIGKILL)  # tritonserver and its Python stubs
    server.stop()
    _, stderr = process.communicate(timeout=120)
    elapsed = time.monotonic() - started
    # The run ends with a row for every input: the outage is reported, not waited out forever.
    assert process.returncode == 1, stderr
    rows = read_rows(out, "jsonl")
    assert sorted(row["source"] for row in rows) == sorted(names(many_pngs, out))
    failed = [row for row in rows if not row_ok(row)]
    assert failed, "the server died after the run had finished: the test proves nothing"
    assert {row["error_code"] for row in failed} <= TRANSIENT
    assert "server unreachable" in stderr and "--resume" in stderr
    # Without the fast failure every request left would wait out its 3 s deadline, two at a
    # time: over 10 minutes for the hundreds left. 150 s only tells the two behaviours apart.
    assert elapsed < 150, f"{elapsed:.0f} s: every request waited out its deadline"

    start_server(model_repo, **ports)  # the same ports and repository
    done = run_cli(*args, "--resume")
    assert done.returncode == 0, done.stderr
    assert f"{len(rows) - len(failed)} already done" in done.stderr
    assert_complete(out, "jsonl", many_pngs)


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "json"])
def test_command_killed_mid_run_then_resumed(
    triton, many_pngs: list[Path], tmp_path: Path, run_cli, cli_command, fmt: str
) -> None:
    out = tmp_path / f"rows.{fmt}"
    args = ["predict", str(many_pngs[0].parent), "--url", triton.grpc_url, "--format", fmt]
    args += ["--out", str(out), "--concurrency", "2"]
    process = subprocess.Popen(
        cli_command(*args), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    wait_for_rows(out, fmt, 100, process)
    workers = children(process.pid)
    assert workers, "no decoding process to outlive the command"
    process.send_signal(signal.SIGKILL)
    process.wait(10)
    survived = read_rows(out, fmt)
    assert 100 <= len(survived) < len(many_pngs), "killed too late: the test proves nothing"
    deadline = time.monotonic() + 15  # they look for their parent once a second
    while any(map(running, workers)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(map(running, workers)), "decoding processes outlived the killed command"
    done = run_cli(*args, "--resume")
    assert done.returncode == 0, done.stderr
    rows = assert_complete(out, fmt, many_pngs)
    kept = {row["source"]: row["latency_ms"] for row in survived}
    # rows flushed before the kill were kept, not sent again
    assert sum(kept.get(row["source"]) == row["latency_ms"] for row in rows) >= len(survived)
