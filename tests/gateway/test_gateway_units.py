"""Gateway pieces without a server: spool, results log, crash recovery, reports, destinations."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
from gateway_support import CR, PATIENT, radiograph_bytes, report_facts
from pydicom.uid import UID

from cxr.client.protocol import Prediction
from cxr.gateway.forward import Destination
from cxr.gateway.results import ResultsLog
from cxr.gateway.service import Gateway
from cxr.gateway.spool import SR_KEPT, Spool
from cxr.gateway.sr import DISCLAIMER, Algorithm, build_report, derived_uid, report_uids


def receive(
    spool: Spool, uid: str, content: bytes = b"x", ae: str = "A", priority: str = "routine"
):
    return spool.receive(uid, CR, content.hex(), content, ae, priority)


def test_identical_resend_is_recognised_changed_content_is_not(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    assert receive(spool, "1.2.3", b"one")
    assert not receive(spool, "1.2.3", b"one")
    assert receive(spool, "1.2.3", b"two")  # same UID, new content: a correction
    counts = spool.counts()
    assert counts["received"] == 2 and counts["duplicates"] == 1 and counts["pending"] == 2


def test_stat_is_claimed_first_and_claims_are_exclusive(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    receive(spool, "1.1", b"a")
    receive(spool, "1.2", b"b", priority="stat")
    receive(spool, "1.3", b"c")
    claimed = [spool.claim(), spool.claim(), spool.claim()]
    assert [item.sop_uid for item in claimed] == ["1.2", "1.1", "1.3"]
    assert spool.claim() is None
    spool.release(claimed[0].key)
    assert spool.claim().key == claimed[0].key
    assert claimed[0].path.read_bytes() == b"b"


def test_results_log_drops_a_cut_line_and_never_repeats_a_key(tmp_path: Path) -> None:
    path = tmp_path / "results.jsonl"
    path.write_text(json.dumps({"key": "a"}) + "\n" + '{"key": "b", "ok": tr')
    log = ResultsLog(path)
    log.append({"key": "a", "ok": True})
    log.append({"key": "b", "ok": True})
    log.close()
    assert [json.loads(line)["key"] for line in path.read_text().splitlines()] == ["a", "b"]


def test_a_result_recorded_but_not_logged_is_logged_once_on_restart(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    receive(spool, "1.9", b"z")
    item = spool.claim()
    spool.finish(item.key, {"key": item.key, "ok": True}, SR_KEPT)  # then the crash
    spool.close()
    (tmp_path / "spool" / "instances" / ".partial.dcm.1.2.tmp").write_bytes(b"half")
    for _ in range(2):
        gateway = Gateway(tmp_path / "spool", tmp_path / "r.jsonl", make_client=None, ae_title="T")
        gateway.close()
    rows = (tmp_path / "r.jsonl").read_text().splitlines()
    assert [json.loads(row)["key"] for row in rows] == [item.key]
    assert not list((tmp_path / "spool" / "instances").glob(".*.tmp"))


def test_report_content_and_uids(tmp_path: Path) -> None:
    pixels = np.zeros((16, 16), np.uint8)
    header = pydicom.dcmread(io.BytesIO(radiograph_bytes(pixels, CR, "1.2.3.4", "1.2.3")))
    prediction = Prediction("x", "PNEUMONIA", {}, 0.8125, True, 0.5, "pneumonia_fp32", "1", 1.0)
    algorithm = Algorithm("pneumonia_fp32", "1", 0.5, "abcd")
    report = build_report(header, "d1", prediction, algorithm, "CXR_TRIAGE")
    buffer = io.BytesIO()
    report.save_as(buffer, enforce_file_format=True)
    facts = report_facts(buffer.getvalue())
    assert facts["probability"] == 0.8125 and facts["finding"] == "Yes"
    assert facts["sources"] == ["1.2.3.4"] and facts["study_uid"] == "1.2.3"
    assert facts["patient_id"] == PATIENT["PatientID"]
    assert DISCLAIMER in facts["description"]
    assert (facts["series_uid"], facts["sop_uid"]) == report_uids("1.2.3.4", "d1", "1.2.3")
    assert facts["sop_uid"] != report_uids("1.2.3.4", "d2", "1.2.3")[1]
    assert facts["series_uid"] != header.SeriesInstanceUID
    assert UID(derived_uid("anything")).is_valid and derived_uid("a") == derived_uid("a")


@pytest.mark.parametrize("text", ["PACS:104", "@host:104", "A@host", "A@host:0", "A@h:99999"])
def test_bad_destination_is_refused_with_the_expected_form(text: str) -> None:
    with pytest.raises(ValueError, match="AE@HOST:PORT"):
        Destination.parse(text)


def test_destination() -> None:
    assert Destination.parse("PACS@10.0.0.1:104") == Destination("PACS", "10.0.0.1", 104)


def test_report_of_a_source_without_optional_patient_and_study_attributes() -> None:
    pixels = np.zeros((16, 16), np.uint8)
    header = pydicom.dcmread(io.BytesIO(radiograph_bytes(pixels, CR, "1.2.3.5", "1.2.3")))
    for keyword in ("PatientBirthDate", "PatientSex", "StudyDate", "StudyTime", "StudyID"):
        delattr(header, keyword)
    prediction = Prediction("x", "NORMAL", {}, 0.125, False, 0.5, "pneumonia_fp32", "1", 1.0)
    report = build_report(header, "d", prediction, Algorithm("m", "1", 0.5, "f"), "CXR_TRIAGE")
    buffer = io.BytesIO()
    report.save_as(buffer, enforce_file_format=True)
    facts = report_facts(buffer.getvalue())
    assert facts["finding"] == "No" and facts["sources"] == ["1.2.3.5"]
    assert "PatientBirthDate" not in header  # the source header is not modified


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--port", "70000"], "--port"),
        (["--port", "0"], "--port"),
        (["--timeout", "0"], "--timeout"),
    ],
)
def test_bad_options_are_refused_before_anything_starts(
    tmp_path: Path, args: list[str], message: str
) -> None:
    import subprocess
    import sys

    spool = tmp_path / "spool"
    command = [
        sys.executable,
        "-m",
        "cxr",
        "gateway",
        "--url",
        "127.0.0.1:1",
        "--spool",
        str(spool),
    ]
    done = subprocess.run(
        [*command, *args], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 2, done.stderr
    assert message in done.stderr and "Traceback" not in done.stderr
    assert not spool.exists()
