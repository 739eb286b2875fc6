"""The names a caller picks from: request priorities and result row formats.

``typing.Literal`` types, so the CLI offers them as choices (Typer) and type checkers hold API
callers to them. No imports beyond ``typing``: the CLI builds its options from here without
loading numpy.
"""

from __future__ import annotations

from typing import Literal

#: A request's priority by name (levels: :data:`cxr.client.contract.PRIORITIES`).
Priority = Literal["stat", "routine"]
#: How result rows are written (:class:`cxr.client.results.RowWriter`).
Format = Literal["table", "json", "jsonl", "csv"]
