"""cxr-triage client: pneumonia triage over Triton gRPC, and the contract every part shares.

Light on purpose (no torch, no onnx): hospital integrations install only this package.
``TriageClient`` and ``AsyncTriageClient`` are imported on first use, so ``import client`` and the
contract stay cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cxr.client.async_client import AsyncTriageClient
    from cxr.client.protocol import Backoff, Failure, Prediction, TriageError
    from cxr.client.sync_client import TriageClient

__all__ = ["AsyncTriageClient", "Backoff", "Failure", "Prediction", "TriageClient", "TriageError"]

_LAZY = {
    "TriageClient": "cxr.client.sync_client",
    "AsyncTriageClient": "cxr.client.async_client",
    "Prediction": "cxr.client.protocol",
    "Failure": "cxr.client.protocol",
    "TriageError": "cxr.client.protocol",
    "Backoff": "cxr.client.protocol",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'client' has no attribute {name!r}")
