#!/usr/bin/env bash
# Snakemake (--use-conda) runs this inside the marpipe-nova env right after creating it from
# envs/nova.yaml. Two packages go in without their dependencies (see nova.yaml): marpipe itself
# (its pyproject pins transformers 5, diffnext needs 4.57.6) and diffnext at the pinned commit
# (its setup.py asks for unpinned wandb, omegaconf, imageio-ffmpeg that inference never imports).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
[ -f "$root/pyproject.toml" ] || root="$PWD"      # where Snakemake runs a copy of this script: the workdir
pip install --no-deps -e "$root" \
    "git+https://github.com/baaivision/NOVA.git@2cd254afdedae8670ccb492c28c53caa08f7b5a0"
