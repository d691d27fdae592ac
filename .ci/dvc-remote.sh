#!/usr/bin/env bash
# Create a local-folder DVC remote for CI and print its path.
# The pipeline registers it itself:  dvc remote add -d ci "$(.ci/dvc-remote.sh)"
# Path: $MARPIPE_DVC_REMOTE, else /tmp/marpipe-dvc-remote.
set -euo pipefail
remote="${MARPIPE_DVC_REMOTE:-/tmp/marpipe-dvc-remote}"
mkdir -p "$remote"
cd "$remote" && pwd -P
