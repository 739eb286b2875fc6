"""``cxr bench gateway``: the DICOM gateway end to end against ``cxr client predict``.

N generated radiographs (12-bit, full size) are sent over K parallel associations to a
``cxr gateway`` process that triages them on a local embedded tritonserver and forwards each
report to a pynetdicom Storage SCP standing in for PACS. Measured: the ingest rate (C-STORE
responses per second), the latency from the start of each C-STORE to its report stored at the
destination (p50, p99), the end-to-end rate, and, on the same files and server, ``cxr client
predict``'s rate; the per-image cost of each is wall time / N.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from cxr.runtime.speed import latency_percentiles

GATEWAY_AE, PACS_AE, SENDER_AE = "CXR_TRIAGE", "BENCH_PACS", "BENCH_MODALITY"
CXR = (sys.executable, "-c", "from cxr.cli import main; main()")
CR = "1.2.840.10008.5.1.4.1.1.1"


def write_radiographs(folder: Path, count: int, size: int, seed: int = 0) -> list[Path]:
    """``count`` 12-bit CR instances of ``size`` x ``size`` (smooth synthetic content)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    rng = np.random.default_rng(seed)
    rows = np.linspace(0, 1, size, dtype=np.float32)
    base = np.outer(np.sin(rows * np.pi), np.sin(rows * np.pi)) * 3000
    paths = []
    for index in range(count):
        noise = rng.integers(0, 900, size=(size, size), dtype=np.uint16)
        pixels = (base + noise).astype(np.uint16)
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CR
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = CR, meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID = generate_uid(entropy_srcs=[str(seed), str(index // 10)])
        ds.SeriesInstanceUID = generate_uid(entropy_srcs=[str(seed), str(index // 10), "s"])
        ds.Modality, ds.PatientID, ds.PatientName = "CR", "BENCH", "Bench^Synthetic"
        ds.Rows = ds.Columns = size
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.PixelData = pixels.tobytes()
        path = folder / f"{index:05d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


class ReportSink:
    """A Storage SCP that notes when the report of each source instance arrives."""

    def __init__(self, port: int) -> None:
        from pynetdicom import AE, evt
        from pynetdicom.sop_class import ComprehensiveSRStorage

        self.arrived: dict[str, float] = {}
        self.done = threading.Condition()
        ae = AE(ae_title=PACS_AE)
        ae.add_supported_context(ComprehensiveSRStorage)
        self.server = ae.start_server(
            ("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, self._store)]
        )

    def _store(self, event: Any) -> int:
        ds = event.dataset
        evidence = ds.CurrentRequestedProcedureEvidenceSequence[0]
        source = evidence.ReferencedSeriesSequence[0].ReferencedSOPSequence[0]
        with self.done:
            self.arrived.setdefault(str(source.ReferencedSOPInstanceUID), time.monotonic())
            self.done.notify_all()
        return 0x0000

    def wait(self, count: int, timeout: float) -> None:
        """Until ``count`` reports arrived (RuntimeError after ``timeout`` seconds)."""
        with self.done:
            if not self.done.wait_for(lambda: len(self.arrived) >= count, timeout):
                raise RuntimeError(f"{len(self.arrived)} of {count} reports in {timeout:.0f} s")

    def close(self) -> None:
        """Stop listening."""
        self.server.shutdown()


def send(port: int, paths: list[Path], associations: int) -> dict[str, tuple[float, float]]:
    """C-STORE ``paths`` over ``associations`` parallel associations: SOP UID -> (start, end)."""
    import pydicom
    from pynetdicom import AE
    from pynetdicom.sop_class import ComputedRadiographyImageStorage

    times: dict[str, tuple[float, float]] = {}
    errors: list[str] = []

    def worker(share: list[Path]) -> None:
        ae = AE(ae_title=SENDER_AE)
        ae.add_requested_context(ComputedRadiographyImageStorage)
        assoc = ae.associate("127.0.0.1", port, ae_title=GATEWAY_AE)
        if not assoc.is_established:
            errors.append("association refused")
            return
        for path in share:
            ds = pydicom.dcmread(path)
            started = time.monotonic()
            status = assoc.send_c_store(ds)
            if status.get("Status") != 0:
                errors.append(f"C-STORE status {status.get('Status')}")
            times[str(ds.SOPInstanceUID)] = (started, time.monotonic())
        assoc.release()

    threads = [
        threading.Thread(target=worker, args=(paths[k::associations],)) for k in range(associations)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise RuntimeError(f"sending failed: {errors[:3]}")
    return times


def client_predict(url: str, folder: Path, out: Path, concurrency: int) -> float:
    """Wall seconds of ``cxr client predict FOLDER`` (start-up included)."""
    started = time.monotonic()
    command = [*CXR, "client", "predict", str(folder), "--url", url, "--format", "jsonl"]
    command += ["--out", str(out), "--concurrency", str(concurrency)]
    run = subprocess.run(command, check=False, capture_output=True, text=True)
    if run.returncode != 0:
        raise RuntimeError(f"cxr client predict failed: {run.stderr[-2000:]}")
    return time.monotonic() - started


def wait_for_echo(port: int, process: subprocess.Popen, timeout: float = 120.0) -> None:
    """Until the gateway answers C-ECHO."""
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError("the gateway exited at start")
        ae = AE(ae_title=SENDER_AE)
        ae.add_requested_context(Verification)
        assoc = ae.associate("127.0.0.1", port, ae_title=GATEWAY_AE)
        if assoc.is_established:
            assoc.release()
            return
        time.sleep(0.2)
    raise RuntimeError(f"the gateway did not answer within {timeout:.0f} s")


def bench_gateway(
    repo: Path, count: int, associations: int, size: int, workers: int, concurrency: int
) -> dict[str, Any]:
    """Run the benchmark on ``repo`` (its deployed model); figures as a dict."""
    from cxr.server.triton import ServerConfig, TritonServer, free_ports

    with tempfile.TemporaryDirectory(prefix="cxr-bench-gateway-") as scratch:
        work = Path(scratch)
        (work / "images").mkdir()
        paths = write_radiographs(work / "images", count, size)
        config = ServerConfig.on_free_ports(repo)
        with TritonServer(config) as server:
            url = server.grpc_url
            client_predict(url, work / "images", work / "warmup.jsonl", concurrency)  # warm-up
            client_s = client_predict(url, work / "images", work / "client.jsonl", concurrency)
            sink_port, gateway_port = free_ports(2)
            sink = ReportSink(sink_port)
            command = [*CXR, "gateway", "--url", url, "--spool", str(work / "spool")]
            command += ["--port", str(gateway_port), "--workers", str(workers)]
            command += ["--forward", f"{PACS_AE}@127.0.0.1:{sink_port}"]
            with open(work / "gateway.log", "wb") as log:
                gateway = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
            try:
                wait_for_echo(gateway_port, gateway)
                first = time.monotonic()
                times = send(gateway_port, paths, associations)
                ingest_end = max(end for _, end in times.values())
                sink.wait(count, timeout=120.0 + 2.0 * count)
            except RuntimeError as err:
                log = (work / "gateway.log").read_text(errors="replace")[-1500:]
                raise RuntimeError(f"{err}; the gateway's log ends with:\n{log}") from err
            finally:
                gateway.terminate()
                gateway.wait(timeout=60)
                sink.close()
    p50, _, p99 = latency_percentiles([(sink.arrived[u] - times[u][0]) * 1000 for u in times])
    gateway_s = max(sink.arrived.values()) - first
    return {
        "images": count,
        "size": size,
        "associations": associations,
        "workers": workers,
        "ingest_per_s": count / (ingest_end - first),
        "latency_p50_ms": p50,
        "latency_p99_ms": p99,
        "gateway_per_s": count / gateway_s,
        "gateway_ms_per_image": gateway_s / count * 1000,
        "client_per_s": count / client_s,
        "client_ms_per_image": client_s / count * 1000,
        "client_concurrency": concurrency,
        "added_cost": gateway_s / client_s - 1,
    }
