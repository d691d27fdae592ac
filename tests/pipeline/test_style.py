"""The house style, checked: ruff on the package and the tests, snakefmt on the workflow
(pyproject.toml's [tool.ruff] and [tool.snakefmt]; `.ci/run` runs the same two commands)."""
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


@pytest.mark.parametrize("cmd", [["ruff", "check", "marpipe", "tests"],
                                 ["snakefmt", "--check", "Snakefile", *sorted(str(p.relative_to(ROOT))
                                                                             for p in (ROOT / "workflow" / "rules").glob("*.smk"))]])
def test_style_is_clean(cmd):
    exe = BIN / cmd[0]
    if not exe.exists():
        pytest.skip(f"{cmd[0]} is not installed in this venv (make install: the dev extra)")
    r = subprocess.run([str(exe), *cmd[1:]], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
