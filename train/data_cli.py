"""``cxr data synth|info``: make or inspect datasets."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from cxr.client.options import fail
from cxr.train.data import DatasetError

console = Console(stderr=True)
data_app = typer.Typer(no_args_is_help=True, help="Make or inspect datasets.")


@data_app.command("synth")
def synth_command(
    out: Annotated[Path, typer.Option("--out", help="Output folder (Kermany-style).")],
    count: Annotated[int, typer.Option(help="Images in all splits together.")] = 600,
    image_size: Annotated[int, typer.Option(help="Side of the square images, pixels.")] = 128,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
) -> None:
    """Write SYNTHETIC X-ray-like images as OUT/{train,val,test}/{NORMAL,PNEUMONIA}/*.png."""
    from cxr.train.synth import write_synthetic_dataset

    try:
        write_synthetic_dataset(out, count, image_size, seed)
    except ValueError as err:
        raise fail(str(err)) from err
    console.print(f"wrote {count} synthetic images to {out} (labelled SYNTHETIC; not radiographs)")


@data_app.command("info")
def info_command(data: Annotated[Path, typer.Argument(help="Dataset folder or .npz.")]) -> None:
    """Show a dataset's format, splits and class counts."""
    from cxr.train.data import SPLIT_NAMES, detect_format, load_split

    try:
        kind = detect_format(data)
    except DatasetError as err:
        raise fail(str(err)) from err
    table = Table("split", "images", "classes", "skipped files", title=f"{data} ({kind})")
    for split in SPLIT_NAMES:
        try:
            part = load_split(data, split, 32)
        except DatasetError as err:
            table.add_row(split, "-", str(err), "")
            continue
        table.add_row(
            split, str(len(part)), json.dumps(part.class_counts()), str(len(part.skipped))
        )
    Console().print(table)
