"""The client caps gRPC messages at the largest legitimate request (``client.contract``), so an
oversized request fails on the client with ``too_large`` instead of travelling to the server."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from fuzz_inputs import png_bytes

from cxr.client import TriageClient, contract
from cxr.client.core import Connection


def test_the_caps_follow_the_contract() -> None:
    options = dict(Connection().client_kwargs()["channel_args"])
    assert options["grpc.max_send_message_length"] == contract.MAX_REQUEST_BYTES
    assert options["grpc.max_receive_message_length"] == contract.MAX_RESPONSE_BYTES
    assert contract.MAX_REQUEST_BYTES > contract.MAX_FILE_BYTES  # a largest file still fits


def test_a_request_above_the_cap_is_refused_by_the_client(
    triton, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    big = tmp_path / "big.png"
    big.write_bytes(png_bytes(np.random.default_rng(3).integers(0, 256, (1200, 1200), np.uint8)))
    small = tmp_path / "small.png"
    small.write_bytes(png_bytes(np.zeros((64, 64), np.uint8)))
    cap = big.stat().st_size // 2  # a cap the big file exceeds, the small one does not
    monkeypatch.setattr(contract, "MAX_REQUEST_BYTES", cap)
    with TriageClient(triton.grpc_url, server_preprocess=True, timeout=60) as client:
        refused, served = client.predict([big, small])
    assert not refused.ok and refused.code == "too_large", refused
    assert "larger than max" in refused.message
    assert served.ok, served
