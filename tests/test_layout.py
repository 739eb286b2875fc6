"""The house reads one way: the import direction between the parts, one import namespace, and
one module per ``cxr`` sub-command."""

from __future__ import annotations

import ast
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from cxr.cli import SUBCOMMANDS

ROOT = Path(__file__).resolve().parents[1]
#: Each part (a folder of the repository, installed as ``cxr.<part>``) and the parts it may
#: import: the client (contract, decoding, client) at the bottom, then the model runtime, train,
#: convert, which publishes into the server's repository; load tests and benchmarks on top.
MAY_IMPORT = {
    "client": set(),
    "runtime": {"client"},
    "train": {"client", "runtime"},
    "server": {"client", "runtime"},
    "convert": {"client", "runtime", "train", "server"},
    "gateway": {"client"},
    "loadtest": {"client", "runtime", "server"},
    "bench": {"client", "runtime", "train", "convert", "server", "loadtest", "gateway"},
}
#: Third-party packages a part must never import, even lazily.
NEVER = {"client": {"torch", "torchvision", "onnx", "onnxruntime", "tensorrt"}}


def imports_of(folder: Path) -> list[tuple[str, int, str]]:
    """(file, line, module) of every absolute import under ``folder``, at any depth of the code
    (lazy imports inside functions included)."""
    found = []
    for path in sorted(folder.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            else:
                continue
            found += [(path.name, node.lineno, name) for name in names]
    return found


def wrong_imports(part: str, folder: Path) -> list[str]:
    """The imports of ``part`` (its code in ``folder``) against :data:`MAY_IMPORT`."""
    allowed = MAY_IMPORT[part] | {part}
    wrong = []
    for file, line, module in imports_of(folder):
        top, _, rest = module.partition(".")
        inner = rest.split(".")[0]
        if top in MAY_IMPORT:
            wrong.append(f"{file}:{line} imports {module} without the cxr namespace")
        elif (top == "cxr" and inner and inner not in allowed) or top in NEVER.get(part, set()):
            wrong.append(f"{file}:{line} imports {module}")
    return wrong


@pytest.mark.parametrize("part", sorted(MAY_IMPORT))
def test_imports_point_one_way(part: str) -> None:
    wrong = wrong_imports(part, ROOT / part)
    assert not wrong, "imports against the one-way design:\n" + "\n".join(wrong)


def test_the_direction_check_finds_upward_and_lazy_imports(tmp_path: Path) -> None:
    (tmp_path / "classifier.py").write_text(
        "import numpy\nfrom cxr.client import contract\n\n\ndef run():\n"
        "    from cxr.convert.pipeline import convert_run\n    import train.models\n"
    )
    assert wrong_imports("server", tmp_path) == [
        "classifier.py:6 imports cxr.convert.pipeline",
        "classifier.py:7 imports train.models without the cxr namespace",
    ]
    (tmp_path / "classifier.py").write_text("def f():\n    import onnxruntime\n")
    assert wrong_imports("client", tmp_path) == ["classifier.py:2 imports onnxruntime"]


def test_every_part_is_installed_under_the_one_namespace(tmp_path: Path) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    (wheel,) = tmp_path.glob("cxr_triage-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")}
    assert tops == {"cxr"}
    packages = {str(Path(name).parent) for name in names if name.endswith("/__init__.py")}
    for part in MAY_IMPORT:
        folders = {p.parent for p in (ROOT / part).rglob("__init__.py")}
        for folder in folders:
            installed = "cxr/" + str(folder.relative_to(ROOT))
            assert installed in packages, f"{folder} is not in the wheel"
    (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "cxr = cxr.cli:main" in text


@pytest.mark.parametrize("name", sorted(SUBCOMMANDS))
def test_each_subcommand_has_one_module_named_for_it(name: str) -> None:
    module, _, _, _ = SUBCOMMANDS[name]
    part, _, leaf = module.removeprefix("cxr.").partition(".")
    assert leaf in ("cli", f"{name}_cli"), f"cxr {name} lives in {module}"
    others = [n for n, entry in SUBCOMMANDS.items() if entry[0] == module and n != name]
    assert not others, f"{module} holds cxr {name} and cxr {', '.join(others)}"
    assert (ROOT / part / f"{leaf}.py").is_file()
