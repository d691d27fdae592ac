"""Locate the official NOVA and Harmon code that ``tests/official`` compares the adapters with.

Never part of the repository: the code is found at ``$MARPIPE_OFFICIAL_CODE`` (a folder holding
``NOVA/``, ``Harmon/`` and ``harmon-remote-code/``, e.g. your own checkouts) or at
``../shared/official`` beside the repository, and every test here skips with one line saying
which is missing.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
ENV_VAR = "MARPIPE_OFFICIAL_CODE"


def official_root() -> Path | None:
    """The folder with the official code, or None."""
    given = os.environ.get(ENV_VAR)
    for cand in ([Path(given)] if given else []) + [REPO.parent / "shared" / "official"]:
        if cand.is_dir():
            return cand.resolve()
    return None


@pytest.fixture(scope="session")
def official() -> Path:
    root = official_root()
    if root is None:
        pytest.skip(f"official NOVA/Harmon code not found: set ${ENV_VAR} or place it at ../shared/official")
    return root
