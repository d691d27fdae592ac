"""Locate the official NOVA and Harmon code that ``tests/official`` compares the adapters with.

Never part of the repository: the code is found at ``$MARPIPE_OFFICIAL_CODE`` (a folder holding
``NOVA/``, ``Harmon/`` and ``harmon-remote-code/``, e.g. your own checkouts) or at
``../shared/official`` beside the repository, and every test here skips with one line saying
which is missing.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from testbed.official import OFFICIAL_ENV as ENV_VAR
from testbed.official import official_root


@pytest.fixture(scope="session")
def official() -> Path:
    root = official_root()
    if root is None:
        pytest.skip(f"official NOVA/Harmon code not found: set ${ENV_VAR} or place it at ../shared/official")
    return root
