"""Receiving: a pynetdicom Storage SCP with Verification (C-ECHO).

Accepts the radiograph storage classes (CR, DX for presentation and for processing, Secondary
Capture) in the transfer syntaxes this installation's pydicom can decode; every other SOP class is
refused at association negotiation. An instance is acknowledged only after the spool holds it
durably; priority is STAT when the C-STORE priority is HIGH or the calling AE is a STAT source.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from cxr.gateway.spool import Spool

if TYPE_CHECKING:
    from pynetdicom import AE
    from pynetdicom.events import Event
    from pynetdicom.transport import ThreadedAssociationServer

log = logging.getLogger("gateway")

#: C-STORE priority HIGH (PS3.7 9.1.1.1: 0 MEDIUM, 1 HIGH, 2 LOW).
PRIORITY_HIGH = 1
STATUS_SUCCESS = 0x0000
STATUS_OUT_OF_RESOURCES = 0xA700
STATUS_CANNOT_UNDERSTAND = 0xC000


def storage_classes() -> list[str]:
    """The SOP classes the gateway accepts."""
    from pynetdicom.sop_class import (
        ComputedRadiographyImageStorage,
        DigitalXRayImageStorageForPresentation,
        DigitalXRayImageStorageForProcessing,
        SecondaryCaptureImageStorage,
    )

    return [
        ComputedRadiographyImageStorage,
        DigitalXRayImageStorageForPresentation,
        DigitalXRayImageStorageForProcessing,
        SecondaryCaptureImageStorage,
    ]


def transfer_syntaxes() -> list[str]:
    """The transfer syntaxes pynetdicom can negotiate and this pydicom can decode."""
    from pydicom.pixels import get_decoder
    from pynetdicom import ALL_TRANSFER_SYNTAXES

    usable = []
    for syntax in ALL_TRANSFER_SYNTAXES:
        try:
            if get_decoder(syntax).is_available:
                usable.append(syntax)
        except NotImplementedError:
            continue
    return usable


def build_ae(ae_title: str, allow_ae: Iterable[str] = ()) -> AE:
    """The application entity: storage and verification contexts, calling AE restrictions."""
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification

    ae = AE(ae_title=ae_title)
    ae.require_called_aet = True
    allowed = [title for title in allow_ae if title]
    if allowed:
        ae.require_calling_aet = allowed
    syntaxes = transfer_syntaxes()
    for sop_class in storage_classes():
        ae.add_supported_context(sop_class, syntaxes)
    ae.add_supported_context(Verification)
    ae.maximum_associations = 32
    return ae


def store_handler(
    spool: Spool, stat_ae: Iterable[str], on_new: Callable[[], None]
) -> Callable[[Event], int]:
    """The C-STORE handler: spool durably, then answer."""
    stat_sources = {title.strip() for title in stat_ae if title.strip()}

    def handle(event: Event) -> int:
        request = event.request
        sop_uid = str(request.AffectedSOPInstanceUID or "")
        if not sop_uid:
            return STATUS_CANNOT_UNDERSTAND
        calling = str(event.assoc.requestor.ae_title).strip()
        stat = request.Priority == PRIORITY_HIGH or calling in stat_sources
        dataset = request.DataSet.getvalue()
        try:
            new = spool.receive(
                sop_uid=sop_uid,
                sop_class=str(request.AffectedSOPClassUID),
                digest=hashlib.sha256(dataset).hexdigest(),
                file_bytes=event.encoded_dataset(include_meta=True),
                calling_ae=calling,
                priority="stat" if stat else "routine",
            )
        except OSError as err:
            log.error("could not spool an instance from %s: %s", calling, err)
            return STATUS_OUT_OF_RESOURCES
        if new:
            on_new()
        return STATUS_SUCCESS

    return handle


def start(
    ae: AE, host: str, port: int, handler: Callable[[Event], int]
) -> ThreadedAssociationServer:
    """Listen on ``host:port`` in the background."""
    from pynetdicom import evt

    handlers: list[Any] = [(evt.EVT_C_STORE, handler)]
    return ae.start_server((host, port), block=False, evt_handlers=handlers)
