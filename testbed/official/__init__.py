"""The official NOVA and Harmon classes at tiny size with random weights, saved in the real
repositories' layouts: what ``tests/official`` compares marpipe's adapters with and what the local
hub serves as ``BAAI/nova-d48w1024-sd512`` / ``wusize/Harmon-1_5B``. They run in the side venvs
(``.venv-nova``, ``.venv-harmon``) against the official code outside the repository. See
``docs/development.md``.
"""
from __future__ import annotations

import os
from pathlib import Path

OFFICIAL_ENV = "MARPIPE_OFFICIAL_CODE"


def official_root() -> Path | None:
    """The folder of the official code (``NOVA/``, ``Harmon/``, ``harmon-remote-code/``):
    ``$MARPIPE_OFFICIAL_CODE`` or ``../shared/official`` beside the repository; None without either."""
    given = os.environ.get(OFFICIAL_ENV)
    for cand in ([Path(given)] if given else []) + [Path(__file__).resolve().parents[2].parent / "shared" / "official"]:
        if cand.is_dir():
            return cand.resolve()
    return None
