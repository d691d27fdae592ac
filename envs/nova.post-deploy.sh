#!/usr/bin/env bash
# Snakemake (conda deployment) runs this in the new marpipe-nova env: marpipe and diffnext at the pinned
# commit, both without their dependencies (see nova.yaml). MARPIPE_ROOT: the checkout (set by the workflow).
set -euo pipefail
pip install --no-deps -e "${MARPIPE_ROOT:?the workflow sets MARPIPE_ROOT}" \
    "git+https://github.com/baaivision/NOVA.git@2cd254afdedae8670ccb492c28c53caa08f7b5a0"
