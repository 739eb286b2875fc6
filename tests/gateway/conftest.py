"""Fixtures of the gateway tests (defined in ``tests/gateway_support.py``)."""

from gateway_support import dcmtk, orthanc, start_gateway

__all__ = ["dcmtk", "orthanc", "start_gateway"]
