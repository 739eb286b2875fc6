"""``cxr client predict|health|models`` as a user runs them (a subprocess) against a real server:
formats, exit codes, one row per input, bad files, resume, and no patient data anywhere."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
from pathlib import Path

import pydicom
import pytest

from cxr.client import contract
from cxr.client.inputs import PIXEL_ATTRIBUTES, describe, server_payload
from cxr.client.results import COLUMNS


def parse(text: str, fmt: str) -> list[dict]:
    """Rows of a json / jsonl / csv output."""
    if fmt == "json":
        return json.loads(text)
    if fmt == "jsonl":
        return [json.loads(line) for line in text.splitlines() if line]
    reader = csv.DictReader(io.StringIO(text))
    assert tuple(reader.fieldnames or ()) == COLUMNS
    return list(reader)


def is_ok(row: dict) -> bool:
    return row["ok"] in (True, "True")


@pytest.mark.parametrize("fmt", ["json", "jsonl", "csv"])
def test_machine_formats_give_one_row_per_input(
    triton, run_cli, xray_pngs: list[Path], bad_inputs: dict, fmt: str
) -> None:
    bad = next(path for path, code in bad_inputs.items() if code == "not_an_image")
    inputs = [*reversed(xray_pngs), bad]
    done = run_cli("predict", *map(str, inputs), "--url", triton.grpc_url, "--format", fmt)
    assert done.returncode == 1, done.stderr
    rows = parse(done.stdout, fmt)
    assert set(rows[0]) == set(COLUMNS)
    sources = [row["source"] for row in rows]
    assert sorted(sources) == sorted(map(str, inputs))
    if fmt == "json":  # json (and table) keep the input order; streams are in completion order
        assert sources == list(map(str, inputs))
    by_source = {row["source"]: row for row in rows}
    assert not is_ok(by_source[str(bad)]) and by_source[str(bad)]["error_code"] == "not_an_image"
    for path in xray_pngs:
        row = by_source[str(path)]
        assert is_ok(row) and row["label"] in ("NORMAL", "PNEUMONIA") and not row["error_code"]
        assert 0 <= float(row["pneumonia_probability"]) <= 1
    assert "not_an_image 1" in done.stderr


def test_table_lists_inputs_in_order(triton, run_cli, xray_pngs: list[Path]) -> None:
    inputs = [*reversed(xray_pngs), Path("/no/such.png")]
    done = run_cli("predict", *map(str, inputs), "--url", triton.grpc_url)
    assert done.returncode == 1, done.stderr
    positions = [done.stdout.index(str(path)) for path in inputs]
    assert positions == sorted(positions)
    assert "not_found" in done.stdout and "URGENT" in done.stdout


def test_exit_code_zero_when_all_succeed_with_every_option(
    triton, run_cli, xray_pngs: list[Path], tmp_path: Path
) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    for path in xray_pngs:
        shutil.copy(path, folder / path.name)
    out = tmp_path / "sub" / "out.csv"
    done = run_cli(
        "predict", str(folder), "--url", triton.grpc_url, "--priority", "stat",
        "--format", "csv", "--out", str(out), "--concurrency", "3", "--timeout", "20",
        "--server-preprocess", "--workers", "2",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout == ""  # rows went to --out
    rows = parse(out.read_text(), "csv")
    assert sorted(r["source"] for r in rows) == sorted(f"../in/{p.name}" for p in xray_pngs)
    assert {r["model"] for r in rows} == {"pneumonia"} and all(map(is_ok, rows))


def test_usage_errors_exit_2(triton, run_cli, tmp_path: Path, xray_pngs: list[Path]) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    image = str(xray_pngs[0])
    cases = {
        "no input files": ("predict", str(empty), "--url", triton.grpc_url),
        "--concurrency": ("predict", image, "--concurrency", "0"),
        "--timeout": ("predict", image, "--timeout", "0"),
        "--workers": ("predict", image, "--workers", "0"),
        "is a folder": ("predict", image, "--out", str(tmp_path)),
        "go together": ("predict", image, "--ssl", "--client-cert", image),
        "without --ssl": ("predict", image, "--root-cert", image),
        "model": ("predict", image, "--url", triton.grpc_url, "--model", "nope"),
    }
    for expected, args in cases.items():
        done = run_cli(*args)
        assert done.returncode == 2, (args, done.stderr)
        assert expected in done.stderr, (expected, done.stderr)
    assert not list(tmp_path.glob("*.tmp"))


def test_bad_files_each_get_their_reason(
    triton, run_cli, bad_inputs: dict, xray_pngs: list[Path], tmp_path: Path
) -> None:
    folder = next(iter(bad_inputs)).parent
    out = tmp_path / "rows.jsonl"
    done = run_cli(
        "predict", str(folder), str(xray_pngs[0]), "--url", triton.grpc_url,
        "--format", "jsonl", "--out", str(out),
    )  # fmt: skip
    assert done.returncode == 1, done.stderr
    rows = {
        os.path.normpath(tmp_path / row["source"]): row for row in parse(out.read_text(), "jsonl")
    }
    assert len(rows) == len(bad_inputs) + 1
    for path, code in bad_inputs.items():
        assert rows[str(path)]["error_code"] == code, rows[str(path)]
        assert rows[str(path)]["error"]
    assert is_ok(rows[str(xray_pngs[0])])
    assert f"{len(bad_inputs)} failed" in done.stderr


@pytest.mark.parametrize("server_preprocess", [False, True])
def test_no_patient_data_in_any_output(
    triton, run_cli, phi_dicom: Path, patient: dict, tmp_path: Path, server_preprocess: bool
) -> None:
    texts = []
    for fmt, to_file in (("table", False), ("json", False), ("jsonl", True), ("csv", True)):
        out = tmp_path / f"out.{fmt}"
        args = ["predict", str(phi_dicom), "--url", triton.grpc_url, "--format", fmt]
        args += ["--out", str(out)] if to_file else []
        done = run_cli(*args, *(["--server-preprocess"] if server_preprocess else []))
        assert done.returncode == 0, done.stderr
        texts += [done.stdout, done.stderr, out.read_text() if to_file else ""]
    assert str(phi_dicom) in texts[0]
    for value in patient.values():
        assert not any(value in text for text in texts), value


@pytest.mark.parametrize("as_dataset", [False, True])
def test_only_pixels_are_sent(phi_dicom: Path, patient: dict, as_dataset: bool) -> None:
    value = pydicom.dcmread(phi_dicom) if as_dataset else phi_dicom
    prepared = describe(value, 0)
    payload = server_payload(value, prepared)
    for text in patient.values():
        assert text.encode() not in payload
    assert patient["PatientID"] not in prepared.source
    sent = pydicom.dcmread(io.BytesIO(payload))
    assert set(sent.dir()) <= set(PIXEL_ATTRIBUTES)
    original = pydicom.dcmread(phi_dicom)
    assert (sent.pixel_array == original.pixel_array).all()
    assert "SOPInstanceUID" not in sent and "PatientName" not in sent


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "json"])
def test_resume_keeps_successes_and_redoes_the_rest(
    triton, run_cli, xray_pngs: list[Path], tmp_path: Path, fmt: str
) -> None:
    out = tmp_path / f"out.{fmt}"
    files = list(map(str, xray_pngs))
    inputs = [os.path.relpath(path, tmp_path) for path in files]  # the rows' sources
    first = run_cli(
        "predict", *files[:3], "--url", triton.grpc_url, "--format", fmt, "--out", str(out)
    )
    assert first.returncode == 0, first.stderr
    before = {row["source"]: row for row in parse(out.read_text(), fmt)}
    # An interrupted run: one input failed for the server's sake, and the file ends mid-row.
    failed = {**before[inputs[2]], "ok": False, "error_code": "unavailable", "error": "down"}
    rows = [before[inputs[0]], before[inputs[1]], failed]
    if fmt == "json":  # json's rows are journalled beside the file until the run ends
        out.write_text(json.dumps(rows[:2]))
        (tmp_path / f".{out.name}.journal.jsonl").write_text(
            json.dumps(rows[2]) + "\n" + '{"source": "' + inputs[3]
        )
    elif fmt == "jsonl":
        out.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"source": "' + inputs[3])
    else:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        out.write_text(buffer.getvalue() + inputs[3] + ",True,PNEU")
    done = run_cli(
        "predict", *files, "--url", triton.grpc_url, "--format", fmt, "--out", str(out), "--resume"
    )
    assert done.returncode == 0, done.stderr
    assert "2 already done" in done.stderr
    after = parse(out.read_text(), fmt)
    assert sorted(row["source"] for row in after) == sorted(inputs)  # once each
    assert all(map(is_ok, after))
    by_source = {row["source"]: row for row in after}
    for source in inputs[:2]:  # kept as they were, not sent again
        assert by_source[source]["latency_ms"] == before[source]["latency_ms"]
    assert not list(tmp_path.glob(".*"))  # no journal or temporary file left


def test_resume_refuses_a_file_that_is_not_ours(triton, run_cli, xray_pngs, tmp_path) -> None:
    out = tmp_path / "notes.jsonl"
    out.write_text("precious notes\nmore notes\n")
    done = run_cli(
        "predict", str(xray_pngs[0]), "--url", triton.grpc_url,
        "--format", "jsonl", "--out", str(out), "--resume",
    )  # fmt: skip
    assert done.returncode == 2 and "cannot --resume" in done.stderr
    assert out.read_text() == "precious notes\nmore notes\n"


def test_output_inside_the_input_folder_is_not_an_input(triton, run_cli, xray_pngs, tmp_path):
    for path in xray_pngs[:2]:
        shutil.copy(path, tmp_path / path.name)
    out = tmp_path / "results.jsonl"
    for _ in range(2):
        done = run_cli(
            "predict", str(tmp_path), "--url", triton.grpc_url, "--format", "jsonl",
            "--out", str(out), "--resume",
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
    assert len(parse(out.read_text(), "jsonl")) == 2


def test_health(triton, run_cli, unused_port: int) -> None:
    done = run_cli("health", "--url", triton.grpc_url)
    assert done.returncode == 0, done.stderr
    assert "live=True ready=True pneumonia=ready" in done.stdout
    done = run_cli("health", "--url", triton.grpc_url, "--model", "nope")
    assert done.returncode == 1 and "nope=NOT READY" in done.stdout
    done = run_cli("health", "--url", f"127.0.0.1:{unused_port}", "--timeout", "1")
    assert done.returncode == 2 and "unavailable" in done.stderr


def test_models_on_an_open_server(triton, run_cli) -> None:
    done = run_cli("models", "--url", triton.grpc_url, "--format", "json")
    assert done.returncode == 0, done.stderr
    models = {m["name"]: m for m in json.loads(done.stdout)}
    assert {"pneumonia", "preprocess"} <= set(models)
    assert models["pneumonia"]["state"] == "READY" and models["pneumonia"]["versions"] == ["1"]
    assert models["pneumonia"]["inputs"][0]["name"] == "IMAGE_BYTES"
    table = run_cli("models", "--url", triton.grpc_url)
    assert table.returncode == 0 and "IMAGE_BYTES BYTES" in table.stdout


def test_models_with_and_without_the_admin_key(busy_server, run_cli, admin_key, queue_models):
    url = busy_server.grpc_url
    without = run_cli("models", "--url", url, "--format", "json")
    assert without.returncode == 0, without.stderr
    assert "pass --admin-key" in without.stderr
    listed = {m["name"] for m in json.loads(without.stdout)}
    assert "pneumonia" in listed and "preprocess" in listed
    assert not listed & set(queue_models.values())  # only the ensemble's models
    with_key = run_cli("models", "--url", url, "--format", "json", "--admin-key", admin_key)
    assert with_key.returncode == 0, with_key.stderr
    everything = {m["name"]: m["state"] for m in json.loads(with_key.stdout)}
    assert listed | set(queue_models.values()) <= set(everything)
    assert {everything[name] for name in listed | set(queue_models.values())} == {"READY"}
    others = set(everything) - listed - set(queue_models.values())
    assert all(name.startswith(contract.CLASSIFIER_PREFIX) for name in others), others
    wrong = run_cli("models", "--url", url, "--admin-key", "wrong")
    assert wrong.returncode == 2 and "admin key was refused" in wrong.stderr


def test_inputs_from_files_folders_and_globs(tmp_path: Path) -> None:
    from cxr.client.cli import expand_inputs

    for name in ("b/2.png", "b/c/3.dcm", "b/.hidden.png", "b/.git/x.png", "a.png", "noext"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    found = expand_inputs(
        [
            str(tmp_path / "b"),
            str(tmp_path / "*.png"),
            f"{tmp_path}/./a.png",  # the same file again, spelled differently
            str(tmp_path / "noext"),
            str(tmp_path / "missing.png"),
            str(tmp_path / "nothing*.png"),
        ],
        exclude=(tmp_path / "b" / "2.png",),
    )
    assert found == [
        str(tmp_path / "b" / "c" / "3.dcm"),
        str(tmp_path / "a.png"),
        str(tmp_path / "noext"),
        str(tmp_path / "missing.png"),  # kept: its row will say not_found
        str(tmp_path / "nothing*.png"),
    ]


@pytest.mark.parametrize("url", ["10.1.2.3:8001", "triage.example.org:8001"])
def test_models_never_sends_the_admin_key_in_clear(run_cli, url: str) -> None:
    done = run_cli("models", "--url", url, "--admin-key", "secret-key", "--timeout", "1")
    assert done.returncode == 2
    assert "needs --ssl: the key is never sent in clear" in done.stderr
