"""Helpers of the gateway tests: DICOM radiographs made from the synthetic X-rays, the
``cxr gateway`` command in a subprocess, DCMTK as a sender, and Orthanc as the PACS."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

#: Patient data in every test instance: none of it may reach the results log.
PATIENT = {"PatientName": "Roe^Richard^SECRETNAME", "PatientID": "PID-SECRET-0815"}
CR = "1.2.840.10008.5.1.4.1.1.1"
DX = "1.2.840.10008.5.1.4.1.1.1.1"
CT = "1.2.840.10008.5.1.4.1.1.2"
GATEWAY_AE = "CXR_TRIAGE"
#: Generous bound for anything to happen (a hang detector: >= 10x what it takes here).
HANG = 180.0
#: The ``cxr`` command of this checkout.
CXR = (sys.executable, "-c", "from cxr.cli import main; main()")


def wait_for(condition: Callable[[], Any], what: str, timeout: float = HANG) -> Any:
    """Poll ``condition`` until it returns something truthy; fail with ``what`` on a hang."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def free_port() -> int:
    return free_ports(1)[0]


def free_ports(count: int) -> list[int]:
    from cxr.server.triton import free_ports as triton_free_ports

    return triton_free_ports(count)


@dataclass
class Radiograph:
    """One test instance: its file, UIDs and the class of the synthetic image it holds."""

    path: Path
    sop_uid: str
    study_uid: str
    label: str


def radiograph_bytes(pixels: np.ndarray, sop_class: str, sop_uid: str, study_uid: str) -> bytes:
    """A single-frame 8-bit MONOCHROME2 radiograph with patient and study attributes."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, sop_uid
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=[study_uid, "series"])
    ds.Modality = "CT" if sop_class == CT else ("DX" if sop_class == DX else "CR")
    for keyword, value in PATIENT.items():
        setattr(ds, keyword, value)
    ds.PatientBirthDate, ds.PatientSex = "19500101", "O"
    ds.StudyDate, ds.StudyTime, ds.StudyID = "20260101", "120000", "1"
    ds.AccessionNumber, ds.ReferringPhysicianName = "ACC1", ""
    ds.SeriesNumber, ds.InstanceNumber = 1, 1
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit, ds.PixelRepresentation = 7, 0
    ds.PixelData = np.ascontiguousarray(pixels, dtype=np.uint8).tobytes()
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def make_radiographs(
    synthetic_data: Path, folder: Path, count: int, studies: int = 3, prefix: str = "1"
) -> list[Radiograph]:
    """``count`` CR and DX instances over ``studies`` studies, NORMAL and PNEUMONIA alternating."""
    from pydicom.uid import generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    pngs = {
        label: sorted((synthetic_data / "test" / label).glob("*.png"))
        for label in ("NORMAL", "PNEUMONIA")
    }
    made = []
    for index in range(count):
        label = ("NORMAL", "PNEUMONIA")[index % 2]
        png = pngs[label][(index // 2) % len(pngs[label])]
        pixels = np.asarray(Image.open(png).convert("L"))
        study = generate_uid(entropy_srcs=[prefix, folder.name, "study", str(index % studies)])
        sop = generate_uid(entropy_srcs=[prefix, folder.name, "sop", str(index)])
        path = folder / f"{index:04d}.dcm"
        path.write_bytes(radiograph_bytes(pixels, (CR, DX)[index % 2], sop, study))
        made.append(Radiograph(path, str(sop), str(study), label))
    return made


# -- DCMTK ------------------------------------------------------------------------------------
def dcmtk_tool(name: str) -> str | None:
    """DCMTK's ``name`` on PATH, skipping pynetdicom's apps of the same name (which pynetdicom
    installs into the virtualenv's bin)."""
    for folder in os.environ.get("PATH", "").split(os.pathsep):
        candidate = Path(folder) / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            version = subprocess.run(
                [str(candidate), "--version"], check=False, capture_output=True, text=True
            )
            if "dcmtk" in version.stdout.lower():
                return str(candidate)
    return None


@pytest.fixture(scope="session")
def dcmtk() -> None:
    """DCMTK's storescu and echoscu (skips when they are not installed)."""
    missing = [tool for tool in DCMTK if DCMTK[tool] is None]
    if missing:
        pytest.skip(f"DCMTK not installed ({', '.join(missing)}): apt-get install -y dcmtk")


DCMTK = {tool: dcmtk_tool(tool) for tool in ("storescu", "echoscu")}


def storescu(port: int, *files: Path, calling: str = "MODALITY") -> subprocess.CompletedProcess:
    """Send ``files`` to the gateway with DCMTK's storescu."""
    command = [str(DCMTK["storescu"]), "-aet", calling, "-aec", GATEWAY_AE, "127.0.0.1", str(port)]
    return subprocess.run(
        [*command, *map(str, files)], check=False, capture_output=True, text=True, timeout=HANG
    )


def echoscu(port: int, calling: str = "MODALITY") -> subprocess.CompletedProcess:
    """C-ECHO the gateway with DCMTK's echoscu."""
    command = [str(DCMTK["echoscu"]), "-aet", calling, "-aec", GATEWAY_AE, "127.0.0.1", str(port)]
    return subprocess.run(command, check=False, capture_output=True, text=True, timeout=HANG)


def cxr(*args: str) -> subprocess.CompletedProcess:
    """Run ``cxr ARGS...`` (this checkout's) to completion."""
    return subprocess.run([*CXR, *args], check=False, capture_output=True, text=True, timeout=HANG)


# -- the gateway ----------------------------------------------------------------------------
class GatewayProcess:
    """``cxr gateway`` in a subprocess on a free port."""

    def __init__(self, url: str, spool: Path, *options: str, port: int | None = None) -> None:
        self.port = port or free_port()
        self.spool = spool
        allowed = options[options.index("--allow-ae") + 1] if "--allow-ae" in options else "PROBE"
        self.probe_ae = allowed.split(",")[0]
        self.log = spool.parent / f"{spool.name}-gateway.log"
        command = [
            *CXR,
            "gateway",
            "--url",
            url,
            "--spool",
            str(spool),
            "--port",
            str(self.port),
            *options,
        ]
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_for(self._answers, f"the gateway to answer C-ECHO on port {self.port}")
        except BaseException:
            self.kill()
            raise

    def _answers(self) -> bool:
        if self.process.poll() is not None:
            raise AssertionError(f"the gateway exited: {self.log.read_text()[-3000:]}")
        return echoscu(self.port, calling=self.probe_ae).returncode == 0

    def counts(self) -> dict[str, int]:
        from cxr.gateway.status import summary

        return summary(self.spool)

    def results(self) -> list[dict[str, Any]]:
        path = self.spool / "results.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=HANG)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.kill()
                raise AssertionError("the gateway did not stop on SIGTERM within 60 s") from None


@pytest.fixture
def start_gateway() -> Iterator[Callable[..., GatewayProcess]]:
    """Start ``cxr gateway`` processes; all are stopped after the test."""
    started: list[GatewayProcess] = []

    def start(url: str, spool: Path, *options: str, port: int | None = None) -> GatewayProcess:
        gateway = GatewayProcess(url, spool, *options, port=port)
        started.append(gateway)
        return gateway

    yield start
    for gateway in started:
        with contextlib.suppress(Exception):
            gateway.stop()


# -- Orthanc ----------------------------------------------------------------------------------
class Orthanc:
    """An Orthanc of our own: loopback, free ports, its own storage; stop and start at will."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.http_port, self.dicom_port, self.gateway_port = free_ports(3)
        self.process: subprocess.Popen | None = None
        self.config = folder / "orthanc.json"
        settings = {
            "Name": "cxr-test-pacs",
            "StorageDirectory": str(folder / "storage"),
            "IndexDirectory": str(folder / "storage"),
            "HttpPort": self.http_port,
            "DicomPort": self.dicom_port,
            "DicomAet": "ORTHANC",
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomModalities": {"gw": [GATEWAY_AE, "127.0.0.1", self.gateway_port]},
            "Plugins": [],
            "SaveJobs": False,
            "StableAge": 1,
            "DicomScuTimeout": 30,
        }
        self.config.write_text(json.dumps(settings))

    @property
    def forward(self) -> str:
        return f"ORTHANC@127.0.0.1:{self.dicom_port}"

    def start(self) -> None:
        with open(self.folder / "orthanc.log", "ab") as log:
            self.process = subprocess.Popen(
                ["Orthanc", str(self.config)], stdout=log, stderr=subprocess.STDOUT
            )
        wait_for(self._up, "Orthanc to answer over REST")

    def _up(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            log = (self.folder / "orthanc.log").read_text()[-3000:]
            raise AssertionError(f"Orthanc exited: {log}")
        try:
            self.get("/system")
        except (urllib.error.URLError, ConnectionError):
            return False
        return True

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=60)
        self.process = None

    def request(self, method: str, path: str, body: bytes | None = None) -> bytes:
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.http_port}{path}", data=body, method=method
        )
        with urllib.request.urlopen(request, timeout=HANG) as reply:
            return reply.read()

    def get(self, path: str) -> Any:
        return json.loads(self.request("GET", path))

    def post(self, path: str, payload: Any) -> Any:
        body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        return json.loads(self.request("POST", path, body))

    def reports(self) -> list[bytes]:
        """Every SR instance Orthanc holds, as DICOM files."""
        found = self.post("/tools/find", {"Level": "Instance", "Query": {"Modality": "SR"}})
        return [self.request("GET", f"/instances/{id_}/file") for id_ in found]


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Orthanc]:
    """A running Orthanc (skips when it is not installed)."""
    if shutil.which("Orthanc") is None:
        pytest.skip("Orthanc not installed: apt-get install -y orthanc")
    pacs = Orthanc(tmp_path_factory.mktemp("orthanc"))
    pacs.start()
    try:
        yield pacs
    finally:
        pacs.stop()


def report_facts(data: bytes) -> dict[str, Any]:
    """What a test checks in a report: probability, finding, references, UIDs, wording."""
    import pydicom

    from cxr.gateway.sr import PNEUMONIA_CODE, PROBABILITY_CODE

    ds = pydicom.dcmread(io.BytesIO(data))
    facts: dict[str, Any] = {
        "sop_class": ds.SOPClassUID,
        "sop_uid": ds.SOPInstanceUID,
        "study_uid": ds.StudyInstanceUID,
        "series_uid": ds.SeriesInstanceUID,
        "description": ds.get("SeriesDescription", ""),
        "title": ds.ConceptNameCodeSequence[0].CodeMeaning,
        "template": ds.ContentTemplateSequence[0].TemplateIdentifier,
        "patient_id": ds.get("PatientID"),
        "sources": [],
        "texts": [],
    }

    def walk(items: Any) -> None:
        for item in items:
            name = item.ConceptNameCodeSequence[0] if "ConceptNameCodeSequence" in item else None
            if item.ValueType == "NUM" and name.CodeValue == PROBABILITY_CODE[0]:
                facts["probability"] = float(item.MeasuredValueSequence[0].NumericValue)
            elif item.ValueType == "CODE" and name.CodeValue == PNEUMONIA_CODE[0]:
                facts["finding"] = item.ConceptCodeSequence[0].CodeMeaning
            elif item.ValueType == "IMAGE":
                facts["sources"].append(item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID)
            elif item.ValueType == "TEXT":
                facts["texts"].append(item.TextValue)
            walk(item.get("ContentSequence", []))

    walk(ds.ContentSequence)
    return facts
