"""cxr-triage DICOM gateway: a Storage SCP that spools what PACS sends, triages it through the
client library, and returns the results as DICOM Structured Reports (``cxr gateway``).

Modules: ``scp`` (receiving), ``spool`` (durable files and state), ``triage`` (the client
library), ``sr`` (TID 1500 reports), ``forward`` (C-STORE out), ``status``, ``cli``.
"""
