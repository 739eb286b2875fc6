"""``cxr gateway`` with real components: DCMTK and Orthanc as senders, Orthanc as the PACS that
receives the reports, the session's tritonserver for triage, and faults (kill -9 of the gateway,
PACS down, Triton down)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pydicom
import pytest
from gateway_support import (
    CT,
    GATEWAY_AE,
    PATIENT,
    Orthanc,
    cxr,
    make_radiographs,
    radiograph_bytes,
    report_facts,
    storescu,
    wait_for,
)

from cxr.client.sync_client import TriageClient
from cxr.gateway.sr import DISCLAIMER
from cxr.gateway.triage import model_card_fingerprint

pytestmark = pytest.mark.usefixtures("dcmtk")


def settled(gateway, count: int) -> bool:
    counts = gateway.counts()
    return counts["triaged"] + counts["failed"] >= count


def expected_probabilities(url: str, paths: list[Path]) -> list[float]:
    """What the client library says about the same files, in-process."""
    with TriageClient(url) as client:
        return [r.pneumonia_probability for r in client.predict([p.read_bytes() for p in paths])]


def test_store_triage_report_and_refusals(
    triton, synthetic_data: Path, tmp_path: Path, start_gateway
) -> None:
    images = make_radiographs(synthetic_data, tmp_path / "in", 6)
    corrupt = tmp_path / "corrupt.dcm"  # a valid stream whose header promises more pixels
    dataset = pydicom.dcmread(images[0].path)
    dataset.SOPInstanceUID, dataset.Rows = "1.2.3.998.1", dataset.Rows * 2
    dataset.save_as(corrupt)
    ct = tmp_path / "ct.dcm"
    ct.write_bytes(radiograph_bytes(make_pixels(), CT, "1.2.3.999.1", "1.2.3.999"))
    spool = tmp_path / "spool"
    gateway = start_gateway(triton.grpc_url, spool, "--allow-ae", "MODALITY,ED", "--stat-ae", "ED")

    assert storescu(gateway.port, *(i.path for i in images[:5])).returncode == 0
    assert storescu(gateway.port, images[5].path, calling="ED").returncode == 0
    assert storescu(gateway.port, corrupt).returncode == 0  # received: success, then an error row
    refused = storescu(gateway.port, images[0].path, calling="INTRUDER")
    assert refused.returncode != 0 and "Calling AE Title Not Recognized" in refused.stderr
    ct_refused = storescu(gateway.port, ct)
    assert ct_refused.returncode != 0 and "No presentation context" in ct_refused.stderr
    wait_for(lambda: settled(gateway, 7), "7 instances triaged")

    # Re-sent identical instances are recognised: no new result.
    assert storescu(gateway.port, *(i.path for i in images[:3])).returncode == 0
    counts = gateway.counts()
    assert counts["received"] == 7 and counts["duplicates"] == 3, counts
    assert counts["triaged"] == 6 and counts["failed"] == 1 and counts["pending"] == 0, counts
    assert counts["not_forwarded"] == 6, counts

    rows = gateway.results()
    text = (spool / "results.jsonl").read_text()
    for secret in PATIENT.values():
        assert secret not in text
    assert all(i.sop_uid not in text and i.study_uid not in text for i in images)
    assert len(rows) == 7 and len({r["key"] for r in rows}) == 7
    errors = [r for r in rows if not r["ok"]]
    assert len(errors) == 1 and errors[0]["error_code"] == "corrupt", errors
    ok = [r for r in rows if r["ok"]]
    assert Counter(r["priority"] for r in ok) == {"routine": 5, "stat": 1}

    # Each report: the client's probability for the same file, the finding at the threshold.
    expected = expected_probabilities(triton.grpc_url, [i.path for i in images])
    with TriageClient(triton.grpc_url) as client:
        fingerprint = model_card_fingerprint(client)
    reports = [report_facts(p.read_bytes()) for p in sorted((spool / "outbox").glob("*.dcm"))]
    by_source = {facts["sources"][0]: facts for facts in reports}
    assert len(reports) == 6 and set(by_source) == {i.sop_uid for i in images}
    for image, probability in zip(images, expected, strict=True):
        facts = by_source[image.sop_uid]
        assert facts["probability"] == pytest.approx(probability, abs=1e-5)
        assert facts["finding"] == ("Yes" if image.label == "PNEUMONIA" else "No")
        assert facts["study_uid"] == image.study_uid
        assert facts["title"] == "Imaging Measurement Report" and facts["template"] == "1500"
        assert DISCLAIMER in facts["description"]
        assert facts["sop_uid"] in {r["report_uid"] for r in ok}
    assert len({f["series_uid"] for f in reports}) == len({i.study_uid for i in images})
    assert all(r["model_card_fingerprint"] == fingerprint for r in ok)

    status = cxr("gateway", "status", "--spool", str(spool), "--json")
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout) == gateway.counts()


def make_pixels():
    import numpy as np

    return (np.arange(64 * 64, dtype=np.uint32).reshape(64, 64) % 251).astype(np.uint8)


def test_high_priority_c_store_is_stat(triton, synthetic_data: Path, tmp_path: Path, start_gateway):
    from pydicom import dcmread
    from pynetdicom import AE
    from pynetdicom.sop_class import ComputedRadiographyImageStorage

    image = make_radiographs(synthetic_data, tmp_path / "in", 1)[0]
    gateway = start_gateway(triton.grpc_url, tmp_path / "spool")
    ae = AE(ae_title="SCANNER")
    ae.add_requested_context(ComputedRadiographyImageStorage)
    assoc = ae.associate("127.0.0.1", gateway.port, ae_title=GATEWAY_AE)
    assert assoc.is_established
    status = assoc.send_c_store(dcmread(image.path), priority=1)
    assoc.release()
    assert status.Status == 0
    wait_for(lambda: settled(gateway, 1), "the instance triaged")
    assert [r["priority"] for r in gateway.results()] == ["stat"]


def test_orthanc_round_trip_survives_kill_9(
    triton, synthetic_data: Path, tmp_path: Path, start_gateway, orthanc: Orthanc
) -> None:
    """50 instances pushed from Orthanc; the gateway is killed mid-stream and restarted; Orthanc
    pushes again (as a PACS retries a failed job): every instance has exactly one report."""
    images = make_radiographs(synthetic_data, tmp_path / "in", 50, studies=5, prefix="kill")
    ids = [orthanc.post("/instances", i.path.read_bytes())["ID"] for i in images]
    spool = tmp_path / "spool"
    options = ("--forward", orthanc.forward, "--allow-ae", "ORTHANC")
    gateway = start_gateway(triton.grpc_url, spool, *options, port=orthanc.gateway_port)
    job = orthanc.post("/modalities/gw/store", {"Resources": ids, "Asynchronous": True})
    wait_for(lambda: gateway.counts()["received"] >= 10, "10 instances received")
    gateway.kill()
    killed_at = gateway.counts()
    print(f"state of the spool at kill -9: {killed_at}")
    assert killed_at["forwarded"] < 50, killed_at  # killed mid-stream
    wait_for(
        lambda: orthanc.get(f"/jobs/{job['ID']}")["State"] in ("Success", "Failure"),
        "Orthanc's job to end",
    )

    gateway = start_gateway(triton.grpc_url, spool, *options, port=orthanc.gateway_port)
    orthanc.post("/modalities/gw/store", {"Resources": ids, "Synchronous": True})
    wait_for(lambda: gateway.counts()["forwarded"] >= 50, "50 reports forwarded")
    counts = gateway.counts()
    assert counts["received"] == 50 and counts["triaged"] == 50, (killed_at, counts)
    assert counts["duplicates"] >= killed_at["received"], (killed_at, counts)

    reports = [report_facts(data) for data in orthanc.reports()]
    sources = Counter(source for facts in reports for source in facts["sources"])
    assert sources == Counter({i.sop_uid: 1 for i in images})
    rows = gateway.results()
    assert len(rows) == 50 and len({r["key"] for r in rows}) == 50
    for image, facts in zip(images, sorted(reports, key=lambda f: ordinal(images, f)), strict=True):
        assert facts["finding"] == ("Yes" if image.label == "PNEUMONIA" else "No")
        assert facts["study_uid"] == image.study_uid
        assert facts["patient_id"] == PATIENT["PatientID"]  # the report joins the patient's study


def ordinal(images, facts) -> int:
    return [i.sop_uid for i in images].index(facts["sources"][0])


def test_pacs_down_then_back(
    triton, synthetic_data: Path, tmp_path: Path, start_gateway, orthanc: Orthanc
) -> None:
    images = make_radiographs(synthetic_data, tmp_path / "in", 4, prefix="pacs-down")
    before = len(orthanc.reports())
    orthanc.stop()
    try:
        gateway = start_gateway(triton.grpc_url, tmp_path / "spool", "--forward", orthanc.forward)
        assert storescu(gateway.port, *(i.path for i in images)).returncode == 0
        wait_for(lambda: settled(gateway, 4), "4 instances triaged")
        counts = gateway.counts()
        assert counts["outbox"] == 4 and counts["forwarded"] == 0, counts
        gateway.stop()  # undelivered reports stay in the outbox across a restart
        gateway = start_gateway(triton.grpc_url, tmp_path / "spool", "--forward", orthanc.forward)
    finally:
        orthanc.start()
    wait_for(lambda: gateway.counts()["forwarded"] == 4, "the 4 reports delivered")
    reports = [report_facts(data) for data in orthanc.reports()]
    assert len(reports) == before + 4
    assert {i.sop_uid for i in images} <= {s for f in reports for s in f["sources"]}


def test_triton_down_instances_wait(
    model_repo: Path, synthetic_data: Path, tmp_path: Path, start_gateway
) -> None:
    from cxr.server.triton import ServerConfig, TritonServer, free_ports

    images = make_radiographs(synthetic_data, tmp_path / "in", 4, prefix="triton-down")
    grpc_port, http_port, metrics_port = free_ports(3)
    gateway = start_gateway(f"127.0.0.1:{grpc_port}", tmp_path / "spool", "--timeout", "2")
    assert storescu(gateway.port, *(i.path for i in images)).returncode == 0
    counts = gateway.counts()
    assert counts["received"] == 4 and counts["triaged"] == 0 and counts["failed"] == 0, counts
    config = ServerConfig(
        model_repo, grpc_port=grpc_port, http_port=http_port, metrics_port=metrics_port
    )
    with TritonServer(config):
        wait_for(lambda: gateway.counts()["triaged"] == 4, "the 4 waiting instances triaged")
    assert gateway.counts()["failed"] == 0
    assert len(gateway.results()) == 4


def test_status_of_a_missing_spool(tmp_path: Path) -> None:
    status = cxr("gateway", "status", "--spool", str(tmp_path / "nothing"))
    assert status.returncode == 2 and "not a gateway spool" in status.stderr


def test_bad_forward_destination(tmp_path: Path) -> None:
    run = cxr("gateway", "--url", "127.0.0.1:1", "--spool", str(tmp_path / "s"), "--forward", "P:1")
    assert run.returncode == 2 and "AE@HOST:PORT" in run.stderr


def test_bench_gateway_runs_end_to_end(model_repo: Path) -> None:
    """The benchmark's plumbing (its figures are not judged here)."""
    run = cxr("bench", "gateway", str(model_repo), "-n", "4", "-k", "2", "--size", "256", "--json")
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(run.stdout)
    assert report["images"] == 4 and report["associations"] == 2
    assert 0 < report["latency_p50_ms"] <= report["latency_p99_ms"]
