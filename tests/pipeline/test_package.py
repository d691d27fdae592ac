"""The installed package is what users run: the built wheel holds ``marpipe`` and nothing of the test bed
(fixtures, test doubles, the local hub), and importing ``marpipe`` or any of its modules never edits
``sys.path`` nor imports the test bed or the tests. See ``docs/development.md`` ("Test bed")."""
from __future__ import annotations

import ast
import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
#: module paths of fixtures and test doubles: none may be in the wheel, under any package
FIXTURE_PARTS = ("testbed", "tests", "hub", "standins")
FIXTURE_MODULES = ("marpipe/metrics/tiny.py", "nova_tiny.py", "harmon_tiny.py")


def _source_tree(dest: Path) -> Path:
    """The working tree's files that git tracks or would track (no venvs, no build outputs), copied to ``dest``."""
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                         capture_output=True, check=True).stdout.decode()
    for rel in filter(None, out.split("\0")):
        src = ROOT / rel
        if src.is_file() and not src.is_symlink():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dest / rel)
    return dest


@pytest.fixture(scope="module")
def wheel_files(tmp_path_factory) -> list[str]:
    if shutil.which("git") is None:
        pytest.skip("git not installed")
    tmp = tmp_path_factory.mktemp("wheel")
    src = _source_tree(tmp / "src")
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                        "-w", str(tmp / "dist"), str(src)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    (wheel,) = (tmp / "dist").glob("marpipe-*.whl")
    return zipfile.ZipFile(wheel).namelist()


def test_the_wheel_holds_the_package_and_no_fixtures(wheel_files):
    outside = [f for f in wheel_files if f.split("/")[0] != "marpipe" and ".dist-info/" not in f]
    assert outside == []
    fixtures = [f for f in wheel_files if any(p in FIXTURE_PARTS for p in f.split("/")[:-1])
                or f.endswith(FIXTURE_MODULES) or f.split("/")[-1].split(".")[0] in FIXTURE_PARTS]
    assert fixtures == [], "test fixtures in the wheel: move them to testbed/"
    assert "marpipe/cli.py" in wheel_files and "marpipe/bench/metrics.py" in wheel_files


def test_no_module_of_the_package_touches_sys_path():
    """Read from the source: ``sys.path`` named anywhere in ``marpipe/`` (an import-time insertion or one
    inside a function that a user's run reaches)."""
    found = []
    for py in sorted((ROOT / "marpipe").rglob("*.py")):
        for node in ast.walk(ast.parse(py.read_text(), str(py))):
            if isinstance(node, ast.Attribute) and node.attr == "path" and \
                    isinstance(node.value, ast.Name) and node.value.id == "sys":
                found.append(f"{py.relative_to(ROOT)}:{node.lineno}")
    assert found == [], f"marpipe reads or edits sys.path at {found}"


# run outside the repository (its root not importable: no testbed, no tests), in a fresh interpreter
IMPORT_ALL = r"""
import importlib, json, pkgutil, sys
before = list(sys.path)
import marpipe
skipped, broken = {}, {}
for m in pkgutil.walk_packages(marpipe.__path__, "marpipe."):
    if m.name == "marpipe.__main__":                # runs the CLI
        continue
    try:
        importlib.import_module(m.name)
    except ModuleNotFoundError as e:
        top = (e.name or "").split(".")[0]
        (broken if top in ("marpipe", "testbed", "tests", "") else skipped)[m.name] = str(e)
    except Exception as e:
        broken[m.name] = repr(e)
print("RESULT" + json.dumps({"before": before, "after": list(sys.path), "skipped": skipped, "broken": broken,
                             "bed": sorted(n for n in sys.modules if n.split(".")[0] in ("testbed", "tests")),
                             "imported": sorted(n for n in sys.modules if n.startswith("marpipe."))}))
"""


def test_importing_every_module_leaves_sys_path_and_never_imports_the_test_bed(tmp_path):
    r = subprocess.run([sys.executable, "-c", IMPORT_ALL], cwd=tmp_path, capture_output=True, text=True,
                       timeout=600, env={k: v for k, v in __import__("os").environ.items() if k != "PYTHONPATH"})
    assert r.returncode == 0, r.stderr[-3000:]
    got = json.loads([x for x in r.stdout.splitlines() if x.startswith("RESULT")][-1][len("RESULT"):])
    assert got["broken"] == {}, "modules that fail to import (not for a missing optional dependency)"
    assert got["after"] == got["before"]
    assert got["bed"] == []
    assert len(got["imported"]) > 40 and "marpipe.bench.metrics" in got["imported"], got["skipped"]
