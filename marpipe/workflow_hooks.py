"""What the workflow files call outside the rules' commands: the CLI on PATH at start-up, where each
model family's jobs run, and the columns the Snakemake report shows for a figure."""
from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

#: model families with their own environment (a profile's ``config: deployment:`` overrides them): the
#: venvs `make install official-venvs` builds beside the Snakefile, with the official NOVA / Harmon code
DEFAULT_DEPLOYMENT = {"nova": ".venv-nova", "harmon": ".venv-harmon"}


def ensure_cli_on_path() -> None:
    """Jobs call ``marpipe``: find it beside the Python running Snakemake when it is not on PATH."""
    if shutil.which("marpipe") is None:
        os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"


def figure_subcategory(wildcards) -> str:
    """The Snakemake report's subcategory of a file in ``results/figures``, from the wildcards of the
    ``report(..., patterns=[...])`` pattern it matched (``dynamics_{model}_{reward}.png`` or
    ``samples_{model}.png``)."""
    return "Training dynamics" if "reward" in wildcards.keys() else "Samples"


def figure_labels(wildcards) -> dict[str, str]:
    """The report's columns for a figure (sample grids: the preference suite's rows)."""
    return {"figure": figure_subcategory(wildcards), "model": wildcards.model,
            "reward": wildcards.get("reward", "preference suite")}
