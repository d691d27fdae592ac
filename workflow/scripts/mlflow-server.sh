#!/usr/bin/env bash
# The pipeline's MLflow server (up | down | status): the script ships in the package, marpipe/io/.
exec bash "$(dirname "${BASH_SOURCE[0]}")/../../marpipe/io/mlflow-server.sh" "$@"
